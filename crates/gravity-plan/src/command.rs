//! The built-in `command` executor: a plan file becomes a resumable runbook.
//!
//! A phase's `data` says what to run:
//!
//! ```yaml
//! data:
//!   command: ["sh", "-c", "systemctl restart etcd"]   # or a string, run with sh -c
//!   rollback: "systemctl stop etcd"                   # optional; no rollback command = nothing to undo
//!   check: "systemctl is-active etcd"                 # optional post-check
//!   timeout: 5m                                       # optional, Go-style
//!   env: {ETCDCTL_API: "3"}                           # optional
//!   dir: /var/lib                                     # optional working directory
//! ```
//!
//! The program's output is captured; on failure its last lines become the
//! phase error. On timeout or cancellation the program is killed.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::duration::parse_duration;
use crate::executor::{ExecError, PhaseContext, PhaseExecutor};

/// How many trailing lines of output go into an error.
const TAIL_LINES: usize = 20;
/// Output kept per stream, in bytes.
const KEEP_BYTES: usize = 64 * 1024;

/// Runs programs named in the phase data (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandExecutor;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Argv {
    Shell(String),
    Args(Vec<String>),
}

impl Argv {
    fn argv(&self) -> Vec<String> {
        match self {
            Argv::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            Argv::Args(a) => a.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandData {
    command: Argv,
    #[serde(default)]
    rollback: Option<Argv>,
    #[serde(default)]
    check: Option<Argv>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    dir: Option<String>,
}

fn data(ctx: &PhaseContext) -> Result<CommandData, ExecError> {
    ctx.phase().data.decode().map_err(|e| {
        format!(
            "phase {} has executor \"command\" but its data is not valid: {e} (expected data.command as a list of arguments or a shell string)",
            ctx.path()
        )
        .into()
    })
}

async fn run(ctx: &PhaseContext, d: &CommandData, argv: &Argv) -> Result<(), ExecError> {
    let argv = argv.argv();
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let timeout = match &d.timeout {
        Some(t) => Some(parse_duration(t)?),
        None => None,
    };
    let shown = argv.join(" ");
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&d.env)
        .env("GRAVITY_PHASE", ctx.path().as_str())
        .env("GRAVITY_OPERATION_ID", &ctx.plan().header().operation_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &d.dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let read_all = async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(read_capped(&mut out, &mut a), read_capped(&mut err, &mut b));
        (a, b)
    };
    let waited = async { tokio::join!(child.wait(), read_all) };
    let limit = timeout.unwrap_or(Duration::MAX);
    let (status, (stdout, stderr)) = tokio::select! {
        r = tokio::time::timeout(limit, waited) => match r {
            Ok((status, output)) => (status?, output),
            Err(_) => return Err(format!("{shown:?} timed out after {}", humantime(limit)).into()),
        },
        _ = ctx.cancel().cancelled() => return Err(format!("{shown:?} was interrupted").into()),
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    let how = match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".into(),
    };
    if tail.is_empty() {
        Err(format!("{shown:?} {how}").into())
    } else {
        Err(format!("{shown:?} {how}:\n{tail}").into())
    }
}

/// Reads a stream to the end, keeping only the last [`KEEP_BYTES`].
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    keep: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        keep.extend_from_slice(&buf[..n]);
        if keep.len() > 2 * KEEP_BYTES {
            keep.drain(..keep.len() - KEEP_BYTES);
        }
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[async_trait]
impl PhaseExecutor for CommandExecutor {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = data(ctx)?;
        if let Some(t) = &d.timeout {
            parse_duration(t)?;
        }
        Ok(())
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = data(ctx)?;
        run(ctx, &d, &d.command).await
    }

    async fn post_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = data(ctx)?;
        match &d.check {
            Some(check) => run(ctx, &d, check).await,
            None => Ok(()),
        }
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = data(ctx)?;
        match &d.rollback {
            Some(rb) => run(ctx, &d, rb).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::executor::NoProgress;
    use crate::{Phase, PhasePath, Plan, PlanGraph};
    use tokio_util::sync::CancellationToken;

    fn ctx(data: serde_json::Value) -> PhaseContext {
        let mut p = Phase::new(PhasePath::parse("/step").unwrap(), "Step");
        p.executor = Some("command".into());
        p.data = data.into();
        let graph = PlanGraph::build(Plan {
            operation_id: "op-1".into(),
            operation_kind: "runbook".into(),
            cluster_name: "c".into(),
            created: chrono::Utc::now(),
            phases: vec![p],
        })
        .unwrap();
        let path = PhasePath::parse("/step").unwrap();
        PhaseContext::new(graph, &path, Arc::new(NoProgress), CancellationToken::new()).unwrap()
    }

    #[tokio::test]
    async fn runs_and_captures_failures() {
        let ok = ctx(
            serde_json::json!({"command": ["sh", "-c", "test \"$GRAVITY_PHASE\" = /step && test \"$X\" = y"], "env": {"X": "y"}}),
        );
        CommandExecutor.execute(&ok).await.unwrap();
        let bad = ctx(serde_json::json!({"command": "echo one; echo two >&2; exit 4"}));
        let e = CommandExecutor.execute(&bad).await.unwrap_err().to_string();
        assert!(e.contains("exited with status 4"), "{e}");
        assert!(e.contains("one\ntwo"), "{e}");
        // No rollback command: nothing to undo.
        CommandExecutor.rollback(&bad).await.unwrap();
    }

    #[tokio::test]
    async fn honours_timeout_and_cancellation() {
        let slow = ctx(serde_json::json!({"command": "sleep 5", "timeout": "200ms"}));
        let t = std::time::Instant::now();
        let e = CommandExecutor
            .execute(&slow)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out after 200ms"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let c = ctx(serde_json::json!({"command": "sleep 5"}));
        let token = c.cancel().clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            token.cancel();
        });
        let e = CommandExecutor.execute(&c).await.unwrap_err().to_string();
        assert!(e.contains("was interrupted"), "{e}");
    }

    #[tokio::test]
    async fn bad_data_is_a_clear_error() {
        let c = ctx(serde_json::json!({"cmd": "true"}));
        let e = CommandExecutor.pre_check(&c).await.unwrap_err().to_string();
        assert!(e.contains("its data is not valid"), "{e}");
        let c = ctx(serde_json::json!({"command": "true", "timeout": "soon"}));
        assert!(CommandExecutor.pre_check(&c).await.is_err());
    }
}
