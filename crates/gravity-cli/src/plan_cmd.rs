//! `gravity operation …`, `gravity plan …` and `gravity rollback`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use gravity_plan::render::{self, format_time, format_time_seconds};
use gravity_plan::{
    Actor, Engine, EngineConfig, EngineError, ExecutorRegistry, FileStore, OperationRecord,
    PhasePath, PhaseState, PlanDefinition, PlanGraph, PlanStore, PlanView, StoreError,
    parse_duration,
};
use tokio_util::sync::CancellationToken;

use crate::progress::{Console, humanize, step};
use crate::{CliError, CliResult, Globals};

/// `gravity operation …`
#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// Create an operation from a plan file (YAML or JSON) and print its id.
    Create {
        /// The plan definition file.
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
    },
    /// List operations, newest first.
    List,
}

/// Output formats of `gravity plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The plan table.
    Text,
    /// Phase, state and time only.
    Short,
    /// The plan with its state, as JSON.
    Json,
    /// The plan with its state, as YAML.
    Yaml,
    /// A Graphviz graph of the phases and their requirements.
    Dot,
}

/// `gravity plan [display|execute|rollback|resume|complete]`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PlanArgs {
    #[command(flatten)]
    display: DisplayArgs,
    #[command(subcommand)]
    command: Option<PlanCommand>,
}

#[derive(Debug, Args)]
struct DisplayArgs {
    /// The operation (default: the newest).
    #[arg(long, value_name = "ID")]
    operation_id: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: Format,
    /// Follow the plan's progress until it completes, fails or is rolled back.
    #[arg(short = 'f', long)]
    tail: bool,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// The operation (default: the newest).
    #[arg(long, value_name = "ID")]
    operation_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Show the plan (the default).
    Display(DisplayArgs),
    /// Execute a phase (a leaf, or a whole subtree).
    Execute {
        /// The phase path, e.g. /init or /masters/node-1/drain.
        #[arg(long, value_name = "PATH")]
        phase: String,
        /// Run the phase even if completed or in progress, ignoring requirements.
        #[arg(long)]
        force: bool,
        /// Longest a single leaf may run (Go-style duration).
        #[arg(long, default_value = "1h")]
        timeout: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Roll back a phase.
    Rollback {
        /// The phase path.
        #[arg(long, value_name = "PATH")]
        phase: String,
        /// Roll back even with live dependents (and composites, child by child).
        #[arg(long)]
        force: bool,
        /// Longest a single leaf may run (Go-style duration).
        #[arg(long, default_value = "1h")]
        timeout: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Execute the whole plan, re-running failed and interrupted phases.
    Resume {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Finish the operation (completed if every phase completed, else
    /// failed) and release the operation lock.
    Complete {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// `gravity rollback`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Show what would be rolled back, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    confirm: bool,
    /// The operation (default: the newest).
    #[arg(long, value_name = "ID")]
    operation_id: Option<String>,
}

/// Opens the plan store of a state directory.
pub fn open_store(state_dir: &Path) -> Result<Arc<dyn PlanStore>, CliError> {
    let dir = state_dir.join("plan");
    let store = FileStore::open(&dir)
        .map_err(|e| format!("cannot open state directory {}: {e}", state_dir.display()))?;
    Ok(Arc::new(store))
}

/// The operation named by `id`, or the newest one.
pub async fn select_operation(
    store: &dyn PlanStore,
    id: Option<&str>,
) -> Result<OperationRecord, CliError> {
    match id {
        Some(id) => store.operation(id).await.map_err(|e| match e {
            StoreError::NotFound(_) | StoreError::BadOperationId(_) => format!(
                "no operation with ID {id} found; \"gravity operation list\" shows the operations"
            )
            .into(),
            other => other.into(),
        }),
        None => store.operations().await?.into_iter().next().ok_or_else(|| {
            "no operation found; start an upgrade with \"gravity upgrade\" or create an operation from a plan file with \"gravity operation create --plan FILE\"".into()
        }),
    }
}

fn registry() -> ExecutorRegistry {
    ExecutorRegistry::with_builtins()
}

/// Cancelled on Ctrl-C / SIGTERM, so a phase ends as failed ("interrupted")
/// rather than stuck in progress.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        t.cancel();
    });
    token
}

async fn open_engine(
    globals: &Globals,
    id: Option<&str>,
    timeout: Option<Duration>,
) -> Result<(Engine, CancellationToken), CliError> {
    let store = crate::backends::plan_store(globals).await?;
    let op = select_operation(store.as_ref(), id).await?;
    let console = Console::new(globals.debug);
    console.start_heartbeat();
    let cancel = interrupt_token();
    // On a cluster, the upgrade's phase kinds and agent dispatch; else the
    // built-in kinds, run locally.
    let mut cfg = EngineConfig::new(registry());
    if globals.state_dir.join("sim/cluster.json").exists() {
        let site = crate::backends::site(globals).await?;
        cfg = EngineConfig::new(site.registry()?).dispatcher(site.dispatcher()?);
    }
    let cfg = cfg
        .progress(console)
        .cancel(cancel.clone())
        .phase_timeout(timeout);
    Ok((Engine::open(store, &op.id, cfg).await?, cancel))
}

fn parse_phase(p: &str) -> Result<PhasePath, CliError> {
    PhasePath::parse(p).map_err(|e| e.to_string().into())
}

fn exit_for(e: &EngineError) -> ExitCode {
    if matches!(e, EngineError::Cancelled) {
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    }
}

fn report_failure(e: EngineError) -> CliResult {
    let code = exit_for(&e);
    crate::cmdlog::line("error", &e.to_string());
    eprintln!("[ERROR]: {e}");
    Ok(code)
}

/// `gravity operation …`
pub async fn operation(cmd: OperationCommand, globals: &Globals) -> CliResult {
    let store = crate::backends::plan_store(globals).await?;
    match cmd {
        OperationCommand::Create { plan } => {
            let name = plan.display().to_string();
            let plan = PlanDefinition::from_file(&plan)?.into_plan(&name)?;
            let graph = PlanGraph::build(plan.clone()).map_err(|e| format!("{name}: {e}"))?;
            let reg = registry();
            let unknown = graph.unknown_executors(|k| reg.contains(k));
            if let Some((kind, phase)) = unknown.first() {
                return Err(format!(
                    "{name}: phase {phase} uses executor {kind:?}, which this gravity does not have (known: {})",
                    reg.kinds().join(", ")
                )
                .into());
            }
            gravity_plan::check_operation_id(&plan.operation_id)?;
            if let Some(l) = store.lock_holder().await?
                && let Ok(op) = store.operation(&l.operation_id).await
            {
                return Err(format!(
                    "the last {} operation ({}) is still in progress; resume it (\"gravity plan resume\"), roll it back (\"gravity rollback\") or finish it (\"gravity plan complete\") before starting another",
                    op.kind, op.id
                )
                .into());
            }
            store
                .claim_lock(&plan.operation_id, &Actor::current())
                .await?;
            if let Err(e) = store.create_operation(&plan).await {
                store.release_lock(&plan.operation_id).await?;
                return Err(e.into());
            }
            println!("{}", plan.operation_id);
            Ok(ExitCode::SUCCESS)
        }
        OperationCommand::List => {
            let ops = store.operations().await?;
            let mut rows = vec![
                vec![
                    "ID".to_string(),
                    "Kind".into(),
                    "State".into(),
                    "Created".into(),
                ],
                vec![
                    "--".to_string(),
                    "----".into(),
                    "-----".into(),
                    "-------".into(),
                ],
            ];
            for op in ops {
                rows.push(vec![
                    op.id,
                    op.kind,
                    op.state.to_string(),
                    format_time(op.created),
                ]);
            }
            print!("{}", render::tabulate(&rows));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn display_view(view: &PlanView, format: Format) -> String {
    match format {
        Format::Text => {
            let mut s = render::text(view);
            s.push_str(&render::explain_failures(view));
            s
        }
        Format::Short => render::short(view),
        Format::Json => render::json(view),
        Format::Yaml => render::yaml(view),
        Format::Dot => render::dot(view),
    }
}

async fn display(args: DisplayArgs, globals: &Globals) -> CliResult {
    // `--tail` on a cluster-wide store follows etcd itself through a
    // watch, so progress made from other nodes shows at once.
    let cluster = match args.tail {
        true => crate::backends::tail_store(globals)?,
        false => None,
    };
    let store = match &cluster {
        Some(c) => c.store.clone(),
        None => crate::backends::plan_store(globals).await?,
    };
    let op = select_operation(store.as_ref(), args.operation_id.as_deref()).await?;
    let plan = store.plan(&op.id).await?;
    let graph = PlanGraph::build(plan)?;
    let changes = store.changes(&op.id, 0).await?;
    let view = PlanView::resolve(graph, &changes);
    if args.tail {
        let watch = match &cluster {
            Some(c) => Some(c.etcd.watch_changes(&op.id, view.last_seq()).await?),
            None => None,
        };
        return tail(store.as_ref(), &op, view, &changes, watch).await;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(display_view(&view, args.output).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Follows the changelog: prints every started leaf once, then each new
/// change, until the plan completes, fails, is rolled back, or the
/// operation is finished.
async fn tail(
    store: &dyn PlanStore,
    op: &OperationRecord,
    mut view: PlanView,
    history: &[gravity_plan::PhaseChange],
    mut watch: Option<gravity_etcd::plan_store::ChangeStream>,
) -> CliResult {
    let cancel = interrupt_token();
    // The latest change of each started leaf, in leaf order.
    let mut latest: Vec<&gravity_plan::PhaseChange> = history
        .iter()
        .filter(|c| {
            view.graph()
                .find(&c.phase)
                .is_some_and(|ix| view.version(ix) == c.seq)
        })
        .collect();
    latest.sort_by_key(|c| view.graph().find(&c.phase));
    for c in latest {
        if let Some(line) = render::tail_line(&view, c) {
            println!("{line}");
        }
    }
    let running = |v: &PlanView| !v.leaves_in(PhaseState::InProgress).is_empty();
    if view.has_failed() && !running(&view) {
        return Err(stopped_on_failure(&view));
    }
    let mut polls = 0u64;
    loop {
        if view.is_completed() {
            println!(
                "{}\tOperation plan is completed",
                format_time_seconds(Utc::now())
            );
            return Ok(ExitCode::SUCCESS);
        }
        if view.is_rolled_back() && !running(&view) {
            println!(
                "{}\tOperation plan is rolled back",
                format_time_seconds(Utc::now())
            );
            return Ok(ExitCode::SUCCESS);
        }
        let changes = match &mut watch {
            // Changes arrive as they are appended; the timeout only paces
            // the operation-state check below.
            Some(w) => tokio::select! {
                item = futures::StreamExt::next(w) => match item {
                    Some(c) => vec![c?],
                    None => return Err("the etcd watch ended; run the command again".into()),
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => Vec::new(),
                _ = cancel.cancelled() => return Ok(ExitCode::from(130)),
            },
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = cancel.cancelled() => return Ok(ExitCode::from(130)),
                }
                store.changes(&op.id, view.last_seq()).await?
            }
        };
        polls += 1;
        for c in &changes {
            view.apply(c);
            if let Some(line) = render::tail_line(&view, c) {
                println!("{line}");
            }
            if c.state == PhaseState::Failed {
                return Err(format!(
                    "phase {} failed: {}",
                    c.phase,
                    c.error.as_deref().unwrap_or("no error recorded")
                )
                .into());
            }
        }
        if polls.is_multiple_of(4) {
            // Following etcd, an unreachable etcd (its own upgrade stops it)
            // is waited out: the watch reconnects and replays what it missed.
            let rec = match store.operation(&op.id).await {
                Ok(rec) => rec,
                Err(_) if watch.is_some() => continue,
                Err(e) => return Err(e.into()),
            };
            if rec.state.is_finished() {
                println!(
                    "{}\tOperation {} is {}",
                    format_time_seconds(Utc::now()),
                    rec.id,
                    rec.state
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn stopped_on_failure(view: &PlanView) -> CliError {
    let failed: Vec<String> = view
        .failures()
        .into_iter()
        .map(|ix| view.graph().node(ix).path().to_string())
        .collect();
    format!(
        "the plan has stopped at failed phase(s) {}; fix the cause and run \"gravity plan resume\"",
        failed.join(", ")
    )
    .into()
}

/// Runs an engine call and ends with the seed's `<title> finished in <time>`
/// line, whatever the outcome.
async fn timed(
    title: &str,
    call: impl std::future::Future<Output = Result<gravity_plan::RunReport, EngineError>>,
) -> CliResult {
    let started = Instant::now();
    let result = call.await;
    step(&format!(
        "{title} finished in {}",
        humanize(started.elapsed())
    ));
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => report_failure(e),
    }
}

/// `gravity plan …`
pub async fn plan(args: PlanArgs, globals: &Globals) -> CliResult {
    let Some(cmd) = args.command else {
        return display(args.display, globals).await;
    };
    match cmd {
        PlanCommand::Display(d) => display(d, globals).await,
        PlanCommand::Execute {
            phase,
            force,
            timeout,
            target,
        } => {
            let path = parse_phase(&phase)?;
            let timeout = parse_duration(&timeout)?;
            let (engine, _cancel) =
                open_engine(globals, target.operation_id.as_deref(), Some(timeout)).await?;
            let title = format!("Executing phase {:?}", path.as_str());
            timed(&title, engine.execute(&path, force)).await
        }
        PlanCommand::Rollback {
            phase,
            force,
            timeout,
            target,
        } => {
            let path = parse_phase(&phase)?;
            let timeout = parse_duration(&timeout)?;
            let (engine, _cancel) =
                open_engine(globals, target.operation_id.as_deref(), Some(timeout)).await?;
            let title = format!("Rolling back phase {:?}", path.as_str());
            timed(&title, engine.rollback(&path, force)).await
        }
        PlanCommand::Resume { target } => {
            let (engine, _cancel) =
                open_engine(globals, target.operation_id.as_deref(), None).await?;
            timed("Executing operation plan", engine.resume()).await
        }
        PlanCommand::Complete { target } => {
            let (engine, _cancel) =
                open_engine(globals, target.operation_id.as_deref(), None).await?;
            match engine.complete().await {
                Ok(state) => {
                    crate::cluster_cmd::after_complete(globals, &engine.operation().id, state)
                        .await?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(EngineError::OperationFinished { id, state }) => Err(format!(
                    "no active operation found: operation {id} is already {state}"
                )
                .into()),
                Err(e) => report_failure(e),
            }
        }
    }
}

fn confirm(prompt_table: &str) -> Result<bool, CliError> {
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "You are about to rollback the following operation:\n\n{prompt_table}\nConsider checking the operation plan and using --dry-run flag first to see which actions will be performed.\nYou can suppress this warning in future by providing --confirm flag.\n\nProceed? (yes/no): "
    )?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim().to_ascii_lowercase();
    Ok(answer == "yes" || answer == "y")
}

/// `gravity rollback`
pub async fn rollback(args: RollbackArgs, globals: &Globals) -> CliResult {
    let (engine, _cancel) = open_engine(globals, args.operation_id.as_deref(), None).await?;
    let op = engine.operation().clone();
    if !args.confirm && !args.dry_run {
        let table = render::tabulate(&[
            vec!["Type".into(), "ID".into(), "State".into(), "Created".into()],
            vec!["----".into(), "--".into(), "-----".into(), "-------".into()],
            vec![
                op.kind.clone(),
                op.id.clone(),
                op.state.to_string(),
                format_time(op.created),
            ],
        ]);
        if !confirm(&table)? {
            println!("Operation has been canceled by user.");
            return Ok(ExitCode::FAILURE);
        }
    }
    let started = Instant::now();
    let result = engine.rollback_plan(args.dry_run).await;
    if args.dry_run {
        return match result {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(e) => report_failure(e),
        };
    }
    step(&format!(
        "Rolling back operation plan finished in {}",
        humanize(started.elapsed())
    ));
    if let Err(e) = result {
        return report_failure(e);
    }
    let state = engine.complete().await?;
    crate::cluster_cmd::after_complete(globals, &op.id, state).await?;
    step(&format!("Operation {} is {state}", op.id));
    Ok(ExitCode::SUCCESS)
}
