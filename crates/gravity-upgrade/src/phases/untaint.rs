//! `untaint_node`: removes the runlevel taint added by `taint_node` once
//! the node's endpoints serve again.

use super::common::{NodeChange, node_change_executor};

node_change_executor!(
    /// `untaint_node`: removes the runlevel taint. Rollback puts it back if
    /// this phase removed it. Runs on a master.
    UntaintNode,
    NodeChange::Untaint
);
