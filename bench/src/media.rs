//! Media benchmarks (`bench/media.sh`):
//!
//! ```text
//! axon-bench BASE_URL media SIZE_MIB        upload SIZE_MIB of random bytes (generated as
//!                                           they are sent, streamed), then download them;
//!                                           report MiB/s both ways and, with AXON_PID, the
//!                                           server's RSS before, its peak while uploading
//!                                           (sampled every 50 ms) and VmHWM
//! axon-bench BASE_URL thumbnail             upload a 12-megapixel JPEG (4000×3000, made
//!                                           here), time the first thumbnail request (decode
//!                                           once, all five standard sizes made and stored)
//!                                           and a repeated one (served from storage)
//! ```

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Error, Server};

const CHUNK: usize = 256 * 1024;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn server_pid() -> Option<u32> {
    std::env::var("AXON_PID").ok()?.parse().ok()
}

async fn user(server: &Server, name: &str) -> Result<String, Error> {
    Ok(server.register(name).await?.token)
}

/// Pseudo-random chunks, produced as the upload consumes them (xorshift; incompressible).
fn random_chunks(total: u64) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = total;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64) as usize;
        left -= n as u64;
        let mut buf = Vec::with_capacity(n);
        while buf.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        buf.truncate(n);
        Some(Ok(buf))
    }))
}

pub async fn media(server: Arc<Server>, size_mib: u64) -> Result<(), Error> {
    let token = user(&server, "mediabench").await?;
    let total = size_mib * 1024 * 1024;
    let pid = server_pid();
    let rss_before = pid.and_then(|p| status_kib(p, "VmRSS:"));
    let hwm_before = pid.and_then(|p| status_kib(p, "VmHWM:"));

    // Sample the server's RSS while the upload runs.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = pid.map(|p| {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = status_kib(p, "VmRSS:") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let started = Instant::now();
    let res = server
        .http
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .header("content-length", total)
        .body(reqwest::Body::wrap_stream(random_chunks(total)))
        .send()
        .await?;
    let upload_time = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        return Err(format!("upload: {status} {body}").into());
    }
    let uri = body["content_uri"].as_str().ok_or("no content_uri")?;
    let path = uri.strip_prefix("mxc://").ok_or("bad mxc")?;

    let started = Instant::now();
    let mut res = server
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{path}", server.base))
        .bearer_auth(&token)
        .send()
        .await?;
    let mut received = 0u64;
    while let Some(chunk) = res.chunk().await? {
        received += chunk.len() as u64;
    }
    let download_time = started.elapsed();
    if received != total {
        return Err(format!("downloaded {received} of {total} bytes").into());
    }
    let mib = total as f64 / (1024.0 * 1024.0);
    println!(
        "media {size_mib} MiB: upload {:.0} MiB/s ({:.1} s), download {:.0} MiB/s ({:.1} s)",
        mib / upload_time.as_secs_f64(),
        upload_time.as_secs_f64(),
        mib / download_time.as_secs_f64(),
        download_time.as_secs_f64(),
    );
    if let Some(p) = pid {
        println!(
            "media {size_mib} MiB: server RSS before {} MiB, peak while uploading {} MiB; VmHWM before {} MiB, after {} MiB",
            rss_before.unwrap_or(0) / 1024,
            peak.load(Ordering::Relaxed) / 1024,
            hwm_before.unwrap_or(0) / 1024,
            status_kib(p, "VmHWM:").unwrap_or(0) / 1024,
        );
    }
    Ok(())
}

pub async fn thumbnail(server: Arc<Server>) -> Result<(), Error> {
    let token = user(&server, "thumbbench").await?;
    let (w, h) = (4000u32, 3000u32);
    let made = Instant::now();
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
    });
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)?;
    println!(
        "thumbnail: 12 MP JPEG of {} KiB made in {:.1} s",
        jpeg.len() / 1024,
        made.elapsed().as_secs_f64()
    );
    let res = server
        .http
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&token)
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .await?;
    let body: Value = res.json().await?;
    let uri = body["content_uri"].as_str().ok_or("no content_uri")?.to_owned();
    let path = uri.strip_prefix("mxc://").ok_or("bad mxc")?;
    let mut times = Vec::new();
    for (w, h, method) in [(320, 240, "scale"), (320, 240, "scale"), (96, 96, "crop")] {
        let started = Instant::now();
        let res = server
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/thumbnail/{path}?width={w}&height={h}&method={method}",
                server.base
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        if !status.is_success() {
            return Err(format!("thumbnail: {status}").into());
        }
        let dims = image::load_from_memory(&bytes).map(|i| (i.width(), i.height()))?;
        times.push((w, h, method, started.elapsed(), dims));
    }
    let (_, _, _, first, dims) = times[0];
    println!(
        "thumbnail of a 12 MP JPEG: first request {:.0} ms (decode + 5 sizes made and stored; {}x{} served)",
        first.as_secs_f64() * 1000.0,
        dims.0,
        dims.1
    );
    println!(
        "thumbnail: repeated request {:.1} ms, another size {:.1} ms (stored)",
        times[1].3.as_secs_f64() * 1000.0,
        times[2].3.as_secs_f64() * 1000.0
    );
    Ok(())
}
