//! The binary's command line: help, and refusing bad configuration before touching data.
//! (Also makes cargo build the `axon` binary for the black-box tests in complement-tests/.)

use std::process::Command;

const AXON: &str = env!("CARGO_BIN_EXE_axon");

#[test]
fn help_lists_the_admin_commands() {
    let out = Command::new(AXON).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("user"), "{text}");
    assert!(text.contains("token"), "{text}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = Command::new(AXON).args(["--config", "/nonexistent/axon.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn an_invalid_server_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("axon.toml");
    std::fs::write(&file, "server_name = \"not a name\"\n").unwrap();
    let out = Command::new(AXON).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server_name"));
}

#[test]
fn an_unknown_config_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("axon.toml");
    std::fs::write(&file, "server_nmae = \"example.org\"\n").unwrap();
    let out = Command::new(AXON).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("axon.toml");
    std::fs::write(&file, "server_name = \"example.org\"\n").unwrap();
    let out = Command::new(AXON)
        .arg("--config")
        .arg(&file)
        .env("AXON_SERVER_NAME", "bad name!")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the env value must have been used");
}
