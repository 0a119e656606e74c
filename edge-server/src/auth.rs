//! Basic auth for the lanes, compared in constant time against every configured pair.
//! Health probes and coupon images are served without credentials (CATAPULT fetches
//! images with or without them).

use crate::error::ApiError;
use crate::State;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use base64::Engine;
use subtle::ConstantTimeEq;

pub async fn basic_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let path = req.path();
    // Images: `/images/…` and any other image path an offer may advertise (GET only), but
    // never a path of the lane API itself: `GET /vouchers/X1.jpg` is a voucher look-up
    // (and may call Coupontools), and went through without credentials.
    let open = path == "/healthz"
        || path == "/readyz"
        || path.starts_with("/images/")
        || (req.method() == actix_web::http::Method::GET
            && crate::catapult::image_type(path).is_some()
            && req
                .app_data::<State>()
                .is_some_and(|state| !crate::routes::is_api_path(&state.config(), path)));
    if !open {
        let ok = req.app_data::<State>().is_some_and(|state| {
            authorised(
                req.headers().get(header::AUTHORIZATION),
                &state.config().lanes.credentials,
            )
        });
        if !ok {
            // The path as far as a lane's would go: a prober's 60 KB path is not logged whole.
            let shown: String = path.chars().take(200).collect();
            log::warn!(path = shown.as_str(), peer = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default().as_str(); "rejected a request without valid lane credentials");
            return Err(ApiError::Unauthorized.into());
        }
    }
    next.call(req).await
}

fn authorised(value: Option<&header::HeaderValue>, creds: &[shared::config::Credential]) -> bool {
    let pairs: Vec<(&str, &str)> = creds
        .iter()
        .map(|c| (c.username.as_str(), c.password.expose()))
        .collect();
    matches(value, &pairs)
}

/// Whether the request's basic-auth credentials are one of `pairs` (the admin listener's).
pub fn credentials_match(headers: &header::HeaderMap, pairs: &[(&str, &str)]) -> bool {
    matches(headers.get(header::AUTHORIZATION), pairs)
}

fn matches(value: Option<&header::HeaderValue>, pairs: &[(&str, &str)]) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // The scheme name is case-insensitive (RFC 7235 §2.1, RFC 7617 §2): `Basic`, `basic`
    // and `BASIC` are one scheme. One or more spaces separate it from the credentials.
    let Some((scheme, encoded)) = value.trim_start().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(split) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    let (user, pass) = (&decoded[..split], &decoded[split + 1..]);
    // Check every pair without stopping early so timing reveals nothing. SHA-256 digests
    // are compared, not the bytes: `ct_eq` on slices answers at once when the lengths
    // differ, which would tell a prober how long the user name and password are.
    let (user, pass) = (sha256(user), sha256(pass));
    let mut any = subtle::Choice::from(0u8);
    for (u, p) in pairs {
        let u = sha256(u.as_bytes()).ct_eq(&user);
        let p = sha256(p.as_bytes()).ct_eq(&pass);
        any |= u & p;
    }
    bool::from(any)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::{Credential, Secret};

    #[test]
    fn checks_user_and_password() {
        let creds = vec![Credential {
            username: "pos".into(),
            password: Secret::new("pw"),
        }];
        let good = header::HeaderValue::from_static("Basic cG9zOnB3"); // pos:pw
        let bad = header::HeaderValue::from_static("Basic cG9zOnB4"); // pos:px
        assert!(authorised(Some(&good), &creds));
        assert!(!authorised(Some(&bad), &creds));
        assert!(!authorised(None, &creds));
        assert!(!authorised(
            Some(&header::HeaderValue::from_static("Bearer x")),
            &creds
        ));
    }

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        let creds = vec![Credential {
            username: "pos".into(),
            password: Secret::new("pw"),
        }];
        for value in [
            "Basic cG9zOnB3",
            "basic cG9zOnB3",
            "BASIC cG9zOnB3",
            "bAsIc cG9zOnB3",
            "Basic  cG9zOnB3",
        ] {
            let v = header::HeaderValue::from_static(value);
            assert!(authorised(Some(&v), &creds), "{value}");
        }
        for value in ["Basiccg9zOnB3", "Basic", "Basi cG9zOnB3", "BASIC cG9zOnB4"] {
            let v = header::HeaderValue::from_static(value);
            assert!(!authorised(Some(&v), &creds), "{value}");
        }
    }
}
