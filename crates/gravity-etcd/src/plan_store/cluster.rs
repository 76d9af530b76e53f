//! [`EtcdPlanStore`]: the cluster-wide plan store in etcd (layout and
//! guarantees in the [module docs](super)).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gravity_plan::{
    Actor, LockInfo, LogIndex, NewChange, OperationRecord, OperationState, PhaseChange, Plan,
    PlanStore, StoreError, check_operation_id,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Fail, Pending, distribute, hand_out};
use crate::client::{Compare, EtcdClient, KeyValue, TxnOp};

/// The key prefix used unless another is given.
pub const DEFAULT_PREFIX: &str = "/gravity/";

/// Plans up to this many bytes of JSON are written inside the create
/// transaction; larger ones are split into chunks of this size.
pub const PLAN_CHUNK: usize = 512 * 1024;

/// Upper bound for the JSON of one append (etcd refuses requests above
/// 1.5 MiB by default).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Attempts of one append while other writers keep moving the head.
const MAX_ATTEMPTS: u32 = 400;

/// Missing change keys read one by one before a ranged read is cheaper.
const CHAINED_READS: u32 = 4;

#[derive(Debug, Serialize, Deserialize)]
struct OperationDoc {
    id: String,
    kind: String,
    cluster: String,
    created: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StateDoc {
    pub state: OperationState,
    pub updated: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    nonce: String,
    chunks: u32,
    bytes: u64,
    crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeadDoc {
    seq: u64,
}

/// What this process knows of one operation's changelog in etcd.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// Every change, in sequence order (`changes[i].seq == i + 1`).
    pub changes: Vec<PhaseChange>,
    /// Latest change per phase and every id.
    pub index: LogIndex,
    /// Mod revision of the head key when `changes` was last complete.
    head_rev: i64,
}

#[derive(Debug)]
enum Request {
    Append(Vec<NewChange>),
    Import(Vec<PhaseChange>),
}

impl Request {
    /// A rough size of the stored JSON, to bound a group.
    fn estimate(&self) -> usize {
        let one =
            |phase: &str, error: Option<&String>| 220 + phase.len() + error.map_or(0, |e| e.len());
        match self {
            Request::Append(v) => v
                .iter()
                .map(|c| one(c.phase.as_str(), c.error.as_ref()))
                .sum(),
            Request::Import(v) => v
                .iter()
                .map(|c| one(c.phase.as_str(), c.error.as_ref()))
                .sum(),
        }
    }
}

#[derive(Debug, Default)]
struct OpSlot {
    /// Held while reading or committing this operation's changelog.
    cache: tokio::sync::Mutex<Cache>,
    /// Requests waiting for a group commit.
    queue: Mutex<Vec<Arc<Pending<Request>>>>,
    /// The plan, once read (plans never change).
    plan: Mutex<Option<Plan>>,
}

/// The cluster-wide [`PlanStore`] in etcd. Cheap to clone; clones share
/// their caches. Every node (process) may open one on the same etcd and
/// prefix: appends are compare-and-swap transactions, so they stay atomic
/// and densely numbered across all of them.
#[derive(Debug, Clone)]
pub struct EtcdPlanStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: EtcdClient,
    prefix: String,
    ops: Mutex<HashMap<String, Arc<OpSlot>>>,
}

pub(crate) fn corrupt(key: &str, what: impl std::fmt::Display) -> Fail {
    Fail::Store(StoreError::Corrupt(format!("etcd key {key}: {what}")))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, Fail> {
    serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store documents serialize")
}

/// Decodes one append (a JSON array of changes) and checks that it is a
/// dense run of sequence numbers.
pub(crate) fn decode_batch(kv: &KeyValue) -> Result<Vec<PhaseChange>, Fail> {
    let batch: Vec<PhaseChange> = decode(kv)?;
    if batch.is_empty() {
        return Err(corrupt(&kv.key, "an empty append"));
    }
    for w in batch.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(corrupt(
                &kv.key,
                format!("change {} follows change {}", w[1].seq, w[0].seq),
            ));
        }
    }
    Ok(batch)
}

fn jitter(attempt: u32) -> Duration {
    let spread = 1 + u64::from(attempt.min(20)) * 2;
    Duration::from_millis(1 + (uuid::Uuid::new_v4().as_u128() % u128::from(spread)) as u64)
}

impl EtcdPlanStore {
    /// A store under [`DEFAULT_PREFIX`].
    pub fn new(client: EtcdClient) -> Self {
        Self::with_prefix(client, DEFAULT_PREFIX)
    }

    /// A store under `prefix` (a `/` is added if it does not end with one).
    pub fn with_prefix(client: EtcdClient, prefix: impl Into<String>) -> Self {
        let mut prefix: String = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        EtcdPlanStore {
            inner: Arc::new(Inner {
                client,
                prefix,
                ops: Mutex::default(),
            }),
        }
    }

    /// A store under [`DEFAULT_PREFIX`] on the members at `endpoints`
    /// (comma-separated URLs, as `--etcd-endpoints` takes them).
    pub fn connect(endpoints: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = EtcdClient::from_list(endpoints, timeout).map_err(super::etcd_error)?;
        Ok(Self::new(client))
    }

    /// The etcd client.
    pub fn client(&self) -> &EtcdClient {
        &self.inner.client
    }

    /// The key prefix (ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.inner.prefix, parts)
    }

    fn op_key(&self, id: &str) -> String {
        self.key(format_args!("operations/{id}"))
    }

    fn state_key(&self, id: &str) -> String {
        self.key(format_args!("states/{id}"))
    }

    fn plan_key(&self, id: &str) -> String {
        self.key(format_args!("plans/{id}"))
    }

    fn chunk_prefix(&self, id: &str, nonce: &str) -> String {
        self.key(format_args!("plan-chunks/{id}/{nonce}/"))
    }

    fn chunk_key(&self, id: &str, nonce: &str, k: u32) -> String {
        self.key(format_args!("plan-chunks/{id}/{nonce}/{k:06}"))
    }

    pub(crate) fn head_key(&self, id: &str) -> String {
        self.key(format_args!("heads/{id}"))
    }

    /// The prefix of an operation's change keys.
    pub(crate) fn changes_prefix(&self, id: &str) -> String {
        self.key(format_args!("changes/{id}/"))
    }

    /// The key of the append whose first change has sequence number `first`.
    pub fn change_key(&self, id: &str, first: u64) -> String {
        self.key(format_args!("changes/{id}/{first:020}"))
    }

    fn lock_key(&self) -> String {
        self.key(format_args!("lock"))
    }

    fn slot(&self, id: &str) -> Arc<OpSlot> {
        self.inner
            .ops
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Brings `cache` up to the head in etcd.
    async fn refresh(&self, id: &str, cache: &mut Cache) -> Result<(), Fail> {
        let head = self
            .inner
            .client
            .get(&self.head_key(id))
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        if head.mod_revision == cache.head_rev {
            return Ok(());
        }
        let doc: HeadDoc = decode(&head)?;
        if doc.seq < cache.index.last_seq() {
            // The operation was removed and created again: start over.
            *cache = Cache::default();
        }
        let mut reads = 0;
        while cache.index.last_seq() < doc.seq {
            if reads >= CHAINED_READS || cache.index.last_seq() == 0 {
                self.read_range(id, cache, doc.seq).await?;
                break;
            }
            let next = cache.index.last_seq() + 1;
            let key = self.change_key(id, next);
            let kv = self.inner.client.get(&key).await?.ok_or_else(|| {
                corrupt(
                    &head.key,
                    format!(
                        "the head says change {} exists but {key} is missing",
                        doc.seq
                    ),
                )
            })?;
            take_batch(cache, &kv, doc.seq)?;
            reads += 1;
        }
        if cache.index.last_seq() != doc.seq {
            return Err(corrupt(
                &head.key,
                format!(
                    "the head says change {} exists but the changes end at {}",
                    doc.seq,
                    cache.index.last_seq()
                ),
            ));
        }
        cache.head_rev = head.mod_revision;
        Ok(())
    }

    async fn read_range(&self, id: &str, cache: &mut Cache, upto: u64) -> Result<(), Fail> {
        let prefix = self.changes_prefix(id);
        for kv in self.inner.client.range_prefix(&prefix).await? {
            let first: u64 = kv.key[prefix.len()..]
                .parse()
                .map_err(|_| corrupt(&kv.key, "not the key of an append"))?;
            if first <= cache.index.last_seq() {
                continue;
            }
            if first > upto {
                break;
            }
            take_batch(cache, &kv, upto)?;
        }
        Ok(())
    }

    /// Commits what `build` makes of the latest changelog: the entries it
    /// returns (numbered from the next sequence number) are written as one
    /// append with the new head, in a transaction that holds only if the
    /// head has not moved. If it moved, the changelog is read again and
    /// `build` runs again. Empty entries commit nothing.
    pub(crate) async fn commit_with<T>(
        &self,
        id: &str,
        build: impl FnMut(&Cache) -> Result<(Vec<PhaseChange>, T), Fail>,
    ) -> Result<T, Fail> {
        check_operation_id(id)?;
        let slot = self.slot(id);
        let mut cache = slot.cache.lock().await;
        self.commit_locked(id, &mut cache, build).await
    }

    async fn commit_locked<T>(
        &self,
        id: &str,
        cache: &mut Cache,
        mut build: impl FnMut(&Cache) -> Result<(Vec<PhaseChange>, T), Fail>,
    ) -> Result<T, Fail> {
        let head_key = self.head_key(id);
        for attempt in 0..MAX_ATTEMPTS {
            self.refresh(id, cache).await?;
            let (entries, out) = build(cache)?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return Ok(out);
            };
            debug_assert_eq!(first.seq, cache.index.last_seq() + 1);
            let value = json(&entries);
            if value.len() > MAX_BATCH_BYTES {
                return Err(Fail::Store(StoreError::Io {
                    context: super::CONTEXT.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{} changes make {} bytes, more than one etcd request may hold ({MAX_BATCH_BYTES})",
                            entries.len(),
                            value.len()
                        ),
                    ),
                }));
            }
            let r = self
                .inner
                .client
                .txn(
                    &[Compare::ModRevision(head_key.clone(), cache.head_rev)],
                    &[
                        TxnOp::Put(self.change_key(id, first.seq), value),
                        TxnOp::Put(head_key.clone(), json(&HeadDoc { seq: last.seq })),
                    ],
                    &[],
                )
                .await?;
            if r.succeeded {
                for e in &entries {
                    cache.index.note(e);
                }
                cache.changes.extend(entries);
                cache.head_rev = r.revision;
                return Ok(out);
            }
            if attempt >= 2 {
                tokio::time::sleep(jitter(attempt)).await;
            }
        }
        Err(Fail::Store(StoreError::Io {
            context: super::CONTEXT.into(),
            source: std::io::Error::other(format!(
                "gave up appending to operation {id} after {MAX_ATTEMPTS} attempts: other writers keep moving its head"
            )),
        }))
    }

    /// Appends or imports through a group commit: requests that arrive
    /// while another is being committed are committed together as one key.
    async fn submit(&self, id: &str, request: Request) -> Result<Vec<PhaseChange>, StoreError> {
        check_operation_id(id)?;
        let slot = self.slot(id);
        let mine = Pending::new(request);
        slot.queue.lock().unwrap().push(mine.clone());
        let mut cache = slot.cache.lock().await;
        loop {
            if let Some(r) = mine.take() {
                return r; // a leader committed it while we waited
            }
            let batch = {
                let mut queue = slot.queue.lock().unwrap();
                let mut size = 0;
                let mut n = 0;
                while n < queue.len()
                    && (n == 0 || size + queue[n].request.estimate() <= MAX_BATCH_BYTES)
                {
                    size += queue[n].request.estimate();
                    n += 1;
                }
                queue.drain(..n).collect::<Vec<_>>()
            };
            let outcome = self
                .commit_locked(id, &mut cache, |c| prepare_group(c, &batch))
                .await;
            if batch.iter().any(|p| Arc::ptr_eq(p, &mine)) {
                return distribute(&batch, &mine, outcome);
            }
            // Our request was queued behind a full group: hand out that
            // group's results and commit the next one.
            hand_out(&batch, outcome);
        }
    }

    /// Changes with a sequence number above `after`, read through the cache.
    pub(crate) async fn entries_after(
        &self,
        id: &str,
        after: u64,
    ) -> Result<Vec<PhaseChange>, Fail> {
        check_operation_id(id)?;
        let slot = self.slot(id);
        let mut cache = slot.cache.lock().await;
        self.refresh(id, &mut cache).await?;
        let start = (after as usize).min(cache.changes.len());
        Ok(cache.changes[start..].to_vec())
    }

    /// How many changelog entries etcd holds for `id` (entries are
    /// numbered from 1 without gaps, so this is also the last one's).
    pub(crate) async fn entry_count(&self, id: &str) -> Result<u64, Fail> {
        check_operation_id(id)?;
        let slot = self.slot(id);
        let mut cache = slot.cache.lock().await;
        self.refresh(id, &mut cache).await?;
        Ok(cache.changes.len() as u64)
    }

    pub(crate) async fn create(&self, plan: &Plan) -> Result<OperationRecord, Fail> {
        let id = plan.operation_id.as_str();
        check_operation_id(id)?;
        let client = &self.inner.client;
        let op_key = self.op_key(id);
        if client.get(&op_key).await?.is_some() {
            return Err(StoreError::AlreadyExists(id.to_string()).into());
        }
        let bytes = json(plan);
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let chunks: Vec<&[u8]> = bytes.chunks(PLAN_CHUNK).collect();
        let manifest = Manifest {
            nonce: nonce.clone(),
            chunks: chunks.len() as u32,
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        };
        let record = OperationRecord::for_plan(plan);
        let mut ops = vec![
            TxnOp::Put(
                op_key.clone(),
                json(&OperationDoc {
                    id: record.id.clone(),
                    kind: record.kind.clone(),
                    cluster: record.cluster.clone(),
                    created: record.created,
                }),
            ),
            TxnOp::Put(
                self.state_key(id),
                json(&StateDoc {
                    state: record.state,
                    updated: record.updated,
                }),
            ),
            TxnOp::Put(self.plan_key(id), json(&manifest)),
            TxnOp::Put(self.head_key(id), json(&HeadDoc { seq: 0 })),
        ];
        let staged = chunks.len() > 1;
        if staged {
            for (k, c) in chunks.iter().enumerate() {
                if let Err(e) = client.put(&self.chunk_key(id, &nonce, k as u32), c).await {
                    let _ = client.delete_prefix(&self.chunk_prefix(id, &nonce)).await;
                    return Err(e.into());
                }
            }
        } else {
            ops.push(TxnOp::Put(self.chunk_key(id, &nonce, 0), bytes.clone()));
        }
        let r = client.txn(&[Compare::Absent(op_key)], &ops, &[]).await?;
        if !r.succeeded {
            if staged {
                let _ = client.delete_prefix(&self.chunk_prefix(id, &nonce)).await;
            }
            return Err(StoreError::AlreadyExists(id.to_string()).into());
        }
        *self.slot(id).plan.lock().unwrap() = Some(plan.clone());
        Ok(record)
    }

    pub(crate) async fn read_plan(&self, id: &str) -> Result<Plan, Fail> {
        check_operation_id(id)?;
        let slot = self.slot(id);
        if let Some(p) = slot.plan.lock().unwrap().clone() {
            return Ok(p);
        }
        let client = &self.inner.client;
        let kv = client
            .get(&self.plan_key(id))
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let m: Manifest = decode(&kv)?;
        let mut bytes = Vec::with_capacity(m.bytes.min(64 << 20) as usize);
        for k in 0..m.chunks {
            let key = self.chunk_key(id, &m.nonce, k);
            let c = client
                .get(&key)
                .await?
                .ok_or_else(|| corrupt(&kv.key, format!("plan chunk {key} is missing")))?;
            bytes.extend_from_slice(&c.value);
        }
        if bytes.len() as u64 != m.bytes || crc32fast::hash(&bytes) != m.crc32 {
            return Err(corrupt(
                &kv.key,
                format!(
                    "the plan's chunks hold {} bytes that do not match its manifest ({} bytes, crc32 {:08x})",
                    bytes.len(),
                    m.bytes,
                    m.crc32
                ),
            ));
        }
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| corrupt(&kv.key, e))?;
        if plan.operation_id != id {
            return Err(corrupt(
                &kv.key,
                format!("holds the plan of operation {:?}", plan.operation_id),
            ));
        }
        *slot.plan.lock().unwrap() = Some(plan.clone());
        Ok(plan)
    }

    pub(crate) async fn read_record(&self, id: &str) -> Result<OperationRecord, Fail> {
        check_operation_id(id)?;
        let r = self
            .inner
            .client
            .txn(
                &[],
                &[TxnOp::Get(self.op_key(id)), TxnOp::Get(self.state_key(id))],
                &[],
            )
            .await?;
        let op = r
            .gets
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let state = match r.gets.get(1).cloned().flatten() {
            Some(kv) => Some(decode::<StateDoc>(&kv)?),
            None => None,
        };
        Ok(record(decode(&op)?, state))
    }

    pub(crate) async fn list(&self) -> Result<Vec<OperationRecord>, Fail> {
        let client = &self.inner.client;
        let ops = client
            .range_prefix(&self.key(format_args!("operations/")))
            .await?;
        let states_prefix = self.key(format_args!("states/"));
        let mut states: HashMap<String, StateDoc> = HashMap::new();
        for kv in client.range_prefix(&states_prefix).await? {
            states.insert(kv.key[states_prefix.len()..].to_string(), decode(&kv)?);
        }
        let mut out = Vec::with_capacity(ops.len());
        for kv in &ops {
            let doc: OperationDoc = decode(kv)?;
            let state = states.remove(&doc.id);
            out.push(record(doc, state));
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Sets the operation state, keeping the given `updated` time.
    pub(crate) async fn set_state(
        &self,
        id: &str,
        state: OperationState,
        updated: DateTime<Utc>,
    ) -> Result<(), Fail> {
        check_operation_id(id)?;
        // Succeeds (does nothing) when the operation is absent.
        let r = self
            .inner
            .client
            .txn(
                &[Compare::Absent(self.op_key(id))],
                &[],
                &[TxnOp::Put(
                    self.state_key(id),
                    json(&StateDoc { state, updated }),
                )],
            )
            .await?;
        if r.succeeded {
            return Err(StoreError::NotFound(id.to_string()).into());
        }
        Ok(())
    }

    /// Takes the lock; `Ok(true)` if it was taken now, `Ok(false)` if `id`
    /// held it already.
    pub(crate) async fn claim(&self, id: &str, actor: &Actor) -> Result<bool, Fail> {
        let key = self.lock_key();
        for _ in 0..MAX_ATTEMPTS {
            let info = LockInfo {
                operation_id: id.to_string(),
                actor: actor.clone(),
                time: Utc::now(),
            };
            let r = self
                .inner
                .client
                .txn(
                    &[Compare::Absent(key.clone())],
                    &[TxnOp::Put(key.clone(), json(&info))],
                    &[TxnOp::Get(key.clone())],
                )
                .await?;
            if r.succeeded {
                return Ok(true);
            }
            if let Some(kv) = r.gets.first().cloned().flatten() {
                let held: LockInfo = decode(&kv)?;
                return if held.operation_id == id {
                    Ok(false)
                } else {
                    Err(StoreError::Locked(held).into())
                };
            }
            // Released in between: try again.
        }
        Err(corrupt(&key, "the lock keeps changing"))
    }

    pub(crate) async fn release(&self, id: &str) -> Result<(), Fail> {
        let key = self.lock_key();
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = self.inner.client.get(&key).await? else {
                return Ok(());
            };
            let held: LockInfo = decode(&kv)?;
            if held.operation_id != id {
                return Ok(());
            }
            let r = self
                .inner
                .client
                .txn(
                    &[Compare::ModRevision(key.clone(), kv.mod_revision)],
                    &[TxnOp::Delete(key.clone())],
                    &[],
                )
                .await?;
            if r.succeeded {
                return Ok(());
            }
        }
        Err(corrupt(&key, "the lock keeps changing"))
    }

    pub(crate) async fn holder(&self) -> Result<Option<LockInfo>, Fail> {
        match self.inner.client.get(&self.lock_key()).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }
}

fn record(doc: OperationDoc, state: Option<StateDoc>) -> OperationRecord {
    let (state, updated) = match state {
        Some(s) => (s.state, s.updated),
        None => (OperationState::InProgress, doc.created),
    };
    OperationRecord {
        id: doc.id,
        kind: doc.kind,
        cluster: doc.cluster,
        created: doc.created,
        state,
        updated,
    }
}

/// Adds one append read from etcd to the cache; ignores appends beyond
/// `upto` (committed after the head that was read).
fn take_batch(cache: &mut Cache, kv: &KeyValue, upto: u64) -> Result<(), Fail> {
    let batch = decode_batch(kv)?;
    let next = cache.index.last_seq() + 1;
    if batch[0].seq != next {
        return Err(corrupt(
            &kv.key,
            format!(
                "starts at change {} where change {next} was expected",
                batch[0].seq
            ),
        ));
    }
    if batch[0].seq > upto {
        return Ok(());
    }
    for c in &batch {
        cache.index.note(c);
    }
    cache.changes.extend(batch);
    Ok(())
}

type GroupResults = Vec<Result<Vec<PhaseChange>, StoreError>>;

/// Prepares a group of requests against the latest changelog: each
/// request's guards see the changes of the requests before it; a request
/// whose guard fails gets its conflict and the others go ahead.
fn prepare_group(
    cache: &Cache,
    batch: &[Arc<Pending<Request>>],
) -> Result<(Vec<PhaseChange>, GroupResults), Fail> {
    let mut index: Cow<'_, LogIndex> = Cow::Borrowed(&cache.index);
    let mut all = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let prepared = match &p.request {
            Request::Append(changes) => index.prepare(changes),
            Request::Import(entries) => Ok(index.prepare_import(entries)),
        };
        match prepared {
            Ok(stored) => {
                if i + 1 < batch.len() && !stored.is_empty() {
                    let idx = index.to_mut();
                    for c in &stored {
                        idx.note(c);
                    }
                }
                all.extend(stored.iter().cloned());
                results.push(Ok(stored));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    Ok((all, results))
}

#[async_trait]
impl PlanStore for EtcdPlanStore {
    async fn create_operation(&self, plan: &Plan) -> Result<OperationRecord, StoreError> {
        self.create(plan).await.map_err(Fail::into_store)
    }

    async fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.list().await.map_err(Fail::into_store)
    }

    async fn operation(&self, id: &str) -> Result<OperationRecord, StoreError> {
        self.read_record(id).await.map_err(Fail::into_store)
    }

    async fn plan(&self, id: &str) -> Result<Plan, StoreError> {
        self.read_plan(id).await.map_err(Fail::into_store)
    }

    async fn changes(&self, id: &str, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        self.entries_after(id, after)
            .await
            .map_err(Fail::into_store)
    }

    async fn append(
        &self,
        id: &str,
        changes: Vec<NewChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        self.submit(id, Request::Append(changes)).await
    }

    async fn import_changes(
        &self,
        id: &str,
        changes: Vec<PhaseChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        self.submit(id, Request::Import(changes)).await
    }

    async fn set_operation_state(&self, id: &str, state: OperationState) -> Result<(), StoreError> {
        self.set_state(id, state, Utc::now())
            .await
            .map_err(Fail::into_store)
    }

    async fn claim_lock(&self, id: &str, actor: &Actor) -> Result<(), StoreError> {
        self.claim(id, actor)
            .await
            .map(|_| ())
            .map_err(Fail::into_store)
    }

    async fn release_lock(&self, id: &str) -> Result<(), StoreError> {
        self.release(id).await.map_err(Fail::into_store)
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StoreError> {
        self.holder().await.map_err(Fail::into_store)
    }
}
