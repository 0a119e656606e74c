//! Handlers of the CATAPULT digital coupon API: parse and check the request (parameters
//! from the query string first, then the JSON body), call the lane layer off the async
//! executor, and shape the answer exactly as CATAPULT expects it.

use crate::error::ApiError;
use crate::lane::{self, AppliedCoupon, CommitInput, UpdateInput, UpdateOutcome};
use crate::read_through::CardFound;
use crate::{json_money, State};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rust_decimal::Decimal;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use shared::config::CommitErrors;
use shared::db::now_secs;
use shared::domain::{CouponId, CustomerId, SiteId, TransactionId, Upc};
use shared::engine::BasketLine;
use shared::money::{Cents, MilliQty};
use shared::repo::Customer;

/// The request's query parameters (later duplicates win).
pub struct Query(pub Vec<(String, String)>);

impl Query {
    /// Percent-decodes every name and value (`+` is a space). Bytes that are not UTF-8 are
    /// a bad request: decoded leniently, `%FF%FE` became the customer id "\u{FFFD}\u{FFFD}", which
    /// another malformed id would share.
    pub fn of(req: &HttpRequest) -> Result<Query, ApiError> {
        let decode = |s: &str| -> Result<String, ApiError> {
            let spaced = if s.contains('+') {
                std::borrow::Cow::Owned(s.replace('+', " "))
            } else {
                std::borrow::Cow::Borrowed(s)
            };
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| {
                    ApiError::InvalidRequest(
                        "the query string is not UTF-8 once percent-decoded; send site, customer and transaction ids as UTF-8"
                            .to_owned(),
                    )
                })
        };
        let mut pairs = Vec::new();
        for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the body up to the configured limit.
pub async fn read_body(state: &State, payload: web::Payload) -> Result<web::Bytes, ApiError> {
    let limit = state.config().server.max_body_bytes;
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::InvalidRequest(format!(
            "the request body could not be read: {e}"
        ))),
        Err(_) => Err(ApiError::TooLarge(limit)),
    }
}

/// Parses the JSON body of a transaction update or commit, which must have one: an empty
/// commit body read as `{}` would be an empty coupon list, which redeems every pending
/// coupon (CATAPULT §6.1), and an empty update would release the sale's holds.
fn parse_required_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(
            "the request has no JSON body; send the transaction as JSON".to_owned(),
        ));
    }
    parse_json(bytes)
}

/// Parses a JSON body; an empty body is `{}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the JSON body is invalid: {e}")))
}

/// Reads an explicit JSON `null` in an optional field as the field's default, as a missing
/// key is read: Java clients send `"items": null` or `"transientRequest": null` for
/// "nothing". Wrong types are still refused.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An amount or quantity as CATAPULT sends it (§5.7, §5.8, §5.11: `number`), read exactly
/// from the number's own text. A string is a wrong type even when it holds digits
/// (`"2.50"`), like any other: 400 `INVALID_REQUEST`. Null or absent: `None`.
pub(crate) fn json_number<'de, D>(d: D) -> Result<Option<Decimal>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let text = n.to_string();
    Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text} is out of range")))
}

/// The names of a request body's top-level fields its type does not know, read without
/// their values. Held by a `#[serde(flatten)]` field, it receives only the entries no other
/// field took, in the same single pass over the body: a body without unknown fields costs
/// nothing more.
#[derive(Default, Debug)]
pub struct UnknownFields(Vec<String>);

impl<'de> Deserialize<'de> for UnknownFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = UnknownFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UnknownFields, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    names.push(name);
                }
                Ok(UnknownFields(names))
            }
        }
        d.deserialize_map(Names)
    }
}

/// How many distinct (endpoint, field name) pairs are remembered: a client sending ever new
/// names cannot grow the set (nor the log) beyond this.
const UNKNOWN_FIELDS_KEPT: usize = 64;

/// Longest field name logged (and remembered), in characters.
const UNKNOWN_FIELD_NAME_MAX: usize = 64;

/// Logs the names (never the values) of request fields this server ignores, once per
/// (endpoint, name) per process. CATAPULT may add fields, or send `sharedkey` /
/// `sharedsecret` under names the reference does not give: the log shows which arrive.
#[derive(Default)]
pub struct UnknownFieldLog {
    seen: std::sync::Mutex<std::collections::HashSet<(&'static str, String)>>,
}

impl UnknownFieldLog {
    /// Notes the unknown fields of one request body to `endpoint`; returns how many names
    /// were logged now (for tests).
    pub fn note(&self, endpoint: &'static str, fields: UnknownFields) -> usize {
        if fields.0.is_empty() {
            return 0;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut logged = 0;
        for name in fields.0 {
            // A name of that many bytes has at most that many characters: no copy then.
            let name = if name.len() > UNKNOWN_FIELD_NAME_MAX {
                truncate(&name, UNKNOWN_FIELD_NAME_MAX)
            } else {
                name
            };
            let key = (endpoint, name);
            if seen.len() >= UNKNOWN_FIELDS_KEPT || seen.contains(&key) {
                continue;
            }
            log::info!(endpoint = endpoint, field = key.1.as_str(); "request field unknown to this server, ignored (its name is logged once per endpoint, never its value)");
            seen.insert(key);
            logged += 1;
            if seen.len() == UNKNOWN_FIELDS_KEPT {
                log::info!(kept = UNKNOWN_FIELDS_KEPT; "unknown request field names: no more new ones will be logged until the server restarts");
            }
        }
        logged
    }
}

/// CATAPULT's limits on phones (at most 10 characters each; in a demographics request
/// also digits only), naming the offending entry.
fn check_phones(phones: &[String], digits_only: bool) -> Result<(), ApiError> {
    at_most(phones, MAX_IDS, "phones")?;
    for (i, p) in phones.iter().enumerate() {
        if p.chars().count() > 10 {
            return Err(ApiError::InvalidRequest(format!(
                "`phones[{i}]` is longer than 10 characters"
            )));
        }
        if digits_only && !p.chars().all(|c| c.is_ascii_digit()) {
            return Err(ApiError::InvalidRequest(format!(
                "`phones[{i}]` must be digits only"
            )));
        }
    }
    Ok(())
}

/// CATAPULT's limit on e-mails: 1..254 characters each, naming the offending entry.
fn check_emails(emails: &[String]) -> Result<(), ApiError> {
    at_most(emails, MAX_IDS, "emails")?;
    match emails
        .iter()
        .position(|e| e.is_empty() || e.chars().count() > 254)
    {
        Some(i) => Err(ApiError::InvalidRequest(format!(
            "`emails[{i}]` must be 1..254 characters"
        ))),
        None => Ok(()),
    }
}

/// `name` from the query string, else the body's value.
fn pick(query: &Query, body: Option<&String>, name: &str) -> Option<String> {
    query.get(name).map(str::to_owned).or_else(|| body.cloned())
}

/// `name` from the query string, else from the body's field of that name.
fn param(query: &Query, body: Option<&Map<String, Value>>, name: &str) -> Option<String> {
    query.get(name).map(str::to_owned).or_else(|| {
        body.and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

pub fn site(state: &State, raw: Option<String>) -> Result<SiteId, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::InvalidSite("parameter `site` is missing".into()))?;
    let site = SiteId::parse(&raw).map_err(|e| ApiError::InvalidSite(e.to_string()))?;
    if !state
        .config()
        .store
        .sites
        .iter()
        .any(|s| s == site.as_str())
    {
        return Err(ApiError::InvalidSite(format!(
            "site {site} is not served by this store"
        )));
    }
    Ok(site)
}

fn customer(raw: Option<String>) -> Result<CustomerId, ApiError> {
    let raw =
        raw.ok_or_else(|| ApiError::InvalidCustomer("parameter `customer` is missing".into()))?;
    CustomerId::parse(&raw).map_err(|e| ApiError::InvalidCustomer(e.to_string()))
}

pub fn transaction(raw: Option<String>) -> Result<TransactionId, ApiError> {
    let raw = raw
        .ok_or_else(|| ApiError::InvalidTransaction("parameter `transaction` is missing".into()))?;
    TransactionId::parse(&raw).map_err(|e| ApiError::InvalidTransaction(e.to_string()))
}

/// Most items one update may carry, and most coupon ids (or phones, e-mails) one request
/// may list. CATAPULT states none; a real basket or clip is far smaller, and without a cap
/// one request of tens of thousands of ids held the single writer (a look-up and a log
/// line per id) while every lane waited.
pub const MAX_ITEMS: usize = 1_000;
pub const MAX_IDS: usize = 500;

fn at_most<T>(list: &[T], max: usize, field: &str) -> Result<(), ApiError> {
    if list.len() > max {
        return Err(ApiError::InvalidRequest(format!(
            "`{field}` lists {} entries; at most {max} are accepted in one request",
            list.len()
        )));
    }
    Ok(())
}

fn coupon_ids(list: &[String], commit: bool) -> Result<Vec<String>, ApiError> {
    at_most(
        list,
        MAX_IDS,
        if commit { "coupons" } else { "add`/`remove" },
    )?;
    list.iter()
        .map(|id| {
            let parsed = if commit {
                CouponId::parse_for_commit(id)
            } else {
                CouponId::parse(id)
            };
            parsed
                .map(|c| c.as_str().to_owned())
                .map_err(|e| ApiError::InvalidRequest(e.to_string()))
        })
        .collect()
}

/// A 200 answer serialised straight from its type (no intermediate JSON tree).
fn json_ok<T: serde::Serialize + ?Sized>(v: &T) -> HttpResponse {
    match serde_json::to_vec(v) {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Err(e) => actix_web::ResponseError::error_response(&ApiError::Internal(format!(
            "cannot serialise an answer: {e}"
        ))),
    }
}

std::thread_local! {
    /// Each HTTP worker thread keeps its own read connection.
    static READER: std::cell::RefCell<Option<shared::db::Reader>> = const { std::cell::RefCell::new(None) };
}

/// Runs a lane read on this worker thread's own read connection, inline, in one read
/// transaction.
///
/// Lane reads are short, indexed and CPU-bound (tens of microseconds, measured by the
/// lane benchmark); handing each to a blocking pool and a connection pool cost more than
/// the read itself, so, unlike other blocking work, they run on the worker.
///
/// One transaction for all the statements of a request: they see one snapshot (a customer
/// and their coupons and holds as of one moment), and the connection checks the WAL and,
/// when the writer has committed since, drops its page cache once per request instead of
/// once per statement (measured: the bench's `http` CPU per update).
fn read<R>(
    state: &State,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, lane::LaneError>,
) -> Result<R, ApiError> {
    READER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let reader = match slot.as_mut() {
            Some(reader) => reader,
            None => slot.insert(shared::db::Reader::open(&state.config().database)?),
        };
        reader.read(f).map_err(ApiError::from)
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------- catalog

pub async fn catalog(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    site(&state, param(&query, None, "site"))?;
    let today = state.config().today();
    // Served from the in-memory catalog: no database read at all.
    let catalog = state.catalog.current();
    // With external images the POS uses `imageUrl` as it is: an image this server serves
    // is then advertised with the origin the lane reached it by, and the base URL's path
    // prefix when one is configured (CATAPULT §5.1, §8).
    let config = state.config();
    let origin = config.lanes.use_external_images.then(|| {
        let info = req.connection_info();
        let prefix = crate::routes::normalise_path(&config.lanes.path_prefix);
        let prefix = if prefix == "/" { "" } else { prefix.as_str() };
        format!("{}://{}{prefix}", info.scheme(), info.host())
    });
    let image_dir = &config.server.image_dir;
    let served = |u: &str| state.image_files.served(image_dir, u);
    let coupons: Vec<Value> = catalog
        .not_ended(today)
        .map(|o| coupon_json(o, origin.as_deref(), &served))
        .collect();
    Ok(json_ok(&json!({ "coupons": coupons })))
}

/// UPCs go out as JSON numbers, as in CATAPULT's examples, unless that would lose a
/// leading zero or precision: then as strings.
fn upc_json(u: &Upc) -> Value {
    match u.as_str().parse::<u64>() {
        Ok(n) if !u.has_leading_zeros() && n < (1 << 53) => json!(n),
        _ => json!(u.written()),
    }
}

/// The `imageUrl` a lane can fetch (CATAPULT §8). Without external images (`origin` is
/// `None`), the POS fetches base URL + `imageUrl`: a path this server serves (see
/// [`image`] and [`image_file`]), never an absolute URL. With external images the POS uses
/// the URL as it is: a provider's absolute URL, or a path of this server prefixed with
/// `origin` (the scheme and host the lane reached this server by). An image that cannot be
/// fetched is not advertised (`""`).
/// A path of this server is advertised only while its file is there (`served`).
fn image_url(
    o: &shared::domain::Offer,
    origin: Option<&str>,
    served: &dyn Fn(&str) -> bool,
) -> String {
    match (o.image_url.as_deref(), origin) {
        (Some(u), _) if u.starts_with('/') && !served(u) => String::new(),
        (Some(u), None) if u.starts_with('/') => u.to_owned(),
        (Some(u), Some(origin)) if u.starts_with('/') => format!("{origin}{u}"),
        (Some(u), Some(_)) if u.starts_with("https://") || u.starts_with("http://") => u.to_owned(),
        _ => String::new(),
    }
}

/// Which image paths have a file in `server.image_dir`, each looked at again after
/// [`IMAGE_RECHECK`]: the catalog advertises only the images this server can serve
/// (CATAPULT §4.8), without a file-system look-up per offer per request. An image put
/// there later (or removed) is advertised (or not) within that time.
#[derive(Default)]
pub struct ImageFiles {
    seen: std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>,
}

const IMAGE_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
/// Paths remembered at most (one per offer image); past it the memory starts over.
const IMAGE_PATHS_KEPT: usize = 200_000;

impl ImageFiles {
    /// Whether `url_path` (an offer's relative `imageUrl`) is a file this server serves.
    pub fn served(&self, image_dir: &std::path::Path, url_path: &str) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((present, at)) = seen.get(url_path) {
            if at.elapsed() < IMAGE_RECHECK {
                return *present;
            }
        }
        let present = image_path(image_dir, url_path).is_some_and(|f| f.is_file());
        if seen.len() >= IMAGE_PATHS_KEPT {
            seen.clear();
        }
        seen.insert(url_path.to_owned(), (present, std::time::Instant::now()));
        present
    }
}

fn coupon_json(
    o: &shared::domain::Offer,
    origin: Option<&str>,
    served: &dyn Fn(&str) -> bool,
) -> Value {
    let reward = o
        .rule
        .reward
        .as_ref()
        .map(|r| r.upcs().iter().map(upc_json).collect::<Vec<_>>())
        .unwrap_or_default();
    json!({
        "id": o.id,
        "shortDescription": o.short_description,
        "requirementDescription": o.requirement_description,
        "longDescription": o.long_description,
        "category": o.category,
        "brand": o.brand,
        "startDate": o.start_date.format("%Y-%m-%d").to_string(),
        "endDate": o.end_date.format("%Y-%m-%d").to_string(),
        "imageUrl": image_url(o, origin, served),
        "targeted": o.targeted,
        "enabled": o.enabled,
        "featured": o.featured,
        "requirementUpcs": o.rule.requirement.upcs().iter().map(upc_json).collect::<Vec<_>>(),
        "rewardUpcs": reward,
    })
}

// ---------------------------------------------------------------- customer coupons

pub async fn customer_coupons(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    site(&state, param(&query, None, "site"))?;
    let customer = customer(param(&query, None, "customer"))?;
    let today = state.config().today();
    let answer = || {
        let catalog = state.catalog.current();
        read(&state, |c| {
            let view = lane::CustomerCoupons::read(c, customer.as_str())?;
            // A card never seen at this store: no coupon, no customer row.
            let unseen =
                view.rows.is_empty() && shared::repo::customer(c, customer.as_str())?.is_none();
            let m = lane::metadata(c, &catalog, &view, today, now_secs())?;
            Ok((serde_json::to_vec(&m).unwrap_or_default(), unseen))
        })
    };
    let (mut body, unseen) = answer()?;
    if unseen {
        match state.read_through_card(customer.as_str()).await {
            Some(CardFound::Stored) => body = answer()?.0,
            Some(found @ (CardFound::Late | CardFound::Unavailable)) => {
                body = with_errors(&body, &[card_unavailable(found)]);
            }
            Some(CardFound::Unknown) | None => {}
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// CATAPULT §5.15 `PROVIDER_UNAVAILABLE`: "A read-through to an upstream provider was
/// needed and not possible within budget". The lane is still answered from the store (a
/// card it never saw has no coupons here yet); the error says why they may be missing.
fn card_unavailable(found: CardFound) -> Value {
    let details = if found == CardFound::Late {
        "this card is not known here yet and Convercus did not answer within providers.convercus.read_through_ms; its coupons are listed once it does"
    } else {
        "this card is not known here yet and Convercus cannot be asked now; its coupons are listed once Convercus answers (or the next pull brings them)"
    };
    json!({"id": "PROVIDER_UNAVAILABLE", "details": details})
}

/// A JSON object answer with `errors` added.
fn with_errors(body: &[u8], errors: &[Value]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("errors".into(), Value::Array(errors.to_vec()));
            serde_json::to_vec(&o).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

// ---------------------------------------------------------------- clip

#[derive(Deserialize)]
struct ClipBody {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    add: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    remove: Vec<String>,
    #[serde(flatten)]
    unknown: UnknownFields,
}

pub async fn clip(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    let bytes = read_body(&state, payload).await?;
    let mut body: ClipBody = parse_json(&bytes)?;
    state
        .unknown_fields
        .note("clip", std::mem::take(&mut body.unknown));
    site(&state, pick(&query, body.site.as_ref(), "site"))?;
    let customer = customer(pick(&query, body.customer.as_ref(), "customer"))?;
    let add = coupon_ids(&body.add, false)?;
    let remove = coupon_ids(&body.remove, false)?;
    let today = state.config().today();
    let out = state
        .db
        .writer
        .write(move |c| lane::clip(c, customer.as_str(), &add, &remove, today, now_secs()))
        .await?;
    let mut answer = json!({"added": out.added, "removed": out.removed});
    if !out.refused.is_empty() {
        answer["errors"] = out
            .refused
            .iter()
            .map(|(_, id, details)| json!({"id": id, "details": details}))
            .collect();
    }
    Ok(json_ok(&answer))
}

// ---------------------------------------------------------------- demographics

#[derive(Deserialize)]
struct DemographicsBody {
    #[serde(default)]
    site: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    phones: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    emails: Vec<String>,
    #[serde(flatten)]
    unknown: UnknownFields,
}

pub async fn demographics(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    let bytes = read_body(&state, payload).await?;
    let mut body: DemographicsBody = parse_json(&bytes)?;
    state
        .unknown_fields
        .note("demographics", std::mem::take(&mut body.unknown));
    site(&state, pick(&query, body.site.as_ref(), "site"))?;
    check_phones(&body.phones, true)?;
    check_emails(&body.emails)?;
    let found = read(&state, move |c| {
        for p in &body.phones {
            if let Some(found) = shared::repo::customer_by_phone(c, p)? {
                return Ok(Some(found));
            }
        }
        for e in &body.emails {
            if let Some(found) = shared::repo::customer_by_email(c, e)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    })?;
    Ok(match found {
        Some(c) => json_ok(&demographics_json(&c)),
        None => json_ok(&crate::error::error_body(
            "CUSTOMER_NOT_FOUND",
            "no customer matches these phones or e-mails",
        )),
    })
}

/// CustomerDemographics within CATAPULT's limits (§5.6). Names are cut to 25 characters
/// (the reference says to truncate provider data); a phone or an e-mail cut short would be
/// someone else's, so a phone over 14 characters is sent as its digits (punctuation and
/// the country code `1` dropped, which the POS ignores anyway) and left out when even
/// those are too long, and an e-mail over 254 characters is left out.
fn demographics_json(c: &Customer) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(truncate(&c.id, 16)));
    fn present(f: &Option<String>) -> Option<&str> {
        f.as_deref().filter(|s| !s.trim().is_empty())
    }
    for (name, value) in [("firstName", &c.first_name), ("lastName", &c.last_name)] {
        if let Some(s) = present(value) {
            v.insert(name.into(), json!(truncate(s, 25)));
        }
    }
    if let Some(e) = present(&c.email).filter(|e| e.chars().count() <= 254) {
        v.insert("email".into(), json!(e));
    }
    let phone = present(&c.phone).and_then(|p| {
        if p.chars().count() <= 14 {
            Some(p.to_owned())
        } else {
            shared::repo::phone_digits(p).filter(|d| d.len() <= 14)
        }
    });
    if let Some(p) = phone {
        v.insert("phone".into(), json!(p));
    }
    Value::Object(v)
}

// ---------------------------------------------------------------- update

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    cashier: Option<i64>,
    #[serde(default)]
    terminal: Option<i64>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    transient_request: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    items: Vec<ItemBody>,
    #[serde(default, deserialize_with = "json_number")]
    sub_total: Option<Decimal>,
    #[serde(default, deserialize_with = "json_number")]
    tax_total: Option<Decimal>,
    #[serde(default, deserialize_with = "json_number")]
    gross_total: Option<Decimal>,
    #[serde(default, deserialize_with = "null_as_default")]
    phones: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    emails: Vec<String>,
    #[serde(flatten)]
    unknown: UnknownFields,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemBody {
    id: i64,
    /// Absent or null: one.
    #[serde(default, deserialize_with = "json_number")]
    quantity: Option<Decimal>,
    #[serde(default)]
    upc: Option<UpcValue>,
    #[serde(default, deserialize_with = "json_number")]
    price: Option<Decimal>,
    #[serde(default, deserialize_with = "json_number")]
    discount_price: Option<Decimal>,
    #[serde(default)]
    dept: Option<i64>,
}

/// CATAPULT sends UPCs as JSON numbers; strings are accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum UpcValue {
    Number(serde_json::Number),
    Text(String),
}

impl UpcValue {
    fn normalised(&self) -> Upc {
        match self {
            UpcValue::Number(n) => Upc::from_number(n),
            UpcValue::Text(s) => Upc::normalise(s),
        }
    }
}

fn money(d: Decimal, field: &str) -> Result<Cents, ApiError> {
    Cents::from_decimal(d)
        .ok_or_else(|| ApiError::InvalidRequest(format!("`{field}` is out of range")))
}

fn basket(items: &[ItemBody]) -> Result<Vec<BasketLine>, ApiError> {
    at_most(items, MAX_ITEMS, "items")?;
    items
        .iter()
        .map(|i| {
            let price = money(i.price.unwrap_or_default(), "items[].price")?;
            let discount_price = match i.discount_price {
                Some(d) => money(d, "items[].discountPrice")?,
                None => price,
            };
            Ok(BasketLine {
                line_id: i.id,
                upc: i
                    .upc
                    .as_ref()
                    .map(UpcValue::normalised)
                    .unwrap_or_else(|| Upc::normalise("")),
                dept: i.dept,
                quantity: MilliQty::from_decimal(i.quantity.unwrap_or(Decimal::ONE)).ok_or_else(
                    || ApiError::InvalidRequest("`items[].quantity` is out of range".into()),
                )?,
                unit_price: price,
                unit_discount_price: discount_price,
            })
        })
        .collect()
}

pub async fn update(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    let bytes = read_body(&state, payload).await?;
    // Parsed straight into types, in one pass: this is the busiest write path.
    let mut body: UpdateBody = parse_required_json(&bytes)?;
    state
        .unknown_fields
        .note("update", std::mem::take(&mut body.unknown));
    let site = site(&state, pick(&query, body.site.as_ref(), "site"))?;
    let customer = customer(pick(&query, body.customer.as_ref(), "customer"))?;
    let txn = transaction(pick(&query, body.transaction.as_ref(), "transaction"))?;
    // Phones and e-mails (sendPhones/sendEmails) play no part in pricing, but their
    // documented limits (§5.7) are checked like every other field's: a real CATAPULT lane
    // never sends longer ones, so a longer one is a client fault worth a clear 400.
    check_phones(&body.phones, false)?;
    check_emails(&body.emails)?;
    let _ = (&body.time, body.sub_total, body.tax_total, body.gross_total);
    let input = UpdateInput {
        site: site.as_str().to_owned(),
        customer: customer.as_str().to_owned(),
        txn: txn.as_str().to_owned(),
        terminal: body.terminal,
        cashier: body.cashier,
        basket: basket(&body.items)?,
        sale_json: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let policy = state.policy().clone();
    let today = state.config().today();
    // The evaluation runs on this worker's read connection, in parallel with the other
    // worker; the writer then only checks that its basis is unchanged and places the hold.
    let catalog = state.catalog.current();
    let evaluate = || {
        read(&state, |c| {
            lane::evaluate(c, &catalog, &policy, &input, today, now_secs())
        })
    };
    let mut evaluated = evaluate()?;
    // Typically the transient update sent when the card is scanned.
    let mut errors = Vec::new();
    if evaluated.unseen {
        match state.read_through_card(customer.as_str()).await {
            Some(CardFound::Stored) => evaluated = evaluate()?,
            Some(found @ (CardFound::Late | CardFound::Unavailable)) => {
                errors.push(card_unavailable(found));
            }
            Some(CardFound::Unknown) | None => {}
        }
    }
    let outcome = if body.transient_request {
        // Transient updates never create or move holds: the preview is the answer.
        evaluated.outcome
    } else {
        state
            .db
            .writer
            .write(move |c| {
                lane::update(
                    c,
                    &catalog,
                    &policy,
                    &input,
                    Some(evaluated),
                    today,
                    now_secs(),
                )
            })
            .await?
    };
    let policy = state.policy();
    let mut answer = update_answer(&policy, &outcome);
    answer.errors = (!errors.is_empty()).then_some(errors);
    Ok(json_ok(&answer))
}

/// An amount serialised as an exact JSON number with two decimals.
struct Money(Cents);

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json_money(self.0).serialize(s)
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateAnswer<'a> {
    applied: Vec<AppliedOut<'a>>,
    receipt_lines: Vec<ReceiptLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loyalty_balances: Option<[LoyaltyBalance<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<Value>>,
}

#[derive(serde::Serialize)]
struct ReceiptLine {
    #[serde(rename = "type")]
    kind: &'static str,
    content: String,
}

#[derive(serde::Serialize)]
struct LoyaltyBalance<'a> {
    id: &'a str,
    balance: i64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AppliedOut<'a> {
    coupon_id: &'a str,
    external_id: &'a str,
    receipt_alias: String,
    reduces_tax: bool,
    #[serde(rename = "type")]
    kind: &'a str,
    items: Vec<AppliedItem>,
    total_discount: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    optional: Option<OptionalPrompt<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AppliedItem {
    line_id: i64,
    discount: Money,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OptionalPrompt<'a> {
    prompt: String,
    loyalty_id: &'a str,
    loyalty_cost: i64,
}

fn update_answer<'a>(policy: &'a lane::Policy, out: &'a UpdateOutcome) -> UpdateAnswer<'a> {
    UpdateAnswer {
        applied: out.applied.iter().map(|a| applied_out(policy, a)).collect(),
        receipt_lines: if !out.applied.is_empty() && !policy.receipt_footer.is_empty() {
            vec![ReceiptLine {
                kind: "TEXT",
                content: policy
                    .receipt_footer
                    .replace("{total}", &out.total.to_string()),
            }]
        } else {
            Vec::new()
        },
        customer: out
            .customer
            .as_ref()
            .filter(|c| {
                c.first_name.is_some()
                    || c.last_name.is_some()
                    || c.email.is_some()
                    || c.phone.is_some()
            })
            .map(demographics_json),
        loyalty_balances: out.loyalty.as_ref().map(|l| {
            [LoyaltyBalance {
                id: &l.id,
                balance: l.balance,
            }]
        }),
        errors: None,
    }
}

fn applied_out<'a>(policy: &'a lane::Policy, a: &'a AppliedCoupon) -> AppliedOut<'a> {
    let alias = if a.offer.receipt_alias.is_empty() {
        &a.offer.short_description
    } else {
        &a.offer.receipt_alias
    };
    let kind = if a.offer.coupon_type.is_empty() {
        &policy.default_coupon_type
    } else {
        &a.offer.coupon_type
    };
    let alias = truncate(alias, 40);
    AppliedOut {
        coupon_id: &a.offer.id,
        external_id: &a.offer.external_id,
        reduces_tax: a.offer.reduces_tax,
        kind,
        items: a
            .applied
            .lines
            .iter()
            .map(|l| AppliedItem {
                line_id: l.line_id,
                discount: Money(l.discount),
            })
            .collect(),
        total_discount: Money(a.applied.total),
        optional: a.applied.optional.as_ref().map(|opt| OptionalPrompt {
            prompt: format!(
                "Would you like to use your {alias} coupon for {} points?",
                opt.cost
            ),
            loyalty_id: &opt.loyalty_id,
            loyalty_cost: opt.cost,
        }),
        receipt_alias: alias,
    }
}

// ---------------------------------------------------------------- cancel

pub async fn cancel(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    let bytes = read_body(&state, payload).await?;
    // The POST body is not documented: any JSON object (or none) is accepted and only its
    // parameters are read.
    let raw: Option<Map<String, Value>> = serde_json::from_slice(&bytes).ok();
    if let Some(body) = &raw {
        let unknown = body
            .keys()
            .filter(|k| !matches!(k.as_str(), "site" | "customer" | "transaction"))
            .cloned()
            .collect();
        state.unknown_fields.note("cancel", UnknownFields(unknown));
    }
    let site = site(&state, param(&query, raw.as_ref(), "site"))?;
    let customer = customer(param(&query, raw.as_ref(), "customer"))?;
    let txn = transaction(param(&query, raw.as_ref(), "transaction"))?;
    state
        .db
        .writer
        .write(move |c| {
            lane::cancel(
                c,
                site.as_str(),
                customer.as_str(),
                txn.as_str(),
                now_secs(),
            )
        })
        .await?;
    Ok(json_ok(&json!({})))
}

// ---------------------------------------------------------------- commit

#[derive(Deserialize)]
struct CommitBody {
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    coupons: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    tenders: Vec<Tender>,
    #[serde(flatten)]
    unknown: UnknownFields,
}

/// A tender that closed the sale (§5.11): any type (the reference lists none), and an
/// amount kept with the sign as received (drawer tenders are documented as negative).
/// Both may be absent; a non-numeric amount is refused like any other wrong type. The
/// tenders are recorded with the request body as received.
#[derive(Deserialize)]
struct Tender {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, deserialize_with = "json_number")]
    amount: Option<Decimal>,
}

pub async fn commit(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    let bytes = read_body(&state, payload).await?;
    let mut body: CommitBody = parse_required_json(&bytes)?;
    state
        .unknown_fields
        .note("commit", std::mem::take(&mut body.unknown));
    let site = site(&state, pick(&query, body.site.as_ref(), "site"))?;
    let customer = customer(pick(&query, body.customer.as_ref(), "customer"))?;
    let txn = transaction(pick(&query, body.transaction.as_ref(), "transaction"))?;
    let tenders = body
        .tenders
        .iter()
        .map(|t| {
            let amount = t.amount.map(|a| money(a, "tenders[].amount")).transpose()?;
            Ok((t.kind.as_deref().unwrap_or(""), amount))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    log::debug!(site = site.as_str(), transaction = txn.as_str(), tenders = tenders_text(&tenders).as_str(); "commit tenders");
    let input = CommitInput {
        site: site.as_str().to_owned(),
        customer: customer.as_str().to_owned(),
        txn: txn.as_str().to_owned(),
        coupons: coupon_ids(&body.coupons, true)?,
        request: String::from_utf8_lossy(&bytes).into_owned(),
        report_errors: state.config().lanes.commit_errors == CommitErrors::Report,
        today: state.config().today(),
    };
    let stamp = rfc3339_now();
    let catalog = state.catalog.current();
    let response = state
        .db
        .writer
        .write(move |c| lane::commit(c, &catalog, &input, now_secs(), &stamp))
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(response))
}

/// `CASH 5.21, CHECK -1.00` for the log.
fn tenders_text(tenders: &[(&str, Option<Cents>)]) -> String {
    tenders
        .iter()
        .map(|(kind, amount)| match amount {
            Some(a) => format!("{kind} {a}"),
            None => (*kind).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- images, health

/// `GET /images/<file>`: `<file>` of `server.image_dir`, where the sync daemon caches
/// provider images.
pub async fn image(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    image_file(&state, &format!("/images/{}", path.into_inner())).await
}

/// The content type of an image path by its extension: only the types ECRS accepts
/// (CATAPULT §8).
pub fn image_type(path: &str) -> Option<&'static str> {
    let (_, ext) = path.rsplit_once('.')?;
    match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        "gif" => Some("image/gif"),
        _ => None,
    }
}

/// The file under `image_dir` that serves the image path `url_path` (an `imageUrl` as the
/// catalog advertises it): `/images/<rest>` and any other `/<rest>` (an imported
/// `/CouponImage24.jpg`, CATAPULT's own example) are `<rest>` under `image_dir`. `None`
/// for anything that is not served: not an image type, `..`, hidden or empty segments.
pub fn image_path(image_dir: &std::path::Path, url_path: &str) -> Option<std::path::PathBuf> {
    image_type(url_path)?;
    let relative = url_path.strip_prefix('/')?;
    let relative = relative.strip_prefix("images/").unwrap_or(relative);
    let mut file = image_dir.to_path_buf();
    for segment in relative.split('/') {
        if segment.is_empty() || segment.starts_with('.') || segment.contains('\\') {
            return None;
        }
        file.push(segment);
    }
    Some(file)
}

fn image_not_found(path: &str) -> ApiError {
    ApiError::NotFound {
        method: "GET".into(),
        path: path.to_owned(),
    }
}

/// Serves the image at `url_path` (see [`image_path`]), by `/images/{file}` and by the
/// unmatched-path fallback for other image paths.
pub async fn image_file(state: &State, url_path: &str) -> Result<HttpResponse, ApiError> {
    let (Some(content_type), Some(file)) = (
        image_type(url_path),
        image_path(&state.config().server.image_dir, url_path),
    ) else {
        return Err(image_not_found(url_path));
    };
    let bytes = web::block(move || std::fs::read(file))
        .await?
        .map_err(|_| image_not_found(url_path))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "max-age=3600"))
        .body(bytes))
}

pub async fn healthz() -> HttpResponse {
    json_ok(&json!({"status": "ok"}))
}

/// One provider as `/readyz` shows it: sync age, the error since the last success (an
/// error a later successful pull superseded is not shown), and the items not delivered.
fn readyz_provider(p: &shared::sync::ProviderStatus, enabled: bool, now: i64) -> Value {
    let q = |s: &str| p.queue.get(s).copied().unwrap_or(0);
    json!({
        "provider": p.provider,
        "enabled": enabled,
        "lastSuccessAgeSecs": p.last_success_at.map(|t| now - t),
        "lastError": p.current_error,
        "pending": q("pending"),
        "inflight": q("inflight"),
        "dead": q("dead"),
        "oldestPendingAgeSecs": p.oldest_pending_age_secs,
    })
}

pub async fn readyz(state: State) -> HttpResponse {
    let db = state.db.clone();
    let config = state.config();
    let result = web::block(move || -> Result<Value, shared::db::DbError> {
        let conn = db.read()?;
        let version = shared::db::current_version(&conn)?;
        let now = now_secs();
        // Every provider is listed, even before its first sync.
        let enabled: Vec<&str> = shared::domain::UPSTREAM_PROVIDERS
            .into_iter()
            .filter(|p| config.providers.enabled(p))
            .collect();
        let syncs: Vec<Value> = shared::sync::readiness(&conn, &enabled, now)?
            .iter()
            .map(|p| readyz_provider(p, config.providers.enabled(&p.provider), now))
            .collect();
        let daemon = shared::sync::daemon_status(&conn, now)?;
        Ok(json!({"schemaVersion": version, "schemaCurrent": version == shared::db::schema_version(),
                  "syncDaemon": {"running": daemon.running, "lastSeenAgeSecs": daemon.last_seen_age_secs, "state": daemon.describe()},
                  "providers": syncs}))
    })
    .await;
    match result {
        Ok(Ok(v)) if v["schemaCurrent"] == json!(true) => {
            json_ok(&json!({"status": "ready", "database": v}))
        }
        Ok(Ok(v)) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "schema not current", "database": v})),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "database unavailable", "error": e.to_string()})),
        Err(_) => {
            HttpResponse::ServiceUnavailable().json(json!({"status": "database unavailable"}))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn demographics_keep_to_catapult_limits_without_making_up_a_phone_or_an_e_mail() {
        let c = |phone: &str, email: &str| Customer {
            id: "4000000000001".into(),
            first_name: Some("Bartholomew-Maximilian Jr.".into()),
            last_name: Some(String::new()),
            email: Some(email.into()),
            phone: Some(phone.into()),
            ..Customer::default()
        };
        let v = demographics_json(&c("(828) 265-2907", "a@b.co"));
        assert_eq!(
            v,
            json!({"id": "4000000000001", "firstName": "Bartholomew-Maximilian Jr",
                   "email": "a@b.co", "phone": "(828) 265-2907"})
        );
        // Too long as written: its digits; too long even so, or an e-mail over 254: left out.
        let v = demographics_json(&c("+1 (828) 265-2907 ext", "a@b.co"));
        assert_eq!(v["phone"], "8282652907");
        let long_mail = format!("{}@example.com", "x".repeat(250));
        let v = demographics_json(&c("+44 20 7946 0958 0000 1234", &long_mail));
        assert!(v.get("phone").is_none() && v.get("email").is_none(), "{v}");
    }

    #[test]
    fn image_paths_map_into_the_image_directory_and_nowhere_else() {
        let dir = std::path::Path::new("/srv/img");
        let at = |u: &str| image_path(dir, u).map(|p| p.display().to_string());
        assert_eq!(at("/images/a.gif").as_deref(), Some("/srv/img/a.gif"));
        assert_eq!(
            at("/CouponImage24.jpg").as_deref(),
            Some("/srv/img/CouponImage24.jpg")
        );
        assert_eq!(at("/deals/x.PNG").as_deref(), Some("/srv/img/deals/x.PNG"));
        for refused in [
            "/images/../edge.db.gif",
            "/../x.gif",
            "/.hidden.gif",
            "//x.gif",
            "/images/notes.txt",
            "/x",
            "x.gif",
            "/a\\b.gif",
        ] {
            assert_eq!(at(refused), None, "{refused}");
        }
    }

    #[test]
    fn null_in_an_optional_field_reads_as_absent() {
        let u: UpdateBody = parse_json(
            br#"{"site":null,"customer":null,"transaction":null,"cashier":null,"terminal":null,
                 "time":null,"transientRequest":null,"items":null,"subTotal":null,"taxTotal":null,
                 "grossTotal":null,"phones":null,"emails":null}"#,
        )
        .unwrap();
        assert!(!u.transient_request && u.items.is_empty() && u.phones.is_empty());
        let u: UpdateBody = parse_json(
            br#"{"items":[{"id":1,"quantity":null,"upc":null,"price":null,"discountPrice":null,"dept":null}]}"#,
        )
        .unwrap();
        let line = &basket(&u.items).unwrap()[0];
        assert_eq!((line.quantity, line.unit_price), (MilliQty(1000), Cents(0)));
        let c: ClipBody = parse_json(br#"{"add":null,"remove":null}"#).unwrap();
        assert!(c.add.is_empty() && c.remove.is_empty());
        let d: DemographicsBody = parse_json(br#"{"phones":null,"emails":null}"#).unwrap();
        assert!(d.phones.is_empty() && d.emails.is_empty());
        let c: CommitBody =
            parse_json(br#"{"coupons":null,"tenders":[{"type":null,"amount":null}]}"#).unwrap();
        assert!(c.coupons.is_empty() && c.tenders[0].amount.is_none());
    }

    #[test]
    fn wrong_types_and_missing_required_fields_are_still_refused() {
        for body in [
            &br#"{"items":"lots"}"#[..],
            br#"{"transientRequest":"yes"}"#,
            br#"{"items":[{"id":null}]}"#,
            br#"{"items":[{"quantity":1}]}"#,
            br#"{"phones":[null]}"#,
        ] {
            assert!(parse_json::<UpdateBody>(body).is_err(), "{body:?}");
        }
        assert!(parse_json::<CommitBody>(br#"{"tenders":[{"amount":"five"}]}"#).is_err());
        assert!(parse_json::<CommitBody>(br#"{"tenders":[{"type":5}]}"#).is_err());
    }

    #[test]
    fn tender_amounts_are_read_exactly() {
        let c: CommitBody = parse_json(
            br#"{"tenders":[{"type":"CASH","amount":5.21},{"type":"EBT","amount":-0.07},{"type":"GIFT"}]}"#,
        )
        .unwrap();
        let amounts: Vec<Option<Decimal>> = c.tenders.iter().map(|t| t.amount).collect();
        assert_eq!(
            amounts,
            [Some(Decimal::new(521, 2)), Some(Decimal::new(-7, 2)), None]
        );
        assert_eq!(c.tenders[2].kind.as_deref(), Some("GIFT"));
    }

    #[test]
    fn unknown_top_level_fields_are_named_and_known_ones_still_read() {
        let u: UpdateBody = parse_json(
            br#"{"sharedkey":"k","items":[{"id":1,"price":1.99,"x":1}],"sharedsecret":{"a":[1]},"subTotal":1.99}"#,
        )
        .unwrap();
        assert_eq!(u.unknown.0, ["sharedkey", "sharedsecret"]);
        assert_eq!(u.sub_total, Some(Decimal::new(199, 2)));
        assert_eq!(basket(&u.items).unwrap()[0].unit_price, Cents(199));
        let u: UpdateBody = parse_json(br#"{"items":[]}"#).unwrap();
        assert!(u.unknown.0.is_empty());
    }

    #[test]
    fn each_unknown_field_name_is_logged_once_per_endpoint_and_the_set_is_bounded() {
        let log = UnknownFieldLog::default();
        let names = |n: &[&str]| UnknownFields(n.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(log.note("update", names(&["sharedkey", "sharedsecret"])), 2);
        assert_eq!(log.note("update", names(&["sharedkey"])), 0);
        assert_eq!(log.note("commit", names(&["sharedkey"])), 1);
        let many: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
        let logged = log.note("clip", UnknownFields(many));
        assert_eq!(logged, UNKNOWN_FIELDS_KEPT - 3);
        assert_eq!(log.note("clip", names(&["another"])), 0);
        assert!(log.seen.lock().unwrap().len() <= UNKNOWN_FIELDS_KEPT);
    }

    #[test]
    fn phones_and_emails_are_checked_against_catapults_limits() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_phones(&s(&["8282652907", ""]), true).is_ok());
        assert!(check_phones(&s(&["828-265-29"]), false).is_ok());
        let e = check_phones(&s(&["1", "82826529071"]), false).unwrap_err();
        assert!(e.to_string().contains("phones[1]"), "{e}");
        assert!(check_phones(&s(&["828-265-29"]), true).is_err());
        assert!(check_emails(&s(&["a@b.c", &"x".repeat(254)])).is_ok());
        let e = check_emails(&s(&["a@b.c", ""])).unwrap_err();
        assert!(e.to_string().contains("emails[1]"), "{e}");
        assert!(check_emails(&s(&[&"x".repeat(255)])).is_err());
    }
}
