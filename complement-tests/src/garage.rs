//! A single-node Garage (the self-hosters' S3-compatible object store) on loopback, with a
//! bucket and a key, for the S3 media tests.
//!
//! The binary is `AXON_GARAGE`, else `$HOME/.cache/axon-tools/bin/garage`, which
//! `scripts/bootstrap.sh --test` installs (`cargo install garage`). A test that needs Garage
//! panics when it cannot start it: it never skips silently.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::media::pseudo_random;

pub fn garage_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AXON_GARAGE") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path = home.join(".cache/axon-tools/bin/garage");
    assert!(
        path.exists(),
        "Garage is not installed at {} (run scripts/bootstrap.sh --test, or set AXON_GARAGE)",
        path.display()
    );
    path
}

/// A running Garage; killed and its data removed when dropped.
pub struct Garage {
    child: Child,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// `N` distinct ports free now (all held until all are picked: the kernel may hand out a
/// port just released again). Garage binds them itself, so another process may still take
/// one first: then Garage exits at start-up and [`Garage::start`] tries new ports.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

/// How many times [`Garage::start`] tries.
const START_ATTEMPTS: u32 = 3;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Garage {
    /// Starts Garage on three free ports; if one was taken before Garage bound it (it exits
    /// saying "in use"), again on new ones, up to [`START_ATTEMPTS`] times.
    pub async fn start() -> Self {
        let mut attempt = 1;
        loop {
            match Self::start_once().await {
                Ok(garage) => return garage,
                Err(log) if attempt < START_ATTEMPTS && log.contains("in use") => {
                    eprintln!(
                        "Garage could not bind its ports (attempt {attempt}), retrying:\n{log}"
                    );
                    attempt += 1;
                }
                Err(log) => panic!("Garage exited during start-up:\n{log}"),
            }
        }
    }

    /// One start: `Err` with Garage's log if it exited before it was ready.
    async fn start_once() -> Result<Self, String> {
        let binary = garage_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let [rpc, s3, admin] = free_ports();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let rpc_secret = hex(&pseudo_random(32, seed));
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .expect("write garage.toml");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting Garage ({}): {e}", binary.display()));
        let key_id = format!("GK{}", hex(&pseudo_random(12, seed ^ 0x5555)));
        let secret = hex(&pseudo_random(32, seed ^ 0xAAAA));
        let mut garage = Self {
            child,
            dir,
            config,
            s3_port: s3,
            bucket: "axon-media".to_owned(),
            key_id,
            secret,
        };
        garage.wait_ready().await?;
        garage.set_up();
        Ok(garage)
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(garage_binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run garage CLI")
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until Garage answers; `Err` with its log if it exited first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default();
                return Err(format!("({status})\n{log}"));
            }
            if self.cli(&["status"]).status.success() {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "Garage did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Layout (one node, one zone), bucket, key, permissions.
    fn set_up(&self) {
        let node = self.must(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().expect("node id").to_owned();
        self.must(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        self.must(&["layout", "apply", "--version", "1"]);
        self.must(&["bucket", "create", &self.bucket]);
        self.must(&["key", "import", "--yes", "-n", "axon", &self.key_id, &self.secret]);
        self.must(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket,
            "--key",
            "axon",
        ]);
    }

    /// The `[media]` configuration that points Axon at this Garage.
    pub fn media_toml(&self, extra: &str) -> String {
        format!(
            r#"[media]
storage = "s3"
{extra}
[media.s3]
bucket = "{bucket}"
region = "garage"
endpoint = "http://127.0.0.1:{port}"
access_key_id = "{key}"
secret_access_key = "{secret}"
allow_http = true
"#,
            bucket = self.bucket,
            port = self.s3_port,
            key = self.key_id,
            secret = self.secret,
        )
    }

    /// Objects stored in the bucket (listed over the S3 API).
    pub async fn object_count(&self) -> usize {
        use futures_util::StreamExt;
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region("garage")
            .with_endpoint(format!("http://127.0.0.1:{}", self.s3_port))
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()
            .expect("S3 client");
        let objects: Vec<_> = store.list(None).collect().await;
        let mut count = 0;
        for object in objects {
            object.expect("listing the bucket");
            count += 1;
        }
        count
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
