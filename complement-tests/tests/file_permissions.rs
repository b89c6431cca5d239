//! What the server writes to disk is for its own user only: the database directory holds
//! the signing key, and the admin socket takes commands without a password.

#![cfg(unix)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use complement_tests::TestServer;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_database_directory_is_created_private() {
    let s = TestServer::start().await;
    assert_eq!(mode(&s.db_path()), 0o700, "{:o}", mode(&s.db_path()));
}

#[tokio::test]
async fn a_database_directory_open_to_others_is_made_private_on_start() {
    let mut s = TestServer::start().await;
    s.kill9();
    std::fs::set_permissions(s.db_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.crash_and_restart().await;
    assert_eq!(mode(&s.db_path()), 0o700, "{:o}", mode(&s.db_path()));
}

/// The socket is created inside the private directory, so nobody else can reach it even
/// for a moment, and is itself owner-only.
#[tokio::test]
async fn the_admin_socket_is_reachable_by_its_owner_only() {
    let s = TestServer::start().await;
    let socket = s.db_path().join("admin.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin socket at {}", socket.display());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600, "{:o}", mode(&socket));
}
