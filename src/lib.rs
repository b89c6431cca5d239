//! Axon, a Matrix homeserver.
//!
//! Start at docs/ARCHITECTURE.md. In short: `http` (axum, layers, errors) → `api` (thin
//! handlers over ruma's endpoint types) → `services` (behaviour) → `storage` (traits, RocksDB).

pub mod admin;
pub mod api;
pub mod config;
pub mod error;
pub mod http;
pub mod listeners;
pub mod outbound;
pub mod rooms;
pub mod services;
pub mod storage;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use axon_federation::keys::SigningKey;

use crate::config::Config;
use crate::services::Services;
use crate::storage::Store;
use crate::storage::rocks::RocksStore;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("opening the database: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("{0}")]
    Service(#[from] error::Error),
    #[error("signing key: {0}")]
    Key(#[from] axon_federation::keys::KeyError),
    #[error("listening on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

const SIGNING_KEY_META: &str = "signing_key";

/// Opens the database and builds the services.
pub async fn open(config: Arc<Config>) -> Result<Arc<Services>, StartError> {
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&config.database.path, config.database.cache_mib)?);
    let key = Arc::new(signing_key(store.as_ref()).await?);
    tracing::info!(server_name = %config.server_name, key_id = %key.key_id(), "database open");
    Ok(Services::new(config, store, key).await?)
}

/// Loads the server's signing key, generating and persisting it on first start.
pub async fn signing_key(store: &dyn Store) -> Result<SigningKey, StartError> {
    if let Some(bytes) = store.meta(SIGNING_KEY_META).await? {
        return Ok(SigningKey::from_bytes(&bytes)?);
    }
    let key = SigningKey::generate()?;
    store.set_meta(SIGNING_KEY_META, key.to_bytes()).await?;
    tracing::info!(key_id = %key.key_id(), "generated the server signing key");
    Ok(key)
}

/// Runs the homeserver until SIGINT/SIGTERM, on the `inherited` sockets where they match
/// the configured addresses ([`listeners::Inherited::from_environment`]).
pub async fn serve(
    config: Arc<Config>,
    mut inherited: listeners::Inherited,
) -> Result<(), StartError> {
    inherited.report();
    let metrics = if config.metrics.enabled {
        match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics disabled: could not install the recorder");
                None
            }
        }
    } else {
        None
    };

    let services = open(config.clone()).await?;

    let socket = admin::socket_path(&config.database.path);
    let admin_services = services.clone();
    tokio::spawn(async move {
        if let Err(e) = admin::serve(socket, admin_services).await {
            tracing::error!(error = %e, "admin socket stopped");
        }
    });

    // Bind every listener before serving any, so that a client who can reach one can
    // reach all of them. A socket a service manager passed is used for its address.
    let mut listeners = Vec::new();
    for addr in &config.http.listen {
        let listener = inherited.listen(*addr).await.map_err(|e| StartError::Bind(*addr, e))?;
        listeners.push((*addr, listener));
    }
    let metrics_listener = match metrics {
        Some(handle) => {
            let addr = config.metrics.listen;
            let listener = inherited.listen(addr).await.map_err(|e| StartError::Bind(addr, e))?;
            Some((addr, listener, handle))
        }
        None => None,
    };
    inherited.close_unused();

    let app = http::app(services.clone());
    let mut servers = tokio::task::JoinSet::new();
    if let Some((addr, listener, handle)) = metrics_listener {
        tracing::info!(%addr, path = %config.metrics.path, "metrics listening");
        let app = http::metrics_app(&config.metrics.path, handle);
        servers.spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await
        });
    }
    for (addr, listener) in listeners {
        tracing::info!(%addr, "listening");
        let app = app.clone().into_make_service_with_connect_info::<SocketAddr>();
        servers.spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await
        });
    }

    if !services.store.has_users().await? {
        let exe = std::env::args().next().unwrap_or_else(|| "axon".into());
        println!(
            "\nAxon is running at {} (server name {}). No accounts exist yet; create one with:\n\n    {exe} user create alice --admin\n\n(it asks for the password; the server may keep running).\n",
            config.client_base_url(),
            config.server_name
        );
    }

    while let Some(result) = servers.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Serve(e)),
            Err(e) => return Err(StartError::Serve(std::io::Error::other(e))),
        }
    }
    let _ = std::fs::remove_file(admin::socket_path(&config.database.path));
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
