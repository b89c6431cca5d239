//! Admin commands (`axon user create`, `axon user deactivate`, `axon token create` …).
//!
//! A running server owns the database (RocksDB takes an exclusive lock), so it listens on a
//! Unix socket in its database directory, which only the server's user may enter (mode 0700,
//! see `RocksStore::open`), and the CLI sends the command there: one JSON line in, one JSON
//! line out. When no server is running, the CLI opens the database itself and runs the same
//! [`execute`]. Admins over HTTP use the Synapse-compatible admin API (`api::admin`), which
//! calls the same services.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::services::Services;
use crate::services::accounts::AdminCreateUser;

pub const SOCKET_NAME: &str = "admin.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminCommand {
    CreateUser {
        localpart: String,
        password: String,
        admin: bool,
    },
    /// As the admin API's deactivation: devices deleted (the device list changes), the user
    /// leaves every room, the key backup is deleted, and with `erase` the profile is cleared.
    DeactivateUser {
        localpart: String,
        erase: bool,
    },
    CreateToken {
        token: Option<String>,
        uses_allowed: Option<u32>,
        expiry_ts: Option<u64>,
    },
    ListTokens,
    DeleteToken {
        token: String,
    },
    /// Deletes local media created before the timestamp (ms), with its thumbnails and the
    /// blobs nothing else references.
    PurgeMedia {
        before_ms: u64,
    },
    /// Quarantines (or releases) local media: `mxc://server/id`.
    QuarantineMedia {
        mxc: String,
        quarantine: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminReply {
    Ok(Value),
    Error(String),
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Runs one admin command against the services.
pub async fn execute(services: &Services, command: AdminCommand) -> AdminReply {
    let result = match command {
        AdminCommand::CreateUser { localpart, password, admin } => services
            .accounts
            .admin_create_user(AdminCreateUser { localpart, password, admin })
            .await
            .map(|user_id| json!({"user_id": user_id})),
        AdminCommand::DeactivateUser { localpart, erase } => {
            deactivate(services, &localpart, erase)
                .await
                .map(|user_id| json!({"user_id": user_id, "deactivated": true}))
        }
        AdminCommand::CreateToken { token, uses_allowed, expiry_ts } => services
            .accounts
            .create_registration_token(token, None, uses_allowed, expiry_ts)
            .await
            .map(|t| json!(t)),
        AdminCommand::ListTokens => services.accounts.registration_tokens().await.map(|t| json!(t)),
        AdminCommand::DeleteToken { token } => {
            services.accounts.delete_registration_token(&token).await.map(|()| json!({}))
        }
        AdminCommand::PurgeMedia { before_ms } => services
            .media
            .purge_before(before_ms)
            .await
            .map(|r| json!({"deleted_media": r.deleted_media, "total": r.total})),
        AdminCommand::QuarantineMedia { mxc, quarantine } => {
            match mxc.strip_prefix("mxc://").and_then(|rest| rest.split_once('/')) {
                Some((server, id)) => services
                    .media
                    .quarantine(server, id, quarantine)
                    .await
                    .map(|()| json!({"mxc": mxc, "quarantined": quarantine})),
                None => Err(crate::error::Error::InvalidParam(
                    "expected mxc://<server_name>/<media_id>".into(),
                )),
            }
        }
    };
    match result {
        Ok(v) => AdminReply::Ok(v),
        Err(e) => AdminReply::Error(e.to_string()),
    }
}

async fn deactivate(
    services: &Services,
    localpart: &str,
    erase: bool,
) -> crate::error::Result<ruma::OwnedUserId> {
    let user_id = ruma::UserId::parse(format!("@{localpart}:{}", services.config.server_name))
        .map_err(|e| crate::error::Error::InvalidParam(format!("Invalid user ID: {e}")))?;
    services.accounts.deactivate_by_admin("the admin CLI", &user_id).await?;
    services.after_deactivation(&user_id, erase).await?;
    Ok(user_id)
}

/// Serves admin commands on the socket until the task is dropped.
pub async fn serve(path: PathBuf, services: Arc<Services>) -> std::io::Result<()> {
    // The socket is created inside a private directory, so no other user can reach it at
    // any moment, even before its own mode is set.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} is open to other users (mode {:o}); not creating the admin socket there",
                dir.display(),
                mode & 0o777
            )));
        }
    }
    // A socket left by a killed server would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let services = services.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &services).await {
                tracing::warn!(error = %e, "admin socket connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, services: &Services) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).take(1024 * 1024).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<AdminCommand>(&line) {
        Ok(command) => execute(services, command).await,
        Err(e) => AdminReply::Error(format!("bad admin command: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends a command to a running server. `Ok(None)` when no server listens on the socket.
pub async fn send(path: &Path, command: &AdminCommand) -> std::io::Result<Option<AdminReply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(command).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map(Some).map_err(std::io::Error::other)
}
