//! The content repository: `/_matrix/media/*` (upload, create, the deprecated download and
//! thumbnail endpoints) and the authenticated `/_matrix/client/v1/media/*` (spec v1.11).
//!
//! Bodies stream in both directions: uploads go to the blob store chunk by chunk (the size
//! limit `media.max_upload_bytes` is checked as bytes arrive; the JSON endpoints' body limit
//! does not apply here, since these handlers never use the `Ruma`/`JsonBody` extractors),
//! and downloads stream out of it, with HTTP ranges for seeking in audio and video.

use std::ops::Range;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::auth::{Authed, ServerAdmin};
use crate::http::ruma::{AppState, PathArgs};
use crate::services::media::blobs::ByteStream;
use crate::services::media::thumbnail::Method;
use crate::storage::media::MediaContent;

/// The Content-Security-Policy the spec recommends for served media.
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// Content types served `inline` (the spec's list); everything else is an `attachment`.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// How long a download waits for a pending upload unless `timeout_ms` says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(20);

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

/// Bytes of a refused upload still read (and discarded) before answering 413, at most for
/// [`LINGER_TIME`]: a client still sending when the connection closes often never sees
/// the answer (the kernel resets the connection over the unread bytes), so a body slightly
/// over the limit is read to its end and its sender told why.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

async fn linger(body: &mut ByteStream) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// The request body as a stream that, once more than `limit` bytes have arrived, lingers
/// (see [`LINGER_BYTES`]) before handing on the chunk that passes the limit (which the blob
/// store then refuses).
fn upload_body(req: Request, limit: u64) -> (HeaderMap, ByteStream) {
    let (parts, body) = req.into_parts();
    let stream: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    let lingering = futures_util::stream::unfold(
        (stream, 0u64, false),
        move |(mut body, mut seen, done)| async move {
            if done {
                return None;
            }
            match body.next().await {
                None => None,
                Some(Err(e)) => Some((Err(e), (body, seen, true))),
                Some(Ok(chunk)) => {
                    seen += chunk.len() as u64;
                    if seen > limit {
                        linger(&mut body).await;
                        return Some((Ok(chunk), (body, seen, true)));
                    }
                    Some((Ok(chunk), (body, seen, false)))
                }
            }
        },
    );
    (parts.headers, Box::pin(lingering))
}

/// Refuses a declared `Content-Length` above the limit before reading the body (lingering
/// over a body only slightly too large).
async fn check_declared(s: &AppState, headers: &HeaderMap, body: &mut ByteStream) -> Result<()> {
    let limit = s.media.limits().max_upload_bytes;
    match declared_length(headers) {
        Some(len) if len > limit => {
            if len - limit <= LINGER_BYTES {
                linger(body).await;
            }
            Err(Error::TooLarge)
        }
        _ => Ok(()),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn content_type_of(headers: &HeaderMap) -> Result<Option<String>> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Error::InvalidParam("Content-Type is not ASCII".into()))
        })
        .transpose()
}

/// `POST /_matrix/media/v3/upload`.
pub async fn upload(
    State(s): State<AppState>,
    Authed(who): Authed,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Json<Value>> {
    let (headers, mut body) = upload_body(req, s.media.limits().max_upload_bytes);
    check_declared(&s, &headers, &mut body).await?;
    let media_id = s
        .media
        .upload(
            who.user_id.as_str(),
            content_type_of(&headers)?,
            q.filename,
            body,
            declared_length(&headers),
        )
        .await?;
    Ok(Json(json!({"content_uri": format!("mxc://{}/{media_id}", s.config.server_name)})))
}

/// `POST /_matrix/media/v1/create`.
pub async fn create(State(s): State<AppState>, Authed(who): Authed) -> Result<Json<Value>> {
    let (media_id, expires) = s.media.create(who.user_id.as_str()).await?;
    Ok(Json(json!({
        "content_uri": format!("mxc://{}/{media_id}", s.config.server_name),
        "unused_expires_at": expires,
    })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
pub async fn upload_to(
    State(s): State<AppState>,
    Authed(who): Authed,
    PathArgs(args): PathArgs,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> Result<Json<Value>> {
    let [server_name, media_id] = two_args(args)?;
    let (headers, mut body) = upload_body(req, s.media.limits().max_upload_bytes);
    check_declared(&s, &headers, &mut body).await?;
    s.media
        .upload_to(
            who.user_id.as_str(),
            &server_name,
            &media_id,
            content_type_of(&headers)?,
            q.filename,
            body,
            declared_length(&headers),
        )
        .await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v1/media/config` (and the deprecated `/_matrix/media/v3/config`).
pub async fn config(State(s): State<AppState>, Authed(_): Authed) -> Json<Value> {
    Json(json!({"m.upload.size": s.media.limits().max_upload_bytes}))
}

fn two_args(args: Vec<String>) -> Result<[String; 2]> {
    let mut it = args.into_iter();
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => Err(Error::NotFound("Unknown media".into())),
    }
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    timeout_ms: Option<String>,
}

fn wait_of(timeout_ms: Option<&str>) -> Result<Duration> {
    match timeout_ms {
        None => Ok(DEFAULT_WAIT),
        Some(t) => t
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::InvalidParam("timeout_ms must be a non-negative integer".into())),
    }
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`.
pub async fn download(
    State(s): State<AppState>,
    Authed(_): Authed,
    PathArgs(args): PathArgs,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_download(&s, args, q, &headers, false).await
}

/// `GET /_matrix/media/v3/download/…`: no authentication; frozen for media uploaded after
/// the freeze when `media.freeze_legacy_endpoints` is on.
pub async fn legacy_download(
    State(s): State<AppState>,
    PathArgs(args): PathArgs,
    Query(q): Query<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_download(&s, args, q, &headers, true).await
}

async fn serve_download(
    s: &AppState,
    args: Vec<String>,
    q: DownloadQuery,
    headers: &HeaderMap,
    legacy: bool,
) -> Result<Response> {
    let file_name = args.get(2).cloned();
    let [server_name, media_id] = two_args(args)?;
    let wait = wait_of(q.timeout_ms.as_deref())?;
    let (_, content) = s.media.content(&server_name, &media_id, legacy, wait).await?;
    let name = file_name.or_else(|| content.filename.clone());
    serve(s, &content.sha256, content.size, &content.content_type, name.as_deref(), headers, legacy)
        .await
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
    timeout_ms: Option<String>,
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub async fn thumbnail(
    State(s): State<AppState>,
    Authed(_): Authed,
    PathArgs(args): PathArgs,
    Query(q): Query<ThumbnailQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_thumbnail(&s, args, q, &headers, false).await
}

/// `GET /_matrix/media/v3/thumbnail/…` (deprecated; frozen like the legacy download).
pub async fn legacy_thumbnail(
    State(s): State<AppState>,
    PathArgs(args): PathArgs,
    Query(q): Query<ThumbnailQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    serve_thumbnail(&s, args, q, &headers, true).await
}

fn dimension(value: Option<&str>, name: &str) -> Result<u32> {
    let v = value.ok_or_else(|| Error::MissingParam(format!("Missing {name}")))?;
    v.parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::InvalidParam(format!("{name} must be a positive integer")))
}

async fn serve_thumbnail(
    s: &AppState,
    args: Vec<String>,
    q: ThumbnailQuery,
    headers: &HeaderMap,
    legacy: bool,
) -> Result<Response> {
    let [server_name, media_id] = two_args(args)?;
    let width = dimension(q.width.as_deref(), "width")?;
    let height = dimension(q.height.as_deref(), "height")?;
    let method = match q.method.as_deref() {
        None | Some("scale") => Method::Scale,
        Some("crop") => Method::Crop,
        Some(_) => return Err(Error::InvalidParam("method must be crop or scale".into())),
    };
    let wait = wait_of(q.timeout_ms.as_deref())?;
    let (media_id, content): (String, MediaContent) =
        s.media.content(&server_name, &media_id, legacy, wait).await?;
    match s.media.thumbnail(&media_id, &content, width, height, method).await? {
        Some(t) => {
            let name =
                format!("thumbnail.{}", if t.content_type == "image/jpeg" { "jpg" } else { "png" });
            serve(s, &t.sha256, t.size, &t.content_type, Some(&name), headers, legacy).await
        }
        None => {
            serve(
                s,
                &content.sha256,
                content.size,
                &content.content_type,
                content.filename.as_deref(),
                headers,
                legacy,
            )
            .await
        }
    }
}

/// Streams a blob with the headers media needs: type, disposition, CSP, caching, ranges.
async fn serve(
    s: &AppState,
    sha256: &str,
    size: u64,
    content_type: &str,
    file_name: Option<&str>,
    req: &HeaderMap,
    legacy: bool,
) -> Result<Response> {
    let etag = format!("\"{sha256}\"");
    let mut headers = HeaderMap::new();
    let ct = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, ct);
    headers.insert(header::CONTENT_DISPOSITION, disposition(content_type, file_name));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Content never changes under its ETag (the hash). Authenticated responses may be kept
    // by the browser, not by shared caches (a CDN would serve them without the token);
    // the unauthenticated endpoints' by anyone. A day, so a quarantine takes effect.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if legacy {
            "public, max-age=86400, immutable"
        } else {
            "private, max-age=86400, immutable"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "*" || v.split(',').any(|t| t.trim() == etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().extend(headers);
        response.headers_mut().remove(header::CONTENT_TYPE);
        return Ok(response);
    }

    let if_range_ok =
        req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
    let range = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(r, size),
        _ => RangeRequest::Whole,
    };
    let (status, byte_range) = match range {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Part(r) => {
            let value = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
        RangeRequest::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let length = byte_range.as_ref().map_or(size, |r| r.end - r.start);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let stream = s.media.read(sha256, byte_range).await?;
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`). Several ranges, other units and malformed
/// headers are ignored (the whole content answers), as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return RangeRequest::Whole };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else { return RangeRequest::Whole };
    let (start, end) = (start.trim(), end.trim());
    let parsed = if start.is_empty() {
        // The last `end` bytes.
        match end.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size)),
            Err(_) => None,
        }
    } else {
        match (start.parse::<u64>(), end) {
            (Ok(a), "") => Some((a, size)),
            (Ok(a), e) => match e.parse::<u64>() {
                Ok(b) if b >= a => Some((a, b.saturating_add(1).min(size))),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        None => RangeRequest::Whole,
        Some((a, _)) if a >= size => RangeRequest::Unsatisfiable,
        Some((a, b)) => RangeRequest::Part(a..b),
    }
}

/// `inline` for the spec's safe types, `attachment` otherwise, with the file name (RFC 6266:
/// plain when it is simple ASCII, `filename*` percent-encoded UTF-8 otherwise).
fn disposition(content_type: &str, file_name: Option<&str>) -> HeaderValue {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) { "inline" } else { "attachment" };
    let value = match file_name {
        None => kind.to_owned(),
        Some(name)
            if name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" .-_()+,[]@!#$&'~".contains(&b)) =>
        {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("attachment"))
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    url: Option<String>,
}

/// `GET /_matrix/client/v1/media/preview_url`.
pub async fn preview_url(
    State(s): State<AppState>,
    Authed(who): Authed,
    Query(q): Query<PreviewQuery>,
) -> Result<Json<Value>> {
    let url = q.url.ok_or_else(|| Error::MissingParam("Missing url".into()))?;
    let value = s.media.preview(&s.outbound, who.user_id.as_str(), &url).await?;
    Ok(Json((*value).clone()))
}

/// Every media route: the authenticated `/_matrix/client/v1/media/*`, upload and create
/// under `/_matrix/media/*`, and the deprecated `/_matrix/media/{v3,r0}/*` equivalents.
pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let client = "/_matrix/client/v1/media";
    let mut r = r
        .route(&format!("{client}/config"), get(config))
        .route(&format!("{client}/preview_url"), get(preview_url))
        .route(&format!("{client}/download/{{server_name}}/{{media_id}}"), get(download))
        .route(
            &format!("{client}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
            get(download),
        )
        .route(&format!("{client}/thumbnail/{{server_name}}/{{media_id}}"), get(thumbnail))
        .route("/_matrix/media/v1/create", post(create));
    for version in ["v3", "r0"] {
        let media = format!("/_matrix/media/{version}");
        r = r
            .route(&format!("{media}/upload"), post(upload))
            .route(&format!("{media}/upload/{{server_name}}/{{media_id}}"), put(upload_to))
            .route(&format!("{media}/config"), get(config))
            .route(&format!("{media}/preview_url"), get(preview_url))
            .route(&format!("{media}/download/{{server_name}}/{{media_id}}"), get(legacy_download))
            .route(
                &format!("{media}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(legacy_download),
            )
            .route(
                &format!("{media}/thumbnail/{{server_name}}/{{media_id}}"),
                get(legacy_thumbnail),
            );
    }
    r
}

/// The media part of the admin API, in Synapse's shapes.
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}",
            post(admin_quarantine),
        )
        .route(
            "/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}",
            post(admin_unquarantine),
        )
        .route("/_synapse/admin/v1/media/delete", post(admin_delete_before))
        .route("/_synapse/admin/v1/media/{server_name}/delete", post(admin_delete_before))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`: downloads and
/// thumbnails of it answer 404 until it is unquarantined.
pub async fn admin_quarantine(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let [server_name, media_id] = two_args(args)?;
    s.media.quarantine(&server_name, &media_id, true).await?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`.
pub async fn admin_unquarantine(
    State(s): State<AppState>,
    _: ServerAdmin,
    PathArgs(args): PathArgs,
) -> Result<Json<Value>> {
    let [server_name, media_id] = two_args(args)?;
    s.media.quarantine(&server_name, &media_id, false).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    before_ts: Option<String>,
}

/// `POST /_synapse/admin/v1/media/delete?before_ts=<ms>`: deletes local media created
/// before the timestamp (as `axon media purge`).
pub async fn admin_delete_before(
    State(s): State<AppState>,
    _: ServerAdmin,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>> {
    let before = q
        .before_ts
        .ok_or_else(|| Error::MissingParam("Missing before_ts".into()))?
        .parse::<u64>()
        .map_err(|_| Error::InvalidParam("before_ts must be a timestamp in milliseconds".into()))?;
    let report = s.media.purge_before(before).await?;
    Ok(Json(json!({"deleted_media": report.deleted_media, "total": report.total})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeRequest::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), RangeRequest::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), RangeRequest::Part(90..100));
        assert_eq!(parse_range("bytes=50-500", 100), RangeRequest::Part(50..100));
        assert_eq!(parse_range("bytes=-500", 100), RangeRequest::Part(0..100));
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), RangeRequest::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Whole);
    }

    #[test]
    fn only_safe_types_are_inline() {
        assert_eq!(disposition("image/png", Some("a.png")), "inline; filename=\"a.png\"");
        assert_eq!(disposition("text/html", None), "attachment");
        assert_eq!(disposition("image/svg+xml", Some("x.svg")), "attachment; filename=\"x.svg\"");
        assert_eq!(
            disposition("text/plain; charset=utf-8", Some("é \"q\".txt")),
            "inline; filename*=utf-8''%C3%A9%20%22q%22.txt"
        );
    }
}
