//! `gravity demo`: the seed's upgrade, end to end, on a fresh simulated
//! cluster: create the cluster, upload the upgrade image, run the
//! automatic upgrade with progress, print the status.

use std::process::ExitCode;

use chrono::Utc;
use clap::Args;

use crate::cluster_cmd::{self, SimCommand, StatusArgs, UpgradeArgs};
use crate::package_cmd::{self, UploadArgs};
use crate::{CliResult, Globals};

/// `gravity demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Upgrade this many workers too (in parallel batches of 4).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

/// Runs the demo in `<state-dir>/demo-<time>`, a directory of its own, so
/// it can be run again and looked at afterwards.
pub async fn run(args: DemoArgs, globals: &Globals) -> CliResult {
    let dir = globals
        .state_dir
        .join(format!("demo-{}", Utc::now().format("%Y%m%d-%H%M%S%.3f")));
    // The demo always runs on a simulated cluster of its own.
    let g = Globals {
        state_dir: dir.clone(),
        debug: globals.debug,
        kubeconfig: None,
        etcd_endpoints: None,
    };
    crate::cmdlog::init(&dir);
    let image = dir.join("telekube-5.5.50-dev.9.tar");
    println!("== gravity sim init");
    cluster_cmd::sim(
        SimCommand::Init {
            masters: None,
            workers: args.workers,
            name: None,
            image: image.clone(),
            upgrade: "full".into(),
        },
        &g,
    )
    .await?;
    println!("\n== gravity upload {}", image.display());
    package_cmd::run_upload(UploadArgs { image }, &dir).await?;
    println!("\n== gravity upgrade");
    let code = cluster_cmd::upgrade(UpgradeArgs::automatic(4), &g).await?;
    println!("\n== gravity status");
    cluster_cmd::status(StatusArgs::default(), &g).await?;
    println!(
        "\nThe demo cluster lives in {0}; look around with\n  gravity --state-dir {0} plan\n  gravity --state-dir {0} sim inspect\n  gravity --state-dir {0} package list",
        dir.display()
    );
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    Ok(ExitCode::SUCCESS)
}
