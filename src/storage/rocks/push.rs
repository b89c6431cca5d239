//! [`PushStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{RocksStore, cf, decode, encode, handle, key, prefix, scan, synced};
use crate::storage::push::{
    EventNotifications, NotificationRecord, NotifiedEventRecord, PushStore, PusherRecord,
};
use crate::storage::{StorageError, StorageResult};

/// First byte of a user's notification row: `[COMPACT_ROW, highlight]` then the actions'
/// JSON; the event's shared part is in `notification_events` under its position. Rows
/// written before (a whole [`NotificationRecord`] in JSON) start with `{`.
const COMPACT_ROW: u8 = 1;

/// The stream position at the end of a `notifications` key.
fn row_pos(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

fn corrupt(detail: &str) -> StorageError {
    StorageError::Corrupt { what: cf::NOTIFICATIONS, detail: detail.to_owned() }
}

fn pusher_key(localpart: &str, app_id: &str, pushkey: &str) -> Vec<u8> {
    key(&[localpart.as_bytes(), app_id.as_bytes(), pushkey.as_bytes()])
}

/// The reverse index's key of a pusher (CF `pusher_keys`).
fn owner_key(app_id: &str, pushkey: &str, localpart: &str) -> Vec<u8> {
    key(&[app_id.as_bytes(), pushkey.as_bytes(), localpart.as_bytes()])
}

/// `meta` key present once `pusher_keys` has been built (databases older than it).
const OWNERS_BUILT: &[u8] = b"pusher_keys_built";

/// Builds the reverse index of pushers of a database written before it was kept.
pub(super) fn migrate(db: &DB) -> StorageResult<()> {
    let meta = handle(db, cf::META)?;
    if db.get_pinned_cf(meta, OWNERS_BUILT)?.is_some() {
        return Ok(());
    }
    let owners = handle(db, cf::PUSHER_KEYS)?;
    let mut batch = WriteBatch::default();
    for item in db.iterator_cf(handle(db, cf::PUSHERS)?, IteratorMode::Start) {
        let (_, v) = item?;
        let r: PusherRecord = decode(cf::PUSHERS, &v)?;
        let localpart = r.user_id.strip_prefix('@').and_then(|u| u.split(':').next()).unwrap_or("");
        batch.put_cf(owners, owner_key(&r.app_id, &r.pushkey, localpart), []);
    }
    batch.put_cf(meta, OWNERS_BUILT, b"1");
    db.write_opt(batch, &synced())?;
    Ok(())
}

/// Adds to `batch` the deletion of the pushers a device created (the device is deleted).
pub(super) fn delete_device_pushers_in(
    db: &DB,
    batch: &mut WriteBatch,
    localpart: &str,
    device_id: &str,
) -> StorageResult<()> {
    let p = prefix(&[localpart.as_bytes()]);
    let pushers = handle(db, cf::PUSHERS)?;
    for (suffix, value) in scan(db, cf::PUSHERS, &p)? {
        let record: PusherRecord = decode(cf::PUSHERS, &value)?;
        if record.device_id.as_deref() == Some(device_id) {
            let mut k = p.clone();
            k.extend_from_slice(&suffix);
            batch.delete_cf(pushers, k);
            batch.delete_cf(
                handle(db, cf::PUSHER_KEYS)?,
                owner_key(&record.app_id, &record.pushkey, localpart),
            );
        }
    }
    Ok(())
}

#[async_trait]
impl PushStore for RocksStore {
    async fn put_notifications(&self, events: Vec<EventNotifications>) -> StorageResult<()> {
        if events.iter().all(|e| e.users.is_empty()) {
            return Ok(());
        }
        self.blocking(move |db, _| {
            let mut batch = WriteBatch::default();
            let notifications = handle(db, cf::NOTIFICATIONS)?;
            let shared = handle(db, cf::NOTIFICATION_EVENTS)?;
            let mut value = Vec::new();
            for e in events.iter().filter(|e| !e.users.is_empty()) {
                let record = NotifiedEventRecord {
                    room_id: e.room_id.clone(),
                    event_id: e.event_id.clone(),
                    ts: e.ts,
                    thread_id: e.thread_id.clone(),
                };
                batch.put_cf(shared, e.pos.to_be_bytes(), encode(&record));
                for u in &e.users {
                    value.clear();
                    value.extend_from_slice(&[COMPACT_ROW, u8::from(u.highlight)]);
                    value.extend_from_slice(u.actions.as_bytes());
                    batch.put_cf(
                        notifications,
                        key(&[u.localpart.as_bytes(), &e.pos.to_be_bytes()]),
                        &value,
                    );
                }
            }
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn notifications(
        &self,
        localpart: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StorageResult<Vec<NotificationRecord>> {
        let p = prefix(&[localpart.as_bytes()]);
        self.blocking(move |db, _| {
            let mut start = p.clone();
            match before {
                Some(b) => start.extend_from_slice(&b.to_be_bytes()),
                None => start.extend_from_slice(&[0xFF; 9]),
            }
            let shared = handle(db, cf::NOTIFICATION_EVENTS)?;
            let mut out = Vec::new();
            let iter = db.iterator_cf(
                handle(db, cf::NOTIFICATIONS)?,
                IteratorMode::From(&start, Direction::Reverse),
            );
            for item in iter {
                let (k, v) = item?;
                if !k.starts_with(&p) || out.len() >= limit {
                    break;
                }
                if k.as_ref() >= start.as_slice() {
                    continue; // `before` is exclusive
                }
                let Some(pos) = row_pos(&k) else { continue };
                let Some((&COMPACT_ROW, rest)) = v.split_first() else {
                    // A row written before events' shared parts were kept apart.
                    out.push(decode(cf::NOTIFICATIONS, &v)?);
                    continue;
                };
                let Some((&highlight, actions)) = rest.split_first() else {
                    return Err(corrupt("notification row without its flags"));
                };
                // Pruned meanwhile: the user's row goes in the same pass.
                let Some(event) = db.get_pinned_cf(shared, pos.to_be_bytes())? else { continue };
                let event: NotifiedEventRecord = decode(cf::NOTIFICATION_EVENTS, &event)?;
                out.push(NotificationRecord {
                    room_id: event.room_id,
                    event_id: event.event_id,
                    pos,
                    ts: event.ts,
                    actions: serde_json::from_slice(actions)
                        .map_err(|e| corrupt(&format!("notification actions: {e}")))?,
                    highlight: highlight != 0,
                    thread_id: event.thread_id,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn prune_notifications(&self, before_ts: u64) -> StorageResult<u64> {
        self.blocking(move |db, _| {
            let notifications = handle(db, cf::NOTIFICATIONS)?;
            let shared = handle(db, cf::NOTIFICATION_EVENTS)?;
            // Events are notified in stream order, so their times rise with their positions:
            // the old ones are a prefix.
            let mut cutoff = None;
            for item in db.iterator_cf(shared, IteratorMode::Start) {
                let (k, v) = item?;
                // An unreadable row counts as old: it goes.
                let ts =
                    decode::<NotifiedEventRecord>(cf::NOTIFICATION_EVENTS, &v).map_or(0, |e| e.ts);
                if ts >= before_ts {
                    break;
                }
                if let Ok(pos) = <[u8; 8]>::try_from(&k[..]) {
                    cutoff = Some(u64::from_be_bytes(pos));
                }
            }
            let mut batch = WriteBatch::default();
            let mut n = 0;
            for item in db.iterator_cf(notifications, IteratorMode::Start) {
                let (k, v) = item?;
                let old = match v.first() {
                    Some(&COMPACT_ROW) => row_pos(&k).is_none_or(|pos| Some(pos) <= cutoff),
                    _ => decode::<NotificationRecord>(cf::NOTIFICATIONS, &v)
                        .map_or(true, |r| r.ts < before_ts),
                };
                if old {
                    batch.delete_cf(notifications, &k);
                    n += 1;
                }
                if batch.len() >= 10_000 {
                    db.write_opt(std::mem::take(&mut batch), &synced())?;
                }
            }
            if let Some(cutoff) = cutoff {
                batch.delete_range_cf(shared, 0u64.to_be_bytes(), (cutoff + 1).to_be_bytes());
            }
            db.write_opt(batch, &synced())?;
            Ok(n)
        })
        .await
    }

    async fn put_pusher(
        &self,
        localpart: &str,
        record: PusherRecord,
        exclusive: bool,
    ) -> StorageResult<()> {
        let localpart = localpart.to_owned();
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let pushers = handle(db, cf::PUSHERS)?;
            let owners = handle(db, cf::PUSHER_KEYS)?;
            let mut batch = WriteBatch::default();
            if exclusive {
                // Other users' pushers of this app ID and pushkey, from the reverse index.
                let p = prefix(&[record.app_id.as_bytes(), record.pushkey.as_bytes()]);
                for (other, _) in scan(db, cf::PUSHER_KEYS, &p)? {
                    if other != localpart.as_bytes() {
                        let other = String::from_utf8_lossy(&other);
                        batch.delete_cf(
                            pushers,
                            pusher_key(&other, &record.app_id, &record.pushkey),
                        );
                        batch.delete_cf(owners, owner_key(&record.app_id, &record.pushkey, &other));
                    }
                }
            }
            batch.put_cf(
                pushers,
                pusher_key(&localpart, &record.app_id, &record.pushkey),
                encode(&record),
            );
            batch.put_cf(owners, owner_key(&record.app_id, &record.pushkey, &localpart), []);
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn delete_pusher(
        &self,
        localpart: &str,
        app_id: &str,
        pushkey: &str,
    ) -> StorageResult<bool> {
        let k = pusher_key(localpart, app_id, pushkey);
        let (localpart, app_id, pushkey) =
            (localpart.to_owned(), app_id.to_owned(), pushkey.to_owned());
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let pushers = handle(db, cf::PUSHERS)?;
            if db.get_pinned_cf(pushers, &k)?.is_none() {
                return Ok(false);
            }
            let mut batch = WriteBatch::default();
            batch.delete_cf(pushers, &k);
            batch.delete_cf(handle(db, cf::PUSHER_KEYS)?, owner_key(&app_id, &pushkey, &localpart));
            db.write_opt(batch, &synced())?;
            Ok(true)
        })
        .await
    }

    async fn pushers(&self, localpart: &str) -> StorageResult<Vec<PusherRecord>> {
        let p = prefix(&[localpart.as_bytes()]);
        self.blocking(move |db, _| {
            scan(db, cf::PUSHERS, &p)?.into_iter().map(|(_, v)| decode(cf::PUSHERS, &v)).collect()
        })
        .await
    }

    async fn pusher_owners(&self) -> StorageResult<Vec<String>> {
        self.blocking(move |db, _| {
            let mut owners: Vec<String> = Vec::new();
            for item in db.iterator_cf(handle(db, cf::PUSHERS)?, IteratorMode::Start) {
                let (k, _) = item?;
                let end = k.iter().position(|b| *b == super::SEP).unwrap_or(k.len());
                let owner = String::from_utf8_lossy(&k[..end]).into_owned();
                if owners.last() != Some(&owner) {
                    owners.push(owner);
                }
            }
            Ok(owners)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::push::UserNotification;

    fn event(pos: u64, ts: u64, users: &[(&str, bool)]) -> EventNotifications {
        let notify: Arc<str> = r#"["notify"]"#.into();
        EventNotifications {
            room_id: "!r:x".into(),
            event_id: format!("$e{pos}"),
            pos,
            ts,
            thread_id: (pos == 3).then(|| "$root".to_owned()),
            users: users
                .iter()
                .map(|(u, highlight)| UserNotification {
                    localpart: (*u).to_owned(),
                    highlight: *highlight,
                    actions: notify.clone(),
                })
                .collect(),
        }
    }

    /// Compact rows read back as whole records, newest first, next to rows of the older
    /// format; pruning removes both kinds by age, and the events' shared parts with them.
    #[tokio::test]
    async fn notifications_read_back_whole_and_prune_by_age_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), 1).unwrap();
        let legacy = NotificationRecord {
            room_id: "!old:x".into(),
            event_id: "$e1".into(),
            pos: 1,
            ts: 100,
            actions: serde_json::json!(["notify"]),
            highlight: false,
            thread_id: None,
        };
        let db = store.db.clone();
        let notifications = handle(&db, cf::NOTIFICATIONS).unwrap();
        db.put_cf(notifications, key(&[b"bob", &1u64.to_be_bytes()]), encode(&legacy)).unwrap();
        store
            .put_notifications(vec![
                event(2, 200, &[("bob", false), ("carol", true)]),
                event(3, 300, &[("bob", true)]),
                event(4, 400, &[]),
            ])
            .await
            .unwrap();

        let bob = store.notifications("bob", None, 10).await.unwrap();
        assert_eq!(bob.iter().map(|n| n.pos).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(bob[2], legacy);
        assert_eq!(
            bob[0],
            NotificationRecord {
                room_id: "!r:x".into(),
                event_id: "$e3".into(),
                pos: 3,
                ts: 300,
                actions: serde_json::json!(["notify"]),
                highlight: true,
                thread_id: Some("$root".into()),
            }
        );
        let page = store.notifications("bob", Some(3), 1).await.unwrap();
        assert_eq!(page.iter().map(|n| n.pos).collect::<Vec<_>>(), vec![2]);
        let carol = store.notifications("carol", None, 10).await.unwrap();
        assert_eq!(carol.len(), 1);
        assert!(carol[0].highlight);
        // An event that notified nobody stored nothing.
        let shared = handle(&db, cf::NOTIFICATION_EVENTS).unwrap();
        assert!(db.get_cf(shared, 4u64.to_be_bytes()).unwrap().is_none());

        // Older than 250: the legacy row, bob's and carol's rows of event 2.
        assert_eq!(store.prune_notifications(250).await.unwrap(), 3);
        let bob = store.notifications("bob", None, 10).await.unwrap();
        assert_eq!(bob.iter().map(|n| n.pos).collect::<Vec<_>>(), vec![3]);
        assert!(store.notifications("carol", None, 10).await.unwrap().is_empty());
        assert!(db.get_cf(shared, 2u64.to_be_bytes()).unwrap().is_none());
        assert!(db.get_cf(shared, 3u64.to_be_bytes()).unwrap().is_some());
    }
}
