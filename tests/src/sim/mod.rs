//! Simulated coupon providers (Convercus, Coupontools, Koupon) for end-to-end tests and the
//! demo, faithful to `shared/api/*.md`. One process; each provider listens on its own
//! loopback port (so that `down` can really refuse its connections), and an admin port
//! serves `/__sim/*`: seed, faults, ledger, state. See `docs/provider-sim.md`.

pub mod convercus;
pub mod convercus_generated;
pub mod coupontools;
pub mod koupon;
pub mod ledger;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The three simulated providers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Provider {
    Convercus,
    Coupontools,
    Koupon,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Convercus, Provider::Coupontools, Provider::Koupon];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Convercus => "convercus",
            Provider::Coupontools => "coupontools",
            Provider::Koupon => "koupon",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// A string field of a seed or request object (empty when missing or not a string).
pub(crate) fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The elements of an array field (none when missing or not an array).
pub(crate) fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Fault switches of one provider.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Listener closed: connections are refused.
    pub down: bool,
    /// Delay before every answer.
    pub slow_ms: u64,
    /// Probability (0..1) of answering a 5xx without doing anything.
    pub error_5xx_rate: f64,
    /// Answer truncated, invalid JSON (the write itself still happens).
    pub malformed_bodies: bool,
    /// Item keys rejected permanently with the provider's documented 4xx.
    pub reject: Vec<String>,
    /// The next this many calls answer `throttle_status` (429 by default) without doing
    /// anything, with a `Retry-After` of `retry_after_secs` (none when 0).
    pub throttle_calls: u64,
    pub throttle_status: u16,
    pub retry_after_secs: u64,
    /// `Retry-After` as an HTTP-date instead of seconds.
    pub retry_after_date: bool,
    /// Writes (the calls the ledger records) wait before doing anything until this is
    /// switched off, then go on in the order they came (reads answer meanwhile). For a
    /// write whose caller gave up waiting but which the provider applies later.
    pub hold_writes: bool,
    /// List calls answer their first page whatever page is asked for (a server that ignores
    /// or clamps the page parameter).
    pub ignore_page: bool,
}

impl Faults {
    fn to_json(&self) -> Value {
        json!({
            "down": self.down,
            "slow_ms": self.slow_ms,
            "error_5xx_rate": self.error_5xx_rate,
            "malformed_bodies": self.malformed_bodies,
            "reject": self.reject,
            "throttle_calls": self.throttle_calls,
            "throttle_status": self.throttle_status(),
            "retry_after_secs": self.retry_after_secs,
            "retry_after_date": self.retry_after_date,
            "hold_writes": self.hold_writes,
            "ignore_page": self.ignore_page,
        })
    }

    fn throttle_status(&self) -> u16 {
        if self.throttle_status == 0 {
            429
        } else {
            self.throttle_status
        }
    }
}

/// Credentials and knobs; settable with `POST /__sim/config`.
#[derive(Clone, Debug)]
pub struct Config {
    pub convercus_org: String,
    pub convercus_user: String,
    pub convercus_password: String,
    pub convercus_client_secret: String,
    pub token_ttl_secs: i64,
    pub coupontools_client_id: String,
    pub coupontools_client_secret: String,
    pub koupon_api_key: String,
    pub koupon_secret: String,
    pub koupon_max_skew_secs: i64,
    pub page_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            convercus_org: "demo-org".into(),
            convercus_user: "edge".into(),
            convercus_password: "edge-secret".into(),
            convercus_client_secret: "demo-client-secret".into(),
            token_ttl_secs: 24 * 3600,
            coupontools_client_id: "demo-client-id".into(),
            coupontools_client_secret: "demo-client-secret".into(),
            koupon_api_key: "demo-api-key".into(),
            koupon_secret: "demo-secret".into(),
            koupon_max_skew_secs: 300,
            page_size: 5000,
        }
    }
}

impl Config {
    fn to_json(&self) -> Value {
        json!({
            "convercus_org": self.convercus_org,
            "convercus_user": self.convercus_user,
            "convercus_password": self.convercus_password,
            "convercus_client_secret": self.convercus_client_secret,
            "token_ttl_secs": self.token_ttl_secs,
            "coupontools_client_id": self.coupontools_client_id,
            "coupontools_client_secret": self.coupontools_client_secret,
            "koupon_api_key": self.koupon_api_key,
            "koupon_secret": self.koupon_secret,
            "koupon_max_skew_secs": self.koupon_max_skew_secs,
            "page_size": self.page_size,
        })
    }

    fn merge(&mut self, v: &Value) -> Result<(), String> {
        let Some(map) = v.as_object() else {
            return Err("config must be a JSON object".into());
        };
        for (k, val) in map {
            let s = || {
                val.as_str()
                    .map(str::to_owned)
                    .ok_or(format!("{k} must be a string"))
            };
            let n = || val.as_i64().ok_or(format!("{k} must be an integer"));
            match k.as_str() {
                "convercus_org" => self.convercus_org = s()?,
                "convercus_user" => self.convercus_user = s()?,
                "convercus_password" => self.convercus_password = s()?,
                "convercus_client_secret" => self.convercus_client_secret = s()?,
                "token_ttl_secs" => self.token_ttl_secs = n()?,
                "coupontools_client_id" => self.coupontools_client_id = s()?,
                "coupontools_client_secret" => self.coupontools_client_secret = s()?,
                "koupon_api_key" => self.koupon_api_key = s()?,
                "koupon_secret" => self.koupon_secret = s()?,
                "koupon_max_skew_secs" => self.koupon_max_skew_secs = n()?,
                "page_size" => self.page_size = usize::try_from(n()?.max(1)).unwrap_or(5000),
                _ => return Err(format!("unknown config key {k}")),
            }
        }
        Ok(())
    }
}

/// Everything the simulator knows, behind one lock.
#[derive(Default)]
pub struct Data {
    pub config: Config,
    pub convercus: convercus::Data,
    pub coupontools: coupontools::Data,
    pub koupon: koupon::Data,
    pub faults: HashMap<Provider, Faults>,
    pub ledger: ledger::Ledger,
    /// Every provider call received, in order (for rate checks): `GET /__sim/requests`.
    pub requests: Vec<Value>,
}

/// Calls kept in the request log (the oldest go first).
const REQUEST_LOG: usize = 100_000;

impl Data {
    pub fn faults(&self, p: Provider) -> Faults {
        self.faults.get(&p).cloned().unwrap_or_default()
    }

    pub fn rejected(&self, p: Provider, key: &str) -> bool {
        self.faults
            .get(&p)
            .is_some_and(|f| f.reject.iter().any(|k| k == key))
    }

    /// Replaces the data of every provider named in `seed`.
    pub fn seed(&mut self, seed: &Value) -> Result<(), String> {
        if !seed.is_object() {
            return Err("seed must be a JSON object".into());
        }
        if let Some(c) = seed.get("config") {
            self.config.merge(c)?;
        }
        if let Some(v) = seed.get("convercus") {
            self.convercus = convercus::Data::from_seed(v)?.with_tokens_of(&self.convercus);
        }
        if let Some(v) = seed.get("coupontools") {
            self.coupontools = coupontools::Data::from_seed(v)?;
        }
        if let Some(v) = seed.get("koupon") {
            self.koupon = koupon::Data::from_seed(v)?;
        }
        Ok(())
    }

    /// `{"convercus": {"accounts", "coupons_per_account", "catalog"}}`: adds generated
    /// accounts and account coupons next to the seeded ones (replacing earlier generated
    /// ones and their changes; `accounts: 0` removes them). Returns what was generated.
    pub fn generate(&mut self, spec: &Value) -> Result<Value, String> {
        let Some(map) = spec.as_object() else {
            return Err("generate body must be a JSON object".into());
        };
        let mut out = serde_json::Map::new();
        for (k, v) in map {
            match k.as_str() {
                "convercus" => {
                    let g = convercus::Generated::from_json(v)?;
                    out.insert(k.clone(), g.to_json());
                    self.convercus.generated = (g.accounts > 0).then_some(g);
                }
                _ => return Err(format!("{k}: only convercus data can be generated")),
            }
        }
        Ok(Value::Object(out))
    }
}

/// The default seed: the providers' side of `packaging/sample-data.json`.
pub fn default_seed() -> Value {
    json!({
        "convercus": convercus::default_seed(),
        "coupontools": coupontools::default_seed(),
        "koupon": koupon::default_seed(),
    })
}

struct ProviderServer {
    addr: SocketAddr,
    handle: Option<ServerHandle>,
}

/// Shared state of the whole simulator.
pub struct State {
    data: Mutex<Data>,
    servers: Mutex<HashMap<Provider, ProviderServer>>,
    /// Per provider, the queue of writes held by `hold_writes` (tokio's mutex is fair:
    /// first come, first served).
    write_gates: HashMap<Provider, tokio::sync::Mutex<()>>,
}

impl State {
    /// A simulator loaded with the default seed.
    pub fn new() -> State {
        let mut data = Data::default();
        // The default seed is built in code and always valid.
        let _ = data.seed(&default_seed());
        State {
            data: Mutex::new(data),
            servers: Mutex::new(HashMap::new()),
            write_gates: Provider::ALL
                .into_iter()
                .map(|p| (p, tokio::sync::Mutex::new(())))
                .collect(),
        }
    }

    /// The data, recovering from a poisoned lock (a panicking handler leaves it consistent:
    /// every handler validates before it mutates).
    pub fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn servers(&self) -> MutexGuard<'_, HashMap<Provider, ProviderServer>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

/// Where to listen.
pub struct Listeners {
    pub admin: TcpListener,
    pub convercus: TcpListener,
    pub coupontools: TcpListener,
    pub koupon: TcpListener,
}

impl Listeners {
    /// All four on `127.0.0.1:0`.
    pub fn loopback() -> std::io::Result<Listeners> {
        let any = || TcpListener::bind("127.0.0.1:0");
        Ok(Listeners {
            admin: any()?,
            convercus: any()?,
            coupontools: any()?,
            koupon: any()?,
        })
    }
}

/// A running simulator: its addresses and the handle that stops it.
pub struct Running {
    pub admin: SocketAddr,
    pub convercus: SocketAddr,
    pub coupontools: SocketAddr,
    pub koupon: SocketAddr,
    pub state: web::Data<State>,
    admin_handle: ServerHandle,
}

impl Running {
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
    pub fn convercus_url(&self) -> String {
        format!("http://{}", self.convercus)
    }
    /// Coupontools' base URL, ending in `/v3/` like the documented one.
    pub fn coupontools_url(&self) -> String {
        format!("http://{}/v3/", self.coupontools)
    }
    pub fn koupon_url(&self) -> String {
        format!("http://{}", self.koupon)
    }

    /// Stops every server.
    pub async fn stop(&self) {
        let handles: Vec<ServerHandle> = self
            .state
            .servers()
            .values_mut()
            .filter_map(|s| s.handle.take())
            .collect();
        for h in handles {
            h.stop(false).await;
        }
        self.admin_handle.stop(false).await;
    }
}

/// Starts the simulator's four servers on the given listeners (must be called inside an
/// actix/tokio runtime with a `LocalSet`, e.g. `#[actix_web::main]` or `#[actix_web::test]`).
pub async fn run(listeners: Listeners, state: web::Data<State>) -> std::io::Result<Running> {
    let admin = listeners.admin.local_addr()?;
    let mut addrs = HashMap::new();
    for (p, l) in [
        (Provider::Convercus, listeners.convercus),
        (Provider::Coupontools, listeners.coupontools),
        (Provider::Koupon, listeners.koupon),
    ] {
        let addr = l.local_addr()?;
        addrs.insert(p, addr);
        let handle = serve_provider(&state, p, l)?;
        state.servers().insert(
            p,
            ProviderServer {
                addr,
                handle: Some(handle),
            },
        );
    }
    let st = state.clone();
    let server = HttpServer::new(move || App::new().app_data(st.clone()).configure(admin_routes))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listeners.admin)?
        .run();
    let admin_handle = server.handle();
    actix_web::rt::spawn(server);
    let get = |p| addrs.get(&p).copied().unwrap_or(admin);
    Ok(Running {
        admin,
        convercus: get(Provider::Convercus),
        coupontools: get(Provider::Coupontools),
        koupon: get(Provider::Koupon),
        state,
        admin_handle,
    })
}

fn serve_provider(
    state: &web::Data<State>,
    p: Provider,
    listener: TcpListener,
) -> std::io::Result<ServerHandle> {
    let st = state.clone();
    let server = HttpServer::new(move || {
        let app = App::new().app_data(st.clone());
        match p {
            Provider::Convercus => app.configure(convercus::routes),
            Provider::Coupontools => app.configure(coupontools::routes),
            Provider::Koupon => app.configure(koupon::routes),
        }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(0)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

/// Closes a provider's listener (and its open connections).
async fn take_down(state: &web::Data<State>, p: Provider) {
    let (addr, handle) = match state.servers().get_mut(&p) {
        Some(s) => (s.addr, s.handle.take()),
        None => return,
    };
    if let Some(h) = handle {
        h.stop(false).await;
    }
    // The accept loop closes its socket asynchronously: answer only once it refuses.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Binds the provider's port again (retrying briefly while the old socket closes).
async fn bring_up(state: &web::Data<State>, p: Provider) -> std::io::Result<()> {
    let addr = match state.servers().get(&p) {
        Some(s) if s.handle.is_none() => s.addr,
        _ => return Ok(()),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => actix_web::rt::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let handle = serve_provider(state, p, listener)?;
    if let Some(s) = state.servers().get_mut(&p) {
        s.handle = Some(handle);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the providers

/// A provider's answer before fault post-processing.
pub struct Reply {
    pub status: u16,
    /// `None` = no body.
    pub body: Option<Value>,
    /// A plain-text body instead of JSON.
    pub text: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            text: None,
            headers: Vec::new(),
        }
    }
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: None,
            text: None,
            headers: Vec::new(),
        }
    }
    pub fn text(status: u16, text: &str) -> Reply {
        Reply {
            status,
            body: None,
            text: Some(text.to_owned()),
            headers: Vec::new(),
        }
    }
}

/// What the fault switches decide before a handler runs: `Some(reply)` = answer this
/// (injected 5xx) without touching the state.
pub async fn before(state: &State, p: Provider, req: &HttpRequest) -> Option<Reply> {
    let faults = {
        let mut d = state.data();
        if d.requests.len() >= REQUEST_LOG {
            d.requests.drain(..REQUEST_LOG / 10);
        }
        let at = now_utc();
        d.requests.push(json!({
            "provider": p.name(),
            "atMs": at.timestamp_millis(),
            "method": req.method().as_str(),
            "path": req.path(),
            "query": req.query_string(),
        }));
        let faults = d.faults(p);
        if faults.throttle_calls > 0 {
            if let Some(f) = d.faults.get_mut(&p) {
                f.throttle_calls -= 1;
            }
            return Some(throttled(p, &faults, at));
        }
        faults
    };
    if faults.slow_ms > 0 {
        actix_web::rt::time::sleep(Duration::from_millis(faults.slow_ms)).await;
    }
    if faults.error_5xx_rate > 0.0 && rand::random::<f64>() < faults.error_5xx_rate {
        return Some(match p {
            Provider::Convercus => Reply::json(
                500,
                json!({"code": "INTERNAL_SERVER_ERROR", "detail": ["simulated failure"]}),
            ),
            Provider::Coupontools => Reply::text(503, "HTTP/1.0 503 Service Unavailable"),
            Provider::Koupon => Reply::json(
                503,
                json!({"version": "1", "errorCode": "503", "errorMessage": "Temporarily unavailable, try again"}),
            ),
        });
    }
    None
}

/// The answer of a throttled call: 429 (or the configured status) in the provider's error
/// shape, with `Retry-After` in seconds or as an HTTP-date.
fn throttled(p: Provider, f: &Faults, at: chrono::DateTime<chrono::Utc>) -> Reply {
    let status = f.throttle_status();
    let mut r = match p {
        Provider::Convercus => Reply::json(
            status,
            json!({"code": "TOO_MANY_REQUESTS", "detail": ["simulated throttling"]}),
        ),
        Provider::Coupontools => Reply::text(status, "Too Many Requests"),
        Provider::Koupon => Reply::json(
            status,
            json!({"version": "1", "errorCode": status.to_string(), "errorMessage": "Too many requests, try again later"}),
        ),
    };
    if f.retry_after_secs > 0 {
        let secs = i64::try_from(f.retry_after_secs).unwrap_or(i64::MAX / 4);
        let value = if f.retry_after_date {
            // An HTTP-date has whole seconds: round up so the wait is never shorter.
            let when = at + chrono::Duration::seconds(secs) + chrono::Duration::milliseconds(999);
            when.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
        } else {
            f.retry_after_secs.to_string()
        };
        r.headers.push(("Retry-After", value));
    }
    r
}

/// Turns a reply into the HTTP response, garbling the body if `malformed_bodies` is on.
pub fn finish(state: &State, p: Provider, reply: Reply) -> HttpResponse {
    let malformed = state.data().faults(p).malformed_bodies;
    let status = actix_web::http::StatusCode::from_u16(reply.status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut b = HttpResponse::build(status);
    for (k, v) in &reply.headers {
        b.insert_header((*k, v.as_str()));
    }
    match (reply.body, reply.text) {
        (Some(v), _) => {
            let mut text = v.to_string();
            if malformed {
                text.truncate(text.len() / 2);
            }
            b.content_type("application/json").body(text)
        }
        (None, Some(t)) => b.content_type("text/plain").body(t),
        (None, None) if malformed => {
            // A no-body answer cannot be truncated: send half a JSON object instead.
            b.status(actix_web::http::StatusCode::OK);
            b.content_type("application/json").body("{\"")
        }
        (None, None) => b.finish(),
    }
}

/// The request body as JSON, or `None` when it is not JSON.
pub fn json_body(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// The body for the ledger: JSON when it parses, else the text.
pub fn ledger_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    json_body(body).unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned()))
}

pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Query parameters (percent-decoded), in order.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs one provider call: fault switches first (an injected 5xx of a write is recorded in
/// the ledger as not applied), then `logic` under the lock, then the body faults.
pub async fn dispatch(
    st: &State,
    p: Provider,
    req: &HttpRequest,
    body: &[u8],
    write: Option<(&str, Vec<String>)>,
    logic: impl FnOnce(&mut Data, &HttpRequest, &[u8]) -> Reply,
) -> HttpResponse {
    if let Some(r) = before(st, p, req).await {
        if let Some((op, keys)) = write {
            let mut d = st.data();
            for k in keys {
                d.ledger.record(
                    p.name(),
                    op,
                    &k,
                    r.status,
                    if r.status == 429 || r.headers.iter().any(|(k, _)| *k == "Retry-After") {
                        "throttled"
                    } else {
                        "injected_5xx"
                    },
                    false,
                    ledger_body(body),
                );
            }
        }
        return finish(st, p, r);
    }
    if write.is_some() {
        held(st, p).await;
    }
    let reply = logic(&mut st.data(), req, body);
    finish(st, p, reply)
}

/// The `hold_writes` switch: while it is on, a write waits here behind the writes held
/// before it; once it is off they go on one by one, in the order they came.
async fn held(st: &State, p: Provider) {
    if !st.data().faults(p).hold_writes {
        return;
    }
    let Some(gate) = st.write_gates.get(&p) else {
        return;
    };
    let _turn = gate.lock().await;
    while st.data().faults(p).hold_writes {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

// ---------------------------------------------------------------------------------------
// Admin endpoints

fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/__sim/health",
        web::get().to(|| async { HttpResponse::Ok().json(json!({"ok": true})) }),
    )
    .route("/__sim/ports", web::get().to(ports))
    .route("/__sim/seed", web::get().to(get_seed))
    .route("/__sim/seed", web::post().to(seed))
    .route("/__sim/generate", web::post().to(generate))
    .route("/__sim/reset", web::post().to(reset))
    .route("/__sim/config", web::get().to(get_config))
    .route("/__sim/config", web::post().to(set_config))
    .route("/__sim/faults", web::get().to(get_faults))
    .route("/__sim/faults", web::post().to(set_faults))
    .route("/__sim/ledger", web::get().to(get_ledger))
    .route("/__sim/ledger", web::delete().to(clear_ledger))
    .route("/__sim/requests", web::get().to(get_requests))
    .route("/__sim/requests", web::delete().to(clear_requests))
    .route("/__sim/state", web::get().to(get_state));
}

fn bad(msg: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": msg.into()}))
}

async fn ports(st: web::Data<State>) -> HttpResponse {
    let servers = st.servers();
    let mut out = serde_json::Map::new();
    for p in Provider::ALL {
        if let Some(s) = servers.get(&p) {
            let base = match p {
                Provider::Coupontools => format!("http://{}/v3/", s.addr),
                _ => format!("http://{}", s.addr),
            };
            out.insert(
                p.name().into(),
                json!({"base_url": base, "up": s.handle.is_some()}),
            );
        }
    }
    HttpResponse::Ok().json(Value::Object(out))
}

async fn seed(st: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let Some(v) = json_body(&body) else {
        return bad("seed body is not JSON");
    };
    match st.data().seed(&v) {
        Ok(()) => HttpResponse::Ok().json(json!({"ok": true})),
        Err(e) => bad(e),
    }
}

async fn generate(st: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let Some(v) = json_body(&body) else {
        return bad("generate body is not JSON");
    };
    match st.data().generate(&v) {
        Ok(done) => HttpResponse::Ok().json(done),
        Err(e) => bad(e),
    }
}

async fn reset(st: web::Data<State>) -> HttpResponse {
    {
        let mut d = st.data();
        *d = Data::default();
        let _ = d.seed(&default_seed());
    }
    for p in Provider::ALL {
        if let Err(e) = bring_up(&st, p).await {
            return HttpResponse::InternalServerError().json(json!({"error": e.to_string()}));
        }
    }
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn get_config(st: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(st.data().config.to_json())
}

async fn set_config(st: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let Some(v) = json_body(&body) else {
        return bad("config body is not JSON");
    };
    let mut d = st.data();
    match d.config.merge(&v) {
        Ok(()) => HttpResponse::Ok().json(d.config.to_json()),
        Err(e) => bad(e),
    }
}

fn faults_json(d: &Data) -> Value {
    let mut out = serde_json::Map::new();
    for p in Provider::ALL {
        out.insert(p.name().into(), d.faults(p).to_json());
    }
    Value::Object(out)
}

async fn get_faults(st: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(faults_json(&st.data()))
}

/// `{"<provider>": {"down"?, "slow_ms"?, "error_5xx_rate"?, "malformed_bodies"?, "reject"?,
/// "hold_writes"?, "ignore_page"?, "expire_tokens"?}}`: fields present replace the current value; `expire_tokens: true`
/// (Convercus) is an action, not a state.
async fn set_faults(st: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let Some(Value::Object(map)) = json_body(&body) else {
        return bad("faults body must be a JSON object");
    };
    let mut changes = Vec::new();
    for (name, f) in &map {
        let Some(p) = Provider::parse(name) else {
            return bad(format!("unknown provider {name}"));
        };
        let Some(f) = f.as_object() else {
            return bad(format!("{name}: must be an object"));
        };
        let mut faults = st.data().faults(p);
        let mut expire = false;
        for (k, v) in f {
            match (k.as_str(), v) {
                ("down", Value::Bool(b)) => faults.down = *b,
                ("malformed_bodies", Value::Bool(b)) => faults.malformed_bodies = *b,
                ("expire_tokens", Value::Bool(b)) => expire = *b,
                ("slow_ms", v) if v.as_u64().is_some() => faults.slow_ms = v.as_u64().unwrap_or(0),
                ("error_5xx_rate", v) if v.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)) => {
                    faults.error_5xx_rate = v.as_f64().unwrap_or(0.0)
                }
                ("throttle_calls", v) if v.as_u64().is_some() => {
                    faults.throttle_calls = v.as_u64().unwrap_or(0)
                }
                ("throttle_status", v)
                    if v.as_u64()
                        .is_some_and(|s| s == 429 || (500..600).contains(&s)) =>
                {
                    faults.throttle_status = u16::try_from(v.as_u64().unwrap_or(429)).unwrap_or(429)
                }
                ("retry_after_secs", v) if v.as_u64().is_some() => {
                    faults.retry_after_secs = v.as_u64().unwrap_or(0)
                }
                ("retry_after_date", Value::Bool(b)) => faults.retry_after_date = *b,
                ("hold_writes", Value::Bool(b)) => faults.hold_writes = *b,
                ("ignore_page", Value::Bool(b)) => faults.ignore_page = *b,
                ("reject", Value::Array(a)) if a.iter().all(Value::is_string) => {
                    faults.reject = a
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                }
                _ => return bad(format!("{name}.{k}: unknown switch or bad value {v}")),
            }
        }
        if expire && p != Provider::Convercus {
            return bad("expire_tokens exists only for convercus");
        }
        changes.push((p, faults, expire));
    }
    for (p, faults, expire) in changes {
        let down = faults.down;
        {
            let mut d = st.data();
            d.faults.insert(p, faults);
            if expire {
                d.convercus.expire_tokens();
            }
        }
        if down {
            take_down(&st, p).await;
        } else if let Err(e) = bring_up(&st, p).await {
            return HttpResponse::InternalServerError().json(json!({"error": e.to_string()}));
        }
    }
    HttpResponse::Ok().json(faults_json(&st.data()))
}

async fn get_ledger(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    let q = query_pairs(req.query_string());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    HttpResponse::Ok().json(
        st.data()
            .ledger
            .query(get("provider"), get("operation"), get("key")),
    )
}

/// Every provider call received (`?provider=` filters): `[{"provider", "atMs", "method",
/// "path", "query"}]`, oldest first.
async fn get_requests(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    let q = query_pairs(req.query_string());
    let provider = q
        .iter()
        .find(|(k, _)| k == "provider")
        .map(|(_, v)| v.clone());
    let d = st.data();
    let out: Vec<&Value> = d
        .requests
        .iter()
        .filter(|r| {
            provider
                .as_ref()
                .is_none_or(|p| r["provider"] == p.as_str())
        })
        .collect();
    HttpResponse::Ok().json(out)
}

async fn clear_requests(st: web::Data<State>) -> HttpResponse {
    st.data().requests.clear();
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn clear_ledger(st: web::Data<State>) -> HttpResponse {
    st.data().ledger.clear();
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn get_state(st: web::Data<State>) -> HttpResponse {
    let d = st.data();
    HttpResponse::Ok().json(json!({
        "convercus": d.convercus.to_json(),
        "coupontools": d.coupontools.to_json(),
        "koupon": d.koupon.to_json(),
    }))
}

async fn get_seed() -> HttpResponse {
    HttpResponse::Ok().json(default_seed())
}
