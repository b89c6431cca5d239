//! Glue between axum and ruma's endpoint types: routing every path ruma knows for an
//! endpoint, parsing requests into ruma's request types with Matrix errors for bad input,
//! and serializing ruma's response types.

use std::any::TypeId;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::handler::Handler;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use bytes::Bytes;
use http_body_util::BodyExt;
use ruma::api::client::session::login;
use ruma::api::client::typing;
use ruma::api::error::{DeserializationError, FromHttpRequestError};
use ruma::api::path_builder::PathBuilder;
use ruma::api::{IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt};
use serde::de::IgnoredAny;

use crate::error::Error;
use crate::services::Services;

pub type AppState = Arc<Services>;

/// A request parsed into ruma's type for the endpoint.
pub struct Ruma<T>(pub T);

/// A ruma response type, serialized as the endpoint defines.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(res) => res.map(Body::from).into_response(),
            Err(e) => Error::Internal(format!("serializing response: {e}")).into_response(),
        }
    }
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(
    body: Body,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, Error> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Error::TooLarge);
    }
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge),
        Err(e) => Err(Error::BadJson(format!("Could not read request body: {e}"))),
    }
}

fn from_ruma_error(e: FromHttpRequestError) -> Error {
    match e {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            Error::BadJson(format!("Invalid request body: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e)) => {
            Error::InvalidParam(format!("Invalid query parameter: {e}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            Error::InvalidParam(format!("Invalid identifier: {e}"))
        }
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::Unrecognized { method_not_allowed: true }
        }
        other => Error::BadJson(format!("Invalid request: {other}")),
    }
}

/// Rejects a body that is not UTF-8 JSON (`M_NOT_JSON`). serde_json skips over invalid UTF-8
/// inside strings it does not keep, so the encoding is checked first.
fn check_json_syntax(bytes: &[u8]) -> Result<(), Error> {
    std::str::from_utf8(bytes)
        .map_err(|e| Error::NotJson(format!("Content not JSON: invalid UTF-8: {e}")))?;
    serde_json::from_slice::<IgnoredAny>(bytes)
        .map_err(|e| Error::NotJson(format!("Content not JSON: {e}")))?;
    Ok(())
}

/// Refuses bodies that ruma's deserializers would panic on instead of reporting an error.
/// ruma-client-api 0.25 reads `body["type"]` of `/login` by indexing, which panics when the
/// field is missing (`{}`); here it is the `M_BAD_JSON` a missing field gets everywhere else.
fn check_known_panics<T: 'static>(bytes: &[u8]) -> Result<(), Error> {
    if TypeId::of::<T>() == TypeId::of::<login::v3::Request>() {
        let has_type = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .is_some_and(|v| v.get("type").is_some());
        if !has_type {
            return Err(Error::BadJson("Invalid request body: missing field `type`".into()));
        }
    }
    Ok(())
}

/// Fills in fields the spec makes optional but ruma requires. `PUT /typing` with
/// `"typing": true` may omit `timeout` (Synapse then uses 30 s); ruma's type insists on it.
fn fill_optional_fields<T: 'static>(bytes: Bytes) -> Bytes {
    if TypeId::of::<T>() != TypeId::of::<typing::create_typing_event::v3::Request>() {
        return bytes;
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut body))
            if body.get("typing") == Some(&serde_json::Value::Bool(true))
                && !body.contains_key("timeout") =>
        {
            let default = crate::services::typing::DEFAULT_TIMEOUT.as_millis() as u64;
            body.insert("timeout".into(), default.into());
            serde_json::to_vec(&body).map_or(bytes, Bytes::from)
        }
        _ => bytes,
    }
}

/// Runs ruma's parsing of a request. A panic in it (a dependency's bug on odd input that
/// [`check_known_panics`] does not know yet) is reported as the bad request it is, and logged
/// loudly so it gets a pre-check; the fuzz run (`scripts/fuzz.sh`) fails on such log lines.
pub(crate) fn parse_request<T: IncomingRequest>(
    request: http::Request<&[u8]>,
    args: &[&str],
) -> Result<T, Error> {
    let path = request.uri().path().to_owned();
    match std::panic::catch_unwind(AssertUnwindSafe(|| T::try_from_http_request(request, args))) {
        Ok(parsed) => parsed.map_err(from_ruma_error),
        Err(_) => {
            tracing::error!(%path, "request parsing panicked; answering M_BAD_JSON");
            Err(Error::BadJson("Invalid request".into()))
        }
    }
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let (mut parts, body) = req.into_parts();
        let mut params: Vec<String> = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| Error::InvalidParam("Path parameters are not valid UTF-8".into()))?
            .iter()
            .map(|(_, v)| v.to_owned())
            .collect();
        if parts.extensions.get::<EmptyLastArg>().is_some() {
            params.push(String::new());
        }
        let mut bytes = read_body(body, &parts.headers, state.config.limits.max_body_bytes).await?;
        if T::METHOD != Method::GET {
            if bytes.is_empty() {
                // Clients (matrix-nio's /join, curl one-liners) send no body where the spec
                // wants an empty object; read it as one, as other homeservers do.
                bytes = Bytes::from_static(b"{}");
            } else {
                check_json_syntax(&bytes)?;
            }
            check_known_panics::<T>(&bytes)?;
            bytes = fill_optional_fields::<T>(bytes);
        }
        let args: Vec<&str> = params.iter().map(String::as_str).collect();
        let request = http::Request::from_parts(parts, &bytes[..]);
        parse_request::<T>(request, &args).map(Ruma)
    }
}

/// Marks a request routed by [`route_empty_last_arg`]: its last path argument is empty.
#[derive(Clone, Copy)]
struct EmptyLastArg;

/// Routes the paths of `Req` whose last argument may be empty (`/state/{type}/{state_key}`
/// with the empty state key, sent as `/state/{type}` or `/state/{type}/`).
pub fn route_empty_last_arg<Req, H, T>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    Req: IncomingRequest,
    H: Handler<T, AppState> + Clone,
    T: 'static,
{
    let builder = Req::PATH_BUILDER;
    let paths: Vec<String> = builder
        .all_paths()
        .filter_map(|path| Some(&path[..path.rfind("/{")?]))
        .flat_map(|short| [short.to_owned(), format!("{short}/")])
        .collect();
    let method_router = on(method_filter::<Req>(), handler).layer(axum::Extension(EmptyLastArg));
    paths.iter().fold(router, |r, p| r.route(p, method_router.clone()))
}

fn method_filter<Req: IncomingRequest>() -> MethodFilter {
    MethodFilter::try_from(Req::METHOD).unwrap_or(MethodFilter::GET)
}

/// Routes every path (r0, v3, unstable) that ruma lists for `Req` to `handler`.
pub fn route<Req, H, T>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    Req: IncomingRequest,
    H: Handler<T, AppState> + Clone,
    T: 'static,
{
    let method_router = on(method_filter::<Req>(), handler);
    let builder = Req::PATH_BUILDER;
    builder.all_paths().fold(router, |r, p| r.route(p, method_router.clone()))
}

/// A JSON body for endpoints without a ruma type: size limit, `M_NOT_JSON`, `M_BAD_JSON`.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        let mut bytes = read_body(body, &parts.headers, state.config.limits.max_body_bytes).await?;
        if bytes.is_empty() {
            bytes = Bytes::from_static(b"{}");
        }
        check_json_syntax(&bytes)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::NotJson(format!("Content not JSON: {e}")))?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| Error::BadJson(format!("Invalid request body: {e}")))
    }
}

/// Percent-decoded path arguments, in order, for endpoints without a ruma type.
pub struct PathArgs(pub Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for PathArgs {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Error> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Error::InvalidParam("Path parameters are not valid UTF-8".into()))?;
        Ok(PathArgs(params.iter().map(|(_, v)| v.to_owned()).collect()))
    }
}
