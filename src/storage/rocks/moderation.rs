//! [`ModerationStore`] on RocksDB.

use async_trait::async_trait;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{RocksStore, cf, decode, encode, get_json, handle, synced};
use crate::storage::moderation::{ModerationStore, OpenIdTokenRecord, ReportQuery, ReportRecord};
use crate::storage::{StorageResult, TokenHash};

/// `meta` key: the last report ID handed out (big-endian u64, merged as a maximum).
const LAST_REPORT_ID: &[u8] = b"last_report_id";

/// OpenID tokens examined for expiry per new token.
const EXPIRED_SWEPT_PER_WRITE: usize = 16;

#[async_trait]
impl ModerationStore for RocksStore {
    async fn add_report(&self, mut report: ReportRecord) -> StorageResult<u64> {
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let reports = handle(db, cf::REPORTS)?;
            let meta = handle(db, cf::META)?;
            // The last ID handed out, kept in `meta` so that deleting the newest report
            // never lets its ID be reused; the newest stored report's ID covers databases
            // written before the counter was kept.
            let counted = match db.get_pinned_cf(meta, LAST_REPORT_ID)? {
                Some(v) => <[u8; 8]>::try_from(&v[..]).map(u64::from_be_bytes).unwrap_or(0),
                None => 0,
            };
            let newest = match db.iterator_cf(reports, IteratorMode::End).next() {
                Some(item) => {
                    let (k, _) = item?;
                    <[u8; 8]>::try_from(&k[..]).map(u64::from_be_bytes).unwrap_or(0)
                }
                None => 0,
            };
            report.id = counted.max(newest) + 1;
            let mut batch = WriteBatch::default();
            batch.put_cf(reports, report.id.to_be_bytes(), encode(&report));
            batch.merge_cf(meta, LAST_REPORT_ID, report.id.to_be_bytes());
            db.write_opt(batch, &synced())?;
            Ok(report.id)
        })
        .await
    }

    async fn reports(&self, query: ReportQuery) -> StorageResult<(Vec<ReportRecord>, usize)> {
        self.blocking(move |db, _| {
            let mode = if query.forwards { IteratorMode::Start } else { IteratorMode::End };
            let mut page = Vec::new();
            let mut total = 0;
            for item in db.iterator_cf(handle(db, cf::REPORTS)?, mode) {
                let (_, v) = item?;
                let report: ReportRecord = decode(cf::REPORTS, &v)?;
                if !query.selects(&report) {
                    continue;
                }
                if total >= query.from && page.len() < query.limit {
                    page.push(report);
                }
                total += 1;
            }
            Ok((page, total))
        })
        .await
    }

    async fn report(&self, id: u64) -> StorageResult<Option<ReportRecord>> {
        get_json(&self.db, cf::REPORTS, &id.to_be_bytes())
    }

    async fn delete_report(&self, id: u64) -> StorageResult<bool> {
        self.blocking(move |db, lock| {
            let _guard = lock.lock();
            let reports = handle(db, cf::REPORTS)?;
            if db.get_pinned_cf(reports, id.to_be_bytes())?.is_none() {
                return Ok(false);
            }
            db.delete_cf_opt(reports, id.to_be_bytes(), &synced())?;
            Ok(true)
        })
        .await
    }

    async fn put_openid_token(
        &self,
        hash: TokenHash,
        record: OpenIdTokenRecord,
        now_ms: u64,
    ) -> StorageResult<()> {
        self.blocking(move |db, _| {
            let tokens = handle(db, cf::OPENID_TOKENS)?;
            let mut batch = WriteBatch::default();
            // Each new token looks at the few tokens that follow its (random) hash and
            // deletes the expired ones: bounded work per write, and over many writes every
            // part of the key space is swept, which bounds the storage.
            let start = hash.0;
            let following = db.iterator_cf(tokens, IteratorMode::From(&start, Direction::Forward));
            for item in following.take(EXPIRED_SWEPT_PER_WRITE) {
                let (k, v) = item?;
                let old: OpenIdTokenRecord = decode(cf::OPENID_TOKENS, &v)?;
                if old.expires_ms <= now_ms {
                    batch.delete_cf(tokens, k);
                }
            }
            batch.put_cf(tokens, hash.0, encode(&record));
            db.write_opt(batch, &synced())?;
            Ok(())
        })
        .await
    }

    async fn openid_token(&self, hash: &TokenHash) -> StorageResult<Option<OpenIdTokenRecord>> {
        get_json(&self.db, cf::OPENID_TOKENS, &hash.0)
    }
}
