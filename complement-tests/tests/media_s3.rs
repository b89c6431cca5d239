//! The media repository on S3-compatible storage: the storage-facing behaviours of
//! `media.rs`, against a real single-node Garage started on loopback for each test
//! (`complement_tests::garage`). Garage missing or failing to start fails the test.

use complement_tests::garage::Garage;
use complement_tests::media::{self, AUTH_THUMBNAIL};
use complement_tests::{ServerOptions, TestServer};

const LIMIT: usize = 60 * 1024 * 1024;

async fn server(garage: &Garage, extra: &str) -> TestServer {
    TestServer::start_with(ServerOptions {
        extra_toml: garage.media_toml(&format!("max_upload_bytes = {LIMIT}\n{extra}")),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn s3_small_upload_downloads_byte_identical() {
    let garage = Garage::start().await;
    media::upload_then_download_is_byte_identical(&server(&garage, "").await, 1000).await;
}

#[tokio::test]
async fn s3_fifty_mib_upload_downloads_byte_identical() {
    let garage = Garage::start().await;
    media::upload_then_download_is_byte_identical(&server(&garage, "").await, 50 * 1024 * 1024)
        .await;
}

#[tokio::test]
async fn s3_range_requests_return_the_requested_bytes() {
    let garage = Garage::start().await;
    media::range_requests_return_the_requested_bytes(&server(&garage, "").await).await;
}

#[tokio::test]
async fn s3_thumbnails_have_the_requested_dimensions() {
    let garage = Garage::start().await;
    media::thumbnails_have_the_requested_dimensions(&server(&garage, "").await).await;
}

#[tokio::test]
async fn s3_oversize_upload_is_refused_with_413() {
    let garage = Garage::start().await;
    let s = TestServer::start_with(ServerOptions {
        extra_toml: garage.media_toml("max_upload_bytes = 1048576\n"),
        ..Default::default()
    })
    .await;
    media::oversize_upload_is_refused_with_413(&s, 1024 * 1024).await;
}

#[tokio::test]
async fn s3_decompression_bomb_is_refused_without_exhausting_memory() {
    let garage = Garage::start().await;
    let s = server(&garage, "").await;
    media::decompression_bomb_is_refused(&s, s.pid()).await;
}

#[tokio::test]
async fn s3_identical_uploads_share_one_blob() {
    let garage = Garage::start().await;
    let s = server(&garage, "").await;
    let alice = s.register("alice", "alice-password").await;
    media::upload_twice(&s, &alice).await;
    // One blob, and no staging copy left behind.
    assert_eq!(garage.object_count().await, 1);
}

#[tokio::test]
async fn s3_purge_deletes_the_objects() {
    let garage = Garage::start().await;
    let s = server(&garage, "").await;
    let alice = s.register("alice", "alice-password").await;
    let png = media::image_bytes(300, 300, image::ImageFormat::Png);
    let (server_name, id) = s.upload(&alice, "image/png", png).await;
    let thumb = format!("{AUTH_THUMBNAIL}/{server_name}/{id}?width=96&height=96&method=crop");
    assert_eq!(s.get_raw(&thumb, alice.token(), &[]).await.status, 200);
    assert!(garage.object_count().await > 1, "the original and its thumbnails");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let out = s.cli(&["media", "purge", "--older-than-days", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.download(&alice, &server_name, &id).await.status, 404);
    assert_eq!(garage.object_count().await, 0);
}
