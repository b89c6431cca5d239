//! The media repository on the default (filesystem) storage: uploads, authenticated and
//! legacy downloads, ranges, thumbnails, async uploads, limits, quarantine, purge, URL
//! previews. `media_s3.rs` runs the storage-facing behaviours against Garage.

use std::io::{Read, Write};
use std::net::TcpListener;

use complement_tests::media::{self, AUTH_DOWNLOAD, AUTH_THUMBNAIL, LEGACY_DOWNLOAD};
use complement_tests::{ServerOptions, TestServer, assert_error, json};

const LIMIT: usize = 60 * 1024 * 1024;

async fn server() -> TestServer {
    server_with("").await
}

async fn server_with(media: &str) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: format!("[media]\nmax_upload_bytes = {LIMIT}\n{media}"),
        ..Default::default()
    })
    .await
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count_files(&p) } else { 1 }).sum()
}

#[tokio::test]
async fn small_upload_downloads_byte_identical() {
    media::upload_then_download_is_byte_identical(&server().await, 1000).await;
}

#[tokio::test]
async fn fifty_mib_upload_downloads_byte_identical() {
    media::upload_then_download_is_byte_identical(&server().await, 50 * 1024 * 1024).await;
}

#[tokio::test]
async fn range_requests_return_the_requested_bytes() {
    media::range_requests_return_the_requested_bytes(&server().await).await;
}

#[tokio::test]
async fn thumbnails_have_the_requested_dimensions() {
    media::thumbnails_have_the_requested_dimensions(&server().await).await;
}

#[tokio::test]
async fn oversize_upload_is_refused_with_413() {
    // A smaller limit keeps the test quick; the 60 MiB server proves large uploads pass.
    let s = TestServer::start_with(ServerOptions {
        extra_toml: "[media]\nmax_upload_bytes = 1048576\n".into(),
        ..Default::default()
    })
    .await;
    media::oversize_upload_is_refused_with_413(&s, 1024 * 1024).await;
}

#[tokio::test]
async fn decompression_bomb_is_refused_without_exhausting_memory() {
    let s = server().await;
    media::decompression_bomb_is_refused(&s, s.pid()).await;
}

#[tokio::test]
async fn identical_uploads_share_one_blob() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let blobs = s.db_path().join("media").join("blobs");
    let before = count_files(&blobs);
    media::upload_twice(&s, &alice).await;
    assert_eq!(count_files(&blobs), before + 1, "one blob for two identical uploads");
    assert_eq!(count_files(&s.db_path().join("media").join("tmp")), 0, "no staging leftovers");
}

#[tokio::test]
async fn authenticated_download_refuses_a_missing_token() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let (server, id) = s.upload(&alice, "text/plain", b"secret".to_vec()).await;
    let r = s.get_raw(&format!("{AUTH_DOWNLOAD}/{server}/{id}"), None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errcode"], "M_MISSING_TOKEN");
    let r = s.get_raw(&format!("{AUTH_DOWNLOAD}/{server}/{id}"), Some("nope"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errcode"], "M_UNKNOWN_TOKEN");
    let path = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=32&height=32");
    assert_eq!(s.get_raw(&path, None, &[]).await.status, 401);
    // Another user may download it (media is not per room in the spec).
    let bob = s.register("bob", "bob-password").await;
    assert_eq!(s.download(&bob, &server, &id).await.body, b"secret");
}

#[tokio::test]
async fn upload_needs_a_token() {
    let s = server().await;
    let r = s.upload_raw(None, "text/plain", "", b"x".to_vec().into()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errcode"], "M_MISSING_TOKEN");
}

#[tokio::test]
async fn downloads_carry_type_disposition_and_security_headers() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let (server, id) =
        s.upload(&alice, "image/png", media::image_bytes(4, 4, image::ImageFormat::Png)).await;
    let r = s.download(&alice, &server, &id).await;
    assert_eq!(r.header("content-type"), "image/png");
    assert_eq!(r.header("content-disposition"), "inline");
    assert!(r.header("content-security-policy").starts_with("sandbox"), "{:?}", r.headers);
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("cross-origin-resource-policy"), "cross-origin");
    assert!(r.header("cache-control").contains("max-age="), "{:?}", r.headers);
    let etag = r.header("etag").to_owned();
    assert!(etag.len() > 2, "{:?}", r.headers);
    // A cache revalidates with the ETag.
    let path = format!("{AUTH_DOWNLOAD}/{server}/{id}");
    let r = s.get_raw(&path, alice.token(), &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    // HTML is never inline, whatever its name; the file name is kept, and the one in the
    // path wins.
    let r = s
        .upload_raw(
            alice.token(),
            "text/html",
            "?filename=page.html",
            b"<script>1</script>".to_vec().into(),
        )
        .await;
    let (server, id) = media::parse_mxc(r.json()["content_uri"].as_str().unwrap());
    let r = s.download(&alice, &server, &id).await;
    assert_eq!(r.header("content-type"), "text/html");
    assert_eq!(r.header("content-disposition"), "attachment; filename=\"page.html\"");
    let r =
        s.get_raw(&format!("{AUTH_DOWNLOAD}/{server}/{id}/other.txt"), alice.token(), &[]).await;
    assert_eq!(r.header("content-disposition"), "attachment; filename=\"other.txt\"");
}

#[tokio::test]
async fn media_config_reports_the_upload_limit() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let (status, body) = s.get("/_matrix/client/v1/media/config", alice.token()).await;
    assert_eq!(status, 200);
    assert_eq!(body["m.upload.size"], LIMIT as u64);
    assert_error(&s.get("/_matrix/client/v1/media/config", None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn unknown_remote_and_malformed_media_are_not_found() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    for path in [
        format!("{AUTH_DOWNLOAD}/test.local/doesnotexist"),
        // Until federation exists, other servers' media is not found.
        format!("{AUTH_DOWNLOAD}/other.example/abcdef"),
        format!("{AUTH_DOWNLOAD}/test.local/..%2F..%2Fetc"),
        format!("{AUTH_DOWNLOAD}/not%20a%20server/abc"),
    ] {
        let r = s.get_raw(&path, alice.token(), &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["errcode"], "M_NOT_FOUND", "{path}");
    }
}

#[tokio::test]
async fn legacy_download_is_frozen_for_new_media_by_default() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let (server, id) = s.upload(&alice, "text/plain", b"hello".to_vec()).await;
    let r = s.get_raw(&format!("{LEGACY_DOWNLOAD}/{server}/{id}"), None, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errcode"], "M_NOT_FOUND");
    assert_eq!(s.download(&alice, &server, &id).await.body, b"hello");
}

#[tokio::test]
async fn legacy_download_serves_everything_when_not_frozen() {
    let s = server_with("freeze_legacy_endpoints = false\n").await;
    let alice = s.register("alice", "alice-password").await;
    let (server, id) = s.upload(&alice, "text/plain", b"hello".to_vec()).await;
    let r = s.get_raw(&format!("{LEGACY_DOWNLOAD}/{server}/{id}"), None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert!(r.header("cache-control").starts_with("public"));
    let path = format!("/_matrix/media/v3/thumbnail/{server}/{id}?width=32&height=32");
    // Not an image: the thumbnail endpoint says it cannot.
    let r = s.get_raw(&path, None, &[]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn async_upload_create_then_put() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let bob = s.register("bob", "bob-password").await;
    let (status, body) = s.post("/_matrix/media/v1/create", alice.token(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["unused_expires_at"].as_u64().unwrap() > 0);
    let (server, id) = media::parse_mxc(body["content_uri"].as_str().unwrap());

    // Before the upload: a download waits up to timeout_ms, then 504.
    let path = format!("{AUTH_DOWNLOAD}/{server}/{id}?timeout_ms=200");
    let r = s.get_raw(&path, alice.token(), &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["errcode"], "M_NOT_YET_UPLOADED");

    let put = |who: &complement_tests::Session, bytes: &'static [u8]| {
        let req = s
            .client
            .put(format!("{}/_matrix/media/v3/upload/{server}/{id}", s.base))
            .bearer_auth(&who.access_token)
            .header("content-type", "text/plain")
            .body(bytes);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    // Only the creator may upload to it.
    let (status, body) = put(&bob, b"bob's").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));

    // A download waiting for the upload gets it as soon as it arrives.
    let waiting_path = format!("{AUTH_DOWNLOAD}/{server}/{id}?timeout_ms=10000");
    let waiting = s.get_raw(&waiting_path, alice.token(), &[]);
    let (r, (status, _)) = tokio::join!(waiting, async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        put(&alice, b"async content").await
    });
    assert_eq!(status, 200);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"async content");

    // Once uploaded, it cannot be overwritten.
    let (status, body) = put(&alice, b"again").await;
    assert_eq!((status, body["errcode"].as_str()), (409, Some("M_CANNOT_OVERWRITE_MEDIA")));
}

#[tokio::test]
async fn pending_uploads_per_user_are_limited() {
    let s = server_with("max_pending_uploads = 2\n").await;
    let alice = s.register("alice", "alice-password").await;
    for _ in 0..2 {
        assert_eq!(s.post("/_matrix/media/v1/create", alice.token(), json!({})).await.0, 200);
    }
    assert_error(
        &s.post("/_matrix/media/v1/create", alice.token(), json!({})).await,
        429,
        "M_LIMIT_EXCEEDED",
    );
}

async fn admin(s: &TestServer) -> complement_tests::Session {
    let out = s.cli(&["user", "create", "root", "--password", "root-password", "--admin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = s.login("root", "root-password").await;
    assert_eq!(status, 200);
    complement_tests::Session::from_json(&body)
}

#[tokio::test]
async fn quarantined_media_is_not_served() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let root = admin(&s).await;
    let (server, id) =
        s.upload(&alice, "image/png", media::image_bytes(200, 200, image::ImageFormat::Png)).await;
    let quarantine = format!("/_synapse/admin/v1/media/quarantine/{server}/{id}");
    assert_error(&s.post(&quarantine, alice.token(), json!({})).await, 403, "M_FORBIDDEN");
    assert_eq!(s.post(&quarantine, root.token(), json!({})).await.0, 200);
    let r = s.download(&alice, &server, &id).await;
    assert_eq!((r.status.as_u16(), r.json()["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let thumb = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=32&height=32&method=crop");
    assert_eq!(s.get_raw(&thumb, alice.token(), &[]).await.status, 404);
    let release = format!("/_synapse/admin/v1/media/unquarantine/{server}/{id}");
    assert_eq!(s.post(&release, root.token(), json!({})).await.0, 200);
    assert_eq!(s.download(&alice, &server, &id).await.status, 200);
    // The CLI does the same (through the running server's admin socket).
    let out = s.cli(&["media", "quarantine", &format!("mxc://{server}/{id}")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.download(&alice, &server, &id).await.status, 404);
}

#[tokio::test]
async fn purge_deletes_old_media_and_unshared_blobs() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let blobs = s.db_path().join("media").join("blobs");
    let (server, id) =
        s.upload(&alice, "image/png", media::image_bytes(300, 300, image::ImageFormat::Png)).await;
    let thumb = format!("{AUTH_THUMBNAIL}/{server}/{id}?width=96&height=96&method=crop");
    assert_eq!(s.get_raw(&thumb, alice.token(), &[]).await.status, 200);
    assert!(count_files(&blobs) > 1, "original and thumbnails stored");
    // Nothing is older than a day.
    let out = s.cli(&["media", "purge", "--older-than-days", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"total\": 0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(s.download(&alice, &server, &id).await.status, 200);
    // Everything is older than 0 days.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let out = s.cli(&["media", "purge", "--older-than-days", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    assert_eq!(s.download(&alice, &server, &id).await.status, 404);
    assert_eq!(count_files(&blobs), 0, "the blobs went with the media");
}

#[tokio::test]
async fn purge_keeps_blobs_still_used_by_newer_media() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let root = admin(&s).await;
    let ((_, old_id), _) = media::upload_twice(&s, &alice).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // The admin API's form, with a timestamp: delete what was uploaded before now; the
    // second upload is deleted too, so upload a third copy afterwards and check it survives
    // a purge that deletes the first two.
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let bytes = media::pseudo_random(100_000, 7);
    let (server, kept) = s.upload(&alice, "application/octet-stream", bytes.clone()).await;
    let (status, body) = s
        .post(&format!("/_synapse/admin/v1/media/delete?before_ts={now}"), root.token(), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2, "{body}");
    assert!(body["deleted_media"].as_array().unwrap().iter().any(|m| m == old_id.as_str()));
    assert_eq!(s.download(&alice, &server, &kept).await.body, bytes);
}

/// Serves one fixed HTTP response on loopback (for URL previews).
fn serve_page(body: &'static str, content_type: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

const PAGE: &str = r#"<html><head><title>Plain title</title>
<meta property="og:title" content="Axon &amp; friends">
<meta property="og:description" content="A homeserver">
</head><body>hi</body></html>"#;

#[tokio::test]
async fn preview_of_loopback_is_refused() {
    let s = server_with("[media.url_preview]\nenabled = true\n").await;
    let alice = s.register("alice", "alice-password").await;
    let port = serve_page(PAGE, "text/html");
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let path =
            format!("/_matrix/client/v1/media/preview_url?url={}", complement_tests::enc(&url));
        let (status, body) = s.get(&path, alice.token()).await;
        assert_eq!(status, 403, "{url}: {body}");
    }
}

#[tokio::test]
async fn preview_reads_opengraph_when_the_address_is_allowed() {
    let s = server_with(
        "[media.url_preview]\nenabled = true\n[outbound]\nallowed_ip_ranges = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let alice = s.register("alice", "alice-password").await;
    let port = serve_page(PAGE, "text/html; charset=utf-8");
    let url = format!("http://127.0.0.1:{port}/page");
    let path = format!("/_matrix/client/v1/media/preview_url?url={}", complement_tests::enc(&url));
    let (status, body) = s.get(&path, alice.token()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:title"], "Axon & friends");
    assert_eq!(body["og:description"], "A homeserver");
    assert_error(&s.get(&path, None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn previews_are_off_by_default() {
    let s = server().await;
    let alice = s.register("alice", "alice-password").await;
    let path = "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org%2F";
    assert_error(&s.get(path, alice.token()).await, 403, "M_FORBIDDEN");
}
