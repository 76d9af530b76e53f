//! `devicemapper`, `format`, `mount`: the Docker device of a node moved
//! from devicemapper to overlay data, one step per kind. The three kinds
//! are one executor with the target state as parameter.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_run_node, clear, data, gate, load_first, remember_first};
use crate::backend::Backends;
use crate::executors::{self as ex, DockerDeviceData};

/// `devicemapper`, `format`, `mount`: move the Docker device to the state
/// of the kind (`none`, `formatted`, `mounted`). Rollback puts back the
/// state the device had before this phase first changed it.
#[derive(Debug, Clone)]
pub struct DockerDevice {
    b: Backends,
    kind: &'static str,
}

impl DockerDevice {
    /// The executor of `kind` over `backends`.
    pub fn new(backends: Backends, kind: &'static str) -> Self {
        DockerDevice { b: backends, kind }
    }
}

#[async_trait]
impl PhaseExecutor for DockerDevice {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: DockerDeviceData = data(ctx)?;
        let node = &d.server.hostname;
        gate(&self.b, ctx, Some(node)).await?;
        let state = match self.kind {
            ex::DEVICEMAPPER => "none",
            ex::FORMAT => "formatted",
            _ => "mounted",
        };
        let prev = self
            .b
            .nodes
            .set_docker_device(node, &d.docker_device, state)
            .await
            .ctx(|| format!("failed to reconfigure {} on node {node}", d.docker_device))?;
        let device = d.docker_device.clone();
        Ok(remember_first(&self.b, ctx, node, device, prev).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: DockerDeviceData = data(ctx)?;
        let node = &d.server.hostname;
        let Some(prev) = load_first::<String>(&self.b, ctx, node).await? else {
            return Ok(());
        };
        for (device, state) in prev {
            self.b
                .nodes
                .set_docker_device(node, &device, &state)
                .await
                .ctx(|| format!("failed to restore {device} on node {node}"))?;
        }
        Ok(clear(&self.b, ctx, node).await?)
    }
}
