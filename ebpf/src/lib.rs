//! Empty on purpose: the programs live in the `hostscope` binary target,
//! built for `bpfel-unknown-none` by `agent/build.rs`.
#![no_std]
