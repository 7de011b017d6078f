//! Extractors whose rejections are [`ApiError`]s, so a bad path, query or body gets the
//! REST API's JSON error body instead of axum's plain-text one.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// Path parameters (`Path<T>` with JSON errors).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Path::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// Query parameters (`Query<T>` with JSON errors).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Query::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// The whole request body, within the router's body limit (413 beyond it).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(Bytes::from_request(req, state).await?))
    }
}

/// A JSON body: `Content-Type` must be `application/json` or another `+json` type (415
/// otherwise); syntax errors, missing fields and wrong types are 400 with serde's explanation.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::unsupported_media_type(
                "Content-Type must be application/json",
            ));
        }
        let body = Bytes::from_request(req, state).await?;
        parse_json(&body).map(Self)
    }
}

/// An optional JSON body: an empty (or all-whitespace) body, or `null`, is `None` whatever the
/// `Content-Type`; anything else is read as [`ApiJson`] reads it (415 without a JSON
/// `Content-Type`, 400 when it does not parse).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json_content_type(req.headers());
        let body = Bytes::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !json_type {
            return Err(ApiError::unsupported_media_type(
                "Content-Type must be application/json",
            ));
        }
        if body.trim_ascii() == b"null" {
            return Ok(Self(None));
        }
        parse_json::<T>(&body).map(Self::from)
    }
}

impl<T> From<T> for OptionalJson<T> {
    fn from(v: T) -> Self {
        Self(Some(v))
    }
}

/// Parses a JSON body, mapping errors to 400. Every request body of this API is a JSON object:
/// anything else is refused here (serde would otherwise read a struct from an array, field by
/// position).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.trim_ascii_start().first() {
        Some(b'{') => {}
        None => {
            return Err(ApiError::bad_request(
                "invalid JSON body: the body is empty",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid JSON body: the body must be a JSON object",
            ));
        }
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The media type of `Content-Type` without parameters, lower-cased.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next()?.trim().to_ascii_lowercase())
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(parse_json::<Body>(b" {\"name\": \"x\"}").is_ok());
        for bad in [&b"[null]"[..], b"\"x\"", b"null", b"1", b"", b"  "] {
            let e = parse_json::<Body>(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
