//! cgroup v2: where the hierarchy is mounted, which path a cgroup id names,
//! and what a path says about the container and pod it belongs to.

pub mod attribution;
pub mod container;
pub mod mount;
pub mod paths;
pub mod series;

pub use attribution::{Attribution, Series};
