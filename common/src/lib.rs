//! Types shared by hostscope's eBPF programs (`ebpf/`) and its daemon (`agent/`).
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel side writes these
//! layouts into maps and the user side reads the same bytes back.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod block;
pub mod cgroup;
pub mod diag;
pub mod histogram;
pub mod profile;
pub mod sched;
pub mod tcp;

/// Every collector's name and the programs it attaches (function name,
/// BTF tracepoint), in the order the daemon exports them: the one list the
/// agent's collector registry and the benchmark share.
pub const COLLECTOR_PROGRAMS: [(&str, &[(&str, &str)]); 3] = [
    ("sched", &sched::SCHED_PROGRAMS),
    ("block", &block::BLOCK_PROGRAMS),
    ("tcp", &tcp::TCP_PROGRAMS),
];

/// A program's name as the kernel reports it (bpftool, `bpf_prog_info`):
/// cut to 15 bytes, `BPF_OBJ_NAME_LEN` less its terminating NUL.
pub fn kernel_program_name(name: &str) -> &str {
    name.get(..15).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_cut_to_fifteen_bytes() {
        assert_eq!(kernel_program_name("block_rq_complete"), "block_rq_comple");
        assert_eq!(kernel_program_name("sched_switch"), "sched_switch");
    }
}
