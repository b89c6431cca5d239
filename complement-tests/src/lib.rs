//! Black-box conformance tests for Axon.
//!
//! Every test starts the real `axon` binary on a port of its own with a temporary data directory
//! and speaks HTTP to it, as a client would. This crate holds the harness; the tests live in
//! `tests/`, one file per area, one test per behaviour.
//!
//! The binary is found through `AXON_BIN`, else next to the test executable (cargo builds it
//! there for `cargo test --workspace`, because the `axon` package has integration tests).

pub mod garage;
pub mod media;

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
pub use serde_json::{Value, json};

/// Path of the `axon` binary under test.
pub fn axon_binary() -> PathBuf {
    if let Ok(path) = std::env::var("AXON_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/axon
    let candidate = exe.parent().and_then(Path::parent).map(|p| p.join("axon"));
    match candidate {
        Some(p) if p.exists() => p,
        _ => panic!(
            "the axon binary was not found next to {}; run `cargo build --bin axon` or set AXON_BIN",
            exe.display()
        ),
    }
}

/// The metrics listener's port when the configuration leaves `[metrics] listen` out.
const DEFAULT_METRICS_PORT: u16 = 9108;

/// In a child between fork and exec: places `fds` at descriptors 3, 4, … without the
/// close-on-exec flag, for the server to inherit (LISTEN_FDS). Async-signal-safe.
fn pass_fds(fds: &[RawFd]) -> std::io::Result<()> {
    const MAX: usize = 8;
    const FIRST: RawFd = 3;
    // First copy each one above every target, so that placing one cannot overwrite another
    // still to be placed. The copies are close-on-exec and vanish at exec.
    if fds.len() > MAX {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let mut copies = [0; MAX];
    for (copy, &fd) in copies.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor open in this process.
        *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
        if *copy == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, &copy) in (FIRST..).zip(&copies[..fds.len()]) {
        // SAFETY: dup2 between descriptors of this process; the copy (≥ 64) is never the
        // target, so dup2 clears close-on-exec on it.
        if unsafe { libc::dup2(copy, target) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Configuration of a test server, turned into a TOML file.
#[derive(Clone)]
pub struct ServerOptions {
    pub registration: &'static str,
    /// Extra TOML appended to the generated file (whole sections).
    pub extra_toml: String,
    /// Rate limits generous enough for tests unless a test wants them tight.
    pub login_rate: (f64, u32),
    pub event_rate: (f64, u32),
    /// Extra TOML lines inside the `[limits]` section (`key = value`, one per line).
    pub extra_limits: String,
    /// Keys added to the `[metrics]` section (e.g. `path = "/m"`). The harness sets
    /// `listen` to a port it binds ([`TestServer::metrics_port`]).
    pub metrics_toml: String,
    /// Leave `metrics.listen` at the server's default (127.0.0.1:9108) instead. Only for
    /// the test of that default: two such servers cannot run at once.
    pub metrics_default_listen: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            registration: "open",
            extra_toml: String::new(),
            login_rate: (1000.0, 1000),
            event_rate: (100_000.0, 100_000),
            extra_limits: String::new(),
            metrics_toml: String::new(),
            metrics_default_listen: false,
        }
    }
}

/// A running `axon` process. Killed (SIGKILL) when dropped.
pub struct TestServer {
    pub port: u16,
    /// Port of the metrics listener on 127.0.0.1 (unless the test chose its own).
    pub metrics_port: u16,
    pub base: String,
    pub data: tempfile::TempDir,
    config_path: PathBuf,
    /// The listening sockets every server process of this test inherits (HTTP, metrics).
    sockets: Vec<TcpListener>,
    child: Option<Child>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(options: ServerOptions) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        // The harness binds the server's sockets and passes them to every process it starts
        // on them (socket activation): no other process can take the ports meanwhile, and
        // connections made while the server restarts wait in the backlog.
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a port on 127.0.0.1");
        let port_of = |l: &TcpListener| l.local_addr().expect("local address").port();
        let mut sockets = vec![bind()];
        let port = port_of(&sockets[0]);
        let metrics_listen = if options.metrics_default_listen {
            String::new()
        } else {
            sockets.push(bind());
            format!("listen = \"127.0.0.1:{}\"", port_of(&sockets[1]))
        };
        let metrics_port = sockets.get(1).map_or(DEFAULT_METRICS_PORT, port_of);
        let config_path = data.path().join("axon.toml");
        let db = data.path().join("db");
        let config = format!(
            r#"server_name = "test.local"
[http]
listen = ["127.0.0.1:{port}"]
[database]
path = "{db}"
cache_mib = 4
[registration]
mode = "{mode}"
[limits]
max_body_bytes = 65536
login = {{ per_second = {lps}, burst = {lb} }}
failed_login_per_account = {{ per_second = {lps}, burst = {lb} }}
register = {{ per_second = 1000.0, burst = 1000 }}
events = {{ per_second = {eps}, burst = {eb} }}
{extra_limits}
[logging]
level = "warn"
[metrics]
{metrics_listen}
{metrics}
{extra}
"#,
            db = db.display(),
            mode = options.registration,
            lps = options.login_rate.0,
            lb = options.login_rate.1,
            eps = options.event_rate.0,
            eb = options.event_rate.1,
            extra_limits = options.extra_limits,
            metrics = options.metrics_toml,
            extra = options.extra_toml,
        );
        std::fs::write(&config_path, config).expect("write config");
        let mut server = Self {
            port,
            metrics_port,
            base: format!("http://127.0.0.1:{port}"),
            data,
            config_path,
            sockets,
            child: None,
            // A request to a server that died waits in the harness's backlog: the timeout
            // makes that a failure, not a hang (long-polls in tests are far shorter).
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        };
        server.spawn().await;
        server
    }

    /// The server process's ID (for reading its memory use in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Path of the data directory (the RocksDB database and admin socket).
    pub fn db_path(&self) -> PathBuf {
        self.data.path().join("db")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Starts the server on this harness's sockets and waits until it answers.
    async fn spawn(&mut self) {
        // `sh` learns the process ID that `exec` keeps, for LISTEN_PID.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
            .arg(axon_binary())
            .arg("--config")
            .arg(&self.config_path)
            .env("LISTEN_FDS", self.sockets.len().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let fds: Vec<RawFd> = self.sockets.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: the closure only calls fcntl and dup2 (async-signal-safe) on descriptors
        // this process holds open, and allocates nothing.
        unsafe { command.pre_exec(move || pass_fds(&fds)) };
        self.child = Some(command.spawn().expect("spawn axon"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/_matrix/client/versions", self.base);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!("axon exited during start-up: {status}");
            }
            // Until the server accepts, a connection waits in the harness's backlog: ask
            // with a timeout, so that a server that exits meanwhile is noticed.
            let probe = self.client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "axon did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash or power loss.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL and starts it again on the same data and port.
    pub async fn crash_and_restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Sends a request; returns the status and the JSON body (`Value::Null` if not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, token, Some(body)).await
    }

    /// Sends raw bytes as the body (for malformed-input tests).
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Registers through the dummy UIA flow; returns the response body.
    pub async fn register(&self, username: &str, password: &str) -> Session {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, 401, "first register call should ask for UIA: {body}");
        let session = body["session"].as_str().expect("session").to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": username,
                    "password": password,
                    "auth": {"type": "m.login.dummy", "session": session},
                }),
            )
            .await;
        assert_eq!(status, 200, "register {username}: {body}");
        Session::from_json(&body)
    }

    pub async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": username},
                "password": password,
            }),
        )
        .await
    }

    /// Runs `axon` with the given arguments against this server's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(axon_binary())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run axon cli")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A logged-in client.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

impl Session {
    pub fn from_json(body: &Value) -> Self {
        Self {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            access_token: body["access_token"].as_str().expect("access_token").to_owned(),
            device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        }
    }

    pub fn token(&self) -> Option<&str> {
        Some(&self.access_token)
    }
}

/// Asserts a Matrix error response.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: u16, errcode: &str) {
    assert_eq!(response.0.as_u16(), status, "unexpected status; body: {}", response.1);
    assert_eq!(response.1["errcode"], errcode, "unexpected errcode; body: {}", response.1);
    assert!(response.1["error"].is_string(), "error message missing: {}", response.1);
}

/// The Python interpreter with matrix-nio installed: `AXON_PYTHON`, else the venv that
/// `make test` creates. Panics (fails the test loudly) when neither is usable.
pub fn nio_python() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("AXON_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/axon-venv/bin/python")),
        )
        .collect();
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import nio"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no Python with matrix-nio found (tried {candidates:?}); run `make test`, which installs it, or set AXON_PYTHON"
    );
}

/// Path of a client script in `complement-tests/clients/`.
pub fn client_script(name: &str) -> PathBuf {
    manifest_dir().join("clients").join(name)
}

/// This crate's directory. Read at run time (cargo sets it for the tests it runs) rather than
/// baked in at compile time: build outputs are shared between checkouts (the CI clone and a
/// developer's tree use one target directory), and a crate compiled in another checkout would
/// otherwise point at that checkout's files.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Room helpers, in the words of the spec.
impl TestServer {
    pub async fn create_room(&self, who: &Session, body: Value) -> String {
        let (status, res) = self.post("/_matrix/client/v3/createRoom", who.token(), body).await;
        assert_eq!(status, 200, "createRoom: {res}");
        res["room_id"].as_str().expect("room_id").to_owned()
    }

    pub async fn join(&self, who: &Session, room: &str) -> (StatusCode, Value) {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room)), who.token(), json!({})).await
    }

    /// Sends an `m.room.message` with this content; asserts 200 and returns the event ID.
    pub async fn send_message(
        &self,
        who: &Session,
        room: &str,
        txn: &str,
        content: Value,
    ) -> String {
        let (status, body) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
                who.token(),
                content,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().expect("event_id").to_owned()
    }

    pub async fn send_text(
        &self,
        who: &Session,
        room: &str,
        txn: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        self.put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
            who.token(),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// `GET /_matrix/client/v3/rooms/{room}/{rest}` (`rest`: `messages?dir=b`, `state`, …).
    pub async fn room_get(&self, who: &Session, room: &str, rest: &str) -> (StatusCode, Value) {
        self.get(&format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room)), who.token()).await
    }

    pub async fn sync(&self, who: &Session, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        let (status, body) = self.get(&path, who.token()).await;
        assert_eq!(status, 200, "sync: {body}");
        body
    }
}

/// Percent-encodes a path segment (room IDs contain `!`, aliases `#` and `:`).
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
