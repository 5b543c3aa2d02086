//! cgroup v2: where the hierarchy is mounted, and what a cgroup's path says
//! about the container and pod it belongs to.

pub mod container;
pub mod mount;
