//! cgroup v2: where the hierarchy is mounted, which path a cgroup id names,
//! and what a path says about the container and pod it belongs to.

pub mod container;
pub mod mount;
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "used by --by-cgroup, which is being built (issue 9)"
    )
)]
pub mod paths;
