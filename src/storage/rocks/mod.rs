//! The RocksDB implementation of the storage traits.
//!
//! One column family per kind of data; composite keys join their parts with `0xFF`, a byte
//! that never occurs in UTF-8, so prefixes scan exactly one owner's rows in order.
//!
//! Every trait method is one `WriteBatch` written with `sync = true`: the WAL is fsynced
//! before the call returns, so an acknowledged write survives kill -9. Read-check-write
//! methods hold `write_lock` so that two registrations cannot take one name.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use read_cache::ReadCache;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    AccessTokenRecord, AccountStore, DeviceListChange, DeviceLogout, DeviceRecord, MetaStore,
    NewSession, RegistrationTokenRecord, RegistrationTokenStore, StorageError, StorageResult,
    TokenHash, UserRecord, records::now_ms,
};

const SEP: u8 = 0xFF;

/// Column families. Adding one is free (created on open); renaming one is a migration.
mod cf {
    pub const META: &str = "meta";
    pub const USERS: &str = "users";
    pub const DEVICES: &str = "devices";
    pub const ACCESS_TOKENS: &str = "access_tokens";
    pub const DEVICE_TOKENS: &str = "device_tokens";
    pub const REGISTRATION_TOKENS: &str = "registration_tokens";
    /// `event_id` → [`EventRecord`](crate::storage::rooms::EventRecord).
    pub const EVENTS: &str = "events";
    /// `room_id 0xFF pos(be64)` → `event_id`: each room's timeline in stream order.
    pub const ROOM_EVENTS: &str = "room_events";
    /// `room_id 0xFF origin_server_ts(be64) pos(be64)` → `event_id`: each room's events in
    /// timestamp order (`/timestamp_to_event`).
    pub const ROOM_EVENTS_BY_TS: &str = "room_events_by_ts";
    /// `group(be64)` → [`StateGroupRecord`](crate::storage::rooms::StateGroupRecord).
    pub const STATE_GROUPS: &str = "state_groups";
    /// `room_id` → [`RoomRecord`](crate::storage::rooms::RoomRecord).
    pub const ROOMS: &str = "rooms";
    /// `room_id` → [`RoomHead`](crate::storage::rooms::RoomHead).
    pub const ROOM_HEADS: &str = "room_heads";
    /// `room_id 0xFF user_id` → membership.
    pub const ROOM_MEMBERS: &str = "room_members";
    /// `user_id 0xFF room_id` → membership.
    pub const USER_ROOMS: &str = "user_rooms";
    /// `localpart 0xFF device 0xFF txn_id` → `event_id`.
    pub const TXN_IDS: &str = "txn_ids";
    /// `alias` → `{room_id, creator}`.
    pub const ALIASES: &str = "aliases";
    /// `room_id 0xFF alias` → ∅.
    pub const ROOM_ALIASES: &str = "room_aliases";
    /// `user_id 0xFF filter_id` → filter JSON.
    pub const FILTERS: &str = "filters";
    /// `user_id 0xFF room_id (empty: global) 0xFF type` → account data.
    pub const ACCOUNT_DATA: &str = "account_data";
    /// `room_id` → `{}` for rooms published in the room directory.
    pub const PUBLIC_ROOMS: &str = "public_rooms";
    /// `user_id 0xFF room_id` → how far the user has read: the layout before receipts,
    /// moved into `receipts` (as `m.read.private`) at start-up, then empty.
    pub const READ_POSITIONS: &str = "read_positions";
    /// `room_id 0xFF user_id 0xFF type 0xFF thread (empty: unthreaded)` →
    /// [`ReceiptRecord`](crate::storage::receipts::ReceiptRecord): the latest receipt of each.
    pub const RECEIPTS: &str = "receipts";
    /// `room_id 0xFF type 0xFF state_key 0xFF pos(be64)` →
    /// [`StateChange`](crate::storage::rooms::StateChange): every state event of a room by
    /// key, so "a user's memberships over time" and "the history visibility over time" are
    /// one prefix scan.
    pub const STATE_CHANGES: &str = "state_changes";
    /// `localpart 0xFF device 0xFF pos(be64)` → a to-device message waiting for its device.
    pub const TO_DEVICE: &str = "to_device";
    /// `localpart 0xFF device` → number (be64) of the messages waiting in `to_device`.
    pub const TO_DEVICE_COUNTS: &str = "to_device_counts";
    /// `user_id 0xFF version(be64)` → [`BackupVersionRecord`](crate::storage::key_backup::BackupVersionRecord)
    /// (empty: the tombstone of a deleted newest version).
    pub const BACKUP_VERSIONS: &str = "backup_versions";
    /// `user_id 0xFF version(be64) 0xFF room_id 0xFF session_id` → `KeyBackupData` JSON.
    pub const BACKUP_KEYS: &str = "backup_keys";
    /// `localpart 0xFF device_id` → the device's keys JSON (`/keys/upload`).
    pub const DEVICE_KEYS: &str = "device_keys";
    /// `localpart 0xFF device_id 0xFF algorithm:key_id` → one-time key JSON.
    pub const ONE_TIME_KEYS: &str = "one_time_keys";
    /// `localpart 0xFF device_id 0xFF algorithm` →
    /// [`FallbackKeyRecord`](crate::storage::e2ee_keys::FallbackKeyRecord).
    pub const FALLBACK_KEYS: &str = "fallback_keys";
    /// `user_id` → position (be64) of the latest change of the user's device list.
    pub const DEVICE_LIST_CHANGES: &str = "device_list_changes";
    /// `localpart 0xFF kind` (`master`, `self_signing`, `user_signing`) → key JSON.
    pub const CROSS_SIGNING_KEYS: &str = "cross_signing_keys";
    /// `localpart 0xFF target key (device ID or master public key) 0xFF signer user ID 0xFF
    /// signer key ID` → signature (`/keys/signatures/upload`).
    pub const KEY_SIGNATURES: &str = "key_signatures";
    /// `media_id` → [`MediaRecord`](crate::storage::media::MediaRecord).
    pub const MEDIA: &str = "media";
    /// `media_id 0xFF WxH/method` → [`ThumbnailRecord`](crate::storage::media::ThumbnailRecord).
    pub const MEDIA_THUMBNAILS: &str = "media_thumbnails";
    /// `sha256 0xFF media_id 0xFF thumbnail key (empty: the original)` → ∅: who uses a blob.
    pub const MEDIA_BLOB_REFS: &str = "media_blob_refs";
    /// `uploader 0xFF media_id` → expiry (be64 ms) of a pending upload (`/create`).
    pub const MEDIA_PENDING: &str = "media_pending";
    /// `localpart 0xFF event stream position (u64 BE)` → the user's part of a notification
    /// (`/notifications`; `storage::rocks::push` has the format).
    pub const NOTIFICATIONS: &str = "notifications";
    /// Event stream position (u64 BE) → what its notifications share
    /// ([`NotifiedEventRecord`](crate::storage::push::NotifiedEventRecord)).
    pub const NOTIFICATION_EVENTS: &str = "notification_events";
    /// `localpart 0xFF app_id 0xFF pushkey` → pusher JSON.
    pub const PUSHERS: &str = "pushers";
    /// `term 0xFF room_id 0xFF pos(be64)` → count (be32) ++ event_id: the message search
    /// index (`rooms::search`), written in the event's batch.
    pub const SEARCH_INDEX: &str = "search_index";
    /// `app_id 0xFF pushkey 0xFF localpart` → ∅: who has a pusher of that app and pushkey.
    pub const PUSHER_KEYS: &str = "pusher_keys";
    /// `id(be64)` → [`ReportRecord`](crate::storage::moderation::ReportRecord).
    pub const REPORTS: &str = "reports";
    /// SHA-256(token) → [`OpenIdTokenRecord`](crate::storage::moderation::OpenIdTokenRecord).
    pub const OPENID_TOKENS: &str = "openid_tokens";
    /// The relations index and thread summaries (`storage::rocks::relations`: one CF, six
    /// key families told apart by their first byte).
    pub const RELATIONS: &str = "relations";
    pub const ALL: &[&str] = &[
        META,
        USERS,
        DEVICES,
        ACCESS_TOKENS,
        DEVICE_TOKENS,
        REGISTRATION_TOKENS,
        EVENTS,
        ROOM_EVENTS,
        ROOM_EVENTS_BY_TS,
        STATE_GROUPS,
        ROOMS,
        ROOM_HEADS,
        ROOM_MEMBERS,
        USER_ROOMS,
        TXN_IDS,
        ALIASES,
        ROOM_ALIASES,
        FILTERS,
        ACCOUNT_DATA,
        PUBLIC_ROOMS,
        READ_POSITIONS,
        RECEIPTS,
        STATE_CHANGES,
        TO_DEVICE,
        TO_DEVICE_COUNTS,
        BACKUP_VERSIONS,
        BACKUP_KEYS,
        DEVICE_KEYS,
        ONE_TIME_KEYS,
        FALLBACK_KEYS,
        DEVICE_LIST_CHANGES,
        CROSS_SIGNING_KEYS,
        KEY_SIGNATURES,
        MEDIA,
        MEDIA_THUMBNAILS,
        MEDIA_BLOB_REFS,
        MEDIA_PENDING,
        NOTIFICATIONS,
        NOTIFICATION_EVENTS,
        PUSHERS,
        SEARCH_INDEX,
        PUSHER_KEYS,
        REPORTS,
        OPENID_TOKENS,
        RELATIONS,
    ];
}

mod e2ee_keys;
mod key_backup;
mod media;
mod moderation;
mod push;
mod read_cache;
mod receipts;
mod relations;
mod rooms;
mod to_device;
mod users;

pub struct RocksStore {
    db: Arc<DB>,
    write_lock: Arc<Mutex<()>>,
    /// Access tokens by hash (every authenticated request looks one up).
    tokens: Arc<ReadCache<[u8; 32], AccessTokenRecord>>,
    /// Key counts by `(localpart, device)` (every sync response reads them).
    key_counts: Arc<ReadCache<(String, String), Arc<KeyCounts>>>,
}

/// Access tokens kept in memory: one per active device of a large server.
const TOKEN_CACHE_ENTRIES: usize = 100_000;

/// Devices whose key counts are kept in memory (the syncing ones).
const KEY_COUNT_CACHE_ENTRIES: usize = 100_000;

/// What every sync response tells a device about its keys: one-time keys left per
/// algorithm, and the algorithms of its unused fallback keys.
#[derive(Clone, Default)]
pub(super) struct KeyCounts {
    one_time: std::collections::BTreeMap<String, u64>,
    unused_fallback: Vec<String>,
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Backend(e.into_string())
    }
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(SEP);
    k
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> StorageResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { what, detail: e.to_string() })
}

/// The `meta` merge operator: the largest of big-endian u64 values (malformed operands are
/// ignored, so a corrupt one cannot hide the others).
fn merge_max_be_u64(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let value = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes);
    let max = existing.and_then(value).into_iter().chain(operands.iter().filter_map(value)).max();
    Some(max.unwrap_or(0).to_be_bytes().to_vec())
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

impl RocksStore {
    /// Opens (or creates) the database under `path`, a directory private to its owner.
    pub fn open(path: &Path, cache_mib: usize) -> StorageResult<Self> {
        create_private_dir(path)
            .map_err(|e| StorageError::Backend(format!("creating {}: {e}", path.display())))?;
        let cache = Cache::new_lru_cache(cache_mib.max(1) * 1024 * 1024);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);

        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(8 * 1024 * 1024);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);

        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 * 1024 * 1024);
        db_opts.set_max_background_jobs(2);
        db_opts.set_max_open_files(256);

        let descriptors = cf::ALL
            .iter()
            .map(|name| {
                let mut opts = cf_opts.clone();
                if *name == cf::META {
                    // Stream positions written by concurrent batches: merged as a maximum, so
                    // a batch that lands later with a lower position never lowers it.
                    opts.set_merge_operator_associative("max_be_u64", merge_max_be_u64);
                }
                ColumnFamilyDescriptor::new(*name, opts)
            })
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") {
                StorageError::Backend(format!(
                    "{msg} (is another axon process using {}?)",
                    path.display()
                ))
            } else {
                StorageError::Backend(msg)
            }
        })?;
        rooms::migrate(&db)?;
        to_device::migrate(&db)?;
        push::migrate(&db)?;
        relations::migrate(&db)?;
        Ok(Self {
            db: Arc::new(db),
            write_lock: Arc::new(Mutex::new(())),
            tokens: Arc::new(ReadCache::new(TOKEN_CACHE_ENTRIES)),
            key_counts: Arc::new(ReadCache::new(KEY_COUNT_CACHE_ENTRIES)),
        })
    }

    /// Runs a (possibly fsyncing) closure on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&DB, &Mutex<()>) -> StorageResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        let lock = self.write_lock.clone();
        tokio::task::spawn_blocking(move || f(&db, &lock))
            .await
            .map_err(|e| StorageError::Backend(format!("storage task failed: {e}")))?
    }
}

/// Creates the database directory with mode 0700 from the start: it holds the server's
/// signing key and the admin socket. Missing parents are created with the usual mode. An
/// existing directory that others may enter is restricted to its owner, with a warning.
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the database directory was open to other users; restricting it to its owner"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)
}

fn handle<'a>(db: &'a DB, name: &str) -> StorageResult<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| StorageError::Backend(format!("column family {name} missing")))
}

fn get_json<T: DeserializeOwned>(
    db: &DB,
    cf_name: &'static str,
    k: &[u8],
) -> StorageResult<Option<T>> {
    match db.get_pinned_cf(handle(db, cf_name)?, k)? {
        Some(bytes) => decode(cf_name, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Keys under `prefix` in one column family, in order.
fn keys_with_prefix(db: &DB, cf_name: &str, prefix: &[u8]) -> StorageResult<Vec<Box<[u8]>>> {
    let mut out = Vec::new();
    let iter = db.iterator_cf(handle(db, cf_name)?, IteratorMode::From(prefix, Direction::Forward));
    for item in iter {
        let (k, _) = item?;
        if !k.starts_with(prefix) {
            break;
        }
        out.push(k);
    }
    Ok(out)
}

/// A key's suffix after a scanned prefix, and the value.
pub(super) type Row = (Vec<u8>, Box<[u8]>);

/// All rows under a prefix.
pub(super) fn scan(db: &DB, cf_name: &'static str, p: &[u8]) -> StorageResult<Vec<Row>> {
    let mut out = Vec::new();
    for item in db.iterator_cf(handle(db, cf_name)?, IteratorMode::From(p, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(p) {
            break;
        }
        out.push((k[p.len()..].to_vec(), v));
    }
    Ok(out)
}

/// What a write deleted or changed among the cached records: once it is written, the caches
/// drop exactly these ([`forget`]), not every user's.
#[derive(Debug, Default)]
struct Revoked {
    localpart: String,
    /// Access tokens (by hash) deleted or changed.
    tokens: Vec<[u8; 32]>,
    /// Devices deleted (their key counts).
    devices: Vec<String>,
    /// A token key of an unexpected length was met: drop every cached token.
    all_tokens: bool,
}

impl Revoked {
    fn of(localpart: &str) -> Self {
        Self { localpart: localpart.to_owned(), ..Default::default() }
    }

    fn token(&mut self, hash: &[u8]) {
        match <[u8; 32]>::try_from(hash) {
            Ok(hash) => self.tokens.push(hash),
            Err(_) => self.all_tokens = true,
        }
    }
}

/// After the write: drops from the caches what it revoked.
fn forget(
    tokens: &ReadCache<[u8; 32], AccessTokenRecord>,
    key_counts: &ReadCache<(String, String), Arc<KeyCounts>>,
    revoked: Revoked,
) {
    if revoked.all_tokens {
        tokens.clear();
    } else if !revoked.tokens.is_empty() {
        tokens.invalidate_all(&revoked.tokens);
    }
    if !revoked.devices.is_empty() {
        let keys: Vec<(String, String)> =
            revoked.devices.into_iter().map(|d| (revoked.localpart.clone(), d)).collect();
        key_counts.invalidate_all(&keys);
    }
}

/// Adds to `batch` the deletion of one device, its end-to-end keys, every token issued to
/// it, the to-device messages waiting for it and the pushers it created.
fn delete_device_in(
    db: &DB,
    batch: &mut WriteBatch,
    revoked: &mut Revoked,
    device_id: &str,
) -> StorageResult<()> {
    let localpart = revoked.localpart.clone();
    let localpart = localpart.as_str();
    batch.delete_cf(handle(db, cf::DEVICES)?, key(&[localpart.as_bytes(), device_id.as_bytes()]));
    to_device::delete_device_messages_in(db, batch, localpart, device_id)?;
    e2ee_keys::delete_device_keys_in(db, batch, localpart, device_id)?;
    push::delete_device_pushers_in(db, batch, localpart, device_id)?;
    revoked.devices.push(device_id.to_owned());
    revoke_device_tokens_in(db, batch, revoked, device_id)
}

fn revoke_device_tokens_in(
    db: &DB,
    batch: &mut WriteBatch,
    revoked: &mut Revoked,
    device_id: &str,
) -> StorageResult<()> {
    let p = prefix(&[revoked.localpart.as_bytes(), device_id.as_bytes()]);
    let tokens = handle(db, cf::ACCESS_TOKENS)?;
    let index = handle(db, cf::DEVICE_TOKENS)?;
    for k in keys_with_prefix(db, cf::DEVICE_TOKENS, &p)? {
        batch.delete_cf(tokens, &k[p.len()..]);
        batch.delete_cf(index, &k);
        revoked.token(&k[p.len()..]);
    }
    Ok(())
}

fn put_session_in(
    db: &DB,
    batch: &mut WriteBatch,
    localpart: &str,
    session: &NewSession,
) -> StorageResult<()> {
    let device_id = session.device.device_id.as_bytes();
    batch.put_cf(
        handle(db, cf::DEVICES)?,
        key(&[localpart.as_bytes(), device_id]),
        encode(&session.device),
    );
    batch.put_cf(handle(db, cf::ACCESS_TOKENS)?, session.token_hash.0, encode(&session.token));
    batch.put_cf(
        handle(db, cf::DEVICE_TOKENS)?,
        key(&[localpart.as_bytes(), device_id, &session.token_hash.0]),
        [],
    );
    Ok(())
}

/// Counts one completed registration against a registration token, in `batch`.
fn consume_registration_token_in(
    db: &DB,
    batch: &mut WriteBatch,
    token: &str,
) -> StorageResult<()> {
    let mut record: RegistrationTokenRecord =
        get_json(db, cf::REGISTRATION_TOKENS, token.as_bytes())?
            .ok_or(StorageError::TokenNotUsable)?;
    if !record.is_usable(now_ms()) {
        return Err(StorageError::TokenNotUsable);
    }
    record.completed += 1;
    batch.put_cf(handle(db, cf::REGISTRATION_TOKENS)?, token.as_bytes(), encode(&record));
    Ok(())
}

fn device_ids(db: &DB, localpart: &str) -> StorageResult<Vec<String>> {
    let p = prefix(&[localpart.as_bytes()]);
    keys_with_prefix(db, cf::DEVICES, &p)?
        .into_iter()
        .map(|k| {
            String::from_utf8(k[p.len()..].to_vec())
                .map_err(|e| StorageError::Corrupt { what: cf::DEVICES, detail: e.to_string() })
        })
        .collect()
}

#[async_trait]
impl AccountStore for RocksStore {
    async fn user(&self, localpart: &str) -> StorageResult<Option<UserRecord>> {
        get_json(&self.db, cf::USERS, localpart.as_bytes())
    }

    async fn create_user(
        &self,
        user: UserRecord,
        session: Option<NewSession>,
        registration_token: Option<String>,
    ) -> StorageResult<()> {
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            if db.get_pinned_cf(handle(db, cf::USERS)?, user.localpart.as_bytes())?.is_some() {
                return Err(StorageError::AlreadyExists);
            }
            let mut batch = WriteBatch::default();
            if let Some(token) = registration_token {
                consume_registration_token_in(db, &mut batch, &token)?;
            }
            batch.put_cf(handle(db, cf::USERS)?, user.localpart.as_bytes(), encode(&user));
            if let Some(session) = &session {
                put_session_in(db, &mut batch, &user.localpart, session)?;
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn upgrade_guest(
        &self,
        localpart: &str,
        password_hash: String,
        session: Option<NewSession>,
        registration_token: Option<String>,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        let key_counts = self.key_counts.clone();
        let token_cache = self.tokens.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut user: UserRecord =
                get_json(db, cf::USERS, localpart.as_bytes())?.ok_or(StorageError::NotFound)?;
            if !user.guest || user.deactivated {
                return Err(StorageError::NotFound);
            }
            let mut batch = WriteBatch::default();
            if let Some(token) = registration_token {
                consume_registration_token_in(db, &mut batch, &token)?;
            }
            user.guest = false;
            user.password_hash = Some(password_hash);
            batch.put_cf(handle(db, cf::USERS)?, localpart.as_bytes(), encode(&user));
            // Every token of the user's (`localpart 0xFF device 0xFF hash`) stops being a
            // guest's.
            let tokens = handle(db, cf::ACCESS_TOKENS)?;
            let mut revoked = Revoked::of(&localpart);
            for k in keys_with_prefix(db, cf::DEVICE_TOKENS, &prefix(&[localpart.as_bytes()]))? {
                let Some(hash) = k.len().checked_sub(32).map(|at| &k[at..]) else { continue };
                if let Some(mut record) =
                    get_json::<AccessTokenRecord>(db, cf::ACCESS_TOKENS, hash)?
                {
                    record.guest = false;
                    batch.put_cf(tokens, hash, encode(&record));
                    revoked.token(hash);
                }
            }
            if let Some(session) = &session {
                put_session_in(db, &mut batch, &localpart, session)?;
            }
            db.write_opt(batch, &synced())?;
            forget(&token_cache, &key_counts, revoked);
            Ok(())
        })
        .await
    }

    async fn set_password(
        &self,
        localpart: &str,
        password_hash: String,
        logout: DeviceLogout,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        let key_counts = self.key_counts.clone();
        let token_cache = self.tokens.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut user: UserRecord =
                get_json(db, cf::USERS, localpart.as_bytes())?.ok_or(StorageError::NotFound)?;
            user.password_hash = Some(password_hash);
            let mut batch = WriteBatch::default();
            batch.put_cf(handle(db, cf::USERS)?, localpart.as_bytes(), encode(&user));
            let mut revoked = Revoked::of(&localpart);
            if let DeviceLogout::AllExcept(keep, change) = logout {
                for device_id in device_ids(db, &localpart)? {
                    if keep.as_deref() != Some(device_id.as_str()) {
                        delete_device_in(db, &mut batch, &mut revoked, &device_id)?;
                    }
                }
                e2ee_keys::put_device_list_change_in(db, &mut batch, &change)?;
            }
            db.write_opt(batch, &synced())?;
            forget(&token_cache, &key_counts, revoked);
            Ok(())
        })
        .await
    }

    async fn deactivate_user(
        &self,
        localpart: &str,
        change: DeviceListChange,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        let key_counts = self.key_counts.clone();
        let token_cache = self.tokens.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut user: UserRecord =
                get_json(db, cf::USERS, localpart.as_bytes())?.ok_or(StorageError::NotFound)?;
            user.deactivated = true;
            user.password_hash = None;
            let mut batch = WriteBatch::default();
            batch.put_cf(handle(db, cf::USERS)?, localpart.as_bytes(), encode(&user));
            let mut revoked = Revoked::of(&localpart);
            for device_id in device_ids(db, &localpart)? {
                delete_device_in(db, &mut batch, &mut revoked, &device_id)?;
            }
            e2ee_keys::put_device_list_change_in(db, &mut batch, &change)?;
            db.write_opt(batch, &synced())?;
            forget(&token_cache, &key_counts, revoked);
            Ok(())
        })
        .await
    }

    async fn set_admin(&self, localpart: &str, admin: bool) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut user: UserRecord =
                get_json(db, cf::USERS, localpart.as_bytes())?.ok_or(StorageError::NotFound)?;
            user.admin = admin;
            db.put_cf_opt(handle(db, cf::USERS)?, localpart.as_bytes(), encode(&user), &synced())?;
            Ok(())
        })
        .await
    }

    async fn has_users(&self) -> StorageResult<bool> {
        match self.db.iterator_cf(handle(&self.db, cf::USERS)?, IteratorMode::Start).next() {
            Some(item) => item.map(|_| true).map_err(Into::into),
            None => Ok(false),
        }
    }

    async fn users(&self) -> StorageResult<Vec<UserRecord>> {
        self.blocking(|db, _| {
            let mut out = Vec::new();
            for item in db.iterator_cf(handle(db, cf::USERS)?, IteratorMode::Start) {
                let (_, v) = item?;
                out.push(decode(cf::USERS, &v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn create_session(&self, localpart: &str, session: NewSession) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        let key_counts = self.key_counts.clone();
        let token_cache = self.tokens.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut session = session;
            let existing: Option<DeviceRecord> = get_json(
                db,
                cf::DEVICES,
                &key(&[localpart.as_bytes(), session.device.device_id.as_bytes()]),
            )?;
            let mut batch = WriteBatch::default();
            let mut revoked = Revoked::of(&localpart);
            if let Some(existing) = existing {
                session.device.created_ts = existing.created_ts;
                if session.device.display_name.is_none() {
                    session.device.display_name = existing.display_name;
                }
                revoke_device_tokens_in(db, &mut batch, &mut revoked, &session.device.device_id)?;
            }
            put_session_in(db, &mut batch, &localpart, &session)?;
            db.write_opt(batch, &synced())?;
            forget(&token_cache, &key_counts, revoked);
            Ok(())
        })
        .await
    }

    async fn access_token(&self, hash: &TokenHash) -> StorageResult<Option<AccessTokenRecord>> {
        self.tokens.get(&hash.0, || get_json(&self.db, cf::ACCESS_TOKENS, &hash.0))
    }

    async fn devices(&self, localpart: &str) -> StorageResult<Vec<DeviceRecord>> {
        scan(&self.db, cf::DEVICES, &prefix(&[localpart.as_bytes()]))?
            .into_iter()
            .map(|(_, v)| decode(cf::DEVICES, &v))
            .collect()
    }

    async fn device(
        &self,
        localpart: &str,
        device_id: &str,
    ) -> StorageResult<Option<DeviceRecord>> {
        get_json(&self.db, cf::DEVICES, &key(&[localpart.as_bytes(), device_id.as_bytes()]))
    }

    async fn update_device(&self, localpart: &str, device: DeviceRecord) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let k = key(&[localpart.as_bytes(), device.device_id.as_bytes()]);
            if db.get_pinned_cf(handle(db, cf::DEVICES)?, &k)?.is_none() {
                return Err(StorageError::NotFound);
            }
            db.put_cf_opt(handle(db, cf::DEVICES)?, k, encode(&device), &synced())?;
            Ok(())
        })
        .await
    }

    async fn delete_devices(
        &self,
        localpart: &str,
        device_ids: Vec<String>,
        change: DeviceListChange,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        let key_counts = self.key_counts.clone();
        let token_cache = self.tokens.clone();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let mut batch = WriteBatch::default();
            let mut revoked = Revoked::of(&localpart);
            for device_id in &device_ids {
                delete_device_in(db, &mut batch, &mut revoked, device_id)?;
            }
            e2ee_keys::put_device_list_change_in(db, &mut batch, &change)?;
            db.write_opt(batch, &synced())?;
            forget(&token_cache, &key_counts, revoked);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RegistrationTokenStore for RocksStore {
    async fn create_registration_token(
        &self,
        record: RegistrationTokenRecord,
    ) -> StorageResult<()> {
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let cf = handle(db, cf::REGISTRATION_TOKENS)?;
            if db.get_pinned_cf(cf, record.token.as_bytes())?.is_some() {
                return Err(StorageError::AlreadyExists);
            }
            db.put_cf_opt(cf, record.token.as_bytes(), encode(&record), &synced())?;
            Ok(())
        })
        .await
    }

    async fn registration_token(
        &self,
        token: &str,
    ) -> StorageResult<Option<RegistrationTokenRecord>> {
        get_json(&self.db, cf::REGISTRATION_TOKENS, token.as_bytes())
    }

    async fn registration_tokens(&self) -> StorageResult<Vec<RegistrationTokenRecord>> {
        let mut out = Vec::new();
        let cf = handle(&self.db, cf::REGISTRATION_TOKENS)?;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (_, v) = item?;
            out.push(decode(cf::REGISTRATION_TOKENS, &v)?);
        }
        Ok(out)
    }

    async fn delete_registration_token(&self, token: &str) -> StorageResult<()> {
        let token = token.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let cf = handle(db, cf::REGISTRATION_TOKENS)?;
            if db.get_pinned_cf(cf, token.as_bytes())?.is_none() {
                return Err(StorageError::NotFound);
            }
            db.delete_cf_opt(cf, token.as_bytes(), &synced())?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl MetaStore for RocksStore {
    async fn meta(&self, key: &str) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.db.get_cf(handle(&self.db, cf::META)?, key.as_bytes())?)
    }

    async fn set_meta(&self, key: &str, value: Vec<u8>) -> StorageResult<()> {
        let key = key.to_owned();
        self.blocking(move |db, _| {
            db.put_cf_opt(handle(db, cf::META)?, key.as_bytes(), value, &synced())?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn user(localpart: &str) -> UserRecord {
        UserRecord {
            localpart: localpart.into(),
            password_hash: Some("x".into()),
            created_ts: 1,
            deactivated: false,
            admin: false,
            displayname: None,
            avatar_url: None,
            guest: false,
        }
    }

    pub(super) fn session(device: &str, token: &str) -> NewSession {
        NewSession {
            device: DeviceRecord {
                device_id: device.into(),
                display_name: None,
                created_ts: 1,
                last_seen_ts: None,
                last_seen_ip: None,
            },
            token_hash: TokenHash::of(token),
            token: AccessTokenRecord {
                localpart: "alice".into(),
                device_id: device.into(),
                created_ts: 1,
                guest: false,
            },
        }
    }

    /// Deleting a device drops its tokens and key counts from the caches, and nobody
    /// else's: other devices' requests stay memory lookups.
    #[tokio::test]
    async fn deleting_a_device_forgets_only_its_cached_records() {
        use crate::storage::e2ee_keys::DeviceListChange;
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
        store.create_session("alice", session("B", "tb")).await.unwrap();
        let (a, b) = (TokenHash::of("ta"), TokenHash::of("tb"));
        for hash in [&a, &b] {
            assert!(store.access_token(hash).await.unwrap().is_some());
            assert!(store.tokens.contains(&hash.0));
        }
        for device in ["A", "B"] {
            store.key_counts("alice", device).unwrap();
            assert!(store.key_counts.contains(&("alice".into(), device.into())));
        }
        let change = DeviceListChange { user_id: "@alice:x".into(), pos: 1 };
        store.delete_devices("alice", vec!["A".into()], change).await.unwrap();
        assert!(!store.tokens.contains(&a.0));
        assert!(store.access_token(&a).await.unwrap().is_none(), "the token is revoked");
        assert!(!store.key_counts.contains(&("alice".into(), "A".into())));
        assert!(store.tokens.contains(&b.0), "another device's token stays cached");
        assert!(store.key_counts.contains(&("alice".into(), "B".into())));
        // A new login on a device replaces its token: the old one is forgotten too.
        store.create_session("alice", session("B", "tb2")).await.unwrap();
        assert!(!store.tokens.contains(&b.0));
        assert!(store.access_token(&b).await.unwrap().is_none());
        assert!(store.access_token(&TokenHash::of("tb2")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_taken_localpart_cannot_be_created_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), None, None).await.unwrap();
        let again = store.create_user(user("alice"), None, None).await;
        assert!(matches!(again, Err(StorageError::AlreadyExists)));
    }

    #[tokio::test]
    async fn deleting_a_device_revokes_only_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
        store.create_session("alice", session("B", "tb")).await.unwrap();
        store.delete_devices("alice", vec!["A".into()], change(1)).await.unwrap();
        assert!(store.access_token(&TokenHash::of("ta")).await.unwrap().is_none());
        assert!(store.access_token(&TokenHash::of("tb")).await.unwrap().is_some());
        let ids: Vec<_> =
            store.devices("alice").await.unwrap().into_iter().map(|d| d.device_id).collect();
        assert_eq!(ids, vec!["B".to_owned()]);
    }

    fn change(pos: u64) -> DeviceListChange {
        DeviceListChange { user_id: "@alice:x".into(), pos }
    }

    /// Each way of deleting devices records the device-list change in its own write.
    #[tokio::test]
    async fn deleting_devices_records_the_device_list_change_in_the_same_write() {
        use crate::storage::e2ee_keys::E2eeKeyStore;
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "ta")), None).await.unwrap();
        store.create_session("alice", session("B", "tb")).await.unwrap();
        store.create_session("alice", session("C", "tc")).await.unwrap();
        let latest = || async { store.device_list_changes().await.unwrap() };

        store.delete_devices("alice", vec!["A".into()], change(1)).await.unwrap();
        assert_eq!(latest().await, vec![("@alice:x".to_owned(), 1)]);
        let logout = DeviceLogout::AllExcept(Some("C".into()), change(2));
        store.set_password("alice", "h".into(), logout).await.unwrap();
        assert_eq!(latest().await, vec![("@alice:x".to_owned(), 2)]);
        store.set_password("alice", "h2".into(), DeviceLogout::Nobody).await.unwrap();
        assert_eq!(latest().await, vec![("@alice:x".to_owned(), 2)]);
        store.deactivate_user("alice", change(3)).await.unwrap();
        assert_eq!(latest().await, vec![("@alice:x".to_owned(), 3)]);
        assert!(store.devices("alice").await.unwrap().is_empty());

        // A failed write records nothing.
        let gone = store.deactivate_user("nobody", change(4)).await;
        assert!(matches!(gone, Err(StorageError::NotFound)));
        assert_eq!(latest().await, vec![("@alice:x".to_owned(), 3)]);
    }

    #[tokio::test]
    async fn reusing_a_device_id_revokes_its_previous_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store.create_user(user("alice"), Some(session("A", "t1")), None).await.unwrap();
        store.create_session("alice", session("A", "t2")).await.unwrap();
        assert!(store.access_token(&TokenHash::of("t1")).await.unwrap().is_none());
        assert!(store.access_token(&TokenHash::of("t2")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_used_up_registration_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        store
            .create_registration_token(RegistrationTokenRecord {
                token: "tok".into(),
                uses_allowed: Some(1),
                completed: 0,
                expiry_ts: None,
                created_ts: 0,
            })
            .await
            .unwrap();
        store.create_user(user("a"), None, Some("tok".into())).await.unwrap();
        let second = store.create_user(user("b"), None, Some("tok".into())).await;
        assert!(matches!(second, Err(StorageError::TokenNotUsable)));
        assert!(store.user("b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStore::open(dir.path(), 1).unwrap();
            store.create_user(user("alice"), Some(session("A", "t")), None).await.unwrap();
        }
        let store = RocksStore::open(dir.path(), 1).unwrap();
        assert!(store.user("alice").await.unwrap().is_some());
        assert!(store.access_token(&TokenHash::of("t")).await.unwrap().is_some());
    }
}
