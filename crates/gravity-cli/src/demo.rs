//! `gravity demo`: the built-in three-master upgrade plan, run end to end.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use gravity_plan::{
    Actor, Engine, EngineConfig, ExecutorRegistry, FileStore, PhasePath, PlanDefinition, PlanGraph,
    PlanStore, render,
};

use crate::progress::{Console, humanize, step};
use crate::{CliResult, Globals};

/// The seed's three-master upgrade plan as a runbook of short commands.
const PLAN: &str = include_str!("../../../examples/plans/three-master-upgrade.yaml");

/// `gravity demo`
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Creates a fresh operation in `<state-dir>/demos/<id>`, shows the plan,
/// executes `/init` on its own as in the seed, resumes the rest, shows the
/// plan again and completes the operation.
pub async fn run(_args: DemoArgs, globals: &Globals) -> CliResult {
    let plan = PlanDefinition::from_str_named(PLAN, "three-master-upgrade.yaml", false)?
        .into_plan("three-master-upgrade.yaml")?;
    PlanGraph::build(plan.clone())?;
    let dir = globals.state_dir.join("demos").join(&plan.operation_id);
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("plan"))?);
    store
        .claim_lock(&plan.operation_id, &Actor::current())
        .await?;
    store.create_operation(&plan).await?;
    step(&format!(
        "Created operation {} from the built-in three-master upgrade plan in {}",
        plan.operation_id,
        dir.display()
    ));
    let console = Console::new(globals.debug);
    console.start_heartbeat();
    let engine = Engine::open(
        store.clone(),
        &plan.operation_id,
        EngineConfig::new(ExecutorRegistry::with_builtins()).progress(console),
    )
    .await?;
    print!("{}", render::text(&engine.view()));
    let started = Instant::now();
    let init = PhasePath::parse("/init")?;
    engine.execute(&init, false).await?;
    step(&format!(
        "Executing phase \"/init\" finished in {}",
        humanize(started.elapsed())
    ));
    let started = Instant::now();
    engine.resume().await?;
    step(&format!(
        "Executing operation plan finished in {}",
        humanize(started.elapsed())
    ));
    print!("{}", render::text(&engine.view()));
    let state = engine.complete().await?;
    step(&format!("Operation {} is {state}", plan.operation_id));
    println!(
        "\nLook around with: gravity --state-dir {} plan   (or: operation list, plan -o dot)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
