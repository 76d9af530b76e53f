//! What a cluster image carries: the application, its runtime (the
//! `kubernetes` runtime application and its system applications), the
//! runtime package (planet) with the etcd version it carries, teleport and
//! the gravity binary.
//!
//! The same type describes both sides of an upgrade: the image a cluster has
//! installed ([`crate::Cluster::installed`]) and the image it is upgraded to
//! (the *target*).

use gravity_pack::{Locator, Version};
use serde::{Deserialize, Serialize};

/// Docker settings of a cluster or an image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerConfig {
    /// Storage driver (`overlay2`, `devicemapper`, …).
    pub storage_driver: String,
    /// Extra arguments for the Docker daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

impl DockerConfig {
    /// A configuration with a storage driver and no extra arguments.
    pub fn new(storage_driver: impl Into<String>) -> Self {
        DockerConfig {
            storage_driver: storage_driver.into(),
            args: Vec::new(),
        }
    }
}

impl Default for DockerConfig {
    /// `overlay2`, Gravity 5.5's default.
    fn default() -> Self {
        DockerConfig::new("overlay2")
    }
}

/// Manifest switches that remove system applications from the runtime
/// update (spec §1.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extensions {
    /// `extensions.logs.disabled`: drop `logging-app`.
    #[serde(default)]
    pub logs_disabled: bool,
    /// `extensions.monitoring.disabled`: drop `monitoring-app`.
    #[serde(default)]
    pub monitoring_disabled: bool,
    /// `extensions.catalog.disabled`: drop `tiller-app`.
    #[serde(default)]
    pub catalog_disabled: bool,
    /// The service of the installer's setup endpoint; `bandwagon` is only
    /// updated when this is `bandwagon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_endpoint_service: Option<String>,
}

impl Extensions {
    /// Whether the system application `name` is disabled by these switches.
    pub fn disables(&self, name: &str) -> bool {
        match name {
            "bandwagon" => self.setup_endpoint_service.as_deref() != Some("bandwagon"),
            "logging-app" => self.logs_disabled,
            "monitoring-app" => self.monitoring_disabled,
            "tiller-app" => self.catalog_disabled,
            _ => false,
        }
    }
}

/// An intermediate runtime shipped inside an image so that a cluster can
/// skip versions (spec §1.2): the cluster is first moved to this runtime,
/// then to the image's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntermediateRuntime {
    /// The runtime application of the hop (`gravitational.io/kubernetes:5.2.15`).
    pub runtime_app: Locator,
    /// The hop runtime's system applications, in manifest order.
    pub system_apps: Vec<Locator>,
    /// The hop's planet package.
    pub runtime_package: Locator,
    /// The etcd version carried by that planet (`version-etcd` label).
    pub etcd_version: Option<Version>,
    /// The hop's teleport package.
    pub teleport: Locator,
    /// The hop's gravity binary package.
    pub gravity: Locator,
}

/// A cluster image: an application with everything it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterImage {
    /// The application (`gravitational.io/telekube:5.5.46`).
    pub app: Locator,
    /// Applications the application depends on (`dependencies.apps` of its
    /// manifest), in manifest order; often empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_dependencies: Vec<Locator>,
    /// The runtime application, the manifest base (`gravitational.io/kubernetes:5.5.46`).
    pub runtime_app: Locator,
    /// The runtime's system applications (`dependencies.apps` of the runtime
    /// manifest), in manifest order.
    pub system_apps: Vec<Locator>,
    /// The runtime package, planet (`gravitational.io/planet:5.5.47-11312`).
    pub runtime_package: Locator,
    /// The etcd version carried by the runtime package (its `version-etcd`
    /// label without the leading `v`); `None` when the label is missing.
    pub etcd_version: Option<Version>,
    /// The teleport package.
    pub teleport: Locator,
    /// The gravity binary package.
    pub gravity: Locator,
    /// Every other package of the image (`web-assets`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_packages: Vec<Locator>,
    /// The manifest's system Docker configuration.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Manifest extension switches.
    #[serde(default)]
    pub extensions: Extensions,
    /// Intermediate runtimes shipped for skipping versions (target images only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intermediate: Vec<IntermediateRuntime>,
}

fn loc(text: &str) -> Locator {
    Locator::parse(text).expect("built-in locator is valid")
}

fn ver(text: &str) -> Version {
    Version::parse(text).expect("built-in version is valid")
}

impl ClusterImage {
    /// The application's version.
    pub fn version(&self) -> &Version {
        self.app.version()
    }

    /// The runtime application's version (the "Gravity version").
    pub fn runtime_version(&self) -> &Version {
        self.runtime_app.version()
    }

    /// Every package of the image: the application and its dependencies,
    /// the runtime application, the system applications, planet, teleport,
    /// gravity and the other packages.
    pub fn packages(&self) -> impl Iterator<Item = &Locator> + '_ {
        std::iter::once(&self.app)
            .chain(&self.app_dependencies)
            .chain(std::iter::once(&self.runtime_app))
            .chain(&self.system_apps)
            .chain([&self.runtime_package, &self.teleport, &self.gravity])
            .chain(&self.other_packages)
    }

    /// The system application named `name`, if the runtime has one.
    pub fn system_app(&self, name: &str) -> Option<&Locator> {
        self.system_apps.iter().find(|l| l.name() == name)
    }

    /// The image installed on the seed's demo cluster: telekube 5.5.46 on
    /// planet 5.5.47-11312 (etcd 3.3.20), as listed in the seed's cluster
    /// package store.
    ///
    /// The seed shows package versions but not the runtime manifest's
    /// dependency order; the order used here is illustrative (the builder
    /// moves `rbac-app` to the front and appends the runtime last anyway).
    pub fn seed_installed() -> Self {
        ClusterImage {
            app: loc("gravitational.io/telekube:5.5.46"),
            app_dependencies: Vec::new(),
            runtime_app: loc("gravitational.io/kubernetes:5.5.46"),
            system_apps: vec![
                loc("gravitational.io/dns-app:0.3.0"),
                loc("gravitational.io/logging-app:5.0.2"),
                loc("gravitational.io/monitoring-app:5.5.16"),
                loc("gravitational.io/tiller-app:5.5.2"),
                loc("gravitational.io/site:5.5.46"),
                loc("gravitational.io/rbac-app:5.5.46"),
                loc("gravitational.io/bandwagon:5.3.0"),
            ],
            runtime_package: loc("gravitational.io/planet:5.5.47-11312"),
            etcd_version: Some(ver("3.3.20")),
            teleport: loc("gravitational.io/teleport:3.0.5"),
            gravity: loc("gravitational.io/gravity:5.5.46"),
            other_packages: vec![loc("gravitational.io/web-assets:5.5.46")],
            docker: DockerConfig::default(),
            extensions: Extensions {
                setup_endpoint_service: Some("bandwagon".into()),
                ..Extensions::default()
            },
            intermediate: Vec::new(),
        }
    }

    /// The seed's upgrade image: telekube 5.5.50-dev.9 on planet
    /// 5.5.54-11312 (etcd 3.3.22), as uploaded in the seed ("Upload the
    /// package"). `dns-app`, `tiller-app`, `bandwagon` and `teleport` keep
    /// their versions.
    pub fn seed_target() -> Self {
        ClusterImage {
            app: loc("gravitational.io/telekube:5.5.50-dev.9"),
            app_dependencies: Vec::new(),
            runtime_app: loc("gravitational.io/kubernetes:5.5.50-dev.9"),
            system_apps: vec![
                loc("gravitational.io/dns-app:0.3.0"),
                loc("gravitational.io/logging-app:5.0.3"),
                loc("gravitational.io/monitoring-app:5.5.21"),
                loc("gravitational.io/tiller-app:5.5.2"),
                loc("gravitational.io/site:5.5.50-dev.9"),
                loc("gravitational.io/rbac-app:5.5.50-dev.9"),
                loc("gravitational.io/bandwagon:5.3.0"),
            ],
            runtime_package: loc("gravitational.io/planet:5.5.54-11312"),
            etcd_version: Some(ver("3.3.22")),
            teleport: loc("gravitational.io/teleport:3.0.5"),
            gravity: loc("gravitational.io/gravity:5.5.50-dev.9"),
            other_packages: vec![loc("gravitational.io/web-assets:5.5.50-dev.9")],
            docker: DockerConfig::default(),
            extensions: Extensions {
                setup_endpoint_service: Some("bandwagon".into()),
                ..Extensions::default()
            },
            intermediate: Vec::new(),
        }
    }

    /// The same image with another application version (the application
    /// package only): what an application-only upgrade ships.
    pub fn with_app_version(&self, version: &str) -> Result<Self, gravity_pack::LocatorError> {
        let mut image = self.clone();
        image.app = Locator::new(self.app.repository(), self.app.name(), version)?;
        Ok(image)
    }
}

/// First line of an application package manifest that describes a cluster
/// image in this project's format; the JSON of a [`ClusterImage`] follows.
pub const IMAGE_MANIFEST_HEADER: &str = "# gravity-rs cluster image v1";

/// The manifest written into an upgrade image's application package:
/// [`IMAGE_MANIFEST_HEADER`], a newline, then the image as JSON.
pub fn image_manifest(image: &ClusterImage) -> String {
    format!(
        "{IMAGE_MANIFEST_HEADER}\n{}",
        serde_json::to_string_pretty(image).expect("serializable")
    )
}

/// Reads a manifest written by [`image_manifest`]; `None` if it is not one.
pub fn parse_image_manifest(text: &str) -> Option<ClusterImage> {
    let body = text.strip_prefix(IMAGE_MANIFEST_HEADER)?;
    serde_json::from_str(body.trim_start()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_images_list_every_package() {
        let installed = ClusterImage::seed_installed();
        // The seed lists 14 gravitational.io packages; rpcagent-secrets is
        // generated by the cluster, not shipped by the image.
        assert_eq!(installed.packages().count(), 13);
        let target = ClusterImage::seed_target();
        assert!(target.version() > installed.version());
        assert_eq!(
            target.system_app("site").unwrap().version().as_str(),
            "5.5.50-dev.9"
        );
        assert!(!target.extensions.disables("bandwagon"));
        assert!(Extensions::default().disables("bandwagon"));
    }
}
