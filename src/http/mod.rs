//! HTTP: the axum application with its layers, composed in one place.
//!
//! Layers, outermost first: one [`frame`] layer (CORS: answers every `OPTIONS` itself, adds
//! the spec's headers to every response; observation: a `tracing` span per request and
//! Prometheus metrics; detachment: every request but `/sync` runs to completion on its own
//! task, even if the client disconnects), the panic catcher (a panicking handler answers
//! 500), then the routes. Unknown paths get `404 M_UNRECOGNIZED`, known paths with the
//! wrong method `405 M_UNRECOGNIZED`.

pub mod auth;
pub mod error;
pub mod ruma;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::error::Error;
use ruma::AppState;

/// Builds the full application for the main listeners: the client API and the admin API.
/// Metrics are not part of it; they have a listener of their own ([`metrics_app`]).
pub fn app(state: AppState) -> Router {
    crate::api::client_routes()
        .merge(crate::api::admin::routes())
        .fallback(|| async { Error::Unrecognized { method_not_allowed: false } })
        .method_not_allowed_fallback(|| async { Error::Unrecognized { method_not_allowed: true } })
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal("request handler panicked".into()).into_response()
        }))
        .layer(middleware::from_fn(frame))
}

/// The application for the metrics listener (`metrics.listen`, loopback by default).
pub fn metrics_app(path: &str, handle: PrometheusHandle) -> Router {
    Router::new().route(path, get(move || render(handle.clone())))
}

async fn render(handle: PrometheusHandle) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// What every request passes through, in one layer (each `from_fn` layer costs a boxed
/// future and a cloned service per request): CORS, the span and metrics, detachment.
///
/// CORS exactly as the Client-Server API recommends: every response carries the headers,
/// and `OPTIONS` is answered without running any endpoint logic.
///
/// A span per request (method and route, never the query string, which may hold a token)
/// and the Prometheus request counter and latency histogram.
///
/// Every request but `/sync` runs to completion on a task of its own, even when the client
/// goes away: a handler cancelled between a durable write and the in-memory publication that
/// follows it (stream positions, change logs, wake-ups) would leave a stream that skips or
/// repeats a change. A `/sync` long-poll is dropped with its connection (what it writes, the
/// acknowledgement of to-device messages, is safe to redo).
async fn frame(req: Request, next: Next) -> Response {
    let mut response = if req.method() == Method::OPTIONS {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    } else {
        observed(req, next).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

async fn observed(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let span =
        tracing::info_span!("request", %method, route = %route, status = tracing::field::Empty);
    let started = Instant::now();
    let response = if req.uri().path().ends_with("/sync") {
        next.run(req).instrument(span.clone()).await
    } else {
        // The panic catcher is inside `next`: a panicking handler answers 500 from its task.
        match tokio::spawn(next.run(req).instrument(span.clone())).await {
            Ok(response) => response,
            Err(_) => Error::Internal("request task failed".into()).into_response(),
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    tracing::debug!(parent: &span, status, elapsed_us = elapsed.as_micros() as u64, "request done");
    let (requests, duration) = route_metrics(method_label(&method), route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    response
}

/// The request counter and latency histogram of a (method, route, status), registered once:
/// building the labelled keys and looking them up in the registry cost allocations on every
/// request otherwise. Routes are the router's patterns, so the map stays small.
fn route_metrics(
    method: &'static str,
    route: &str,
    status: u16,
) -> (metrics::Counter, metrics::Histogram) {
    type ByRoute = std::collections::HashMap<
        String,
        std::collections::HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>,
    >;
    static HANDLES: std::sync::LazyLock<parking_lot::RwLock<ByRoute>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(handles) = HANDLES.read().get(route).and_then(|by| by.get(&(method, status))) {
        return handles.clone();
    }
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    let handles = (
        metrics::counter!("axon_http_requests_total", &labels),
        metrics::histogram!("axon_http_request_duration_seconds", &labels[..2]),
    );
    HANDLES.write().entry(route.to_owned()).or_default().insert((method, status), handles.clone());
    handles
}

/// The method as a metric label: the standard ones by name, any other as `OTHER`, so that
/// made-up methods cannot grow the label set (and the registry) without bound.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN.iter().find(|(known, _)| known == method).map_or("OTHER", |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_metric_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let made_up = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&made_up), "OTHER");
    }
}
