//! The packages of a simulated cluster: the installed packages in the
//! cluster store and the node stores (labels as in the seed's `gravity
//! package list`), and synthetic cluster images.

use std::path::Path;

use gravity_pack::image::{ImageSpec, export_image};
use gravity_pack::location::StoreSelector;
use gravity_pack::{
    Labels, LocalStore, Locator, PackError, PackageOptions, PackageStore, PackageType, PullOptions,
    pull,
};

use crate::backend::{BackendError, BackendResult, PackageStores};
use crate::cluster::{Cluster, ClusterNode};
use crate::image::ClusterImage;

/// The id of the install operation recorded on generated packages (the
/// seed's `2bf0f44d-…`).
pub fn install_operation_id(cluster: &Cluster) -> String {
    cluster
        .operations
        .first()
        .map(|o| o.id.clone())
        .unwrap_or_else(|| "2bf0f44d-f9eb-4374-bc1c-0e9937329025".into())
}

/// The packages of an image with their type and cluster-store labels.
pub fn seed_image_packages(image: &ClusterImage) -> Vec<(Locator, PackageType, Labels)> {
    let mut out = vec![(image.app.clone(), PackageType::User, Labels::new())];
    for d in &image.app_dependencies {
        out.push((d.clone(), PackageType::User, Labels::new()));
    }
    out.push((
        image.runtime_app.clone(),
        PackageType::Runtime,
        Labels::new(),
    ));
    for a in &image.system_apps {
        out.push((a.clone(), PackageType::Service, Labels::new()));
    }
    out.push((
        image.runtime_package.clone(),
        PackageType::Plain,
        Labels::from_pairs([("purpose", "runtime")]),
    ));
    out.push((image.teleport.clone(), PackageType::Plain, Labels::new()));
    out.push((image.gravity.clone(), PackageType::Plain, Labels::new()));
    for o in &image.other_packages {
        out.push((o.clone(), PackageType::Plain, Labels::new()));
    }
    out
}

/// Small deterministic content: identical locators have identical content.
pub(crate) fn content(loc: &Locator) -> Vec<u8> {
    format!("simulated package {loc}\n").repeat(8).into_bytes()
}

fn loc(repo: &str, name: &str, version: &str) -> Result<Locator, PackError> {
    Ok(Locator::new(repo, name, version)?)
}

fn compact(ip: &str) -> String {
    ip.replace(['.', ':'], "")
}

/// `(locator, labels)` of the node's generated packages in the cluster store.
fn node_packages(cluster: &Cluster, n: &ClusterNode) -> Result<Vec<(Locator, Labels)>, PackError> {
    let c = &cluster.name;
    let op = install_operation_id(cluster);
    let ip = &n.advertise_ip;
    let planet_v = cluster.installed.runtime_package.version().to_string();
    let tele_v = cluster.installed.teleport.version().to_string();
    let mut out = vec![
        (
            loc(c, &format!("planet-{ip}-secrets"), &planet_v)?,
            Labels::from_pairs([
                ("advertise-ip", ip.as_str()),
                ("operation-id", op.as_str()),
                ("purpose", "planet-secrets"),
            ]),
        ),
        (
            loc(c, &format!("planet-config-{}{c}", compact(ip)), &planet_v)?,
            Labels::from_pairs([
                ("advertise-ip", ip.as_str()),
                ("config-package-for", "gravitational.io/planet:0.0.0"),
                ("operation-id", op.as_str()),
                ("purpose", "planet-config"),
            ]),
        ),
    ];
    if n.is_master() {
        out.push((
            loc(
                c,
                &format!("teleport-master-config-{}{c}", compact(ip)),
                &tele_v,
            )?,
            Labels::from_pairs([
                ("advertise-ip", ip.as_str()),
                ("operation-id", op.as_str()),
                ("purpose", "teleport-master-config"),
            ]),
        ));
    }
    out.push((
        loc(
            c,
            &format!("teleport-node-config-{}{c}", compact(ip)),
            &tele_v,
        )?,
        Labels::from_pairs([
            ("advertise-ip", ip.as_str()),
            ("config-package-for", "gravitational.io/teleport:0.0.0"),
            ("operation-id", op.as_str()),
            ("purpose", "teleport-node-config"),
        ]),
    ));
    Ok(out)
}

fn create(
    store: &LocalStore,
    l: &Locator,
    ty: PackageType,
    labels: Labels,
    manifest: Option<String>,
) -> Result<(), PackError> {
    let opts = PackageOptions {
        labels,
        package_type: ty,
        manifest: manifest.or_else(|| ty
            .is_application()
            .then(|| format!("apiVersion: bundle.gravitational.io/v2\nkind: Bundle\nmetadata:\n  name: {}\n  resourceVersion: {}\n", l.name(), l.version()))),
        created: None,
    };
    store.upsert(l, &mut content(l).as_slice(), opts)?;
    Ok(())
}

/// Fills the cluster store and every node's store.
pub(crate) fn populate(stores: &PackageStores, cluster: &Cluster) -> BackendResult<()> {
    let c = &cluster.name;
    let op = install_operation_id(cluster);
    let inst = &cluster.installed;
    let mut everything: Vec<(Locator, Labels)> = Vec::new();
    stores.with(&StoreSelector::Cluster, |cs| {
        for (l, ty, labels) in seed_image_packages(inst) {
            let manifest = (l == inst.app).then(|| crate::image::image_manifest(inst));
            create(cs, &l, ty, labels, manifest)?;
        }
        let rpc = loc("gravitational.io", "rpcagent-secrets", "0.0.1")?;
        create(
            cs,
            &rpc,
            PackageType::Plain,
            Labels::from_pairs([("purpose", "rpc-secrets")]),
            None,
        )?;
        let ca = loc(c, "cert-authority", "0.0.1")?;
        let ca_labels = Labels::from_pairs([("operation-id", op.as_str()), ("purpose", "ca")]);
        create(cs, &ca, PackageType::Plain, ca_labels.clone(), None)?;
        everything.push((ca, ca_labels));
        let export = loc(c, "site-export", "0.0.1")?;
        let export_labels =
            Labels::from_pairs([("operation-id", op.as_str()), ("purpose", "export")]);
        create(cs, &export, PackageType::Plain, export_labels.clone(), None)?;
        everything.push((export, export_labels));
        for n in &cluster.nodes {
            for (l, labels) in node_packages(cluster, n)? {
                create(cs, &l, PackageType::Plain, labels, None)?;
            }
        }
        Ok(())
    })?;
    let first_master = cluster.masters().next().map(|m| m.hostname.clone());
    for n in &cluster.nodes {
        stores.with_pair(&n.hostname, |cs, ns| {
            let mut locs: Vec<Locator> = seed_image_packages(inst)
                .into_iter()
                .map(|(l, _, _)| l)
                .collect();
            locs.push(everything[0].0.clone());
            if first_master.as_deref() == Some(n.hostname.as_str()) {
                locs.push(everything[1].0.clone());
            }
            let own = node_packages(cluster, n)?;
            locs.extend(own.iter().map(|(l, _)| l.clone()));
            pull(
                cs,
                ns,
                &locs,
                &PullOptions::default(),
                &gravity_pack::NoProgress,
            )?;
            let installed = Labels::from_pairs([("installed", "installed")]);
            for (l, labels) in &own {
                if labels.get("purpose") != Some("teleport-master-config") {
                    ns.update_labels(l, &installed, &[])?;
                }
            }
            for l in [&inst.runtime_package, &inst.teleport, &inst.gravity] {
                ns.update_labels(l, &installed, &[])?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Builds the packages of `image` in a scratch store at `scratch` and
/// exports them as a cluster image to `path`.
pub(crate) fn write_image(scratch: &Path, image: &ClusterImage, path: &Path) -> BackendResult<()> {
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).map_err(BackendError::io(format!(
            "cannot remove {}",
            scratch.display()
        )))?;
    }
    let store = LocalStore::open(scratch)?;
    let mut locs = Vec::new();
    for (l, ty, labels) in seed_image_packages(image) {
        // The application package carries the image description, so that
        // the upgrade can be planned from what was uploaded.
        let manifest = (l == image.app).then(|| crate::image::image_manifest(image));
        create(&store, &l, ty, labels, manifest)?;
        locs.push(l);
    }
    let spec = ImageSpec {
        application: image.app.clone(),
        packages: locs,
        compress: false,
    };
    export_image(&store, &spec, path, &gravity_pack::NoProgress)?;
    drop(store);
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}
