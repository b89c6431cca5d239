//! Media repository behaviours, shared by the filesystem tests (`tests/media.rs`) and the
//! same tests against a real S3-compatible server (`tests/media_s3.rs`, Garage).

use std::io::Cursor;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::{Session, TestServer};

pub const AUTH_DOWNLOAD: &str = "/_matrix/client/v1/media/download";
pub const AUTH_THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";
pub const LEGACY_DOWNLOAD: &str = "/_matrix/media/v3/download";
pub const UPLOAD: &str = "/_matrix/media/v3/upload";

/// A response with its raw body.
pub struct Raw {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

impl TestServer {
    /// `POST /upload`; returns the raw response.
    pub async fn upload_raw(
        &self,
        token: Option<&str>,
        content_type: &str,
        query: &str,
        body: reqwest::Body,
    ) -> Raw {
        let mut req = self
            .client
            .post(format!("{}{UPLOAD}{query}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        raw(req).await
    }

    /// Uploads and returns `(server_name, media_id)` of the new `mxc://` URI.
    pub async fn upload(
        &self,
        who: &Session,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> (String, String) {
        let r = self.upload_raw(who.token(), content_type, "", bytes.into()).await;
        assert_eq!(r.status, 200, "upload: {}", String::from_utf8_lossy(&r.body));
        parse_mxc(r.json()["content_uri"].as_str().expect("content_uri"))
    }

    /// `GET path` with optional token and extra headers; the raw response.
    pub async fn get_raw(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Raw {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        raw(req).await
    }

    pub async fn download(&self, who: &Session, server: &str, id: &str) -> Raw {
        self.get_raw(&format!("{AUTH_DOWNLOAD}/{server}/{id}"), who.token(), &[]).await
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("body").to_vec();
    Raw { status, headers, body }
}

pub fn parse_mxc(uri: &str) -> (String, String) {
    let rest = uri.strip_prefix("mxc://").expect("mxc://");
    let (server, id) = rest.split_once('/').expect("server/id");
    (server.to_owned(), id.to_owned())
}

/// Deterministic pseudo-random bytes (incompressible, unlike zeros).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A `w`×`h` image in `format` (a gradient, so it is not trivially compressible).
pub fn image_bytes(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut buf), format)
        .expect("encode");
    buf
}

/// A PNG that declares `side`×`side` RGBA pixels (side² × 4 bytes decoded) in a few KiB: the
/// first rows of zeros, deflated. Decoding it would need gigabytes.
pub fn png_bomb(side: u32) -> Vec<u8> {
    use std::io::Write;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0u8; side as usize * 4 + 1];
    for _ in 0..64 {
        z.write_all(&row).expect("deflate");
    }
    chunk(&mut out, b"IDAT", &z.finish().expect("deflate"));
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn decode_dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("decodable image");
    (img.width(), img.height())
}

/// Runs `count` uploads of identical content; the caller counts the stored blobs.
pub async fn upload_twice(s: &TestServer, who: &Session) -> ((String, String), (String, String)) {
    let bytes = pseudo_random(100_000, 7);
    let a = s.upload(who, "application/octet-stream", bytes.clone()).await;
    let b = s.upload(who, "application/octet-stream", bytes.clone()).await;
    assert_ne!(a.1, b.1, "two uploads, two media IDs");
    for (server, id) in [&a, &b] {
        assert_eq!(s.download(who, server, id).await.body, bytes);
    }
    (a, b)
}

/// Upload then download, byte for byte, with the media headers.
pub async fn upload_then_download_is_byte_identical(s: &TestServer, len: usize) {
    let alice = s.register("alice", "alice-password").await;
    let bytes = pseudo_random(len, len as u64);
    let started = std::time::Instant::now();
    let (server, id) = s.upload(&alice, "application/octet-stream", bytes.clone()).await;
    let uploaded = started.elapsed();
    let r = s.download(&alice, &server, &id).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), bytes.len());
    assert!(r.body == bytes, "downloaded bytes differ from the upload");
    assert_eq!(r.header("content-length"), len.to_string());
    eprintln!("{len} bytes: upload {uploaded:?}, total {:?}", started.elapsed());
}

/// Range requests: a middle slice, an open end, a suffix, and an unsatisfiable one.
pub async fn range_requests_return_the_requested_bytes(s: &TestServer) {
    let alice = s.register("alice", "alice-password").await;
    let bytes = pseudo_random(1_000_000, 3);
    let (server, id) = s.upload(&alice, "audio/ogg", bytes.clone()).await;
    let path = format!("{AUTH_DOWNLOAD}/{server}/{id}");
    let r = s.get_raw(&path, alice.token(), &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), "bytes 1000-1999/1000000");
    assert_eq!(r.body, &bytes[1000..2000]);
    let r = s.get_raw(&path, alice.token(), &[("range", "bytes=999000-")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[999_000..]);
    let r = s.get_raw(&path, alice.token(), &[("range", "bytes=-10")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[999_990..]);
    let r = s.get_raw(&path, alice.token(), &[("range", "bytes=2000000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), "bytes */1000000");
    assert_eq!(s.download(&alice, &server, &id).await.header("accept-ranges"), "bytes");
}

/// Thumbnails have the dimensions the spec's methods give, for every supported format.
pub async fn thumbnails_have_the_requested_dimensions(s: &TestServer) {
    let alice = s.register("alice", "alice-password").await;
    for (format, ct) in [
        (image::ImageFormat::Jpeg, "image/jpeg"),
        (image::ImageFormat::Png, "image/png"),
        (image::ImageFormat::Gif, "image/gif"),
        (image::ImageFormat::WebP, "image/webp"),
    ] {
        let (server, id) = s.upload(&alice, ct, image_bytes(1000, 500, format)).await;
        for (w, h, method, expected) in [
            (96, 96, "crop", (96, 96)),
            (32, 32, "crop", (32, 32)),
            (320, 240, "scale", (320, 160)),
            (640, 480, "scale", (640, 320)),
        ] {
            let path =
                format!("{AUTH_THUMBNAIL}/{server}/{id}?width={w}&height={h}&method={method}");
            let r = s.get_raw(&path, alice.token(), &[]).await;
            assert_eq!(
                r.status,
                200,
                "{ct} {w}x{h} {method}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(r.header("content-type").starts_with("image/"), "{ct}");
            assert_eq!(decode_dims(&r.body), expected, "{ct} {w}x{h} {method}");
        }
        // Larger than every thumbnail size: the original.
        let path = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=2000&height=2000&method=scale");
        let r = s.get_raw(&path, alice.token(), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(decode_dims(&r.body), (1000, 500), "{ct}: the original, never upscaled");
    }
}

/// An upload past `media.max_upload_bytes` is 413 `M_TOO_LARGE`, whether declared by
/// Content-Length or only noticed while streaming (chunked).
pub async fn oversize_upload_is_refused_with_413(s: &TestServer, limit: usize) {
    let alice = s.register("alice", "alice-password").await;
    let r = s
        .upload_raw(alice.token(), "application/octet-stream", "", vec![0u8; limit + 1].into())
        .await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
    // Chunked: no Content-Length, the limit is enforced as bytes arrive.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..=(limit / 65536) + 1).map(|_| Ok(vec![1u8; 65536])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = s.upload_raw(alice.token(), "application/octet-stream", "", body).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
    // Exactly the limit is fine.
    s.upload(&alice, "application/octet-stream", vec![2u8; limit]).await;
}

/// A decompression bomb (a PNG declaring 40 000 × 40 000 RGBA pixels, 6.4 GB decoded, in a
/// few KiB) is refused with 413 before any pixel is decoded; the server stays small.
pub async fn decompression_bomb_is_refused(s: &TestServer, server_pid: Option<u32>) {
    let alice = s.register("alice", "alice-password").await;
    let bomb = png_bomb(40_000);
    assert!(bomb.len() < 1_000_000, "{} bytes", bomb.len());
    let (server, id) = s.upload(&alice, "image/png", bomb).await;
    let path = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=96&height=96&method=crop");
    let r = s.get_raw(&path, alice.token(), &[]).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
    // Remembered: another size fails the same way (answered from the failure marker).
    let path = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=320&height=240&method=scale");
    let r = s.get_raw(&path, alice.token(), &[]).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["errcode"], "M_TOO_LARGE");
    if let Some(pid) = server_pid {
        let hwm = vm_hwm_kib(pid).expect("VmHWM");
        assert!(hwm < 1024 * 1024, "server peak RSS {hwm} KiB after the bomb");
    }
    // The server is fine afterwards.
    let (status, _) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
}

/// Peak resident set size of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
