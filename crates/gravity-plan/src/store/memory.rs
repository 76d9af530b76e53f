//! An in-memory [`PlanStore`] for tests and embedding.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;

use super::{LockInfo, LogIndex, OperationRecord, PlanStore, StoreError, check_operation_id};
use crate::plan::Plan;
use crate::state::{Actor, NewChange, OperationState, PhaseChange};

#[derive(Debug)]
struct MemOperation {
    record: OperationRecord,
    plan: Plan,
    changes: Vec<PhaseChange>,
    index: LogIndex,
}

/// Keeps everything in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    ops: Mutex<HashMap<String, MemOperation>>,
    lock: Mutex<Option<LockInfo>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PlanStore for MemoryStore {
    async fn create_operation(&self, plan: &Plan) -> Result<OperationRecord, StoreError> {
        check_operation_id(&plan.operation_id)?;
        let mut ops = self.ops.lock().unwrap();
        if ops.contains_key(&plan.operation_id) {
            return Err(StoreError::AlreadyExists(plan.operation_id.clone()));
        }
        let record = OperationRecord::for_plan(plan);
        ops.insert(
            plan.operation_id.clone(),
            MemOperation {
                record: record.clone(),
                plan: plan.clone(),
                changes: Vec::new(),
                index: LogIndex::default(),
            },
        );
        Ok(record)
    }

    async fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        let ops = self.ops.lock().unwrap();
        let mut v: Vec<_> = ops.values().map(|o| o.record.clone()).collect();
        v.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        Ok(v)
    }

    async fn operation(&self, id: &str) -> Result<OperationRecord, StoreError> {
        let ops = self.ops.lock().unwrap();
        ops.get(id)
            .map(|o| o.record.clone())
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    async fn plan(&self, id: &str) -> Result<Plan, StoreError> {
        let ops = self.ops.lock().unwrap();
        ops.get(id)
            .map(|o| o.plan.clone())
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    async fn changes(&self, id: &str, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        let ops = self.ops.lock().unwrap();
        let op = ops
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        // Sequence numbers are dense from 1, so `after` is an index.
        let start = (after as usize).min(op.changes.len());
        Ok(op.changes[start..].to_vec())
    }

    async fn append(
        &self,
        id: &str,
        changes: Vec<NewChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        let mut ops = self.ops.lock().unwrap();
        let op = ops
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let stored = op.index.prepare(&changes)?;
        for c in &stored {
            op.index.note(c);
            op.changes.push(c.clone());
        }
        Ok(stored)
    }

    async fn import_changes(
        &self,
        id: &str,
        changes: Vec<PhaseChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        let mut ops = self.ops.lock().unwrap();
        let op = ops
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let stored = op.index.prepare_import(&changes);
        for c in &stored {
            op.index.note(c);
            op.changes.push(c.clone());
        }
        Ok(stored)
    }

    async fn set_operation_state(&self, id: &str, state: OperationState) -> Result<(), StoreError> {
        let mut ops = self.ops.lock().unwrap();
        let op = ops
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        op.record.state = state;
        op.record.updated = Utc::now();
        Ok(())
    }

    async fn claim_lock(&self, id: &str, actor: &Actor) -> Result<(), StoreError> {
        let mut lock = self.lock.lock().unwrap();
        match &*lock {
            Some(l) if l.operation_id != id => Err(StoreError::Locked(l.clone())),
            Some(_) => Ok(()),
            None => {
                *lock = Some(LockInfo {
                    operation_id: id.to_string(),
                    actor: actor.clone(),
                    time: Utc::now(),
                });
                Ok(())
            }
        }
    }

    async fn release_lock(&self, id: &str) -> Result<(), StoreError> {
        let mut lock = self.lock.lock().unwrap();
        if lock.as_ref().is_some_and(|l| l.operation_id == id) {
            *lock = None;
        }
        Ok(())
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StoreError> {
        Ok(self.lock.lock().unwrap().clone())
    }
}
