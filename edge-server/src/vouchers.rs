//! The provider-neutral voucher API for single-use barcodes (Coupontools sessions,
//! Convercus codes, Koupon offer barcodes): look up, lock, validate with money spent,
//! unlock. Documented in docs/openapi.json with the CATAPULT endpoints.

use crate::catapult::{parse_json, read_body, site, transaction, Query};
use crate::error::ApiError;
use crate::lane;
use crate::State;
use actix_web::{web, HttpRequest, HttpResponse};
use rust_decimal::Decimal;
use serde::Deserialize;
use shared::db::now_secs;
use shared::domain::VoucherCode;
use shared::money::Cents;

fn code(raw: String) -> Result<String, ApiError> {
    VoucherCode::parse(&raw)
        .map(|c| c.as_str().to_owned())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoucherBody {
    site: Option<String>,
    transaction: Option<String>,
    #[serde(default, deserialize_with = "crate::catapult::json_number")]
    money_spent: Option<Decimal>,
}

fn ok(view: &lane::VoucherView) -> HttpResponse {
    HttpResponse::Ok().json(view)
}

pub async fn lookup(
    req: HttpRequest,
    state: State,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let query = Query::of(&req)?;
    site(&state, query_param(&query, "site"))?;
    let code = code(path.into_inner())?;
    let db = state.db.clone();
    let today = state.config().today().format("%Y-%m-%d").to_string();
    let (c, t) = (code.clone(), today.clone());
    let found = web::block(move || -> Result<_, ApiError> {
        let conn = db.read()?;
        Ok(lane::voucher_lookup(&conn, &c, &t, now_secs())?)
    })
    .await?;
    match found {
        Err(ApiError::VoucherNotFound(m)) => read_through(&state, &code, &today, m).await,
        other => Ok(ok(&other?)),
    }
}

/// A voucher never seen here, looked up at Coupontools within the budget; a found one is
/// stored so every later request (and the lock and validation) is answered locally.
/// Without read-through, or when Coupontools does not know it: `VOUCHER_NOT_FOUND`
/// (`not_found`). When Coupontools could not be asked (down, over budget, or paused after
/// such a failure): `PROVIDER_UNAVAILABLE` (CATAPULT §5.15), 503, so the lane can tell
/// "no such voucher" from "cannot tell now".
async fn read_through(
    state: &State,
    code: &str,
    today: &str,
    not_found: String,
) -> Result<HttpResponse, ApiError> {
    use crate::read_through::Found;
    let Some(rt) = state.voucher_read_through() else {
        return Err(ApiError::VoucherNotFound(not_found));
    };
    let config = state.config();
    let v = match rt.find(code, &config).await {
        Found::Voucher(v) => *v,
        Found::Unknown => return Err(ApiError::VoucherNotFound(not_found)),
        Found::Unavailable => {
            return Err(ApiError::ProviderUnavailable(format!(
                "voucher {code} is not known at this store and Coupontools cannot be asked now; \
                 try again in a minute, or take the voucher by hand"
            )))
        }
    };
    // Answered as a later look-up of the same code will be: by the code scanned, which is
    // the session or, found by a search, its own validation code (the voucher's alias).
    let code = code.to_owned();
    let today = today.to_owned();
    let view = state
        .db
        .writer
        .write(move |conn| -> Result<_, lane::LaneError> {
            shared::sync::apply_voucher(conn, &v, now_secs())?;
            lane::voucher_lookup(conn, &code, &today, now_secs())
        })
        .await
        .map_err(|e| match e {
            shared::db::WriteError::Job(e) => ApiError::from(e),
            shared::db::WriteError::Db(e) => ApiError::from(e),
        })?;
    Ok(ok(&view))
}

fn query_param(q: &Query, name: &str) -> Option<String> {
    q.0.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

async fn body(
    req: &HttpRequest,
    state: &State,
    payload: web::Payload,
) -> Result<(String, String, VoucherBody), ApiError> {
    let query = Query::of(req)?;
    let bytes = read_body(state, payload).await?;
    let b: VoucherBody = parse_json(&bytes)?;
    let site = site(
        state,
        query_param(&query, "site").or_else(|| b.site.clone()),
    )?;
    let txn = transaction(query_param(&query, "transaction").or_else(|| b.transaction.clone()))?;
    Ok((site.as_str().to_owned(), txn.as_str().to_owned(), b))
}

pub async fn lock(
    req: HttpRequest,
    state: State,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let code = code(path.into_inner())?;
    let (site, txn, _) = body(&req, &state, payload).await?;
    let ttl = state.policy().hold_ttl_secs;
    let today = state.config().today().format("%Y-%m-%d").to_string();
    let view = state
        .db
        .writer
        .write(move |c| lane::voucher_lock(c, &code, &site, &txn, ttl, &today, now_secs()))
        .await?;
    Ok(ok(&view))
}

pub async fn unlock(
    req: HttpRequest,
    state: State,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let code = code(path.into_inner())?;
    let (site, txn, _) = body(&req, &state, payload).await?;
    let today = state.config().today().format("%Y-%m-%d").to_string();
    let view = state
        .db
        .writer
        .write(move |c| lane::voucher_unlock(c, &code, &site, &txn, &today, now_secs()))
        .await?;
    Ok(ok(&view))
}

pub async fn validate(
    req: HttpRequest,
    state: State,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let code = code(path.into_inner())?;
    let (site, txn, b) = body(&req, &state, payload).await?;
    let spent = b
        .money_spent
        .ok_or_else(|| ApiError::InvalidRequest("`moneySpent` is required".into()))?;
    let spent = Cents::from_decimal(spent)
        .filter(|c| c.0 >= 0)
        .ok_or_else(|| {
            ApiError::InvalidRequest("`moneySpent` must be a non-negative amount".into())
        })?;
    let today = state.config().today().format("%Y-%m-%d").to_string();
    let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let view = state
        .db
        .writer
        .write(move |c| {
            lane::voucher_validate(c, &code, &site, &txn, spent, &today, &stamp, now_secs())
        })
        .await?;
    Ok(ok(&view))
}
