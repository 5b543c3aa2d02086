//! CPU profiles of code built without frame pointers: stacks walked from
//! the binaries' unwind tables, and cut honestly where they cannot be.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::process::Command;

use hostscope_tests::{
    daemon::Daemon,
    folded::parse_folded,
    programs::{self, DEEP_STACK, NO_FRAME_POINTER_CALLEES, NO_FRAME_POINTER_CALLERS, Running},
};

/// Flags of a distribution build: optimised, no frame pointers.
const NO_FRAME_POINTERS: [&str; 2] = ["-O2", "-fomit-frame-pointer"];

/// Profiles `exe` (process name `name`) for 3 s and checks that at least
/// 90% of its samples show the whole `main;a;b;leaf` stack.
fn assert_full_stacks(daemon: &Daemon, exe: &std::path::Path, name: &str) {
    let hot = Running::start(Command::new(exe), name);
    let (status, body) = daemon.get(&format!("/stacks?seconds=3&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_folded(&body);
    assert!(
        stacks.iter().all(|(f, _)| f[0] == name),
        "pid filter leaked:\n{body}"
    );
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let full: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames.windows(4).any(|w| w == ["main", "a", "b", "leaf"]))
        .map(|(_, c)| c)
        .sum();
    println!("{full} of {total} samples in main;a;b;leaf");
    assert!(
        total >= 200,
        "only {total} samples in 3 s at 99 Hz:\n{body}"
    );
    assert!(full as f64 >= 0.9 * total as f64, "{body}");
    assert!(
        !body.contains("[unknown") && !body.contains("[truncated]"),
        "{body}"
    );
}

/// A program built `-O2 -fomit-frame-pointer`, spinning in a leaf three
/// calls deep, shows the whole `main;a;b;leaf` stack in at least 90% of
/// its samples. A frame-pointer walk would lose `b` and `a` (their
/// callers' `%rbp` is a plain register here) and follow garbage.
#[test]
fn code_without_frame_pointers_shows_its_full_stack() {
    let daemon = Daemon::start("sched");
    let source = format!("{NO_FRAME_POINTER_CALLEES}{NO_FRAME_POINTER_CALLERS}");
    let exe = programs::build("nofp_leaf", &source, &NO_FRAME_POINTERS);
    assert_full_stacks(&daemon, &exe, "nofp_leaf");
}

/// The same with `b` and the hot `leaf` in a shared library built without
/// frame pointers: the walk crosses from the library's tables into the
/// program's.
#[test]
fn shared_library_without_frame_pointers_shows_its_full_stack() {
    let daemon = Daemon::start("sched");
    let library = programs::build(
        "libnofp.so",
        NO_FRAME_POINTER_CALLEES,
        &["-O2", "-fomit-frame-pointer", "-shared", "-fPIC"],
    );
    let rpath = format!("-Wl,-rpath,{}", programs::build_dir().display());
    let exe = programs::build(
        "nofp_main",
        NO_FRAME_POINTER_CALLERS,
        &[
            "-O2",
            "-fomit-frame-pointer",
            library.to_str().unwrap(),
            &rpath,
        ],
    );
    assert_full_stacks(&daemon, &exe, "nofp_main");
}

/// A stack deeper than the sampler copies ends in one `[truncated]`
/// frame, outermost, above the frames that were walked: never in made-up
/// callers or bare addresses.
#[test]
fn a_stack_too_deep_to_copy_ends_in_one_truncated_frame() {
    let daemon = Daemon::start("sched");
    let exe = programs::build("deep_stack", DEEP_STACK, &NO_FRAME_POINTERS);
    let hot = Running::start(Command::new(&exe), "deep_stack");
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    let stacks = parse_folded(&body);
    let total: u64 = stacks.iter().map(|(_, c)| c).sum();
    let mut truncated = 0;
    for (frames, count) in &stacks {
        let user: Vec<&str> = frames[1..]
            .iter()
            .map(String::as_str)
            .filter(|f| !f.ends_with("_[k]"))
            .collect();
        if user.first() == Some(&"[truncated]") {
            truncated += count;
            // Below the mark, only the functions that are really there.
            assert!(
                user[1..].iter().all(|f| matches!(*f, "deep" | "spin")),
                "{frames:?}"
            );
            assert!(user.len() > 2 && user.last() == Some(&"spin"), "{frames:?}");
        }
        assert_eq!(
            frames.iter().filter(|f| *f == "[truncated]").count(),
            usize::from(user.first() == Some(&"[truncated]")),
            "{frames:?}"
        );
    }
    println!("{truncated} of {total} samples truncated");
    assert!(total >= 100, "{body}");
    assert!(truncated as f64 >= 0.9 * total as f64, "{body}");
}
