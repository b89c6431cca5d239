//! The `axon` binary: the homeserver, and the admin's commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axon::admin::{self, AdminCommand, AdminReply};
use axon::config::Config;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a sync response is many small allocations,
/// and glibc's malloc was a quarter of the server's CPU time in the fan-out benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "axon", version, about = "A Matrix homeserver")]
struct Cli {
    /// Configuration file (default: ./config.toml when it exists, else built-in defaults).
    #[arg(long, short, env = "AXON_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage registration tokens (for `registration.mode = "token"`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the media repository.
    #[command(subcommand)]
    Media(MediaCommand),
}

#[derive(Subcommand)]
enum MediaCommand {
    /// Delete local media uploaded more than N days ago (records, thumbnails, and the
    /// stored files no other media shares).
    Purge {
        #[arg(long)]
        older_than_days: u64,
    },
    /// Quarantine media: downloads and thumbnails answer 404 until released.
    Quarantine {
        /// `mxc://<server_name>/<media_id>`
        mxc: String,
        /// Release it from quarantine instead.
        #[arg(long)]
        release: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from --password, AXON_PASSWORD, or standard
    /// input.
    Create {
        /// The localpart: `alice` for @alice:server_name.
        localpart: String,
        #[arg(long, env = "AXON_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Deactivate an account: its devices are deleted, it leaves every room, its key backup
    /// is deleted; the name is never reused.
    Deactivate {
        /// The localpart: `alice` for @alice:server_name.
        localpart: String,
        /// Also erase the profile (display name and avatar).
        #[arg(long)]
        erase: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a registration token.
    Create {
        /// The token itself (default: 16 random characters).
        #[arg(long)]
        token: Option<String>,
        /// How many registrations may use it (default: unlimited).
        #[arg(long)]
        uses: Option<u32>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    /// List registration tokens.
    List,
    /// Delete a registration token.
    Delete { token: String },
}

fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (input is shown): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Large allocations (argon2's 19 MiB work areas, RocksDB blocks) are mmapped and returned to
/// the system when freed. glibc otherwise raises its mmap threshold after the first such free
/// and keeps every later one in a per-thread arena: hundreds of MiB after a login burst.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> ExitCode {
    // Before anything opens a descriptor: from 3 on, they are the service manager's.
    let inherited = axon::listeners::Inherited::from_environment();
    tune_allocator();
    let cli = Cli::parse();
    let (config, file) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("axon: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("axon: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Arc::new(config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            axon::telemetry::init(&config.logging);
            match &file {
                Some(f) => tracing::info!(file = %f.display(), "configuration loaded"),
                None => tracing::info!("no configuration file; using defaults"),
            }
            match runtime.block_on(axon::serve(config, inherited)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "axon stopped");
                    eprintln!("axon: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::User(UserCommand::Create { localpart, password, admin }) => {
            let password = match password {
                Some(p) => p,
                None => match read_password() {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("axon: reading the password: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            run_admin(&runtime, config, AdminCommand::CreateUser { localpart, password, admin })
        }
        Command::User(UserCommand::Deactivate { localpart, erase }) => {
            run_admin(&runtime, config, AdminCommand::DeactivateUser { localpart, erase })
        }
        Command::Token(TokenCommand::Create { token, uses, expires_in_days }) => {
            let expiry_ts = expires_in_days
                .map(|d| axon::storage::now_ms().saturating_add(d.saturating_mul(86_400_000)));
            run_admin(
                &runtime,
                config,
                AdminCommand::CreateToken { token, uses_allowed: uses, expiry_ts },
            )
        }
        Command::Media(MediaCommand::Purge { older_than_days }) => {
            let before_ms =
                axon::storage::now_ms().saturating_sub(older_than_days.saturating_mul(86_400_000));
            run_admin(&runtime, config, AdminCommand::PurgeMedia { before_ms })
        }
        Command::Media(MediaCommand::Quarantine { mxc, release }) => {
            run_admin(&runtime, config, AdminCommand::QuarantineMedia { mxc, quarantine: !release })
        }
        Command::Token(TokenCommand::List) => run_admin(&runtime, config, AdminCommand::ListTokens),
        Command::Token(TokenCommand::Delete { token }) => {
            run_admin(&runtime, config, AdminCommand::DeleteToken { token })
        }
    }
}

/// Sends the command to the running server, or runs it on the database directly.
fn run_admin(
    runtime: &tokio::runtime::Runtime,
    config: Arc<Config>,
    cmd: AdminCommand,
) -> ExitCode {
    let reply = runtime.block_on(async {
        let socket = admin::socket_path(&config.database.path);
        match admin::send(&socket, &cmd).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                let services = axon::open(config.clone()).await.map_err(|e| e.to_string())?;
                Ok(admin::execute(&services, cmd).await)
            }
            Err(e) => Err(format!("talking to the running server: {e}")),
        }
    });
    match reply {
        Ok(AdminReply::Ok(value)) => {
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(AdminReply::Error(e)) | Err(e) => {
            eprintln!("axon: {e}");
            ExitCode::FAILURE
        }
    }
}
