//! Processes run by an unprivileged user that attack the profiler through
//! what it reads of them: their binaries, their libraries, their perf maps.
//! None may crash, hang, bloat or fool the daemon, and the daemon keeps only
//! the capabilities it needs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hostscope_tests::{
    daemon::{Daemon, Launch, proc_entries, proc_limit, proc_status, thread_names},
    programs::{self, Running, SYSCALL_LOOP},
};
use object::{Object as _, ObjectSection as _};

/// Spins in `spin_named(tag)`'s loop forever.
const SPIN: &str = r#"
#include <stdint.h>
volatile uint64_t sink;
__attribute__((noinline)) void hostile_spin_loop(void) { for (;;) sink++; }
int main(void) { hostile_spin_loop(); return 0; }
"#;

/// Samples per process name, and how many of them have `function` in
/// their stack, from folded stacks.
fn shares(folded: &str, function: &str) -> HashMap<String, (u64, u64)> {
    let mut shares: HashMap<String, (u64, u64)> = HashMap::new();
    for line in folded.lines() {
        let (frames, count) = line.rsplit_once(' ').unwrap();
        let count: u64 = count.parse().unwrap();
        let mut frames = frames.split(';');
        let comm = frames.next().unwrap().to_owned();
        let entry = shares.entry(comm).or_default();
        entry.0 += count;
        if frames.any(|f| f == function) {
            entry.1 += count;
        }
    }
    shares
}

#[track_caller]
fn assert_named(folded: &str, comm: &str, function: &str) {
    let (total, named) = shares(folded, function)
        .get(comm)
        .copied()
        .unwrap_or_default();
    println!("{comm}: {named} of {total} samples under {function}");
    assert!(total >= 30, "only {total} samples of {comm}:\n{folded}");
    assert!(
        named as f64 >= 0.9 * total as f64,
        "{comm}: only {named} of {total} samples name {function}:\n{folded}"
    );
}

/// Resident-memory high-water mark of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let hwm = proc_status(&pid.to_string(), "VmHWM");
    let kib: f64 = hwm.trim_end_matches("kB").trim().parse().unwrap();
    kib / 1024.0
}

/// Rewrites `.debug_info` of the ELF file at `path`: `patch` gets the
/// whole file and the section's (header offset, data offset, size).
fn patch_debug_info(path: &Path, patch: impl FnOnce(&mut Vec<u8>, usize, usize, usize)) {
    let mut bytes = std::fs::read(path).unwrap();
    let (header, offset, size) = {
        let elf = object::File::parse(&*bytes).unwrap();
        let section = elf.section_by_name(".debug_info").unwrap();
        let (offset, size) = section.file_range().unwrap();
        let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
        let shentsize = u16::from_le_bytes(bytes[0x3a..0x3c].try_into().unwrap()) as usize;
        (
            shoff + section.index().0 * shentsize,
            offset as usize,
            size as usize,
        )
    };
    patch(&mut bytes, header, offset, size);
    std::fs::write(path, bytes).unwrap();
}

/// An `Elf64_Chdr` for zlib with the given uncompressed size.
fn compression_header(size: u64) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend(1u32.to_le_bytes()); // ELFCOMPRESS_ZLIB
    header.extend(0u32.to_le_bytes());
    header.extend(size.to_le_bytes());
    header.extend(1u64.to_le_bytes());
    header
}

/// Builds the spinner with zlib-compressed debug sections, as `name`.
fn build_with_compressed_debug(name: &str) -> PathBuf {
    programs::build(
        name,
        SPIN,
        &["-O0", "-g", "-gz=zlib", "-fno-omit-frame-pointer"],
    )
}

/// Two binaries whose compressed `.debug_info` attacks a symbolizer that
/// decompresses it: one claims 1 TiB uncompressed, the other is a real zlib
/// bomb (1 GiB of zeros in about 1 MiB). Run by nobody and sampled, they
/// leave the daemon up, under 300 MiB at its peak, and their functions
/// still named.
#[test]
fn corrupt_compressed_debug_sections_cannot_crash_or_bloat_the_daemon() {
    let daemon = Daemon::start("sched");

    let huge = build_with_compressed_debug("dbg_huge");
    patch_debug_info(&huge, |bytes, _, offset, _| {
        bytes[offset..offset + 24].copy_from_slice(&compression_header(1 << 40));
    });

    let bomb = build_with_compressed_debug("dbg_bomb");
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        zlib.write_all(&zeros).unwrap();
    }
    let mut section = compression_header(1 << 30);
    section.extend(zlib.finish().unwrap());
    patch_debug_info(&bomb, |bytes, header, _, _| {
        // The bomb goes at the end; the section header points at it.
        let at = bytes.len() as u64;
        bytes[header + 24..header + 32].copy_from_slice(&at.to_le_bytes());
        bytes[header + 32..header + 40].copy_from_slice(&(section.len() as u64).to_le_bytes());
        bytes.extend(&section);
    });

    let _huge = Running::start_as_nobody(&huge, &[]);
    let _bomb = Running::start_as_nobody(&bomb, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = daemon.get("/stacks?seconds=3");
    assert_eq!(status, 200, "{body}\nlog:\n{}", daemon.log());
    assert_named(&body, "dbg_huge", "hostile_spin_loop");
    assert_named(&body, "dbg_bomb", "hostile_spin_loop");
    assert_eq!(daemon.get("/healthz").0, 200, "log:\n{}", daemon.log());
    let peak = peak_rss_mib(daemon.pid());
    println!("daemon peak RSS {peak:.1} MiB");
    assert!(peak < 300.0, "daemon peak RSS {peak:.1} MiB");
}

/// A library whose file loads a loop, dlopened, then deleted and replaced
/// by a FIFO at the same path.
const LIB_SPIN: &str = r#"
#include <stdint.h>
volatile uint64_t lib_sink;
__attribute__((noinline)) void lib_spin_loop(void) { for (;;) lib_sink++; }
"#;

const FIFO_SWAP: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*spin)(void) = (void (*)(void))dlsym(lib, "lib_spin_loop");
    if (!spin || unlink(argv[1]) || mkfifo(argv[1], 0666)) return 2;
    spin();
    return 0;
}
"#;

/// The process deletes its library and puts a FIFO at its path: a
/// symbolizer that opens the path blocks forever. The profile answers within
/// its length plus 5 s, still names the library's function (through the
/// mapped inode), and the daemon's threads and descriptors return to what
/// they were.
#[test]
fn fifo_in_place_of_a_deleted_library_cannot_hang_the_profiler() {
    let daemon = Daemon::start("sched");
    let lib = programs::build(
        "libspin.so",
        LIB_SPIN,
        &["-shared", "-fPIC", "-O0", "-fno-omit-frame-pointer"],
    );
    let exe = programs::build("fifo_swap", FIFO_SWAP, &["-O0", "-fno-omit-frame-pointer"]);
    // A directory nobody owns, so that the process can swap the file.
    let dir = programs::build_dir().join("nobody");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let lib_path = dir.join("libspin.so");
    std::fs::copy(&lib, &lib_path).unwrap();
    std::fs::set_permissions(&lib_path, std::fs::Permissions::from_mode(0o666)).unwrap();

    // Warm up: the first capture with user frames starts the sandbox,
    // which keeps a socket.
    let warm = Running::build_and_start("hot_loop", programs::HOT_LOOP);
    assert_eq!(
        daemon.get(&format!("/stacks?seconds=1&pid={}", warm.pid)).0,
        200
    );
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let pid = daemon.pid();
    let (threads, fds) = (proc_entries(pid, "task"), proc_entries(pid, "fd"));

    let mut swapper = Running::start_as_nobody(&exe, &[lib_path.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::symlink_metadata(&lib_path).is_ok_and(|m| m.file_type().is_fifo()) {
        assert!(
            Instant::now() < deadline,
            "the library was not replaced by a FIFO"
        );
        assert!(swapper.is_running(), "the swapper exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", swapper.pid));
    let took = started.elapsed();
    println!("profile answered in {took:?}");
    assert_eq!(status, 200, "{body}\nlog:\n{}", daemon.log());
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert_named(&body, "fifo_swap", "lib_spin_loop");

    // The capture's thread and files are released once its answer is
    // sent, and the test's own connection once the daemon sees it close.
    let counts = || (proc_entries(pid, "task"), proc_entries(pid, "fd"));
    let settle = Instant::now() + Duration::from_secs(3);
    while counts() != (threads, fds) && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = counts();
    assert_eq!(
        after,
        (threads, fds),
        "threads and fds before: {threads}, {fds}; threads now: {:?}",
        thread_names(pid)
    );
}

/// CAP_PERFMON, CAP_BPF, CAP_SYSLOG, CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE
/// and CAP_DAC_READ_SEARCH: what ARCHITECTURE.md lists as kept.
const RUNTIME_CAPS: u64 = 1 << 38 | 1 << 39 | 1 << 34 | 1 << 19 | 1 << 40 | 1 << 2;

/// A capability set of a process or thread; `None` once it has exited.
fn caps(pid: &str, set: &str) -> Option<u64> {
    u64::from_str_radix(&proc_status(pid, set), 16).ok()
}

/// After start-up every thread of the daemon holds exactly the runtime set
/// (bounding set included) and nothing inheritable or ambient; a profile
/// still works; the sandbox it starts holds nothing, has no_new_privs, a
/// seccomp filter and its memory limit.
#[test]
fn capabilities_are_dropped_to_what_the_daemon_uses() {
    let daemon = Daemon::start("sched,block,tcp");
    let pid = daemon.pid();
    // User frames to name, so that the sandbox starts.
    let hot = Running::build_and_start("hot_loop", programs::HOT_LOOP);
    let (status, body) = daemon.get(&format!("/stacks?seconds=1&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    assert!(body.lines().count() > 0, "no stacks");
    let mut checked = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = format!("{pid}/task/{}", task.unwrap().file_name().to_string_lossy());
        let sets = ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"].map(|set| caps(&task, set));
        // A thread that ended since the directory was listed has nothing to check.
        let [Some(eff), Some(prm), Some(bnd), Some(inh), Some(amb)] = sets else {
            continue;
        };
        assert_eq!(
            (eff, prm, bnd),
            (RUNTIME_CAPS, RUNTIME_CAPS, RUNTIME_CAPS),
            "effective, permitted and bounding sets of {task}"
        );
        assert_eq!((inh, amb), (0, 0), "inheritable and ambient sets of {task}");
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} threads checked");
    let sandbox = sandbox_of(&daemon)
        .expect("a sandbox process under the daemon")
        .to_string();
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(caps(&sandbox, set), Some(0), "sandbox {set}");
    }
    assert_eq!(proc_status(&sandbox, "NoNewPrivs"), "1");
    assert_eq!(proc_status(&sandbox, "Seccomp"), "2");
    assert_eq!(
        proc_limit(&sandbox, "Max address space"),
        ("268435456".to_owned(), "268435456".to_owned())
    );
}

/// Run with CAP_BPF and CAP_PERFMON only, the daemon cannot read kernel
/// addresses from kallsyms: kernel frames read `[kernel]`, and no kernel
/// address (which would reveal the KASLR base) appears anywhere.
#[test]
fn kernel_addresses_are_never_shown() {
    let daemon = Launch::new("sched")
        .configure(|command| {
            // SAFETY: prctl only, in the child before exec; root then execs
            // with its bounding set as its capabilities.
            unsafe {
                command.pre_exec(|| {
                    for cap in (0..64).filter(|c| ![38, 39].contains(c)) {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                    }
                    Ok(())
                })
            };
        })
        .spawn();
    let busy = Running::build_and_start("syscall_loop", SYSCALL_LOOP);
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", busy.pid));
    assert_eq!(status, 200, "{body}\nlog:\n{}", daemon.log());
    assert!(body.contains("[kernel]_[k]"), "{body}");
    assert!(!body.contains("0xffff"), "a kernel address leaked:\n{body}");
    let (status, pprof) = daemon.get(&format!("/debug/pprof/profile?seconds=1&pid={}", busy.pid));
    assert_eq!(status, 200);
    assert!(!pprof.contains("0xffff"));
}

/// Runs generated code: an executable page that loops on itself. With no
/// argument it writes a perf map naming the page `jit_spin_function`; with
/// a path, it makes its perf map a symlink to that path instead.
const JIT: &str = r#"
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    unsigned char *code = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) return 1;
    code[0] = 0xeb; code[1] = 0xfe; /* jmp . */
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    if (argc > 1) {
        if (symlink(argv[1], path)) return 2;
    } else {
        FILE *f = fopen(path, "w");
        if (!f) return 3;
        fprintf(f, "%lx 2 jit_spin_function\n", (unsigned long)code);
        fclose(f);
    }
    ((void (*)(void))code)();
    return 0;
}
"#;

/// Perf maps name JIT code, but only maps the process's own user wrote: a
/// perf map that is a symlink to a root-only file never puts that file's
/// contents into a profile.
#[test]
fn perf_maps_name_jit_code_but_cannot_leak_other_files() {
    let daemon = Daemon::start("sched");
    let exe = programs::build("jit", JIT, &["-O0"]);
    let exe_leak = programs::build_dir().join("jit_leak");
    std::fs::copy(&exe, &exe_leak).unwrap();
    let secret = programs::build_dir().join("secret.map");
    std::fs::write(&secret, "0 ffffffffffffffff TOPSECRET\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let honest = Running::start_as_nobody(&exe, &[]);
    let leaker = Running::start_as_nobody(&exe_leak, &[secret.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = daemon.get("/stacks?seconds=3");
    for pid in [honest.pid, leaker.pid] {
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
    assert_eq!(status, 200, "{body}");
    assert_named(&body, "jit", "jit_spin_function");
    assert!(
        !body.contains("TOPSECRET"),
        "a root-only file leaked:\n{body}"
    );
    let (total, _) = shares(&body, "")
        .get("jit_leak")
        .copied()
        .unwrap_or_default();
    assert!(total >= 30, "jit_leak was not sampled:\n{body}");
}

/// Runs `short_lived_loop` for 1.5 s, then exits.
const SHORT_LIVED: &str = r#"
#include <stdint.h>
#include <time.h>
volatile uint64_t sink;
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void short_lived_loop(double until) {
    while (now() < until) for (int i = 0; i < 100000; i++) sink++;
}
int main(void) { short_lived_loop(now() + 1.5); return 0; }
"#;

/// A process that exits halfway through a capture still has its hot
/// function named: its files were opened while it ran.
#[test]
fn a_process_that_exits_during_the_capture_is_still_named() {
    let daemon = Daemon::start("sched");
    let exe = programs::build(
        "short_lived",
        SHORT_LIVED,
        &["-O0", "-fno-omit-frame-pointer"],
    );
    let capture = std::thread::scope(|scope| {
        let capture = scope.spawn(|| daemon.get("/stacks?seconds=4"));
        std::thread::sleep(Duration::from_millis(300));
        let mut short = Running::start_as_nobody(&exe, &[]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while short.is_running() {
            assert!(Instant::now() < deadline, "short_lived did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        capture.join().unwrap()
    });
    let (status, body) = capture;
    assert_eq!(status, 200, "{body}");
    assert_named(&body, "short_lived", "short_lived_loop");
}

/// The daemon's sandbox process.
fn sandbox_of(daemon: &Daemon) -> Option<u32> {
    let pid = daemon.pid().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            proc_status(&p.to_string(), "PPid") == pid
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.windows(19).any(|w| w == b"__symbolize-sandbox"))
        })
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test found.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

/// A sandbox that stops answering (here: stopped with SIGSTOP) costs one
/// file its names, for at most the reply timeout (5 s): the profile still
/// answers, the log says so in one line, and a new sandbox takes over. One that was killed while
/// idle is replaced before the next capture loses anything.
#[test]
fn a_sandbox_that_hangs_or_dies_is_replaced() {
    let daemon = Daemon::start("sched");
    let hot = Running::build_and_start("hot_loop", programs::HOT_LOOP);
    assert_eq!(daemon.get("/stacks?seconds=1").0, 200);
    let first = sandbox_of(&daemon).expect("a sandbox after the first capture");

    signal(first, libc::SIGSTOP);
    let started = Instant::now();
    let (status, body) = daemon.get(&format!("/stacks?seconds=1&pid={}", hot.pid));
    let took = started.elapsed();
    println!("answered in {took:?}:\n{body}");
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(1 + 5 + 3), "took {took:?}");
    assert!(body.lines().count() > 0, "no stacks");
    let log = daemon.log();
    assert_eq!(log.matches("no answer within 5 s").count(), 1, "{log}");
    let second = sandbox_of(&daemon).expect("a new sandbox");
    assert_ne!(first, second);

    signal(second, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    assert_named(&body, "hot_loop", "hot_spin_loop");
    assert!(
        daemon.log().contains("exited while idle"),
        "{}",
        daemon.log()
    );
}

/// A binary stripped of every symbol still shows where its time goes:
/// frames read `name+0xOFFSET`, and the leaf's offset lies inside the hot
/// function as the unstripped binary places it. No bare addresses.
#[test]
fn stripped_binaries_show_file_and_offset() {
    let daemon = Daemon::start("sched");
    let exe = programs::build(
        "hot_loop_full",
        programs::HOT_LOOP,
        &["-O0", "-fno-omit-frame-pointer"],
    );
    let stripped = programs::build_dir().join("hot_stripped");
    std::fs::copy(&exe, &stripped).unwrap();
    let status = std::process::Command::new("strip")
        .arg("-s")
        .arg(&stripped)
        .status()
        .unwrap();
    assert!(status.success());

    // Where hot_spin_loop is, as an offset into the file.
    let bytes = std::fs::read(&exe).unwrap();
    let elf = object::File::parse(&*bytes).unwrap();
    let symbol = object::ObjectSymbolTable::symbols(&elf.symbol_table().unwrap())
        .find(|s| object::ObjectSymbol::name(s) == Ok("hot_spin_loop"))
        .unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let (text_offset, _) = text.file_range().unwrap();
    let start = object::ObjectSymbol::address(&symbol) - text.address() + text_offset;
    let range = start..start + object::ObjectSymbol::size(&symbol);

    let hot = Running::start(std::process::Command::new(&stripped), "hot_stripped");
    let (status, body) = daemon.get(&format!("/stacks?seconds=2&pid={}", hot.pid));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("[unknown"), "{body}");
    let mut total = 0;
    let mut inside = 0;
    for line in body.lines() {
        let (frames, count) = line.rsplit_once(' ').unwrap();
        let count: u64 = count.parse().unwrap();
        total += count;
        let leaf_user = frames.split(';').rfind(|f| !f.ends_with("_[k]")).unwrap();
        if let Some(offset) = leaf_user.strip_prefix("hot_stripped+0x") {
            let offset = u64::from_str_radix(offset, 16).unwrap();
            if range.contains(&offset) {
                inside += count;
            }
        }
    }
    println!("{inside} of {total} samples at hot_stripped+{range:x?}");
    assert!(total >= 30, "{body}");
    assert!(inside as f64 >= 0.9 * total as f64, "{body}");
}
