//! `gravity sim …`, `gravity upgrade`, `gravity status`, `gravity
//! status-reset` and `gravity agent …`: the cluster side of an upgrade,
//! on the simulated cluster of the state directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use gravity_etcd::Rehearsal;
use gravity_plan::render::format_time;
use gravity_plan::{Engine, EngineConfig, OperationState};
use gravity_upgrade::backend::EtcdAddress;
use gravity_upgrade::operation::{Site, UpgradeOptions};
use gravity_upgrade::sim::{Fault, FaultKind, SimSpec, SimulatedCluster, UpgradeKind};
use gravity_upgrade::{Cluster, ClusterState, OperationStatus};

use crate::cmdlog;
use crate::progress::{Console, humanize, step};
use crate::{CliResult, Globals};

/// `gravity sim …`
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create a simulated cluster in the state directory (by default the
    /// seed's three-master cluster) and write its upgrade image.
    Init {
        /// Number of masters (default: the seed's cluster).
        #[arg(long)]
        masters: Option<usize>,
        /// Number of workers.
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Cluster name.
        #[arg(long)]
        name: Option<String>,
        /// Where to write the upgrade image.
        #[arg(long, default_value = "telekube-5.5.50-dev.9.tar")]
        image: PathBuf,
        /// Which upgrade image to write (all bring telekube 5.5.50-dev.9):
        /// `full`, the seed's image (new planet 5.5.54 with etcd 3.3.22 and
        /// new system apps: the plan upgrades /masters, /nodes and /etcd);
        /// `app-only`, only the application changes (the plan is /checks,
        /// /pre-update, /app, /gc); `no-etcd-change`, the new planet with
        /// the installed etcd (/masters but no /etcd).
        #[arg(long, default_value = "full", value_name = "KIND",
              value_parser = ["full", "app-only", "no-etcd-change"])]
        upgrade: String,
    },
    /// Show the simulated cluster: nodes, pods, etcd, election, disks, clocks.
    Inspect {
        /// `text` or `json`.
        #[arg(short = 'o', long, default_value = "text")]
        output: String,
    },
    /// Inject a fault: disk-full, node-unreachable, clock-skew, dns-broken,
    /// eviction-blocked, phase-fails.
    Fault {
        /// The fault kind.
        kind: String,
        /// Only this node (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// For phase-fails: the phase that fails.
        #[arg(long)]
        phase: Option<String>,
    },
    /// Clear a fault.
    Heal {
        /// The fault kind.
        kind: String,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Run a real local etcd cluster for the simulated cluster, to rehearse
    /// the etcd upgrade for real on one machine.
    #[command(subcommand)]
    Etcd(SimEtcdCommand),
}

/// `gravity sim etcd …`
#[derive(Debug, Subcommand)]
pub enum SimEtcdCommand {
    /// Start a real etcd cluster on this machine: one detached `etcd`
    /// process per simulated master, on free 127.0.0.1 ports, data dirs
    /// under <state-dir>/etcd/, seeded with the simulated cluster's etcd
    /// keys, and print the endpoints to give to --etcd-endpoints.
    ///
    /// With --etcd-endpoints, commands then keep plans in this etcd, use
    /// its election keys, and the /etcd phases stop, upgrade, restore and
    /// restart these processes (Kubernetes and the nodes stay simulated).
    /// Nothing on this machine runs planet's leader election loop, so
    /// every gravity command that executes phases runs a simulated
    /// campaign (it keeps the leader key on an enabled master) while it
    /// runs.
    ///
    /// If the cluster exists already, its stopped members are started
    /// again where they last served (normal or upgrade address).
    #[command(verbatim_doc_comment)]
    Start,
    /// Stop the members (SIGTERM, then SIGKILL after 10 s); their data stays.
    Stop,
    /// Show each member: process, version, data dir, address in use, health.
    Status,
}

/// `gravity upgrade`
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Create the operation and stop: run the phases with `gravity plan execute`.
    #[arg(short = 'm', long)]
    manual: bool,
    /// Skip the last-operation check; turn failed checks (except unreachable
    /// nodes) into warnings.
    #[arg(long)]
    force: bool,
    /// How many workers to upgrade at once.
    #[arg(long, default_value_t = 1)]
    parallel_workers: usize,
}

/// `gravity status [history]`
#[derive(Debug, Default, Args)]
pub struct StatusArgs {
    #[command(subcommand)]
    command: Option<StatusCommand>,
}

#[derive(Debug, Subcommand)]
enum StatusCommand {
    /// The cluster's health and operation events, oldest first.
    History,
}

impl UpgradeArgs {
    /// An automatic upgrade with `parallel_workers` workers at once.
    pub fn automatic(parallel_workers: usize) -> Self {
        UpgradeArgs {
            manual: false,
            force: false,
            parallel_workers,
        }
    }
}

/// `gravity status-reset`
#[derive(Debug, Args)]
pub struct StatusResetArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    confirm: bool,
}

/// `gravity agent …`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Deploy the upgrade agents on every node.
    Deploy,
    /// Shut the agents down on every node.
    Shutdown,
}

async fn site(globals: &Globals) -> Result<Site, crate::CliError> {
    crate::backends::site(globals).await
}

/// `gravity sim …`
pub async fn sim(cmd: SimCommand, globals: &Globals) -> CliResult {
    let state = &globals.state_dir;
    match cmd {
        SimCommand::Init {
            masters,
            workers,
            name,
            image,
            upgrade,
        } => {
            let upgrade: UpgradeKind = upgrade.parse()?;
            if state.join("sim/cluster.json").exists() {
                return Err(format!(
                    "{} already holds a simulated cluster; use another --state-dir or remove it",
                    state.display()
                )
                .into());
            }
            let mut spec = match masters {
                None if workers == 0 => SimSpec::seed(),
                None => SimSpec::for_cluster(with_workers(Cluster::seed(), workers)),
                Some(m) => SimSpec::synthetic(m, workers),
            };
            if let Some(n) = name {
                spec.cluster.name = n;
            }
            let sim = SimulatedCluster::init(state, spec)?;
            let cluster = sim.cluster()?;
            if let Some(first) = cluster.nodes.iter().find(|n| n.is_master()) {
                gravity_pack::location::set_local_node(state, &first.hostname)?;
            }
            let target = sim.write_upgrade_image_of(upgrade, &image)?;
            println!(
                "Created simulated cluster {} with {} nodes ({} {}) in {}",
                cluster.name,
                cluster.nodes.len(),
                cluster.installed.app.name(),
                cluster.installed.app.version(),
                state.display()
            );
            println!(
                "Wrote the {} upgrade image ({} {}) to {}",
                upgrade.as_str(),
                target.app.name(),
                target.app.version(),
                image.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Inspect { output } => {
            let snap = site(globals).await?.sim().inspect()?;
            let text = match output.as_str() {
                "json" => serde_json::to_string_pretty(&snap)? + "\n",
                "text" => snap.render_text(),
                other => {
                    return Err(format!("unknown output format {other:?}; use text or json").into());
                }
            };
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Fault { kind, node, phase } => {
            let kind: FaultKind = kind.parse()?;
            let s = site(globals).await?;
            let mut fault = Fault::new(kind);
            fault.node = node.clone();
            fault.phase = phase;
            s.sim().inject(fault)?;
            let on = node.as_deref().unwrap_or("every node");
            cmdlog::line("event", &format!("fault {kind} injected on {on}"));
            println!("Injected {kind} on {on}");
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Etcd(cmd) => sim_etcd(cmd, globals).await,
        SimCommand::Heal { kind, node } => {
            let kind: FaultKind = kind.parse()?;
            let n = site(globals).await?.sim().heal(kind, node.as_deref())?;
            let on = node.as_deref().unwrap_or("every node");
            cmdlog::line("event", &format!("fault {kind} healed on {on}"));
            println!("Healed {n} {kind} fault(s) on {on}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gravity sim etcd …`
async fn sim_etcd(cmd: SimEtcdCommand, globals: &Globals) -> CliResult {
    let root = Rehearsal::root_of(&globals.state_dir);
    match cmd {
        SimEtcdCommand::Start => {
            let sim = SimulatedCluster::open(&globals.state_dir)?;
            let (r, report) = Rehearsal::start(&root, &sim).await?;
            for m in &r.spec().members {
                let word = if report.started.contains(&m.node) {
                    "Started"
                } else {
                    "Running"
                };
                println!(
                    "{word} etcd member {} at {} (peer {})",
                    m.node, m.client_url, m.peer_url
                );
            }
            if report.created {
                println!(
                    "Seeded {} keys from the simulated cluster {}",
                    report.seeded,
                    r.spec().cluster
                );
                cmdlog::line(
                    "event",
                    &format!("rehearsal etcd started in {}", root.display()),
                );
            }
            println!("Endpoints:\t{}", r.endpoints().join(","));
            println!(
                "Use them with --etcd-endpoints (or GRAVITY_ETCD_ENDPOINTS); stop the members with \"gravity sim etcd stop\"."
            );
            Ok(ExitCode::SUCCESS)
        }
        SimEtcdCommand::Stop => {
            let r = Rehearsal::open(&root)?;
            for (node, was) in r.stop().await? {
                if was {
                    println!("Stopped etcd member {node}");
                } else {
                    println!("etcd member {node} was not running");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SimEtcdCommand::Status => {
            let r = Rehearsal::open(&root)?;
            let mut rows = vec![
                [
                    "Node", "Process", "Version", "Binary", "Address", "Health", "Data dir",
                ]
                .map(String::from)
                .to_vec(),
                [
                    "----", "-------", "-------", "------", "-------", "------", "--------",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for s in r.status().await? {
                let address = match s.address {
                    EtcdAddress::Normal => "normal",
                    EtcdAddress::Upgrade => "upgrade",
                };
                rows.push(vec![
                    s.node,
                    match s.pid {
                        Some(pid) if s.running => format!("running (pid {pid})"),
                        _ if s.running => "running".into(),
                        _ => "stopped".into(),
                    },
                    s.version.to_string(),
                    s.server_version.unwrap_or_else(|| "-".into()),
                    if s.running {
                        format!("{address} {}", s.url)
                    } else {
                        format!("(last {address} {})", s.url)
                    },
                    if s.healthy { "healthy" } else { "-" }.into(),
                    s.data_dir.display().to_string(),
                ]);
            }
            print!("{}", gravity_plan::render::tabulate(&rows));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn with_workers(mut c: Cluster, workers: usize) -> Cluster {
    for i in 1..=workers {
        c.nodes.push(gravity_upgrade::ClusterNode::worker(
            format!("worker-{i}"),
            format!("10.162.1.{}", i % 250 + 1),
        ));
    }
    c
}

/// `gravity upgrade`
pub async fn upgrade(args: UpgradeArgs, globals: &Globals) -> CliResult {
    let site = site(globals).await?;
    let opts = UpgradeOptions {
        force: args.force,
        parallel_workers: args.parallel_workers,
    };
    let started = match site.start_upgrade(&opts, &mut |line| step(&line)).await {
        Ok(s) => s,
        Err(e) => {
            cmdlog::line("event", &format!("upgrade refused: {e}"));
            return Err(e.into());
        }
    };
    cmdlog::line(
        "event",
        &format!(
            "operation {} started: update from {} to {}",
            started.operation_id, started.from, started.to
        ),
    );
    if args.manual {
        println!("The operation has been created in manual mode.\n");
        println!(
            "Run its phases with \"gravity plan execute --phase PATH\" (\"gravity plan\" lists them), or all of them with \"gravity plan resume\"; finish with \"gravity plan complete\"."
        );
        return Ok(ExitCode::SUCCESS);
    }
    run_to_end(&site, &started.operation_id, globals).await
}

/// Runs an upgrade operation to its end, completing it on success; on
/// failure the cluster stays `updating` and `gravity plan resume` goes on.
async fn run_to_end(site: &Site, id: &str, globals: &Globals) -> CliResult {
    let console = Console::new(globals.debug);
    console.start_heartbeat();
    let cfg = EngineConfig::new(site.registry()?)
        .dispatcher(site.dispatcher()?)
        .progress(console)
        .cancel(crate::plan_cmd::interrupt_token());
    let engine = Engine::open(site.plans(), id, cfg).await?;
    let t = Instant::now();
    let result = engine.resume().await;
    step(&format!(
        "Executing operation plan finished in {}",
        humanize(t.elapsed())
    ));
    match result {
        Ok(_) => {
            let state = engine.complete().await?;
            site.finish(id, state).await?;
            cmdlog::line("event", &format!("operation {id} {state}"));
            let c = site.sim().cluster()?;
            step(&format!(
                "Upgrade of cluster {} to {} {} has completed",
                c.name,
                c.installed.app.name(),
                c.installed.app.version()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            cmdlog::line("error", &e.to_string());
            eprintln!("[ERROR]: {e}");
            eprintln!(
                "The cluster stays in the updating state. Fix the cause and run \"gravity plan resume\", or roll back with \"gravity rollback\"."
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Called after `plan complete` / `rollback` on an operation: an update of
/// the simulated cluster puts the cluster back to active.
pub async fn after_complete(
    globals: &Globals,
    id: &str,
    state: OperationState,
) -> Result<(), crate::CliError> {
    if globals.state_dir.join("sim/cluster.json").exists() {
        let site = site(globals).await?;
        site.finish(id, state).await?;
        cmdlog::line("event", &format!("operation {id} {state}"));
    }
    Ok(())
}

fn ago(t: DateTime<Utc>) -> String {
    let d = (Utc::now() - t).to_std().unwrap_or_default();
    match d.as_secs() {
        0 => "just now".into(),
        _ => format!("{} ago", humanize(d)),
    }
}

/// `gravity status [history]`
pub async fn status(args: StatusArgs, globals: &Globals) -> CliResult {
    let text = match args.command {
        Some(StatusCommand::History) => history_text(globals),
        None => status_text(globals).await?,
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The `gravity status` text.
pub async fn status_text(globals: &Globals) -> Result<String, crate::CliError> {
    let site = site(globals).await?;
    // A status is a health probe: its failures and recoveries go to the
    // history. Without a probe (the node list is unavailable) the node
    // status falls back to reachability.
    let probe = site.probe_health().await.ok();
    let c = site.sim().cluster()?;
    let snap = site.sim().inspect()?;
    let plans = site.plans();
    let mut out = String::new();
    out.push_str(&format!("Cluster name:\t\t{}\n", c.name));
    out.push_str(&format!("Cluster status:\t\t{}\n", c.state));
    out.push_str(&format!(
        "Application:\t\t{}, version {}\n",
        c.installed.app.name(),
        c.installed.app.version()
    ));
    out.push_str(&format!(
        "Gravity version:\t{} (client) / {} (server)\n",
        env!("CARGO_PKG_VERSION"),
        c.installed.gravity.version()
    ));
    let mut active = Vec::new();
    let mut last = None;
    for op in c.operations.iter().rev() {
        let record = plans.operation(&op.id).await.ok();
        if op.status == OperationStatus::InProgress {
            active.push((op, record));
        } else if last.is_none() {
            last = Some((op, record));
        }
    }
    if !active.is_empty() {
        out.push_str("Active operations:\n");
        for (op, rec) in &active {
            out.push_str(&format!("    * {} ({})\n", op.kind, op.id));
            if let Some(t) = op.created {
                out.push_str(&format!(
                    "      started:\t{} ({})\n",
                    format_time(t),
                    ago(t)
                ));
            }
            let _ = rec;
            out.push_str(&format!(
                "      use 'gravity plan --operation-id={}' to check operation status\n",
                op.id
            ));
        }
    }
    if let Some((op, rec)) = last {
        out.push_str("Last completed operation:\n");
        out.push_str(&format!("    * {} ({})\n", op.kind, op.id));
        if let Some(t) = op.created {
            out.push_str(&format!(
                "      started:\t{} ({})\n",
                format_time(t),
                ago(t)
            ));
        }
        if let Some(r) = rec {
            let word = if op.status == OperationStatus::Completed {
                "completed"
            } else {
                "failed"
            };
            out.push_str(&format!(
                "      {word}:\t{} ({})\n",
                format_time(r.updated),
                ago(r.updated)
            ));
        }
    }
    // Gravity's gateway and management endpoints live on the masters.
    let masters: Vec<_> = c.nodes.iter().filter(|n| n.is_master()).collect();
    out.push_str("Cluster endpoints:\n    * Authentication gateway:\n");
    for n in &masters {
        out.push_str(&format!("        - {}:32009\n", n.advertise_ip));
    }
    out.push_str("    * Cluster management URL:\n");
    for n in &masters {
        out.push_str(&format!("        - https://{}:32009\n", n.advertise_ip));
    }
    out.push_str("Cluster nodes:\n");
    for (title, master) in [("Masters", true), ("Nodes", false)] {
        let nodes: Vec<_> = c.nodes.iter().filter(|n| n.is_master() == master).collect();
        if nodes.is_empty() {
            continue;
        }
        out.push_str(&format!("    {title}:\n"));
        for n in nodes {
            let s = snap.nodes.iter().find(|s| s.hostname == n.hostname);
            let reachable = s.is_some_and(|s| s.reachable);
            let healthy = match &probe {
                Some(p) => reachable && p.node_healthy(&n.hostname),
                None => reachable,
            };
            out.push_str(&format!(
                "        * {} ({}, {})\n",
                n.hostname, n.advertise_ip, n.profile
            ));
            out.push_str(&format!(
                "            Status:\t\t{}\n",
                if healthy { "healthy" } else { "degraded" }
            ));
            out.push_str(&format!(
                "            Remote access:\t{}\n",
                if reachable { "online" } else { "offline" }
            ));
        }
    }
    Ok(out)
}

/// Health and operation events, oldest first: the command log's events
/// and phase transitions, merged with the probe history of the state
/// directory (probe failed/succeeded, node degraded/healthy).
pub fn history_text(globals: &Globals) -> String {
    let mut events: Vec<(DateTime<Utc>, String)> = Vec::new();
    let text = std::fs::read_to_string(globals.state_dir.join("gravity.log")).unwrap_or_default();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(t), Some(_pid), Some(kind), Some(rest)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(t) = DateTime::parse_from_rfc3339(t) else {
            continue;
        };
        let text = match kind {
            "event" => rest.to_string(),
            "phase" => format!("phase {rest}"),
            _ => continue,
        };
        events.push((t.to_utc(), text));
    }
    let health = gravity_upgrade::health::HealthLog::new(&globals.state_dir);
    for e in health.events().unwrap_or_default() {
        events.push((e.time, e.event.to_string()));
    }
    // Stable: lines of one instant keep their order.
    events.sort_by_key(|(t, _)| *t);
    if events.is_empty() {
        return "No status history available to display.\n".into();
    }
    events
        .iter()
        .map(|(t, text)| {
            format!(
                "{}\t{text}\n",
                gravity_plan::render::format_time_seconds(*t)
            )
        })
        .collect()
}

/// `gravity status-reset`
pub async fn status_reset(args: StatusResetArgs, globals: &Globals) -> CliResult {
    let site = site(globals).await?;
    if !args.confirm {
        print!(
            "WARNING! This operation will force-set the cluster state to active without any\nextra checks.\n\nProceed? (yes/no): "
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "yes" | "y") {
            println!("Operation has been canceled by user.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let name = site.reset_state()?;
    cmdlog::line("event", &format!("cluster {name} state reset to active"));
    println!(
        "Cluster {name} state has been set to {}",
        ClusterState::Active
    );
    Ok(ExitCode::SUCCESS)
}

/// `gravity agent …`
pub async fn agent(cmd: AgentCommand, globals: &Globals) -> CliResult {
    let site = site(globals).await?;
    match cmd {
        AgentCommand::Deploy => {
            step("Deploying agents on the cluster nodes");
            for (host, ip) in site.deploy_agents().await? {
                step(&format!("Deployed agent on {host} ({ip})"));
            }
        }
        AgentCommand::Shutdown => {
            step("Shutting down the agents");
            site.shutdown_agents().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
