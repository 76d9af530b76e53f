//! Cluster upgrades for gravity-rs: the cluster model and the upgrade plan
//! builder (Gravity 5.5's `lib/update/cluster` plan, spec §0–§2).
//!
//! - [`Cluster`], [`ClusterNode`], [`Role`], [`ClusterState`],
//!   [`ClusterOperation`]: the cluster as the upgrade sees it.
//! - [`ClusterImage`]: what is installed and what an upgrade image brings
//!   (application, runtime application, system applications, planet with
//!   its etcd version, teleport, gravity).
//! - [`build_plan`]: (cluster, target image, [`BuildOptions`]) →
//!   [`UpgradePlan`], whose [`gravity_plan::Plan`] holds only the phases
//!   that are needed, with Gravity's ids, descriptions and requirements.
//! - [`executors`]: the executor kinds and the typed data of each phase.
//! - [`seed_plan`] and [`synthetic_plan`]: the seed's demo upgrade and
//!   synthetic clusters of any size (tests, examples, benchmarks).
//!
//! ```
//! use gravity_upgrade::{BuildOptions, Cluster, ClusterImage, build_plan};
//!
//! let cluster = Cluster::seed();
//! let plan = build_plan(&cluster, &ClusterImage::seed_target(), &BuildOptions::default())?;
//! let graph = plan.graph()?;
//! assert!(graph.find_str("/masters/elect-kevin-test1").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod builder;
pub mod cluster;
pub mod error;
pub mod executors;
pub mod health;
pub mod image;
pub mod operation;
pub mod phases;
pub mod sim;

pub use builder::{BuildOptions, EtcdUpgrade, OPERATION_KIND, UpgradePlan, build_plan};
pub use cluster::{
    Cluster, ClusterNode, ClusterOperation, ClusterState, DnsConfig, OperationKind,
    OperationStatus, Role,
};
pub use error::{BuildError, UpgradeRefused};
pub use image::{ClusterImage, DockerConfig, Extensions, IntermediateRuntime};

/// The seed's demo upgrade: [`Cluster::seed`] (three masters, telekube
/// 5.5.46) to [`ClusterImage::seed_target`] (5.5.50-dev.9).
pub fn seed_plan(opts: &BuildOptions) -> Result<UpgradePlan, BuildError> {
    build_plan(&Cluster::seed(), &ClusterImage::seed_target(), opts)
}

/// A synthetic cluster of `masters` masters and `workers` workers
/// ([`Cluster::synthetic`]) with the seed's installed image, and the seed's
/// target image.
pub fn synthetic_upgrade(masters: usize, workers: usize) -> (Cluster, ClusterImage) {
    (
        Cluster::synthetic(masters, workers),
        ClusterImage::seed_target(),
    )
}

/// The upgrade plan of [`synthetic_upgrade`]`(masters, workers)`, built by
/// the real builder: for benchmarks ("3 masters plus N workers", "N
/// masters") and tests.
pub fn synthetic_plan(
    masters: usize,
    workers: usize,
    opts: &BuildOptions,
) -> Result<UpgradePlan, BuildError> {
    let (cluster, target) = synthetic_upgrade(masters, workers);
    build_plan(&cluster, &target, opts)
}
