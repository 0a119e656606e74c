//! The route table, in one place: every operation with its methods, its primary path and
//! its aliases (the CATAPULT reference prints only two paths for sure; the rest are
//! assumptions, so aliases from the configuration are added here too). Unmatched paths
//! and methods are logged so the first real lane reveals the path it uses.
//!
//! Requests are routed by their normalised path (repeated slashes merged, a trailing one
//! trimmed: `NormalizePath` in `lib.rs`), so configured aliases are normalised the same way.

use crate::error::ApiError;
use crate::{catapult, vouchers};
use actix_web::http::Method;
use actix_web::{web, HttpRequest};
use shared::config::Config;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Catalog,
    CustomerCoupons,
    Clip,
    Demographics,
    Update,
    Cancel,
    Commit,
    Image,
    VoucherLookup,
    VoucherLock,
    VoucherUnlock,
    VoucherValidate,
    Health,
    Ready,
}

/// (operation, methods, paths): the first path of each operation is the primary one.
pub const TABLE: &[(Operation, &[&str], &[&str])] = &[
    (Operation::Catalog, &["GET"], &["/coupons"]),
    (
        Operation::CustomerCoupons,
        &["GET"],
        &[
            "/coupons/customer",
            "/customer/coupons",
            "/coupons/metadata",
        ],
    ),
    (
        Operation::Clip,
        &["POST", "PUT"],
        &["/coupons/customer", "/coupons/clip", "/coupons/edit"],
    ),
    (Operation::Demographics, &["POST"], &["/demographics"]),
    (
        Operation::Update,
        &["POST", "PUT"],
        &["/transaction", "/transaction/update"],
    ),
    (
        Operation::Cancel,
        &["GET", "POST"],
        &["/transaction/cancel"],
    ),
    (Operation::Commit, &["POST"], &["/transaction/commit"]),
    (Operation::Image, &["GET"], &["/images/{file}"]),
    (Operation::VoucherLookup, &["GET"], &["/vouchers/{code}"]),
    (
        Operation::VoucherLock,
        &["POST"],
        &["/vouchers/{code}/lock"],
    ),
    (
        Operation::VoucherUnlock,
        &["POST"],
        &["/vouchers/{code}/unlock"],
    ),
    (
        Operation::VoucherValidate,
        &["POST"],
        &["/vouchers/{code}/validate"],
    ),
    (Operation::Health, &["GET"], &["/healthz"]),
    (Operation::Ready, &["GET"], &["/readyz"]),
];

fn configured_aliases(config: &Config, op: Operation) -> &[String] {
    let a = &config.lanes.route_aliases;
    match op {
        Operation::Catalog => &a.catalog,
        Operation::CustomerCoupons => &a.customer_coupons,
        Operation::Clip => &a.clip,
        Operation::Demographics => &a.demographics,
        Operation::Update => &a.update,
        Operation::Cancel => &a.cancel,
        Operation::Commit => &a.commit,
        _ => &[],
    }
}

fn route(op: Operation, method: Method) -> actix_web::Route {
    let r = web::method(method);
    match op {
        Operation::Catalog => r.to(catapult::catalog),
        Operation::CustomerCoupons => r.to(catapult::customer_coupons),
        Operation::Clip => r.to(catapult::clip),
        Operation::Demographics => r.to(catapult::demographics),
        Operation::Update => r.to(catapult::update),
        Operation::Cancel => r.to(catapult::cancel),
        Operation::Commit => r.to(catapult::commit),
        Operation::Image => r.to(catapult::image),
        Operation::VoucherLookup => r.to(vouchers::lookup),
        Operation::VoucherLock => r.to(vouchers::lock),
        Operation::VoucherUnlock => r.to(vouchers::unlock),
        Operation::VoucherValidate => r.to(vouchers::validate),
        Operation::Health => r.to(catapult::healthz),
        Operation::Ready => r.to(catapult::readyz),
    }
}

/// Every (path → [(method, operation)]) the server answers, configured aliases included.
pub fn paths(config: &Config) -> BTreeMap<String, Vec<(Method, Operation)>> {
    let mut map: BTreeMap<String, Vec<(Method, Operation)>> = BTreeMap::new();
    for (op, methods, paths) in TABLE {
        let all = paths.iter().map(|p| (*p).to_owned()).chain(
            configured_aliases(config, *op)
                .iter()
                .map(|p| normalise_path(p)),
        );
        for path in all {
            for m in *methods {
                if let Ok(method) = Method::from_bytes(m.as_bytes()) {
                    let entry = map.entry(path.clone()).or_default();
                    if !entry.iter().any(|(em, _)| *em == method) {
                        entry.push((method, *op));
                    }
                }
            }
        }
    }
    map
}

/// Whether `path` is routed to an operation of the lane API other than an image (the
/// credentials check asks, for GET paths ending in an image type).
pub fn is_api_path(config: &Config, path: &str) -> bool {
    paths(config).iter().any(|(pattern, handlers)| {
        handlers.iter().any(|(_, op)| *op != Operation::Image)
            && actix_web::dev::ResourceDef::new(pattern.as_str()).is_match(path)
    })
}

/// A path as requests are routed after `NormalizePath::trim()`: repeated slashes merged
/// into one, a trailing slash trimmed (`/` stays `/`). A configured alias written
/// `/transaction/update/` would otherwise never match.
pub fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// The path a request names below the configured base-URL prefix (`lanes.path_prefix`,
/// normalised like a request path): `/catapult/coupons` under `/catapult` is `/coupons`, the
/// prefix itself is `/`. `None` when the path is not under the prefix (`/catapultx/…`), or
/// no prefix is configured.
pub fn below_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    if prefix.is_empty() || prefix == "/" {
        return None;
    }
    match path.strip_prefix(prefix)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// Serves requests under `prefix` as if it were not there, by rewriting their path before
/// credentials, metrics and routing see it (a lane whose base URL is
/// `https://edge:8443/catapult/` calls `/catapult/coupons`). Requests without the prefix
/// are untouched. Runs after `NormalizePath`, so the path is already normalised.
pub fn strip_prefix(prefix: &str, req: &mut actix_web::dev::ServiceRequest) {
    let Some(rest) = below_prefix(prefix, req.path()) else {
        return;
    };
    let path_and_query = match req.query_string() {
        "" => rest.to_owned(),
        q => format!("{rest}?{q}"),
    };
    let mut parts = req.head().uri.clone().into_parts();
    let Ok(pq) = path_and_query.parse() else {
        return;
    };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = actix_web::http::Uri::from_parts(parts) {
        req.match_info_mut().get_mut().update(&uri);
        req.head_mut().uri = uri;
    }
}

pub fn configure(cfg: &mut web::ServiceConfig, config: &Config) {
    for (path, handlers) in paths(config) {
        let mut resource = web::resource(path).default_service(web::to(method_not_allowed));
        for (method, op) in handlers {
            resource = resource.route(route(op, method));
        }
        cfg.service(resource);
    }
    cfg.default_service(web::to(not_found));
}

async fn not_found(
    req: HttpRequest,
    state: crate::State,
) -> Result<actix_web::HttpResponse, ApiError> {
    // An image path outside `/images/` that an offer advertises (CATAPULT §8: the POS
    // fetches base URL + `imageUrl`, e.g. `/CouponImage24.jpg`).
    if req.method() == Method::GET && catapult::image_type(req.path()).is_some() {
        return catapult::image_file(&state, req.path()).await;
    }
    log::warn!(method = req.method().as_str(), path = req.path(); "unmatched request path (path discovery: add it to lanes.route_aliases if a lane uses it)");
    Err(ApiError::NotFound {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

async fn method_not_allowed(
    req: HttpRequest,
    state: crate::State,
) -> Result<actix_web::HttpResponse, ApiError> {
    log::warn!(method = req.method().as_str(), path = req.path(); "unmatched request method");
    let pattern = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    let allow = paths(&state.config())
        .get(&pattern)
        .map(|handlers| {
            handlers
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Err(ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_normalised_like_request_paths() {
        assert_eq!(
            normalise_path("//transaction//update/"),
            "/transaction/update"
        );
        assert_eq!(normalise_path("/coupons"), "/coupons");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("//"), "/");
    }

    #[test]
    fn a_path_below_the_prefix_is_served_without_it() {
        assert_eq!(
            below_prefix("/catapult", "/catapult/coupons"),
            Some("/coupons")
        );
        assert_eq!(
            below_prefix("/pos/catapult", "/pos/catapult/transaction/commit"),
            Some("/transaction/commit")
        );
        assert_eq!(below_prefix("/catapult", "/catapult"), Some("/"));
        // Not under the prefix, or no prefix: routed as it is.
        assert_eq!(below_prefix("/catapult", "/catapultx/coupons"), None);
        assert_eq!(below_prefix("/catapult", "/coupons"), None);
        assert_eq!(below_prefix("", "/coupons"), None);
        assert_eq!(below_prefix("/", "/coupons"), None);
    }
}
