//! `gravity package ...` and `gravity upload`: thin commands over
//! `gravity_pack`. Results go to stdout, progress bars to stderr (only when
//! stderr is a terminal).

use std::error::Error;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gravity_pack::image::{self, ImageSpec, ImportOptions};
use gravity_pack::location::{self, StoreSelector};
use gravity_pack::pull::PullOptions;
use gravity_pack::{
    Labels, LocalStore, Locator, PackError, PackageOptions, PackageStore, Progress, ProgressEvent,
    WriteMode, human_size, render_list, resolve,
};

type CmdResult = Result<ExitCode, Box<dyn Error + Send + Sync>>;

/// Which package store a command works on. Without either flag, the store
/// of the node this command runs on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// Use the cluster-wide package store.
    #[arg(long, conflicts_with = "node")]
    pub cluster: bool,
    /// Use the package store of node NAME.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

impl StoreArgs {
    fn selector(&self) -> StoreSelector {
        match (&self.node, self.cluster) {
            (Some(n), _) => StoreSelector::Node(n.clone()),
            (None, true) => StoreSelector::Cluster,
            (None, false) => StoreSelector::LocalNode,
        }
    }
}

/// Output format of `package list`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// Gravity's text listing.
    #[default]
    Text,
    /// A JSON array of package envelopes.
    Json,
}

/// `gravity package` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PackageCommand {
    /// List packages, per repository.
    List {
        /// Only this repository.
        repository: Option<String>,
        /// Store to list.
        #[command(flatten)]
        store: StoreArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Text)]
        output: ListFormat,
    },
    /// Import a file as a package.
    Import {
        /// The file with the package content.
        path: PathBuf,
        /// Package locator, repository/name:version.
        locator: String,
        /// Labels, key:value pairs separated by ','.
        #[arg(long, default_value = "")]
        labels: String,
        /// Replace the package if it exists.
        #[arg(long)]
        upsert: bool,
        /// Store to import into.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export a package's content to a file, or a set of packages as a
    /// cluster image (--image).
    Export {
        /// Package locator (repository/name:version, or repository/name for
        /// the latest version).
        locator: String,
        /// Output file.
        file: PathBuf,
        /// Write a cluster image holding the package (the application) and
        /// the --with packages, instead of the raw content.
        #[arg(long)]
        image: bool,
        /// More packages for the image.
        #[arg(long = "with", value_name = "LOCATOR", requires = "image")]
        with: Vec<String>,
        /// Gzip the image.
        #[arg(long, requires = "image")]
        gzip: bool,
        /// Store to export from.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a package.
    Delete {
        /// Package locator.
        locator: String,
        /// Do not fail if the package does not exist.
        #[arg(long)]
        force: bool,
        /// Store to delete from.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add or remove labels of a package.
    Labels {
        /// Package locator.
        locator: String,
        /// Labels to add, key:value pairs separated by ','.
        #[arg(long, default_value = "")]
        add: String,
        /// Label keys to remove.
        #[arg(long)]
        remove: Vec<String>,
        /// Store to change.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pull packages from the cluster store into a node store.
    Pull {
        /// Package locators.
        #[arg(required = true)]
        locators: Vec<String>,
        /// Labels to add to the pulled copies.
        #[arg(long, default_value = "")]
        labels: String,
        /// Overwrite packages that exist with different content.
        #[arg(long)]
        force: bool,
        /// Node whose store receives the packages (default: this node).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Re-hash every blob and check the index; exits non-zero on problems.
    Verify {
        /// Store to verify.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove blobs that no package uses.
    Gc {
        /// Store to clean.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `gravity upload IMAGE`.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// The cluster image (tar, optionally gzip-compressed).
    pub image: PathBuf,
}

/// Renders progress: step lines to stdout with a time prefix, a progress bar
/// on stderr when it is a terminal and the transfer is large.
struct CliProgress {
    bar: bool,
    state: Mutex<Bar>,
}

#[derive(Default)]
struct Bar {
    label: String,
    total: u64,
    done: u64,
    shown: bool,
    last: Option<Instant>,
}

const BAR_MIN_BYTES: u64 = 16 << 20;

impl CliProgress {
    fn new() -> Self {
        CliProgress {
            bar: std::io::stderr().is_terminal(),
            state: Mutex::new(Bar::default()),
        }
    }

    fn draw(bar: &mut Bar, force: bool) {
        let now = Instant::now();
        if !force
            && bar
                .last
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        bar.last = Some(now);
        let pct = (bar.done.saturating_mul(100))
            .checked_div(bar.total)
            .unwrap_or(100)
            .min(100);
        let filled = (pct as usize) * 30 / 100;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {:>3}% {}/{}",
            bar.label,
            "#".repeat(filled),
            " ".repeat(30 - filled),
            pct,
            human_size(bar.done),
            human_size(bar.total)
        );
        let _ = err.flush();
        bar.shown = true;
    }
}

fn timestamp() -> String {
    chrono::Utc::now()
        .format("%a %b %e %H:%M:%S UTC")
        .to_string()
}

fn step(msg: &str) {
    println!("{}\t{msg}", timestamp());
}

impl Progress for CliProgress {
    fn on(&self, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Step(s) => step(s),
            ProgressEvent::Begin { label, total_bytes } => {
                let mut b = self.state.lock().expect("progress lock");
                *b = Bar {
                    label: label.to_string(),
                    total: total_bytes,
                    ..Bar::default()
                };
            }
            ProgressEvent::Bytes(n) => {
                if self.bar {
                    let mut b = self.state.lock().expect("progress lock");
                    b.done += n;
                    if b.total >= BAR_MIN_BYTES {
                        Self::draw(&mut b, false);
                    }
                }
            }
            ProgressEvent::End => {
                let mut b = self.state.lock().expect("progress lock");
                if b.shown {
                    Self::draw(&mut b, true);
                    eprintln!();
                }
                *b = Bar::default();
            }
        }
    }
}

async fn blocking<F>(f: F) -> CmdResult
where
    F: FnOnce() -> CmdResult + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

fn open(state_dir: &Path, store: &StoreArgs) -> Result<LocalStore, PackError> {
    location::open_store(state_dir, &store.selector())
}

/// Runs a `gravity package` subcommand against the stores in `state_dir`.
pub async fn run_package(cmd: PackageCommand, state_dir: &Path) -> CmdResult {
    let state_dir = state_dir.to_path_buf();
    blocking(move || run_package_blocking(cmd, &state_dir)).await
}

fn run_package_blocking(cmd: PackageCommand, state_dir: &Path) -> CmdResult {
    let mut out = std::io::stdout().lock();
    match cmd {
        PackageCommand::List {
            repository,
            store,
            output,
        } => {
            let s = open(state_dir, &store)?;
            let envelopes = s.list(repository.as_deref())?;
            match output {
                ListFormat::Text => write!(out, "{}", render_list(&envelopes))?,
                ListFormat::Json => {
                    serde_json::to_writer_pretty(&mut out, &envelopes)?;
                    writeln!(out)?;
                }
            }
        }
        PackageCommand::Import {
            path,
            locator,
            labels,
            upsert,
            store,
        } => {
            let loc = Locator::parse(&locator)?;
            let labels = Labels::parse(&labels)?;
            let s = open(state_dir, &store)?;
            let mut f = std::fs::File::open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let progress = CliProgress::new();
            let total = f.metadata().map(|m| m.len()).unwrap_or(0);
            progress.on(ProgressEvent::Begin {
                label: "importing",
                total_bytes: total,
            });
            let env = if upsert {
                s.upsert(&loc, &mut f, PackageOptions::labels(labels))?
            } else {
                s.create_with_progress(&loc, &mut f, PackageOptions::labels(labels), &progress)?
            };
            progress.on(ProgressEvent::End);
            writeln!(out, "{loc} imported: {env}")?;
        }
        PackageCommand::Export {
            locator,
            file,
            image,
            with,
            gzip,
            store,
        } => {
            let s = open(state_dir, &store)?;
            let loc = resolve(&s, &locator)?;
            let progress = CliProgress::new();
            if image {
                let packages = with
                    .iter()
                    .map(|w| resolve(&s, w))
                    .collect::<Result<Vec<_>, _>>()?;
                let spec = ImageSpec {
                    application: loc.clone(),
                    packages,
                    compress: gzip,
                };
                let r = image::export_image(&s, &spec, &file, &progress)?;
                writeln!(
                    out,
                    "cluster image {loc} with {} packages exported to file {} ({})",
                    r.manifest.packages.len(),
                    file.display(),
                    human_size(r.file_size)
                )?;
            } else {
                export_raw(&s, &loc, &file, &progress)?;
                writeln!(out, "{loc} exported to file {}", file.display())?;
            }
        }
        PackageCommand::Delete {
            locator,
            force,
            store,
        } => {
            let s = open(state_dir, &store)?;
            let loc = match resolve(&s, &locator) {
                Err(PackError::NotFound(_)) if force => return Ok(ExitCode::SUCCESS),
                r => r?,
            };
            match s.delete(&loc) {
                Err(PackError::NotFound(_)) if force => {}
                r => r?,
            }
            writeln!(out, "{loc} deleted")?;
        }
        PackageCommand::Labels {
            locator,
            add,
            remove,
            store,
        } => {
            let add = Labels::parse(&add)?;
            let s = open(state_dir, &store)?;
            let loc = resolve(&s, &locator)?;
            s.update_labels(&loc, &add, &remove)?;
            writeln!(out, "{loc} labels updated")?;
        }
        PackageCommand::Pull {
            locators,
            labels,
            force,
            node,
        } => {
            let add_labels = Labels::parse(&labels)?;
            let cluster = location::open_store(state_dir, &StoreSelector::Cluster)?;
            let dst_sel = node.map_or(StoreSelector::LocalNode, StoreSelector::Node);
            let dst = location::open_store(state_dir, &dst_sel)?;
            let locs = locators
                .iter()
                .map(|l| resolve(&cluster, l))
                .collect::<Result<Vec<_>, _>>()?;
            let opts = PullOptions {
                mode: if force {
                    WriteMode::Upsert
                } else {
                    WriteMode::KeepIdentical
                },
                add_labels,
            };
            let r = gravity_pack::pull(&cluster, &dst, &locs, &opts, &CliProgress::new())?;
            for c in &r.copied {
                writeln!(
                    out,
                    "{} pulled from the cluster store ({} transferred)",
                    c.locator,
                    human_size(c.bytes_transferred)
                )?;
            }
            for l in &r.skipped {
                writeln!(out, "{l} is already present")?;
            }
        }
        PackageCommand::Verify { store } => {
            let s = open(state_dir, &store)?;
            let r = s.verify(&CliProgress::new())?;
            for p in &r.problems {
                writeln!(out, "{p}")?;
            }
            if !r.unreferenced.is_empty() {
                writeln!(
                    out,
                    "{} blobs are not used by any package (run `gravity package gc` to remove them)",
                    r.unreferenced.len()
                )?;
            }
            if r.is_ok() {
                writeln!(
                    out,
                    "package store {} is consistent: {} packages, {} blobs ({}) verified",
                    s.root().display(),
                    r.packages,
                    r.blobs,
                    human_size(r.bytes)
                )?;
            } else {
                writeln!(
                    out,
                    "package store {} has {} problems; re-import or re-pull the packages named above",
                    s.root().display(),
                    r.problems.len()
                )?;
                return Ok(ExitCode::FAILURE);
            }
        }
        PackageCommand::Gc { store } => {
            let s = open(state_dir, &store)?;
            let r = s.gc()?;
            let bytes: u64 = r.removed.iter().map(|(_, n)| n).sum();
            writeln!(
                out,
                "removed {} unused blobs ({}) and {} stale temporary files",
                r.removed.len(),
                human_size(bytes),
                r.tmp_removed
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn export_raw(
    s: &LocalStore,
    loc: &Locator,
    file: &Path,
    progress: &CliProgress,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (env, mut r) = s.read(loc)?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> Result<(), Box<dyn Error + Send + Sync>> {
        let mut f = std::fs::File::create(&tmp)?;
        progress.on(ProgressEvent::Begin {
            label: "exporting",
            total_bytes: env.size_bytes,
        });
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|e| {
                Box::new(PackError::from_io(format!("cannot read {loc}"), e))
                    as Box<dyn Error + Send + Sync>
            })?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            progress.on(ProgressEvent::Bytes(n as u64));
        }
        progress.on(ProgressEvent::End);
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Imports a cluster image into the cluster store, transferring only the
/// blobs the store lacks, and prints the steps like Gravity's `./upload`.
pub async fn run_upload(args: UploadArgs, state_dir: &Path) -> CmdResult {
    let state_dir = state_dir.to_path_buf();
    blocking(move || {
        let store = location::open_store(&state_dir, &StoreSelector::Cluster)?;
        let progress = CliProgress::new();
        let r = image::import_image(&store, &args.image, ImportOptions::default(), &progress)?;
        let new = r
            .packages
            .iter()
            .filter(|(_, o)| *o != gravity_pack::PutOutcome::Unchanged)
            .count();
        step(&format!(
            "Transferred {} of {} blobs ({}); {} new packages, {} already present",
            r.blobs_transferred,
            r.blobs_transferred + r.blobs_present,
            human_size(r.bytes_transferred),
            new,
            r.packages.len() - new
        ));
        step("Cluster image has been uploaded");
        Ok(ExitCode::SUCCESS)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: PackageCommand,
    }

    #[test]
    fn parses_store_selection() {
        let c = Cli::try_parse_from(["p", "list", "--cluster"]).unwrap();
        assert!(
            matches!(c.cmd, PackageCommand::List { ref store, .. } if store.selector() == StoreSelector::Cluster)
        );
        let c = Cli::try_parse_from([
            "p",
            "list",
            "gravitational.io",
            "--node",
            "n1",
            "-o",
            "json",
        ])
        .unwrap();
        assert!(
            matches!(c.cmd, PackageCommand::List { ref store, output: ListFormat::Json, .. }
            if store.selector() == StoreSelector::Node("n1".into()))
        );
        assert!(Cli::try_parse_from(["p", "list", "--cluster", "--node", "x"]).is_err());
        let c = Cli::try_parse_from(["p", "verify"]).unwrap();
        assert!(
            matches!(c.cmd, PackageCommand::Verify { ref store } if store.selector() == StoreSelector::LocalNode)
        );
    }

    #[tokio::test]
    async fn import_list_verify_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("content");
        std::fs::write(&f, vec![7u8; 4600]).unwrap();
        let cmd = Cli::try_parse_from([
            "p",
            "import",
            f.to_str().unwrap(),
            "example.com/planet-config:5.5.54-11312",
            "--labels",
            "purpose:planet-config,installed:installed",
            "--cluster",
        ])
        .unwrap()
        .cmd;
        assert_eq!(
            run_package(cmd, dir.path()).await.unwrap(),
            ExitCode::SUCCESS
        );
        let s = location::open_store(dir.path(), &StoreSelector::Cluster).unwrap();
        assert_eq!(
            render_list(&s.list(None).unwrap()),
            "\n[example.com]\n-------------\n\n* example.com/planet-config:5.5.54-11312 4.6kB installed:installed,purpose:planet-config\n"
        );
        drop(s);
        let cmd = Cli::try_parse_from(["p", "verify", "--cluster"])
            .unwrap()
            .cmd;
        assert_eq!(
            run_package(cmd, dir.path()).await.unwrap(),
            ExitCode::SUCCESS
        );
    }
}
