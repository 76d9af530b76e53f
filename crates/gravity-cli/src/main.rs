//! `gravity`: upgrade Kubernetes clusters with resumable operation plans.
//!
//! Argument parsing and printing only; every command is a few lines over a
//! library call.

mod backends;
mod cluster_cmd;
mod cmdlog;
mod demo;
mod package_cmd;
mod plan_cmd;
mod progress;
mod report_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The error type of command handlers: printed as one `[ERROR]: …` line.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;
/// What a command handler returns.
pub type CliResult = Result<ExitCode, CliError>;

/// Upgrade Kubernetes clusters the way Gravity 5.5 did: operations with
/// plans you can run phase by phase, resume and roll back.
#[derive(Debug, Parser)]
#[command(name = "gravity", version, about, propagate_version = true)]
pub struct Cli {
    /// Directory holding all state (operations, plans, package stores).
    #[arg(long, global = true, env = "GRAVITY_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Print engine detail (every state change) to stderr.
    #[arg(long, global = true)]
    debug: bool,

    /// Act on a real Kubernetes API server through this kubeconfig file
    /// (`auto`: $KUBECONFIG, ~/.kube/config, or the in-cluster service
    /// account, as kubectl finds them) instead of the simulated cluster.
    #[arg(
        long,
        global = true,
        env = "GRAVITY_KUBECONFIG",
        value_name = "FILE|auto"
    )]
    kubeconfig: Option<String>,

    /// Keep plans in the cluster-wide store on this etcd (comma-separated
    /// client URLs, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379) and
    /// use its leader election keys; the node's local copy stays
    /// authoritative while etcd is unreachable.
    #[arg(
        long,
        global = true,
        env = "GRAVITY_ETCD_ENDPOINTS",
        value_name = "URLS"
    )]
    etcd_endpoints: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and list operations.
    #[command(subcommand)]
    Operation(plan_cmd::OperationCommand),
    /// Show, execute, roll back, resume or complete the operation plan.
    Plan(plan_cmd::PlanArgs),
    /// Roll back the whole active operation (started phases, newest first).
    Rollback(plan_cmd::RollbackArgs),
    /// Create, inspect and break the simulated cluster.
    #[command(subcommand)]
    Sim(cluster_cmd::SimCommand),
    /// Start an upgrade to the uploaded cluster image.
    Upgrade(cluster_cmd::UpgradeArgs),
    /// Show the cluster status (or its history).
    Status(cluster_cmd::StatusArgs),
    /// Force the cluster state back to active.
    StatusReset(cluster_cmd::StatusResetArgs),
    /// Deploy or shut down the upgrade agents.
    #[command(subcommand)]
    Agent(cluster_cmd::AgentCommand),
    /// Inspect and manage package stores.
    #[command(subcommand)]
    Package(package_cmd::PackageCommand),
    /// Upload a cluster image into the cluster package store.
    Upload(package_cmd::UploadArgs),
    /// Collect plans, package lists, cluster state and the command log into
    /// one gzip tarball for a support ticket.
    Report(report_cmd::ReportArgs),
    /// Run a demo: create an operation from the built-in three-master plan
    /// and run it to the end in a fresh state directory.
    Demo(demo::DemoArgs),
}

/// The default state directory: `$XDG_STATE_HOME/gravity`, else
/// `~/.local/state/gravity`.
fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("gravity");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/gravity");
    }
    PathBuf::from("gravity-state")
}

/// Settings every command gets.
#[derive(Debug, Clone)]
pub struct Globals {
    /// The state directory.
    pub state_dir: PathBuf,
    /// `--debug`.
    pub debug: bool,
    /// `--kubeconfig`.
    pub kubeconfig: Option<String>,
    /// `--etcd-endpoints`.
    pub etcd_endpoints: Option<String>,
}

async fn run(cli: Cli) -> CliResult {
    let globals = Globals {
        state_dir: cli.state_dir.unwrap_or_else(default_state_dir),
        debug: cli.debug,
        kubeconfig: cli.kubeconfig,
        etcd_endpoints: cli.etcd_endpoints,
    };
    // On a rehearsal machine nothing runs planet's election loop: commands
    // that may execute phases run a simulated campaign while they run.
    let _campaign = match &cli.command {
        Command::Plan(_) | Command::Rollback(_) | Command::Upgrade(_) => {
            backends::campaign(&globals)?
        }
        _ => None,
    };
    match cli.command {
        Command::Operation(cmd) => plan_cmd::operation(cmd, &globals).await,
        Command::Plan(args) => plan_cmd::plan(args, &globals).await,
        Command::Rollback(args) => plan_cmd::rollback(args, &globals).await,
        Command::Demo(args) => demo::run(args, &globals).await,
        Command::Sim(cmd) => cluster_cmd::sim(cmd, &globals).await,
        Command::Upgrade(args) => cluster_cmd::upgrade(args, &globals).await,
        Command::Status(args) => cluster_cmd::status(args, &globals).await,
        Command::StatusReset(args) => cluster_cmd::status_reset(args, &globals).await,
        Command::Agent(cmd) => cluster_cmd::agent(cmd, &globals).await,
        Command::Report(args) => report_cmd::run(args, &globals).await,
        Command::Package(cmd) => package_cmd::run_package(cmd, &globals.state_dir).await,
        Command::Upload(args) => package_cmd::run_upload(args, &globals.state_dir).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[ERROR]: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state_dir = cli.state_dir.clone().unwrap_or_else(default_state_dir);
    cmdlog::init(&state_dir);
    let argv: Vec<String> = std::env::args().collect();
    cmdlog::line("command", &argv.join(" "));
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        // A reader that went away (`gravity plan | head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            cmdlog::line("error", &e.to_string());
            eprintln!("[ERROR]: {e}");
            ExitCode::FAILURE
        }
    };
    let outcome = if code == ExitCode::SUCCESS {
        "success"
    } else {
        "failure"
    };
    cmdlog::line("exit", outcome);
    code
}
