//! Per-user data with its own stream: account data (global and per room) and filters.
//!
//! Account data has a stream position of its own (the second part of sync tokens). Each
//! user's writes are serialised (a striped lock: the read-check-write of a cap or a forward
//! move is one step), writes of different users run concurrently and share fsyncs; positions
//! become visible in order ([`Positions`]), then the user's syncs are woken. A change log by
//! user lets a sync skip reading the account data of a user who changed nothing.

use std::hash::BuildHasher;
use std::sync::Arc;

use ruma::api::client::filter::FilterDefinition;
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::Value;
use serde_json::value::to_raw_value;

use crate::config::LimitsConfig;
use crate::error::{Error, Result};
use crate::rooms::notify::{Change, Notifier, Stream};
use crate::services::streams::{ChangeLog, Positions};
use crate::storage::users::AccountDataRecord;
use crate::storage::{StorageError, Store};

/// Largest account-data content accepted, in bytes of JSON.
const MAX_ACCOUNT_DATA_BYTES: usize = 65_536;
/// Stripes of the per-user write lock.
const WRITE_STRIPES: usize = 64;
/// Users whose latest change the change log remembers.
const CHANGE_LOG_USERS: usize = 100_000;

pub struct UserData {
    store: Arc<dyn Store>,
    notifier: Arc<Notifier>,
    positions: Positions,
    /// Which user's account data changed when.
    changes: ChangeLog<OwnedUserId>,
    /// One writer per user at a time (by stripe).
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
    /// `limits.max_filters_per_user`.
    max_filters: usize,
    /// `limits.max_account_data_types`.
    max_account_data_types: usize,
    /// Stored filters as `/sync` uses them, parsed once: a filter never changes after it is
    /// created, and clients name the same one in every sync of their loop.
    parsed_filters: quick_cache::sync::Cache<(OwnedUserId, u64), ParsedFilter, FilterBytes>,
}

/// A stored filter, parsed, with the length of its stored JSON (its cache weight).
#[derive(Clone)]
struct ParsedFilter {
    definition: Arc<FilterDefinition>,
    stored_bytes: usize,
}

/// Weighs a parsed filter by its stored JSON, so the cache is bounded in bytes, not only in
/// entries (a filter may be up to the account-data size limit).
#[derive(Clone)]
struct FilterBytes;

impl quick_cache::Weighter<(OwnedUserId, u64), ParsedFilter> for FilterBytes {
    fn weight(&self, _: &(OwnedUserId, u64), filter: &ParsedFilter) -> u64 {
        (2 * filter.stored_bytes + 256) as u64
    }
}

/// Parsed filters kept ([`UserData::filter_definition`]): about this many, weighing at most
/// this many bytes.
const PARSED_FILTERS: usize = 10_000;
const PARSED_FILTER_BYTES: u64 = 16 << 20;

impl UserData {
    pub async fn load(
        store: Arc<dyn Store>,
        notifier: Arc<Notifier>,
        limits: &LimitsConfig,
    ) -> Result<Self> {
        let pos = store.max_account_data_pos().await?;
        Ok(Self {
            store,
            notifier,
            positions: Positions::new(pos),
            changes: ChangeLog::new(pos, CHANGE_LOG_USERS),
            stripes: (0..WRITE_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
            max_filters: limits.max_filters_per_user,
            max_account_data_types: limits.max_account_data_types,
            parsed_filters: quick_cache::sync::Cache::with_weighter(
                PARSED_FILTERS,
                PARSED_FILTER_BYTES,
                FilterBytes,
            ),
        })
    }

    /// The account-data stream position everything up to which is visible.
    pub fn current(&self) -> u64 {
        self.positions.current()
    }

    /// The user's write lock.
    async fn lock_user(&self, user: &UserId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = (self.hasher.hash_one(user) % WRITE_STRIPES as u64) as usize;
        self.stripes[stripe].lock().await
    }

    pub async fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        self.set_account_data_then(user, room, kind, content, |_| {}).await
    }

    /// [`Self::set_account_data`], then `written(&content)` still under the user's write
    /// lock, so that caches of an entry (the ignore list) follow the writes in their order.
    pub async fn set_account_data_then(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
        written: impl FnOnce(&Value),
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::BadJson("Account data must be a JSON object".into()));
        }
        let _guard = self.lock_user(user).await;
        self.write_entry(user, room, kind, content.clone()).await?;
        written(&content);
        Ok(())
    }

    /// Reads an entry and writes what `change` makes of it, under the user's write lock (so
    /// two concurrent changes, two tags say, never lose one another).
    pub async fn update_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        change: impl FnOnce(Option<Value>) -> Result<Value>,
    ) -> Result<()> {
        let _guard = self.lock_user(user).await;
        let current = self.account_data(user, room, kind).await?;
        let content = change(current)?;
        if !content.is_object() {
            return Err(Error::BadJson("Account data must be a JSON object".into()));
        }
        self.write_entry(user, room, kind, content).await
    }

    /// Writes an entry; the caller holds the user's write lock.
    async fn write_entry(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        let content = to_raw_value(&content).map_err(|e| Error::BadJson(e.to_string()))?;
        if content.get().len() > MAX_ACCOUNT_DATA_BYTES {
            return Err(Error::TooLarge);
        }
        let reserved = self.positions.reserve();
        let pos = reserved.pos;
        let record = AccountDataRecord {
            room_id: room.map(|r| r.to_string()),
            kind: kind.to_owned(),
            content,
            pos,
        };
        // Each type is kept (and sent in full to new syncs) until replaced: a cap on the
        // number of types per scope bounds a user's account data. 400 M_TOO_LARGE: the
        // user's account data would be too large, and waiting would not change that.
        match self.store.set_account_data(user.as_str(), record, self.max_account_data_types).await
        {
            Ok(()) => {}
            Err(StorageError::TooMany) => {
                return Err(Error::TooMany(format!(
                    "At most {} account data types are stored {}",
                    self.max_account_data_types,
                    if room.is_some() { "per room" } else { "globally" }
                )));
            }
            Err(e) => return Err(e.into()),
        }
        // Announced before published: a sync that sees the position has been told.
        self.changes.record(user.to_owned(), pos);
        self.notifier.wake([user], Change::user(Stream::AccountData, pos));
        reserved.publish();
        Ok(())
    }

    pub async fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Value>> {
        Ok(self
            .store
            .account_data_entry(user.as_str(), room.map(|r| r.as_str()), kind)
            .await?
            .and_then(|r| serde_json::from_str(r.content.get()).ok()))
    }

    /// Entries changed after `since` (all of them for `None`), up to `until`.
    pub async fn changed(
        &self,
        user: &UserId,
        since: Option<u64>,
        until: u64,
    ) -> Result<Vec<AccountDataRecord>> {
        if let Some(since) = since
            && !self.changes.changed(&user.to_owned(), since)
        {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .account_data(user.as_str())
            .await?
            .into_iter()
            .filter(|r| since.is_none_or(|s| r.pos > s) && r.pos <= until)
            .collect())
    }

    pub async fn create_filter(&self, user: &UserId, definition: &Value) -> Result<String> {
        let json = serde_json::to_string(definition).map_err(|e| Error::BadJson(e.to_string()))?;
        if json.len() > MAX_ACCOUNT_DATA_BYTES {
            return Err(Error::TooLarge);
        }
        // Identical filters share one ID (as in Synapse), so a client that creates its filter
        // at every start does not accumulate them; distinct ones are capped per user.
        match self.store.create_filter(user.as_str(), json, self.max_filters).await {
            Ok(id) => Ok(id.to_string()),
            Err(StorageError::TooMany) => Err(Error::TooMany(format!(
                "At most {} distinct filters are stored per user",
                self.max_filters
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn filter(&self, user: &UserId, id: &str) -> Result<Option<Value>> {
        let Ok(id) = id.parse::<u64>() else { return Ok(None) };
        Ok(self
            .store
            .filter(user.as_str(), id)
            .await?
            .and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// A stored filter as a definition (`None`: no such filter), parsed once and then
    /// taken from memory (filters never change once created). Keyed by the filter's number,
    /// so that spellings of one ID (`1`, `01`) share one entry.
    pub async fn filter_definition(
        &self,
        user: &UserId,
        id: &str,
    ) -> Result<Option<Arc<FilterDefinition>>> {
        let Ok(number) = id.parse::<u64>() else { return Ok(None) };
        let key = (user.to_owned(), number);
        if let Some(parsed) = self.parsed_filters.get(&key) {
            return Ok(Some(parsed.definition));
        }
        let Some(stored) = self.store.filter(user.as_str(), number).await? else {
            return Ok(None);
        };
        let definition: FilterDefinition = serde_json::from_str(&stored)
            .map_err(|e| Error::Internal(format!("stored filter: {e}")))?;
        let definition = Arc::new(definition);
        let parsed = ParsedFilter { definition: definition.clone(), stored_bytes: stored.len() };
        self.parsed_filters.insert(key, parsed);
        Ok(Some(definition))
    }
}
