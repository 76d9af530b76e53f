//! `taint_node`: adds `gravitational.io/runlevel=system:NoExecute` to the
//! node so that only system pods run on it while it is upgraded.

use super::common::{NodeChange, node_change_executor};

node_change_executor!(
    /// `taint_node`: adds the runlevel taint. Rollback removes it if this
    /// phase added it. Runs on a master.
    TaintNode,
    NodeChange::Taint
);
