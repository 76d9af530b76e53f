//! `uncordon_node`: makes the upgraded node schedulable again.

use super::common::{NodeChange, node_change_executor};

node_change_executor!(
    /// `uncordon_node`: makes the node schedulable. Rollback cordons it
    /// again if this phase uncordoned it. Runs on a master.
    Uncordon,
    NodeChange::Uncordon
);
