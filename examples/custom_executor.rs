//! Embedding `gravity-plan`: a program registers its own phase executor,
//! builds a plan in code, executes it, sees a phase fail, rolls back, fixes
//! the cause and resumes to the end.
//!
//! Run it with `cargo run --example custom_executor`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use gravity::plan::{
    Engine, EngineConfig, ExecError, ExecutorRegistry, FileStore, Phase, PhaseContext, PhaseData,
    PhaseExecutor, PhasePath, Plan, PlanGraph, PlanStore, render,
};

/// Writes `data.content` to `data.file` under a work directory; rollback
/// removes the file. Refuses to write while the "disk" is full.
struct WriteFile {
    dir: PathBuf,
    disk_full: Arc<AtomicBool>,
}

/// The data of a `write-file` phase.
#[derive(serde::Serialize, serde::Deserialize)]
struct WriteFileData {
    file: String,
    content: String,
}

impl WriteFile {
    fn data(ctx: &PhaseContext) -> Result<WriteFileData, ExecError> {
        ctx.phase().data.decode().map_err(|e| {
            format!("phase {} needs data.file and data.content: {e}", ctx.path()).into()
        })
    }

    fn target(&self, ctx: &PhaseContext) -> Result<PathBuf, ExecError> {
        Ok(self.dir.join(Self::data(ctx)?.file))
    }
}

#[async_trait]
impl PhaseExecutor for WriteFile {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(format!(
                "no space left on device writing {}",
                self.target(ctx)?.display()
            )
            .into());
        }
        let content = Self::data(ctx)?.content;
        tokio::fs::write(self.target(ctx)?, content).await?;
        ctx.info("file written");
        Ok(())
    }

    async fn post_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let written = tokio::fs::read_to_string(self.target(ctx)?).await?;
        if written != Self::data(ctx)?.content {
            return Err("file content does not match".into());
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        match tokio::fs::remove_file(self.target(ctx)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn leaf(id: &str, description: &str, file: &str, requires: &[&str]) -> Phase {
    let mut p = Phase::new(PhasePath::parse(id).unwrap(), description);
    p.executor = Some("write-file".into());
    p.data = PhaseData::from_serialize(&WriteFileData {
        file: file.into(),
        content: format!("{description}\n"),
    })
    .expect("strings serialize");
    p.requires = requires
        .iter()
        .map(|r| PhasePath::parse(r).unwrap())
        .collect();
    p
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = std::env::temp_dir().join(format!("gravity-example-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // 1. Register the executor kind next to the built-in ones.
    let disk_full = Arc::new(AtomicBool::new(false));
    let mut registry = ExecutorRegistry::with_builtins();
    registry.register(
        "write-file",
        WriteFile {
            dir: work.clone(),
            disk_full: disk_full.clone(),
        },
    );

    // 2. Build a plan in code: /config, then two files written in parallel.
    let mut files = Phase::new(PhasePath::parse("/files")?, "Write the files");
    files.parallel = 2;
    files.requires = vec![PhasePath::parse("/config")?];
    files.phases = vec![
        leaf("/files/a", "File a", "a.txt", &[]),
        leaf("/files/b", "File b", "b.txt", &[]),
    ];
    let plan = Plan {
        operation_id: uuid_like(),
        operation_kind: "example".into(),
        cluster_name: "local".into(),
        created: chrono_now(),
        phases: vec![
            leaf("/config", "Write the config", "config.txt", &[]),
            files,
        ],
    };
    PlanGraph::build(plan.clone())?; // validate before storing

    // 3. Store it durably and open an engine on it.
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(work.join("state"))?);
    store.create_operation(&plan).await?;
    let engine = Engine::open(store, &plan.operation_id, EngineConfig::new(registry)).await?;

    // 4. Execute: /config works, /files fails ("disk full").
    engine.execute(&PhasePath::parse("/config")?, false).await?;
    disk_full.store(true, Ordering::SeqCst);
    match engine.resume().await {
        Err(e) => println!("the run stopped: {e}\n"),
        Ok(_) => panic!("expected a failure while the disk is full"),
    }
    print!(
        "{}{}",
        render::text(&engine.view()),
        render::explain_failures(&engine.view())
    );

    // 5. Roll the whole plan back (newest first) and look at it.
    let undone = engine.rollback_plan(false).await?;
    println!("\nrolled back: {undone:?}\n");
    print!("{}", render::text(&engine.view()));

    // 6. Fix the cause and resume: everything runs again to the end.
    disk_full.store(false, Ordering::SeqCst);
    let report = engine.resume().await?;
    println!("\nresumed: {} phases ran\n", report.done);
    print!("{}", render::text(&engine.view()));
    println!("\noperation is {}", engine.complete().await?);
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn uuid_like() -> String {
    format!(
        "example-{}-{}",
        std::process::id(),
        chrono_now().timestamp()
    )
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
