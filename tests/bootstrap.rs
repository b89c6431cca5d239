//! `scripts/bootstrap.sh` decides whether bindgen will find libclang, and installs
//! `libclang-dev` when it will not. These tests run that decision against fake file trees,
//! so that what a fresh machine has (only `libclang-cpp`, a different library) is the case
//! checked, not what the developer's machine happens to have.

use std::path::Path;
use std::process::Command;

/// The script of this checkout: the directory is read at run time, because build outputs are
/// shared between checkouts (a test binary built in another one would point there).
fn script() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .join("scripts/bootstrap.sh")
}

fn check_libclang(root: &Path) -> (bool, String) {
    let script = script();
    let out = Command::new("bash")
        .arg(script)
        .arg("--check-libclang")
        .env("AXON_BOOTSTRAP_ROOT", root)
        .env_remove("LIBCLANG_PATH")
        .output()
        .expect("run bootstrap.sh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn touch(root: &Path, file: &str) {
    let path = root.join(file.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let root = tempfile::tempdir().unwrap();
    // What the machine image ships: LLVM and libclang-cpp, but no libclang.
    touch(root.path(), "/usr/lib/llvm-14/lib/libclang-cpp.so.14");
    touch(root.path(), "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    touch(root.path(), "/usr/lib/llvm-14/lib/libLLVM-14.so");
    let (found, out) = check_libclang(root.path());
    assert!(!found, "libclang-cpp must not count as libclang: {out}");
    assert_eq!(out.trim(), "libclang: missing");
}

#[test]
fn an_empty_machine_has_no_libclang() {
    let root = tempfile::tempdir().unwrap();
    let (found, out) = check_libclang(root.path());
    assert!(!found, "{out}");
}

#[test]
fn debian_libclang_dev_is_found() {
    // libclang-dev installs a versioned library under the LLVM directory and in the
    // multiarch directory.
    for file in [
        "/usr/lib/llvm-14/lib/libclang-14.so.1",
        "/usr/lib/llvm-14/lib/libclang.so",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6",
        "/usr/local/lib/libclang.so.17",
    ] {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), "/usr/lib/llvm-14/lib/libclang-cpp.so.14");
        touch(root.path(), file);
        let (found, out) = check_libclang(root.path());
        assert!(found, "{file} should be found: {out}");
    }
}

#[test]
fn libclang_path_names_the_only_directory_searched() {
    let root = tempfile::tempdir().unwrap();
    touch(root.path(), "/opt/llvm/lib/libclang.so");
    let script = script();
    let run = |dir: &Path| {
        Command::new("bash")
            .arg(&script)
            .arg("--check-libclang")
            .env("AXON_BOOTSTRAP_ROOT", root.path())
            .env("LIBCLANG_PATH", dir)
            .status()
            .unwrap()
            .success()
    };
    assert!(run(&root.path().join("opt/llvm/lib")));
    assert!(!run(&root.path().join("opt")));
}
