//! Store health for store and regional IT, on its own listener with its own credentials:
//! Prometheus `/metrics` (lane requests and latency by endpoint, outbox depth by provider
//! and state, oldest pending age, dead letters, last successful sync per provider), an
//! HTML `/status` page showing the same at a glance with the dead-lettered items and their
//! reasons, and `/status.json`.

use crate::State;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::{json, Value};
use shared::db::now_secs;
use std::net::TcpListener;
use std::time::Instant;

/// Lane request metrics, shared by every worker.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "edge_lane_requests_total",
                "Lane requests by endpoint and status",
            ),
            &["endpoint", "method", "status"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "edge_lane_request_duration_seconds",
                "Time to answer a lane request, by endpoint",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["endpoint"],
        )
        .unwrap_or_else(|_| unreachable_histogram());
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(latency.clone()));
        Metrics {
            registry,
            requests,
            latency,
        }
    }

    fn observe(&self, endpoint: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[endpoint, method, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[endpoint]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// The metric definitions above are constants: building them cannot fail. These keep the
// request path free of `unwrap` all the same.
fn unreachable_metric() -> IntCounterVec {
    IntCounterVec::new(Opts::new("edge_unused", "unused"), &["x"])
        .unwrap_or_else(|_| std::process::abort())
}
fn unreachable_histogram() -> HistogramVec {
    HistogramVec::new(HistogramOpts::new("edge_unused_h", "unused"), &["x"])
        .unwrap_or_else(|_| std::process::abort())
}

/// Middleware on the lane listener: counts and times every request by its route pattern
/// (a bounded set; anything unmatched is `unmatched`).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<State>().cloned();
    // A bounded set of labels: any other method (a client may send any token) is `other`.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let res = next.call(req).await?;
    if let Some(state) = state {
        let endpoint = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        state.metrics.observe(
            &endpoint,
            method,
            res.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(res)
}

/// Everything the page and the metrics show, read from the database.
fn snapshot(state: &crate::AppState) -> Result<Value, shared::db::DbError> {
    let conn = state.db.read()?;
    let now = now_secs();
    let providers = shared::sync::status(&conn, &shared::domain::UPSTREAM_PROVIDERS, now)?;
    let dead = shared::outbox::list_recent(&conn, Some("dead"), None, 100)?;
    let (conflicts, recent_conflicts) =
        shared::repo::conflicts_since(&conn, now - shared::repo::CONFLICT_WINDOW_SECS, 20)?;
    let config = state.config();
    let daemon = shared::sync::daemon_status(&conn, now)?;
    let mut daemon_json = serde_json::to_value(&daemon).unwrap_or_default();
    daemon_json["state"] = json!(daemon.describe());
    Ok(json!({
        "now": now,
        "syncDaemon": daemon_json,
        "sites": config.store.sites,
        "schemaVersion": shared::db::current_version(&conn)?,
        "providers": providers.iter().map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["enabled"] = json!(config.providers.enabled(&s.provider));
            v["last_success_age_secs"] = json!(s.last_success_at.map(|t| now - t));
            v
        }).collect::<Vec<_>>(),
        "deadLetters": dead.iter().map(|i| json!({
            "id": i.id, "provider": i.provider, "operation": i.operation,
            "orderingKey": i.ordering_key, "attempts": i.attempts,
            "reason": i.last_error, "since": i.updated_at,
        })).collect::<Vec<_>>(),
        "conflicts": {"last30Days": conflicts, "recent": recent_conflicts},
    }))
}

async fn read_snapshot(state: &State) -> Result<Value, HttpResponse> {
    let st = state.clone();
    match web::block(move || snapshot(&st)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            Err(HttpResponse::ServiceUnavailable().body(format!("database unavailable: {e}")))
        }
        Err(_) => Err(HttpResponse::ServiceUnavailable().body("database unavailable")),
    }
}

async fn metrics(state: State) -> HttpResponse {
    let snap = match read_snapshot(&state).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).ok();
        if let Some(g) = &g {
            let _ = store.register(Box::new(g.clone()));
        }
        g
    };
    let depth = gauge(
        "edge_outbox_items",
        "Outbox items by provider and state",
        &["provider", "state"],
    );
    let oldest = gauge(
        "edge_outbox_oldest_pending_age_seconds",
        "Age of the oldest item not yet delivered",
        &["provider"],
    );
    let dead = gauge(
        "edge_outbox_dead_letters",
        "Items refused permanently, waiting for store IT",
        &["provider"],
    );
    let last = gauge(
        "edge_provider_last_success_timestamp_seconds",
        "Unix time of the last successful pull",
        &["provider"],
    );
    let age = gauge(
        "edge_provider_last_success_age_seconds",
        "Seconds since the last successful pull",
        &["provider"],
    );
    let enabled = gauge(
        "edge_provider_enabled",
        "1 when the provider is enabled",
        &["provider"],
    );
    for p in snap["providers"].as_array().into_iter().flatten() {
        let name = p["provider"].as_str().unwrap_or_default();
        for state_name in ["pending", "inflight", "delivered", "dead", "discarded"] {
            let n = p["queue"][state_name].as_f64().unwrap_or(0.0);
            if let Some(g) = &depth {
                g.with_label_values(&[name, state_name]).set(n);
            }
        }
        let set = |g: &Option<prometheus::GaugeVec>, v: Option<f64>| {
            if let (Some(g), Some(v)) = (g, v) {
                g.with_label_values(&[name]).set(v);
            }
        };
        set(
            &oldest,
            Some(p["oldest_pending_age_secs"].as_f64().unwrap_or(0.0)),
        );
        set(&dead, Some(p["queue"]["dead"].as_f64().unwrap_or(0.0)));
        set(&last, p["last_success_at"].as_f64());
        set(&age, p["last_success_age_secs"].as_f64());
        set(
            &enabled,
            Some(if p["enabled"] == json!(true) {
                1.0
            } else {
                0.0
            }),
        );
    }
    if let Some(g) = gauge(
        "edge_redemption_conflicts_30d",
        "Redemptions flagged for store IT in the last 30 days (coupon already used, held elsewhere or expired, or refused by the provider)",
        &[],
    ) {
        g.with_label_values(&[] as &[&str])
            .set(snap["conflicts"]["last30Days"].as_f64().unwrap_or(0.0));
    }
    if let Some(g) = gauge(
        "edge_sync_daemon_up",
        "1 while sync-daemon's heartbeat (every 10 s) is fresh, 0 when it stopped or none came for 30 s",
        &[],
    ) {
        let up = snap["syncDaemon"]["running"] == json!(true);
        g.with_label_values(&[] as &[&str])
            .set(if up { 1.0 } else { 0.0 });
    }
    if let Some(age) = snap["syncDaemon"]["lastSeenAgeSecs"].as_f64() {
        if let Some(g) = gauge(
            "edge_sync_daemon_last_seen_age_seconds",
            "Seconds since sync-daemon's last heartbeat",
            &[],
        ) {
            g.with_label_values(&[] as &[&str]).set(age);
        }
    }
    let mut families = state.metrics.registry.gather();
    families.extend(store.gather());
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
        return HttpResponse::InternalServerError().body(format!("cannot encode metrics: {e}"));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

async fn status_json(state: State) -> HttpResponse {
    match read_snapshot(&state).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn age(secs: Option<i64>) -> String {
    match secs {
        None => "never".to_owned(),
        Some(s) if s < 120 => format!("{s} s ago"),
        Some(s) if s < 7200 => format!("{} min ago", s / 60),
        Some(s) if s < 172_800 => format!("{} h ago", s / 3600),
        Some(s) => format!("{} days ago", s / 86_400),
    }
}

/// The page store and regional IT look at: one row per provider, a verdict per row, and the
/// dead letters with their reasons. Static HTML, no script.
pub fn status_html(snap: &Value) -> String {
    let mut rows = String::new();
    let mut worst = "ok";
    for p in snap["providers"].as_array().into_iter().flatten() {
        let name = p["provider"].as_str().unwrap_or_default();
        let q = |s: &str| p["queue"][s].as_i64().unwrap_or(0);
        let enabled = p["enabled"] == json!(true);
        let last_age = p["last_success_age_secs"].as_i64();
        // Dead letters need store IT whether or not the provider is still enabled.
        let verdict = if q("dead") > 0 {
            "attention"
        } else if !enabled {
            "off"
        } else if last_age.is_none_or(|a| a > 3 * 3600) {
            "attention"
        } else if p["oldest_pending_age_secs"].as_i64().unwrap_or(0) > 600 {
            "waiting"
        } else {
            "ok"
        };
        if verdict == "attention" || (verdict == "waiting" && worst == "ok") {
            worst = verdict;
        }
        rows.push_str(&format!(
            "<tr class=\"{verdict}\" data-provider=\"{name}\"><th>{name}</th><td class=\"verdict\">{verdict}</td>\
             <td>{}</td><td>{}</td><td class=\"pending\">{}</td><td>{}</td><td class=\"dead\">{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&age(last_age)),
            // The error since the last success: one a later pull superseded is history.
            esc(p["current_error"].as_str().unwrap_or("")),
            q("pending"),
            q("inflight"),
            q("dead"),
            q("delivered"),
            p["oldest_pending_age_secs"].as_i64().map_or("—".to_owned(), |a| format!("{a} s")),
        ));
    }
    let mut dead = String::new();
    for d in snap["deadLetters"].as_array().into_iter().flatten() {
        dead.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"reason\">{}</td></tr>\n",
            d["id"],
            esc(d["provider"].as_str().unwrap_or("")),
            esc(d["operation"].as_str().unwrap_or("")),
            esc(d["orderingKey"].as_str().unwrap_or("")),
            d["attempts"],
            esc(d["reason"].as_str().unwrap_or("")),
        ));
    }
    if dead.is_empty() {
        dead.push_str("<tr><td colspan=\"6\">none</td></tr>\n");
    }
    let mut conflicts = String::new();
    for c in snap["conflicts"]["recent"].as_array().into_iter().flatten() {
        let at = c["at"]
            .as_i64()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string());
        conflicts.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&at),
            esc(c["site"].as_str().unwrap_or("")),
            esc(c["transaction"].as_str().unwrap_or("")),
            esc(c["customer"].as_str().unwrap_or("")),
            esc(c["coupon"].as_str().unwrap_or("")),
            shared::money::Cents(c["discount_cents"].as_i64().unwrap_or(0)),
        ));
    }
    if conflicts.is_empty() {
        conflicts.push_str("<tr><td colspan=\"6\">none</td></tr>\n");
    }
    let daemon_up = snap["syncDaemon"]["running"] == json!(true);
    if !daemon_up {
        worst = "attention";
    }
    let daemon_class = if daemon_up { "ok" } else { "attention" };
    let daemon_state = esc(snap["syncDaemon"]["state"].as_str().unwrap_or(""));
    let conflict_count = snap["conflicts"]["last30Days"].as_i64().unwrap_or(0);
    let sites: Vec<String> = snap["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(esc))
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>Store {sites} — coupon edge: {worst}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}\
         th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.ok .verdict{{background:#cfc}}\
         .waiting .verdict{{background:#ffc}}.attention .verdict{{background:#fcc}}.off .verdict{{background:#eee}}</style></head>\
         <body><h1 id=\"overall\" class=\"{worst}\">Store {sites}: {worst}</h1>\
         <p>Schema version {schema}. Refreshes every 30 s. Machine-readable: <a href=\"status.json\">status.json</a>, <a href=\"metrics\">metrics</a>.</p>\
         <p id=\"sync-daemon\" class=\"{daemon_class}\"><span class=\"verdict\">Sync daemon: {daemon_state}</span></p>\
         <h2>Providers</h2><table id=\"providers\"><tr><th>provider</th><th>state</th><th>last successful sync</th><th>last error</th>\
         <th>pending</th><th>in flight</th><th>dead</th><th>delivered</th><th>oldest pending</th></tr>\n{rows}</table>\
         <h2>Dead-lettered items</h2><p>Refused permanently by the provider; retry or discard with <code>edge-ctl outbox retry|discard ID</code>.</p>\
         <table id=\"dead\"><tr><th>id</th><th>provider</th><th>operation</th><th>key</th><th>attempts</th><th>reason</th></tr>\n{dead}</table>\
         <h2>Redemption conflicts</h2><p id=\"conflict-count\">{conflict_count} in the last 30 days: a lane committed a coupon already used, held by another sale or expired \
         (acknowledged, as the shopper had the discount), or the provider refused the redemption. Check them with the provider or the customer; newest first.</p>\
         <table id=\"conflicts\"><tr><th>recorded</th><th>site</th><th>transaction</th><th>customer</th><th>coupon</th><th>discount</th></tr>\n{conflicts}</table>\
         </body></html>\n",
        sites = sites.join(", "),
        schema = snap["schemaVersion"],
    )
}

async fn status_page(state: State) -> HttpResponse {
    match read_snapshot(&state).await {
        Ok(v) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(status_html(&v)),
        Err(r) => r,
    }
}

/// Basic auth with the admin credentials, compared in constant time.
async fn admin_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    // A password cleared by a reload turns the listener off (it closes at the next
    // restart): until then it refuses everyone, where `admin:` with an empty password
    // matched the empty one.
    let ok = req.app_data::<State>().is_some_and(|s| {
        let config = s.config();
        config.admin.enabled()
            && crate::auth::credentials_match(
                req.headers(),
                &[(
                    config.admin.username.as_str(),
                    config.admin.password.expose(),
                )],
            )
    });
    if ok {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let res = HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Basic realm=\"store health\""))
        .body("admin credentials required (admin.username / admin.password)");
    Ok(req.into_response(res).map_into_right_body())
}

/// The admin server on its own listener, sharing the lane server's state.
pub fn run(
    state: State,
    tls: Option<rustls::ServerConfig>,
    listener: TcpListener,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(admin_auth))
            .route("/metrics", web::get().to(metrics))
            .route("/status", web::get().to(status_page))
            .route("/status.json", web::get().to(status_json))
            .route(
                "/",
                web::get().to(|| async {
                    HttpResponse::Found()
                        .insert_header(("Location", "/status"))
                        .finish()
                }),
            )
    })
    .workers(1)
    .shutdown_timeout(2);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
