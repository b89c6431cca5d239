//! Small read-through caches over records that every request (access tokens) or every sync
//! response (a device's key counts) reads, so that those reads are memory lookups.
//!
//! Every write that changes a cached record invalidates it *after* the write (in the
//! writer's blocking closure, so a cancelled request cannot skip it). A reader that raced
//! such a write never caches its stale copy: it notes the generation before reading, and
//! inserts only if the generation is unchanged, checked and inserted under the same lock
//! under which a writer bumps the generation and removes. So once an invalidation returned,
//! no stale copy is or will be cached. Absent records are never cached (a flood of unknown
//! keys cannot fill it).

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::StorageResult;

pub struct ReadCache<K, V> {
    entries: quick_cache::sync::Cache<K, V>,
    generation: AtomicU64,
    /// Held to insert a loaded record and to invalidate (not to read a cached one).
    writing: parking_lot::Mutex<()>,
}

impl<K: Eq + Hash + Clone, V: Clone> ReadCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity),
            generation: AtomicU64::new(0),
            writing: parking_lot::Mutex::new(()),
        }
    }

    /// The cached record, or `load`'s (cached when present).
    pub fn get(
        &self,
        key: &K,
        load: impl FnOnce() -> StorageResult<Option<V>>,
    ) -> StorageResult<Option<V>> {
        if let Some(value) = self.entries.get(key) {
            return Ok(Some(value));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let value = load()?;
        if let Some(value) = &value {
            let _writing = self.writing.lock();
            if self.generation.load(Ordering::SeqCst) == generation {
                self.entries.insert(key.clone(), value.clone());
            }
        }
        Ok(value)
    }

    /// After a write that changed the record of `key`.
    pub fn invalidate(&self, key: &K) {
        let _writing = self.writing.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(key);
    }

    /// After a write that changed the records of `keys`.
    pub fn invalidate_all<'a>(&self, keys: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let _writing = self.writing.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            self.entries.remove(key);
        }
    }

    /// Whether `key`'s record is cached (for tests).
    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.entries.get(key).is_some()
    }

    /// After a write that changed records it does not name one by one.
    pub fn clear(&self) {
        let _writing = self.writing.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_present_records_until_invalidated() {
        let cache: ReadCache<u32, String> = ReadCache::new(10);
        let mut loads = 0;
        let mut load = |v: Option<&str>| {
            loads += 1;
            Ok(v.map(str::to_owned))
        };
        assert_eq!(cache.get(&1, || load(Some("a"))).unwrap().as_deref(), Some("a"));
        assert_eq!(cache.get(&1, || load(Some("changed"))).unwrap().as_deref(), Some("a"));
        assert_eq!(cache.get(&2, || load(None)).unwrap(), None);
        assert_eq!(
            cache.get(&2, || load(Some("b"))).unwrap().as_deref(),
            Some("b"),
            "not negative-cached"
        );
        cache.invalidate(&1);
        assert_eq!(cache.get(&1, || load(None)).unwrap(), None);
        cache.clear();
        assert_eq!(cache.get(&2, || load(Some("c"))).unwrap().as_deref(), Some("c"));
        assert_eq!(loads, 5);
    }

    #[test]
    fn a_read_racing_a_write_does_not_stay_cached() {
        let cache: ReadCache<u32, String> = ReadCache::new(10);
        // The write lands (and invalidates) while the reader is loading the old record.
        let old = cache.get(&1, || {
            cache.invalidate(&1);
            Ok(Some("old".to_owned()))
        });
        assert_eq!(old.unwrap().as_deref(), Some("old"));
        let next = cache.get(&1, || Ok(Some("new".to_owned()))).unwrap();
        assert_eq!(next.as_deref(), Some("new"));
    }
}
