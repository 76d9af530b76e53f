//! Following an operation's changelog through an etcd watch
//! (`gravity plan --tail`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, Stream, StreamExt};
use gravity_plan::{PhaseChange, StoreError, check_operation_id};

use super::cluster::{EtcdPlanStore, corrupt, decode_batch};
use super::{Fail, etcd_error};
use crate::client::{EtcdResult, TxnOp, WatchEvent};

/// The changes of one operation in sequence order, as
/// [`EtcdPlanStore::watch_changes`] yields them.
pub type ChangeStream = BoxStream<'static, Result<PhaseChange, StoreError>>;

/// How long a broken watch is re-established before the stream gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

type Events = Pin<Box<dyn Stream<Item = EtcdResult<WatchEvent>> + Send>>;

struct Tail {
    store: EtcdPlanStore,
    id: String,
    /// The sequence number to yield next.
    next: u64,
    pending: VecDeque<PhaseChange>,
    events: Events,
    done: bool,
}

impl EtcdPlanStore {
    /// The changes of operation `id` with a sequence number above `after`:
    /// first those stored now, then each new one as it is appended (by any
    /// node), in sequence order, each once. The stream does not end by
    /// itself; drop it to stop. A broken watch is re-established (for up to
    /// 30 s, then the stream yields the error and ends); changes appended
    /// meanwhile are read back, so none is missed. A damaged entry yields
    /// [`StoreError::Corrupt`] and ends the stream.
    pub async fn watch_changes(&self, id: &str, after: u64) -> Result<ChangeStream, StoreError> {
        check_operation_id(id)?;
        let (events, replay) = self.open_watch(id, after).await.map_err(Fail::into_store)?;
        let tail = Tail {
            store: self.clone(),
            id: id.to_string(),
            next: after + 1,
            pending: replay.into(),
            events,
            done: false,
        };
        Ok(futures::stream::unfold(tail, Tail::step).boxed())
    }

    /// Starts a watch just after the current revision, then reads the
    /// changes after `after`: whatever is appended later arrives through
    /// the watch, so nothing falls between the two.
    async fn open_watch(&self, id: &str, after: u64) -> Result<(Events, Vec<PhaseChange>), Fail> {
        let r = self
            .client()
            .txn(&[], &[TxnOp::Get(self.head_key(id))], &[])
            .await?;
        if r.gets.first().cloned().flatten().is_none() {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        let events = self
            .client()
            .watch_prefix(&self.changes_prefix(id), r.revision + 1)
            .await?;
        let replay = self.entries_after(id, after).await?;
        Ok((Box::pin(events), replay))
    }
}

impl Tail {
    fn fail(mut self, e: StoreError) -> Option<(Result<PhaseChange, StoreError>, Tail)> {
        self.done = true;
        Some((Err(e), self))
    }

    async fn step(mut self) -> Option<(Result<PhaseChange, StoreError>, Tail)> {
        if self.done {
            return None;
        }
        loop {
            while let Some(c) = self.pending.pop_front() {
                if c.seq < self.next {
                    continue; // seen already (replay and watch overlap)
                }
                if c.seq > self.next {
                    // A gap (a watch event we missed): read what is missing.
                    let missing = match self.store.entries_after(&self.id, self.next - 1).await {
                        Ok(m) => m,
                        // etcd went away (an etcd upgrade stops it): the
                        // reconnect replays from the same place.
                        Err(Fail::Etcd(_)) => {
                            self.pending.clear();
                            if let Err(e) = self.reconnect().await {
                                return self.fail(e);
                            }
                            continue;
                        }
                        Err(e) => return self.fail(e.into_store()),
                    };
                    if missing.first().map(|m| m.seq) != Some(self.next) {
                        let key = self.store.change_key(&self.id, self.next);
                        let e = corrupt(&key, format!("change {} is missing", self.next));
                        return self.fail(e.into_store());
                    }
                    self.pending.push_front(c);
                    for m in missing.into_iter().rev() {
                        self.pending.push_front(m);
                    }
                    continue;
                }
                self.next += 1;
                return Some((Ok(c), self));
            }
            match self.events.next().await {
                Some(Ok(WatchEvent::Put(kv))) => match decode_batch(&kv) {
                    Ok(batch) => self.pending.extend(batch),
                    Err(e) => return self.fail(e.into_store()),
                },
                Some(Ok(WatchEvent::Delete { .. })) => {}
                Some(Err(_)) | None => {
                    if let Err(e) = self.reconnect().await {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    /// Opens a new watch and reads back what was appended meanwhile.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        let deadline = Instant::now() + RECONNECT_FOR;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.open_watch(&self.id, self.next - 1).await {
                Ok((events, replay)) => {
                    self.events = events;
                    self.pending.extend(replay);
                    return Ok(());
                }
                Err(Fail::Etcd(e)) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(Fail::Etcd(e)) => return Err(etcd_error(e)),
                // A member without quorum answers reads with errors of
                // its own (an etcd upgrade under way): retried as well.
                Err(Fail::Store(e))
                    if !matches!(e, StoreError::NotFound(_)) && Instant::now() < deadline =>
                {
                    let _ = e;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(Fail::Store(e)) => return Err(e),
            }
        }
    }
}
