//! `gravity report`: one gzip tarball with what a support ticket needs.
//!
//! It holds, under `gravity-report/`: every operation of the last period
//! with its plan as text and JSON, the package list of every store, the
//! simulated cluster state and status files when present, and the lines of
//! the command log written since `--since`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use gravity_pack::location::{StoreSelector, node_names, open_store, store_path};
use gravity_pack::{PackageStore, render_list};
use gravity_plan::{PlanGraph, PlanView, parse_duration, render};

use crate::plan_cmd::open_store as open_plan_store;
use crate::{CliResult, Globals};

/// `gravity report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Where to write the tarball.
    #[arg(long, default_value = "report.tar.gz")]
    file: PathBuf,
    /// Only what happened in this period (Go-style duration: 24h, 90m).
    #[arg(long, default_value = "24h")]
    since: String,
}

struct Report {
    tar: tar::Builder<flate2::write::GzEncoder<std::fs::File>>,
    files: usize,
}

impl Report {
    fn add(&mut self, name: &str, body: &[u8]) -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(Utc::now().timestamp().max(0) as u64);
        h.set_cksum();
        self.tar
            .append_data(&mut h, format!("gravity-report/{name}"), body)?;
        self.files += 1;
        Ok(())
    }
}

/// Lines of the command log at or after `cutoff`.
fn log_since(state_dir: &Path, cutoff: DateTime<Utc>) -> String {
    let Ok(text) = std::fs::read_to_string(state_dir.join("gravity.log")) else {
        return String::new();
    };
    text.lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t >= cutoff)
        })
        .fold(String::new(), |mut s, l| {
            s.push_str(l);
            s.push('\n');
            s
        })
}

/// `gravity report`
pub async fn run(args: ReportArgs, globals: &Globals) -> CliResult {
    let since = parse_duration(&args.since)?;
    let cutoff = Utc::now() - chrono::Duration::from_std(since).map_err(|e| e.to_string())?;
    let state = &globals.state_dir;
    // Written to a temporary name and renamed, so a half-written report is
    // never mistaken for a whole one.
    let tmp = args.file.with_extension("tmp");
    let file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut r = Report {
        tar: tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        )),
        files: 0,
    };

    let store = open_plan_store(state)?;
    let mut ops_text = String::new();
    for op in store.operations().await? {
        if op.created < cutoff && op.updated < cutoff {
            continue;
        }
        ops_text.push_str(&format!(
            "{} {} {} created {} updated {}\n",
            op.id, op.kind, op.state, op.created, op.updated
        ));
        let plan = store.plan(&op.id).await?;
        let changes = store.changes(&op.id, 0).await?;
        let view = PlanView::resolve(PlanGraph::build(plan)?, &changes);
        let mut text = render::text(&view);
        text.push_str(&render::explain_failures(&view));
        r.add(&format!("operations/{}/plan.txt", op.id), text.as_bytes())?;
        r.add(
            &format!("operations/{}/plan.json", op.id),
            render::json(&view).as_bytes(),
        )?;
        let log: String = changes
            .iter()
            .map(|c| serde_json::to_string(c).unwrap_or_default() + "\n")
            .collect();
        r.add(
            &format!("operations/{}/changelog.jsonl", op.id),
            log.as_bytes(),
        )?;
    }
    r.add("operations.txt", ops_text.as_bytes())?;

    let mut selectors = vec![("cluster".to_string(), StoreSelector::Cluster)];
    for n in node_names(state).unwrap_or_default() {
        selectors.push((format!("node-{n}"), StoreSelector::Node(n)));
    }
    for (name, sel) in selectors {
        // Never create a store just to report on it.
        if !store_path(state, &sel).is_ok_and(|p| p.exists()) {
            continue;
        }
        let text = match open_store(state, &sel).and_then(|s| s.list(None)) {
            Ok(envs) => render_list(&envs),
            Err(e) => format!("cannot list this store: {e}\n"),
        };
        r.add(&format!("packages/{name}.txt"), text.as_bytes())?;
    }

    // State written by other parts of gravity (the simulated cluster, the
    // status history), copied as they are when present.
    for rel in [
        "sim/cluster.json",
        "sim/cluster.journal",
        "status/history.jsonl",
        "cluster.json",
    ] {
        if let Ok(body) = std::fs::read(state.join(rel)) {
            r.add(rel, &body)?;
        }
    }
    if let Ok(status) = crate::cluster_cmd::status_text(globals).await {
        r.add("status.txt", status.as_bytes())?;
        r.add(
            "status-history.txt",
            crate::cluster_cmd::history_text(globals).as_bytes(),
        )?;
    }
    r.add("gravity.log", log_since(state, cutoff).as_bytes())?;

    let files = r.files;
    let gz = r.tar.into_inner()?;
    let mut f = gz.finish()?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, &args.file)?;
    println!(
        "Report with {files} files written to {} (since {})",
        args.file.display(),
        args.since
    );
    Ok(ExitCode::SUCCESS)
}
