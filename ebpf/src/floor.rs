//! Empty programs on the tracepoints of hostscope's scheduler and block
//! programs: the floor that `cargo xtask bench` measures our programs
//! against (the cost of merely being attached). The daemon never attaches
//! them.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sched_switch")]
pub fn floor_sched_switch(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn floor_block_rq_issue(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn floor_block_rq_complete(_ctx: BtfTracePointContext) -> i32 {
    0
}
