//! `roles`: the migration of cluster roles whose rules assign Kubernetes
//! groups through `assignKubernetesGroups(...)` actions to the new format,
//! where the groups are a field of the role (spec §3, "roles").
//!
//! Gravity kept roles in its etcd-backed backend; here a role is the key
//! [`ROLES`]`<name>` of the [`crate::backend::Etcd`] backend, holding the
//! role as JSON: `{"kind":"role","metadata":{"name":…},"spec":{"allow":
//! {"rules":[{"resources":[…],"verbs":[…],"actions":[…]}],
//! "kubernetes_groups":[…]},"deny":{…}}}`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde_json::Value;

use super::common::{Context, check_run_node, executor_struct, gate, put_keys, restore_keys};
use crate::backend::Backends;

/// The etcd prefix of the cluster roles.
pub const ROLES: &str = "/gravity/local/roles/";

/// The action of the old format.
pub const ASSIGN_KUBERNETES_GROUPS: &str = "assignKubernetesGroups";

executor_struct!(
    /// `roles`: for every role with `assignKubernetesGroups` actions, moves
    /// the groups into the role's `kubernetes_groups` (allow and deny
    /// separately) and drops those actions. Rollback puts back exactly the
    /// roles it rewrote. Runs on the lead master.
    Roles
);

/// The groups named by an `assignKubernetesGroups("a", 'b')` action.
fn groups_of(action: &str) -> Vec<String> {
    let args = action
        .split_once('(')
        .map(|(_, a)| a.trim_end().trim_end_matches(')'))
        .unwrap_or_default();
    args.split(',')
        .map(|a| a.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

/// A role in the new format, or `None` if it has nothing to migrate (or
/// is not a role this migration understands).
pub fn migrate_role(role: &Value) -> Option<Value> {
    let mut role = role.clone();
    let mut changed = false;
    for side in ["allow", "deny"] {
        let Some(cond) = role
            .pointer_mut(&format!("/spec/{side}"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let mut groups = Vec::new();
        for rule in cond
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(actions) = rule.get_mut("actions").and_then(Value::as_array_mut) else {
                continue;
            };
            actions.retain(|a| match a.as_str() {
                Some(a) if a.trim_start().starts_with(ASSIGN_KUBERNETES_GROUPS) => {
                    groups.extend(groups_of(a));
                    changed = true;
                    false
                }
                _ => true,
            });
            if actions.is_empty()
                && let Some(r) = rule.as_object_mut()
            {
                r.remove("actions");
            }
        }
        if groups.is_empty() {
            continue;
        }
        let list = cond
            .entry("kubernetes_groups")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            for g in groups {
                if !list.iter().any(|x| x.as_str() == Some(&g)) {
                    list.push(Value::String(g));
                }
            }
        }
    }
    changed.then_some(role)
}

/// The roles of the backend that still need the migration, by key, with
/// their new value.
pub async fn legacy_roles(b: &Backends) -> Result<BTreeMap<String, String>, ExecError> {
    let roles = b
        .etcd
        .list(ROLES)
        .await
        .ctx(|| "cannot list the cluster roles".into())?;
    Ok(roles
        .into_iter()
        .filter_map(|(k, v)| {
            let role: Value = serde_json::from_str(&v).ok()?;
            Some((k, migrate_role(&role)?.to_string()))
        })
        .collect())
}

#[async_trait]
impl PhaseExecutor for Roles {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        gate(&self.b, ctx, None).await?;
        let writes = legacy_roles(&self.b).await?;
        for k in writes.keys() {
            ctx.info(format!("migrating role {}", &k[ROLES.len()..]));
        }
        Ok(put_keys(&self.b, ctx, &writes).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(restore_keys(&self.b, ctx).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_move_out_of_the_actions() {
        let old = serde_json::json!({
            "kind": "role",
            "metadata": {"name": "@teleadmin"},
            "spec": {
                "allow": {
                    "logins": ["root"],
                    "rules": [
                        {"resources": ["*"], "verbs": ["*"],
                         "actions": ["assignKubernetesGroups('admin', \"ops\")"]},
                        {"resources": ["app"], "verbs": ["read"],
                         "actions": ["log(\"x\")", "assignKubernetesGroups(\"admin\")"]}
                    ]
                },
                "deny": {"rules": [{"resources": ["secret"], "verbs": ["*"],
                                    "actions": ["assignKubernetesGroups(\"guests\")"]}]}
            }
        });
        let new = migrate_role(&old).unwrap();
        assert_eq!(
            new["spec"]["allow"]["kubernetes_groups"],
            serde_json::json!(["admin", "ops"])
        );
        assert_eq!(
            new["spec"]["deny"]["kubernetes_groups"],
            serde_json::json!(["guests"])
        );
        assert!(new["spec"]["allow"]["rules"][0].get("actions").is_none());
        assert_eq!(
            new["spec"]["allow"]["rules"][1]["actions"],
            serde_json::json!(["log(\"x\")"])
        );
        assert_eq!(new["spec"]["allow"]["logins"], serde_json::json!(["root"]));
        assert!(
            migrate_role(&new).is_none(),
            "a migrated role stays as it is"
        );
    }
}
