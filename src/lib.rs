//! Facade over the gravity-rs crates.
//!
//! `gravity` re-exports the libraries so that examples, benches and
//! end-to-end tests can reach them through one name:
//!
//! - [`plan`]: the operation-plan engine (`gravity-plan`),
//! - [`pack`]: the content-addressed package store (`gravity-pack`),
//! - [`upgrade`]: the cluster upgrade (`gravity-upgrade`).

pub use gravity_pack as pack;
pub use gravity_plan as plan;
pub use gravity_upgrade as upgrade;
