//! Types shared by hostscope's eBPF programs (`ebpf/`) and its daemon (`agent/`).
//!
//! Everything here is `no_std` and `#[repr(C)]`: the kernel side writes these
//! layouts into maps and the user side reads the same bytes back.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod block;
pub mod histogram;
pub mod profile;
pub mod sched;
pub mod tcp;
