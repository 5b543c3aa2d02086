//! Byte offsets of kernel struct fields, read from the kernel's own BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so programs that must read a
//! field get its offset as a load-time constant from here. This keeps one
//! binary correct across kernels whose structs differ.

use crate::btf::{Btf, BtfError};
use hostscope_common::{block, cgroup::globals, sched, tcp};

/// A field could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The kernel BTF file could not be read or parsed.
    #[error("cannot parse kernel BTF at {path}: {reason}; point --kernel-btf at this kernel's BTF")]
    Parse {
        /// The file.
        path: String,
        /// The reader's reason.
        reason: String,
    },
    /// The struct or member is not in this kernel's BTF.
    #[error("this kernel has no `{strukt}.{member}` field")]
    Missing {
        /// The struct's name.
        strukt: &'static str,
        /// The member's name.
        member: &'static str,
    },
    /// The member exists only in kernels built with options this one lacks.
    #[error("this kernel has no `{strukt}.{member}` field: {needs}")]
    NeedsOptions {
        /// The struct's name.
        strukt: &'static str,
        /// The member's name.
        member: &'static str,
        /// Which program needs what, in words.
        needs: &'static str,
    },
    /// The kernel's types are not what the programs assume.
    #[error("unexpected kernel layout: {0}")]
    Unexpected(String),
}

/// Load-time constants: `(global name, byte offset)`.
pub type Offsets = Vec<(&'static str, u32)>;

/// Offsets the block I/O programs need, after checking every type they rely on.
pub fn block(btf: &Btf) -> Result<Offsets, LayoutError> {
    use block::offsets;
    for tracepoint in ["block_rq_issue", "block_rq_complete", "block_rq_requeue"] {
        takes_pointer_to(btf, tracepoint, "request")?;
    }
    if btf.enum_value("mq_rq_state", "MQ_RQ_IDLE").ok().flatten() != Some(0) {
        return Err(LayoutError::Unexpected("MQ_RQ_IDLE is not 0".into()));
    }
    for (op, value) in [("READ", 0), ("WRITE", 1), ("FLUSH", 2), ("DISCARD", 3)] {
        let name = format!("REQ_OP_{op}");
        if btf.enum_value("req_op", &name).ok().flatten() != Some(value) {
            return Err(LayoutError::Unexpected(format!("{name} is not {value}")));
        }
    }
    let major = field(btf, "gendisk", "major", 4)?;
    if field(btf, "gendisk", "first_minor", 4)? != major + 4 {
        return Err(LayoutError::Unexpected(
            "gendisk.first_minor does not follow gendisk.major".into(),
        ));
    }
    Ok(vec![
        (
            offsets::REQUEST_Q,
            pointer_field(btf, "request", "q", "request_queue")?,
        ),
        (
            offsets::REQUEST_CMD_FLAGS,
            field(btf, "request", "cmd_flags", 4)?,
        ),
        (offsets::REQUEST_STATE, field(btf, "request", "state", 4)?),
        (
            offsets::QUEUE_DISK,
            pointer_field(btf, "request_queue", "disk", "gendisk")?,
        ),
        (offsets::DISK_MAJOR, major),
    ])
}

/// Offsets the scheduler program needs: `next->sched_info.last_queued`,
/// and `next->se.cfs_rq->rq->clock` for the clock it was stamped with.
/// Kernels without `CONFIG_SCHED_INFO` (no schedstat) or without
/// `CONFIG_FAIR_GROUP_SCHED` (no cgroup `cpu` controller) lack a field.
pub fn sched(btf: &Btf) -> Result<Offsets, LayoutError> {
    sched_fields(btf).map_err(|err| match err {
        LayoutError::Missing { strukt, member } => LayoutError::NeedsOptions {
            strukt,
            member,
            needs: "the run-queue probe needs a kernel built with CONFIG_SCHED_INFO and \
                    CONFIG_FAIR_GROUP_SCHED",
        },
        other => other,
    })
}

fn sched_fields(btf: &Btf) -> Result<Offsets, LayoutError> {
    use sched::offsets;
    let sched_info = embedded_struct(btf, "task_struct", "sched_info", "sched_info")?;
    let se = embedded_struct(btf, "task_struct", "se", "sched_entity")?;
    Ok(vec![
        (
            offsets::TASK_LAST_QUEUED,
            sched_info + field(btf, "sched_info", "last_queued", 8)?,
        ),
        (
            offsets::TASK_CFS_RQ,
            se + pointer_field(btf, "sched_entity", "cfs_rq", "cfs_rq")?,
        ),
        (
            offsets::CFS_RQ_RQ,
            pointer_field(btf, "cfs_rq", "rq", "rq")?,
        ),
        (offsets::RQ_CLOCK, field(btf, "rq", "clock", 8)?),
        (
            offsets::TASK_RUN_DELAY,
            sched_info + field(btf, "sched_info", "run_delay", 8)?,
        ),
        (
            offsets::TASK_LAST_ARRIVAL,
            sched_info + field(btf, "sched_info", "last_arrival", 8)?,
        ),
        (
            offsets::TASK_NR_MIGRATIONS,
            se + field(btf, "sched_entity", "nr_migrations", 8)?,
        ),
    ])
}

/// Offsets the TCP programs need, after checking the types they rely on.
pub fn tcp(btf: &Btf) -> Result<Offsets, LayoutError> {
    use tcp::offsets;
    for tracepoint in ["tcp_probe", "inet_sock_set_state", "tcp_retransmit_skb"] {
        takes_pointer_to(btf, tracepoint, "sock")?;
    }
    Ok(vec![
        (
            offsets::TCP_SOCK_SRTT_US,
            field(btf, "tcp_sock", "srtt_us", 4)?,
        ),
        (
            offsets::SOCK_PROTOCOL,
            field(btf, "sock", "sk_protocol", 2)?,
        ),
    ])
}

/// Offsets to read a task's cgroup v2 id (`--by-cgroup`):
/// `task->cgroups->dfl_cgrp->kn->id`.
pub fn task_cgroup(btf: &Btf) -> Result<Offsets, LayoutError> {
    let mut offsets = vec![
        (
            globals::TASK_CGROUPS,
            pointer_field(btf, "task_struct", "cgroups", "css_set")?,
        ),
        (
            globals::CSS_SET_DFL_CGRP,
            pointer_field(btf, "css_set", "dfl_cgrp", "cgroup")?,
        ),
    ];
    offsets.extend(cgroup_id(btf)?);
    Ok(offsets)
}

/// Offsets to read a socket's cgroup v2 id (`--by-cgroup`):
/// `sk->sk_cgrp_data.cgroup->kn->id`. Kernels before 5.15 keep the cgroup
/// in a tagged word instead, and lack the `cgroup` member.
pub fn sock_cgroup(btf: &Btf) -> Result<Offsets, LayoutError> {
    let data = member_of(btf, "sock", "sk_cgrp_data")?;
    let cgroup = pointer_field(btf, "sock_cgroup_data", "cgroup", "cgroup")?;
    let mut offsets = vec![(globals::SOCK_CGROUP, data.offset + cgroup)];
    offsets.extend(cgroup_id(btf)?);
    Ok(offsets)
}

/// Offsets from a `struct cgroup *` to its id.
fn cgroup_id(btf: &Btf) -> Result<Offsets, LayoutError> {
    Ok(vec![
        (
            globals::CGROUP_KN,
            pointer_field(btf, "cgroup", "kn", "kernfs_node")?,
        ),
        (globals::KERNFS_NODE_ID, field(btf, "kernfs_node", "id", 8)?),
    ])
}

/// Parses the kernel's BTF at `path` (normally /sys/kernel/btf/vmlinux):
/// `read`, its bytes when the caller has them already, else read here.
pub fn kernel_btf(path: &std::path::Path, read: Option<Vec<u8>>) -> Result<Btf, LayoutError> {
    let parsed = match read {
        Some(data) => Btf::parse(data),
        None => Btf::from_file(path),
    };
    parsed.map_err(|e: BtfError| LayoutError::Parse {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// `strukt.member`, looking through anonymous members as C does.
fn member_of(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
) -> Result<crate::btf::Member, LayoutError> {
    btf.member(strukt, member)
        .map_err(|_| LayoutError::Missing { strukt, member })
}

/// The byte offset of `strukt.member` (looking through anonymous members
/// as C does), checked to be `size` bytes wide: what the program reads.
fn field(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
    size: u32,
) -> Result<u32, LayoutError> {
    let found = member_of(btf, strukt, member)?;
    match btf.size_of(found.type_id) {
        Ok(actual) if actual == size => Ok(found.offset),
        Ok(actual) => Err(LayoutError::Unexpected(format!(
            "{strukt}.{member} is {actual} bytes, the probes read {size}"
        ))),
        Err(err) => Err(LayoutError::Unexpected(format!("{strukt}.{member}: {err}"))),
    }
}

/// The byte offset of `strukt.member`, checked to be a `struct target`
/// embedded by value.
fn embedded_struct(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
    target: &str,
) -> Result<u32, LayoutError> {
    let found = member_of(btf, strukt, member)?;
    match btf.resolve(found.type_id) {
        Ok(id) if btf.type_name(id) == format!("struct {target}") => Ok(found.offset),
        _ => Err(LayoutError::Unexpected(format!(
            "{strukt}.{member} is not a struct {target}"
        ))),
    }
}

/// The byte offset of `strukt.member`, checked to point to `struct target`.
fn pointer_field(
    btf: &Btf,
    strukt: &'static str,
    member: &'static str,
    target: &str,
) -> Result<u32, LayoutError> {
    let found = member_of(btf, strukt, member)?;
    match btf.pointee_struct_name(found.type_id) {
        Ok(Some(name)) if name == target => Ok(found.offset),
        _ => Err(LayoutError::Unexpected(format!(
            "{strukt}.{member} is not a struct {target} *"
        ))),
    }
}

/// Checks that BTF tracepoint `tracepoint`'s first argument points to
/// `struct target`, as the program that reads it assumes.
fn takes_pointer_to(btf: &Btf, tracepoint: &str, target: &str) -> Result<(), LayoutError> {
    let first = btf
        .tracepoint_args(tracepoint)
        .ok()
        .and_then(|args| args.first().copied());
    match first.map(|arg| btf.pointee_struct_name(arg)) {
        Some(Ok(Some(name))) if name == target => Ok(()),
        _ => Err(LayoutError::Unexpected(format!(
            "tracepoint {tracepoint} does not take a struct {target} * first"
        ))),
    }
}
