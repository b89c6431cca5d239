//! Push-rule evaluation after commit: `/notifications` entries and pushes.
//!
//! The committer hands every durable batch of events to a post-commit hook
//! ([`crate::rooms::commit::PostCommit`]) that only queues it (bounded by
//! `push.queue_events`; a full queue drops the batch, logged and counted, never waits), so
//! evaluation is never on the send path. One background task drains the queue in batches:
//! for each event, for each joined local member but the sender (and the invited user of an
//! invite), it evaluates the user's push rules ([`crate::services::push`]); what notifies is
//! stored (CF `notifications`, a few bytes per user, and `notification_events`, what
//! the users' rows share; one write per batch) and, for users with pushers, handed to
//! [`crate::services::pushers`] for delivery.
//!
//! Unread counts are not taken from here: `/sync` evaluates the same rules itself
//! ([`crate::services::unread`]), so an event's count is in the same response as the
//! event, however far behind this task is.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicUsize, Ordering};

use ruma::push::Action;
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::rooms::Room;
use crate::rooms::client::Viewer;
use crate::rooms::commit::{Committed, PostCommit};
use crate::services::Services;
use crate::services::push;
use crate::services::pushers::PushJob;
use crate::services::receipts::ReadMarks;
use crate::services::unread::{CountCtx, RoomCounts};
use crate::storage::now_ms;
use crate::storage::push::{EventNotifications, NotificationRecord, UserNotification};

/// Events evaluated in one batch at most (one notifications write each).
const MAX_BATCH: usize = 256;
/// Default and largest page of `/notifications`.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Stored notifications one `/notifications` request examines at most (with `only`).
const MAX_EXAMINED: usize = 1_000;

/// The `meta` key of the evaluation's durable progress: every event at or before this
/// stream position has been evaluated and its pushes have ended (delivered, given up or
/// dropped). At start-up the events after it are evaluated again.
const PROGRESS_KEY: &str = "push_evaluated_pos";
/// How often the progress is written (when it moved).
const PROGRESS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the evaluation task; returns the hook the committer calls.
///
/// Events committed before a crash but not yet evaluated (or whose pushes had not ended)
/// are not lost: the task first evaluates the events after the stored progress, at most
/// `capacity` of them (the newest; the queue's overload policy), then the queue.
/// Notifications are keyed by (user, position), so evaluating an event twice stores it
/// once; a push may be sent twice (at least once, like the gateway's retries), unless the
/// user has read the event meanwhile.
pub fn start(services: Weak<Services>, capacity: usize, committed_at_start: u64) -> PostCommit {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Committed>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let counter = queued.clone();
    let progress = Arc::new(Progress::default());
    tokio::spawn(flush_progress(services.clone(), progress.clone()));
    tokio::spawn(async move {
        if let Some(s) = services.upgrade() {
            match missed_events(&s, committed_at_start, capacity).await {
                Ok(missed) => {
                    if !missed.is_empty() {
                        tracing::info!(
                            events = missed.len(),
                            "evaluating push rules for events committed before the restart"
                        );
                    }
                    for chunk in missed.chunks(MAX_BATCH) {
                        run_batch(&s, chunk, &progress).await;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the events to evaluate after a restart failed")
                }
            }
            progress.start_at(committed_at_start);
        }
        while let Some(mut batch) = rx.recv().await {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            let Some(s) = services.upgrade() else { return };
            run_batch(&s, &batch, &progress).await;
            counter.fetch_sub(n, Ordering::AcqRel);
        }
    });
    Box::new(move |batch: Vec<Committed>| {
        let n = batch.len();
        if queued.fetch_add(n, Ordering::AcqRel) + n > capacity {
            queued.fetch_sub(n, Ordering::AcqRel);
            metrics::counter!("axon_push_events_dropped_total").increment(n as u64);
            tracing::warn!(events = n, "push-rule evaluation queue full; events skipped");
            return;
        }
        if tx.send(batch).is_err() {
            queued.fetch_sub(n, Ordering::AcqRel);
        }
    })
}

/// Evaluates one batch; its progress ends when the batch is stored and its pushes ended.
async fn run_batch(s: &Services, batch: &[Committed], progress: &Arc<Progress>) {
    let Some(last) = batch.last() else { return };
    let done = progress.begin(last.pos);
    let started = std::time::Instant::now();
    if let Err(e) = evaluate_batch(s, batch, &done).await {
        tracing::error!(error = %e, events = batch.len(), "push-rule evaluation failed");
    }
    metrics::histogram!("axon_push_evaluation_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("axon_push_events_evaluated_total").increment(batch.len() as u64);
}

/// The committed events after the stored progress (oldest first, at most `limit`, the
/// newest), up to `upto`. Without stored progress (a new database, or one older than it),
/// nothing: the progress starts at `upto`.
async fn missed_events(s: &Services, upto: u64, limit: usize) -> Result<Vec<Committed>> {
    let stored = s.store.meta(PROGRESS_KEY).await?;
    let Some(from) =
        stored.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_be_bytes)
    else {
        s.store.set_meta(PROGRESS_KEY, upto.to_be_bytes().to_vec()).await?;
        return Ok(Vec::new());
    };
    let from = from.max(upto.saturating_sub(limit as u64));
    let mut missed = Vec::new();
    for room in s.rooms.rooms_changed_after(from) {
        let mut after = from;
        loop {
            let page = s
                .store
                .room_events(room.id.as_str(), Some(after), Some(upto + 1), false, 1_000)
                .await?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            missed.extend(page.into_iter().map(|(pos, event_id)| Committed {
                pos,
                event_id,
                room_id: room.id.to_string(),
            }));
        }
    }
    missed.sort_by_key(|c| c.pos);
    Ok(missed)
}

/// The evaluation's progress: batches in stream order, each done once stored and its
/// pushes ended; the position before the first unfinished batch is safe to store.
#[derive(Default)]
struct Progress {
    state: parking_lot::Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    /// Batches begun, by their last position: whether done.
    batches: std::collections::VecDeque<(u64, bool)>,
    /// Every event at or before this is evaluated and pushed.
    safe: u64,
}

impl Progress {
    fn begin(self: &Arc<Self>, upto: u64) -> Arc<BatchDone> {
        self.state.lock().batches.push_back((upto, false));
        Arc::new(BatchDone { upto, progress: self.clone() })
    }

    /// The recovered events are begun: the queue starts after `pos`.
    fn start_at(&self, pos: u64) {
        let mut st = self.state.lock();
        if st.batches.is_empty() {
            st.safe = st.safe.max(pos);
        } else {
            st.batches.push_back((pos, true));
        }
    }

    fn finish(&self, upto: u64) {
        let mut st = self.state.lock();
        if let Some(entry) = st.batches.iter_mut().find(|(pos, _)| *pos == upto) {
            entry.1 = true;
        }
        while let Some(&(pos, true)) = st.batches.front() {
            st.safe = st.safe.max(pos);
            st.batches.pop_front();
        }
    }

    fn safe(&self) -> u64 {
        self.state.lock().safe
    }
}

/// Held by a batch's evaluation and by each of its push jobs; the last one dropped
/// finishes the batch.
pub struct BatchDone {
    upto: u64,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for BatchDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchDone").field("upto", &self.upto).finish()
    }
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        self.progress.finish(self.upto);
    }
}

/// Writes the progress when it moved, once per `PROGRESS_FLUSH`.
async fn flush_progress(services: Weak<Services>, progress: Arc<Progress>) {
    let mut written = 0;
    let mut tick = tokio::time::interval(PROGRESS_FLUSH);
    loop {
        tick.tick().await;
        let Some(s) = services.upgrade() else { return };
        let safe = progress.safe();
        if safe > written {
            match s.store.set_meta(PROGRESS_KEY, safe.to_be_bytes().to_vec()).await {
                Ok(()) => written = safe,
                Err(e) => {
                    tracing::warn!(error = %e, "storing the push evaluation's progress failed")
                }
            }
        }
    }
}

/// Evaluates every member's rules against a batch of committed events (an event that
/// fails is logged and skipped; the others go on).
async fn evaluate_batch(s: &Services, batch: &[Committed], done: &Arc<BatchDone>) -> Result<()> {
    let mut notified = Vec::with_capacity(batch.len());
    let mut jobs = Vec::new();
    for c in batch {
        match evaluate_event(s, c, &mut jobs).await {
            Ok(Some(event)) => notified.push(event),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(event = %c.event_id, error = %e, "push-rule evaluation of an event failed")
            }
        }
    }
    s.store.put_notifications(notified).await?;
    for mut job in jobs {
        job.done = Some(done.clone());
        s.pushers.enqueue(job);
    }
    Ok(())
}

/// The notifications `c` makes (`None`: it notifies nobody), and its pushes into `jobs`.
async fn evaluate_event(
    s: &Services,
    c: &Committed,
    jobs: &mut Vec<PushJob>,
) -> Result<Option<EventNotifications>> {
    let room_id = <&RoomId>::try_from(c.room_id.as_str())
        .map_err(|e| Error::Internal(format!("committed event with bad room ID: {e}")))?;
    let Some(room) = s.rooms.get(room_id) else { return Ok(None) };
    let Some((record, pdu)) = s.rooms.event(&c.event_id).await? else { return Ok(None) };
    if record.redacted_by.is_some() {
        return Ok(None);
    }
    let server = s.config.server_name.as_str();
    let mut targets: Vec<OwnedUserId> = room
        .joined()
        .into_iter()
        .filter(|u| u.server_name() == server && *u != pdu.sender)
        .collect();
    // The invited user is not a member yet, but `.m.rule.invite_for_me` is for them.
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref()
        && let Ok(target) = <&UserId>::try_from(target)
        && target.server_name() == server
        && target != pdu.sender
        && pdu.content_as::<Value>().is_some_and(|c| c["membership"] == "invite")
        && !targets.iter().any(|u| u == target)
    {
        targets.push(target.to_owned());
    }
    if targets.is_empty() {
        return Ok(None);
    }
    let prepared = s.push_rules.prepared(&s.rooms, &room, record.pos, &pdu).await?;
    let thread: Option<String> = prepared.thread.as_deref().map(str::to_owned);
    let mut notified = EventNotifications {
        room_id: c.room_id.clone(),
        event_id: c.event_id.clone(),
        pos: c.pos,
        ts: now_ms(),
        thread_id: thread.clone(),
        users: Vec::new(),
    };
    // Most members' rules give the same actions: each distinct list is serialised once.
    let mut serialised: Vec<(Vec<Action>, Arc<str>)> = Vec::new();
    // Pushes join `jobs` only with the event's notifications (an error drops both).
    let mut pushes = Vec::new();
    let invitee = (pdu.kind == ruma::events::TimelineEventType::RoomMember)
        .then(|| pdu.state_key.clone())
        .flatten();
    for user in targets {
        // Only for those who may see the event (history visibility at the event): a member
        // who joined after it, in a room whose history is for members only, is neither
        // notified nor pushed its content. The invitee of an invite is.
        if invitee.as_deref() != Some(user.as_str())
            && !s.rooms.readable(&room, &user).await?.can_see(record.pos, &pdu)
        {
            continue;
        }
        // Nor for an invite from someone the invitee ignores (hidden from their sync).
        if invitee.as_deref() == Some(user.as_str()) && s.rooms.ignores(&user, &pdu.sender).await? {
            continue;
        }
        let rules = s.push_rules.get(&s.user_data, &user).await?;
        let actions = prepared.evaluate(&rules, &pdu.sender, &room, &user).await;
        let (notify, highlight) = push::notify_highlight(&actions);
        if !notify {
            continue;
        }
        let actions_json = match serialised.iter().find(|(a, _)| push::same_actions(a, &actions)) {
            Some((_, json)) => json.clone(),
            None => {
                let json: Arc<str> =
                    serde_json::to_string(&actions).unwrap_or_else(|_| "[]".into()).into();
                serialised.push((actions.clone(), json.clone()));
                json
            }
        };
        notified.users.push(UserNotification {
            localpart: user.localpart().to_owned(),
            highlight,
            actions: actions_json,
        });
        if s.pushers.has_pushers(&user) {
            pushes.push(PushJob {
                user,
                room_id: room.id.clone(),
                event_id: c.event_id.clone(),
                pos: c.pos,
                thread: thread.clone(),
                actions,
                done: None,
            });
        }
    }
    jobs.append(&mut pushes);
    Ok((!notified.users.is_empty()).then_some(notified))
}

/// The user's unread counts in a room as of `current` (see [`crate::services::unread`]).
pub async fn room_counts(
    s: &Services,
    room: &Room,
    user: &UserId,
    marks: &ReadMarks,
    current: u64,
) -> Result<RoomCounts> {
    let rules = s.push_rules.get(&s.user_data, user).await?;
    let ctx = CountCtx { rooms: &s.rooms, push: &s.push_rules, room, user, rules: &rules, marks };
    s.unread.counts(&ctx, current).await
}

/// The user's unread notifications in all their joined rooms (the badge of a push).
pub async fn badge(s: &Services, user: &UserId) -> Result<u64> {
    let current = s.rooms.committer.current();
    let mut total = 0;
    for room in s.rooms.rooms_of(user) {
        if !room.is_joined(user) {
            continue;
        }
        let marks = s.receipts.read_marks(&room.id, user).await?;
        total += room_counts(s, &room, user, &marks, current).await?.total.notifications;
    }
    Ok(total)
}

/// A joined room's counts as its `/sync` entry has them: `unread_notifications` (all of the
/// room's, or with `threads` the main timeline's) and, with `threads`,
/// `unread_thread_notifications` by thread root (`None` when there are none).
pub fn counts_json(counts: &RoomCounts, threads: bool) -> (Value, Option<Value>) {
    let json = |c: &crate::services::unread::Counts| json!({"highlight_count": c.highlights, "notification_count": c.notifications});
    if threads {
        let by_thread: Map<String, Value> =
            counts.threads.iter().map(|(root, c)| (root.clone(), json(c))).collect();
        (json(&counts.main), (!by_thread.is_empty()).then_some(Value::Object(by_thread)))
    } else {
        (json(&counts.total), None)
    }
}

/// A page of `GET /notifications`: the notifications (newest first) and the next token.
pub async fn list(
    s: &Services,
    user: &UserId,
    device_id: &str,
    from: Option<&str>,
    limit: Option<u64>,
    only: Option<&str>,
) -> Result<(Vec<Value>, Option<String>)> {
    let mut before = match from {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| Error::InvalidParam(format!("Invalid from token {t:?}")))?,
        ),
        None => None,
    };
    let limit = limit.map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let only_highlight = match only {
        None => false,
        Some("highlight") => true,
        Some(other) => {
            return Err(Error::InvalidParam(format!("Unsupported value of only: {other:?}")));
        }
    };
    let mut out = Vec::new();
    let mut examined = 0;
    let mut exhausted = false;
    while out.len() < limit && examined < MAX_EXAMINED {
        let page = s.store.notifications(user.localpart(), before, limit.max(50)).await?;
        if page.is_empty() {
            exhausted = true;
            break;
        }
        for n in page {
            examined += 1;
            before = Some(n.pos);
            if only_highlight && !n.highlight {
                continue;
            }
            if let Some(v) = notification_json(s, user, device_id, &n).await? {
                out.push(v);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    let next = if exhausted { None } else { before.map(|b| b.to_string()) };
    Ok((out, next))
}

async fn notification_json(
    s: &Services,
    user: &UserId,
    device_id: &str,
    n: &NotificationRecord,
) -> Result<Option<Value>> {
    let Ok(room_id) = <&RoomId>::try_from(n.room_id.as_str()) else { return Ok(None) };
    let Some(room) = s.rooms.get(room_id) else { return Ok(None) };
    let Some((record, pdu)) = s.rooms.event(&n.event_id).await? else { return Ok(None) };
    let own_invite = pdu.state_key.as_deref() == Some(user.as_str());
    if !own_invite && !s.rooms.readable(&room, user).await?.can_see(record.pos, &pdu) {
        return Ok(None);
    }
    let event =
        s.rooms.client_event(&room, &record, &pdu, Viewer { user, device_id }, true).await?;
    let marks = s.receipts.read_marks(room_id, user).await?;
    Ok(Some(json!({
        "actions": n.actions,
        "event": event,
        "read": marks.is_read(n.pos, n.thread_id.as_deref()),
        "room_id": n.room_id,
        "ts": n.ts,
    })))
}

/// In an initial sync, the user's push rules as account data even if they never changed
/// them (clients such as Element read their rules from there).
pub fn add_default_push_rules(
    records: &mut Vec<crate::storage::users::AccountDataRecord>,
    user: &UserId,
) {
    if records.iter().any(|r| r.room_id.is_none() && r.kind == push::PUSH_RULES) {
        return;
    }
    let Ok(content) = serde_json::value::to_raw_value(&push::default_content(user)) else {
        return;
    };
    records.push(crate::storage::users::AccountDataRecord {
        room_id: None,
        kind: push::PUSH_RULES.to_owned(),
        content,
        pos: 0,
    });
}

/// Deletes old notifications once an hour (`push.notification_retention_days`).
pub fn start_pruning(services: Weak<Services>, retention_days: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let Some(s) = services.upgrade() else { return };
            let cutoff = now_ms().saturating_sub(retention_days.saturating_mul(86_400_000));
            match s.store.prune_notifications(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old notifications pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning notifications failed"),
            }
        }
    });
}
