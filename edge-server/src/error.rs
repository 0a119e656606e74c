//! The one mapping from failures to CATAPULT error objects
//! (`{"errors":[{"id":"…","details":"…"}]}`) and HTTP status codes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    InvalidSite(String),
    #[error("{0}")]
    InvalidCustomer(String),
    #[error("{0}")]
    InvalidTransaction(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path} (allowed: {allow})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: String,
    },
    #[error("{0}")]
    VoucherNotFound(String),
    #[error("{0}")]
    VoucherUnavailable(String),
    #[error("{0}")]
    VoucherInvalid(String),
    /// A read-through to a provider was needed and not possible within its budget
    /// (CATAPULT §5.15 `PROVIDER_UNAVAILABLE`).
    #[error("{0}")]
    ProviderUnavailable(String),
    /// Our own fault. The details go to the log, never to the lane.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            // An unknown path or method is a request this server cannot take: CATAPULT's
            // vocabulary (§5.15) has no id of its own for it; the 404/405 status tells.
            ApiError::InvalidRequest(_)
            | ApiError::TooLarge(_)
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed { .. } => "INVALID_REQUEST",
            ApiError::InvalidSite(_) => "INVALID_SITE",
            ApiError::InvalidCustomer(_) => "INVALID_CUSTOMER",
            ApiError::InvalidTransaction(_) => "INVALID_TRANSACTION",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::VoucherNotFound(_) => "VOUCHER_NOT_FOUND",
            ApiError::VoucherUnavailable(_) => "VOUCHER_UNAVAILABLE",
            ApiError::VoucherInvalid(_) => "VOUCHER_INVALID",
            ApiError::ProviderUnavailable(_) => "PROVIDER_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    fn details(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "The coupon server failed; the store's IT can find the cause in its log.".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// The CATAPULT error envelope.
pub fn error_body(id: &str, details: &str) -> serde_json::Value {
    json!({"errors": [{"id": id, "details": details}]})
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::InvalidSite(_)
            | ApiError::InvalidCustomer(_)
            | ApiError::InvalidTransaction(_)
            | ApiError::VoucherInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::VoucherNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::VoucherUnavailable(_) => StatusCode::CONFLICT,
            ApiError::ProviderUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            log::error!("request failed: {cause}");
        }
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                resp.insert_header((
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"edge-coupon\", charset=\"UTF-8\"",
                ));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                resp.insert_header((header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        resp.json(error_body(self.code(), &self.details()))
    }
}

impl From<crate::lane::LaneError> for ApiError {
    fn from(e: crate::lane::LaneError) -> Self {
        use crate::lane::LaneError;
        match e {
            LaneError::VoucherNotFound(code) => {
                ApiError::VoucherNotFound(format!("voucher {code} is not known at this store"))
            }
            LaneError::VoucherConflict(why) => ApiError::VoucherUnavailable(why),
            LaneError::VoucherInvalid(why) => ApiError::VoucherInvalid(why),
            LaneError::Db(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl<E: Into<ApiError>> From<shared::db::WriteError<E>> for ApiError {
    fn from(e: shared::db::WriteError<E>) -> Self {
        match e {
            shared::db::WriteError::Job(e) => e.into(),
            shared::db::WriteError::Db(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<shared::db::DbError> for ApiError {
    fn from(e: shared::db::DbError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_object_shape_is_pinned() {
        let e = ApiError::InvalidSite("site NOPE is not served by this store".into());
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            error_body(e.code(), &e.details()).to_string(),
            r#"{"errors":[{"details":"site NOPE is not served by this store","id":"INVALID_SITE"}]}"#
        );
        let internal = ApiError::Internal("disk I/O error at /var/lib/x".into());
        assert!(
            !internal.details().contains("/var/lib"),
            "internals never reach the lane"
        );
    }
}
