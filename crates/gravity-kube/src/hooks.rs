//! Application hooks run as Jobs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use gravity_pack::Locator;
use gravity_upgrade::backend::{BackendError, BackendResult, Hook, HookOutcome};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, PostParams};
use tokio::time::Instant;

use crate::backend::KubeBackend;
use crate::error::{CallError, backend, is_conflict};
use crate::selector;

/// Label naming the hook on hook jobs.
pub const HOOK_LABEL: &str = "gravitational.io/hook";
/// Label naming the application on hook jobs.
pub const APP_LABEL: &str = "gravitational.io/app";

/// Where the Job of an application hook comes from.
#[async_trait]
pub trait HookJobs: Send + Sync {
    /// The Job that runs `hook` of `app`, or `None` if the application does
    /// not define that hook.
    async fn job(&self, app: &Locator, hook: Hook) -> BackendResult<Option<Job>>;
}

/// No application defines hooks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHookJobs;

#[async_trait]
impl HookJobs for NoHookJobs {
    async fn job(&self, _app: &Locator, _hook: Hook) -> BackendResult<Option<Job>> {
        Ok(None)
    }
}

/// Job manifests in a directory: `<dir>/<app-name>/<hook>.yaml` (for
/// example `hooks/telekube/preUpdate.yaml`), one batch/v1 Job each. An
/// absent file means the application does not define the hook.
#[derive(Debug, Clone)]
pub struct DirHookJobs {
    dir: PathBuf,
}

impl DirHookJobs {
    /// Manifests under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirHookJobs { dir: dir.into() }
    }

    /// The manifest file of `hook` of `app`.
    pub fn path(&self, app: &Locator, hook: Hook) -> PathBuf {
        self.dir
            .join(app.name())
            .join(format!("{}.yaml", hook.as_str()))
    }
}

#[async_trait]
impl HookJobs for DirHookJobs {
    async fn job(&self, app: &Locator, hook: Hook) -> BackendResult<Option<Job>> {
        let path = self.path(app, hook);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(BackendError::Io {
                    context: format!("cannot read hook job manifest {}", path.display()),
                    source: e,
                });
            }
        };
        serde_yaml_ng::from_str(&text).map(Some).map_err(|e| {
            BackendError::Corrupt(format!(
                "hook job manifest {} is not a batch/v1 Job: {e}; fix the file",
                path.display()
            ))
        })
    }
}

/// Hook jobs kept in memory, by application name and hook.
#[derive(Debug, Default)]
pub struct MemoryHookJobs {
    jobs: Mutex<BTreeMap<(String, &'static str), Job>>,
}

impl MemoryHookJobs {
    /// No jobs.
    pub fn new() -> Self {
        MemoryHookJobs::default()
    }

    /// Defines `hook` of the application named `app` (any version).
    pub fn insert(&self, app: &str, hook: Hook, job: Job) {
        self.jobs
            .lock()
            .expect("hook jobs lock")
            .insert((app.to_string(), hook.as_str()), job);
    }
}

#[async_trait]
impl HookJobs for MemoryHookJobs {
    async fn job(&self, app: &Locator, hook: Hook) -> BackendResult<Option<Job>> {
        Ok(self
            .jobs
            .lock()
            .expect("hook jobs lock")
            .get(&(app.name().to_string(), hook.as_str()))
            .cloned())
    }
}

/// A DNS-1123 label prefix for a job name: lower case, `[a-z0-9-]`, at
/// most 52 characters so that a `-xxxxxxxx` suffix keeps it under 63.
pub(crate) fn job_name_prefix(base: &str) -> String {
    let mut s: String = base
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    s.truncate(52);
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "hook".into() } else { s }
}

/// Whether a job finished: `Some(true)` succeeded, `Some(false)` failed.
fn finished(job: &Job) -> Option<bool> {
    let status = job.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return Some(true),
                "Failed" => return Some(false),
                _ => {}
            }
        }
    }
    if status.succeeded.unwrap_or(0) > 0 && status.active.unwrap_or(0) == 0 {
        return Some(true);
    }
    None
}

impl KubeBackend {
    pub(crate) async fn run_hook_job(
        &self,
        app: &Locator,
        hook: Hook,
    ) -> BackendResult<HookOutcome> {
        let Some(mut job) = self.hooks.job(app, hook).await? else {
            return Ok(HookOutcome {
                ran: false,
                logs: Vec::new(),
            });
        };
        let fail = |logs: String| BackendError::HookFailed {
            app: app.to_string(),
            hook: hook.as_str().to_string(),
            logs,
        };
        let ns = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| self.options.hook_namespace.clone());
        let base = job
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", app.name(), hook.as_str()));
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{}-{}", job_name_prefix(&base), &suffix[..8]);
        job.metadata.name = Some(name.clone());
        job.metadata.namespace = Some(ns.clone());
        job.metadata.generate_name = None;
        job.metadata.resource_version = None;
        job.metadata.uid = None;
        let labels = job.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(HOOK_LABEL.into(), hook.as_str().into());
        labels.insert(APP_LABEL.into(), job_name_prefix(app.name()));
        job.status = None;
        let jobs = Api::<Job>::namespaced(self.client.clone(), &ns);
        let pp = PostParams::default();
        let read_err = |e: CallError| {
            backend(
                format!("cannot read job {ns}/{name} of {app}({})", hook.as_str()),
                e,
            )
        };
        let created = match self.call(|| jobs.create(&pp, &job)).await {
            Ok(j) => j,
            // The name is unique to this call: a retry meeting an existing
            // job meets its own first attempt, applied with the answer lost.
            Err(e) if is_conflict(&e) && e.retried() => {
                self.call(|| jobs.get(&name)).await.map_err(read_err)?
            }
            Err(e) => {
                return Err(backend(
                    format!("cannot create job {ns}/{name} for {app}({})", hook.as_str()),
                    e,
                ));
            }
        };
        let deadline = Instant::now() + self.options.hook_timeout;
        let mut current = created;
        let ok = loop {
            if let Some(ok) = finished(&current) {
                break Some(ok);
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            tokio::time::sleep(self.options.poll_interval.min(deadline - now)).await;
            current = self
                .call_until(deadline, || jobs.get(&name))
                .await
                .map_err(read_err)?;
        };
        let mut logs = self.job_logs(&ns, &name, &current).await?;
        match ok {
            Some(true) => Ok(HookOutcome { ran: true, logs }),
            Some(false) => {
                if logs.is_empty() {
                    logs.push(format!("job {ns}/{name} failed"));
                }
                Err(fail(logs.join("\n")))
            }
            None => {
                logs.push(format!(
                    "job {ns}/{name} did not finish within {:?}",
                    self.options.hook_timeout
                ));
                Err(fail(logs.join("\n")))
            }
        }
    }

    /// The log lines of the job's pods (by pod name, then container).
    async fn job_logs(&self, ns: &str, name: &str, job: &Job) -> BackendResult<Vec<String>> {
        let match_labels = job
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| BTreeMap::from([("job-name".to_string(), name.to_string())]));
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&selector::equality(&match_labels));
        let mut list = self
            .call(|| pods.list(&lp))
            .await
            .map_err(|e| backend(format!("cannot list the pods of job {ns}/{name}"), e))?
            .items;
        list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut lines = Vec::new();
        for p in &list {
            let pod = p.metadata.name.clone().unwrap_or_default();
            let containers: Vec<String> = p
                .spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            for c in containers {
                let lp = LogParams {
                    container: Some(c.clone()),
                    ..Default::default()
                };
                match self.call(|| pods.logs(&pod, &lp)).await {
                    Ok(text) => lines.extend(text.lines().map(str::to_string)),
                    Err(e) => lines.push(format!(
                        "(cannot read the logs of {ns}/{pod} container {c}: {e})"
                    )),
                }
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_dns_labels() {
        assert_eq!(job_name_prefix("telekube-preUpdate"), "telekube-preupdate");
        assert_eq!(job_name_prefix("a_b.c"), "a-b-c");
        assert_eq!(job_name_prefix("--"), "hook");
        assert!(job_name_prefix(&"x".repeat(100)).len() <= 52);
    }

    #[test]
    fn finished_reads_conditions_and_counts() {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        let mut j = Job::default();
        assert_eq!(finished(&j), None);
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(finished(&j), Some(false));
        j.status = Some(JobStatus {
            succeeded: Some(1),
            ..Default::default()
        });
        assert_eq!(finished(&j), Some(true));
    }

    #[tokio::test]
    async fn dir_jobs_read_manifests_and_absent_files_mean_no_hook() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("telekube")).unwrap();
        std::fs::write(
            d.path().join("telekube/preUpdate.yaml"),
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: pre\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: hook\n        image: busybox\n",
        )
        .unwrap();
        std::fs::write(d.path().join("telekube/update.yaml"), "spec: [").unwrap();
        let jobs = DirHookJobs::new(d.path());
        let app = Locator::parse("gravitational.io/telekube:5.5.50").unwrap();
        let j = jobs.job(&app, Hook::PreUpdate).await.unwrap().unwrap();
        assert_eq!(j.metadata.name.as_deref(), Some("pre"));
        assert!(jobs.job(&app, Hook::PostUpdate).await.unwrap().is_none());
        let e = jobs.job(&app, Hook::Update).await.unwrap_err();
        assert!(e.to_string().contains("update.yaml"), "{e}");
    }
}
