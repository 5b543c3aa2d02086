//! Small C programs a test builds (with frame pointers) and runs, killed on
//! drop: workloads whose stacks are known in advance.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

/// A running test program.
pub struct Running {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// Its executable's name (and so its process name).
    pub name: String,
}

impl Running {
    /// Compiles `source` as `name` with frame pointers everywhere and starts
    /// it. `-O0`: gcc 12 omits the frame pointer of leaf functions at `-O1`
    /// even with `-mno-omit-leaf-frame-pointer`, which hides the leaf's
    /// caller from a frame-pointer unwinder.
    pub fn build_and_start(name: &str, source: &str) -> Running {
        let exe = build(name, source, &["-O0", "-g", "-fno-omit-frame-pointer"]);
        Running::start(Command::new(&exe), name)
    }

    /// Starts `command`, a program whose process name is `name`.
    pub fn start(mut command: Command, name: &str) -> Running {
        let child = command.spawn().expect("start the test program");
        Running {
            pid: child.id(),
            child,
            name: name.to_owned(),
        }
    }

    /// Starts `exe` with `args` as the unprivileged user nobody, with no
    /// capabilities and no supplementary groups: a hostile local user.
    pub fn start_as_nobody(exe: &Path, args: &[&str]) -> Running {
        let mut command = Command::new("setpriv");
        command.args(NOBODY).arg("--").arg(exe).args(args);
        let name = exe
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Running::start(command, &name)
    }

    /// Whether the program is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `setpriv` arguments that run a command as nobody (uid and gid 65534),
/// without supplementary groups or capabilities.
pub const NOBODY: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

/// A directory for this test process's programs, readable by everyone.
pub fn build_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hostscope-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a build directory");
    dir
}

/// Compiles `source` with `cc` and `flags` into an executable (or, with
/// `-shared`, a library) named `name` in [`build_dir`], and returns its path.
pub fn build(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let dir = build_dir();
    let c = dir.join(format!("{name}.c"));
    let out: PathBuf = dir.join(name);
    std::fs::write(&c, source).expect("write the C source");
    // Flags after the source, so that libraries among them are linked.
    let status = Command::new("cc")
        .arg(&c)
        .args(flags)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling {name}.c failed");
    out
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spends its CPU time in `hot_spin_loop`, called from `main` through
/// `intermediate_caller` (neither inlined nor tail-called).
pub const HOT_LOOP: &str = r#"
#include <stdint.h>
volatile uint64_t sink;
__attribute__((noinline)) void hot_spin_loop(uint64_t n) {
    for (uint64_t i = 0; i < n; i++) sink += i;
}
__attribute__((noinline)) int intermediate_caller(uint64_t n) {
    hot_spin_loop(n);
    return (int)(sink & 1);
}
int main(void) {
    int r = 0;
    for (;;) {
        r += intermediate_caller(100000000ULL);
        if (r == -1) break;
    }
    return r;
}
"#;

/// Makes a cheap system call in a tight loop: most of its time is in the kernel.
pub const SYSCALL_LOOP: &str = r#"
#include <unistd.h>
#include <fcntl.h>
int main(void) {
    int fd = open("/dev/null", O_WRONLY);
    char byte = 0;
    for (;;) {
        if (write(fd, &byte, 1) < 0) return 1;
    }
}
"#;

/// Blocks in `sleeper_leaf` (called from `main` through `sleeper_caller`),
/// 20 ms at a time, forever; one thread, which is almost never on a CPU.
/// The leaf makes the system call itself: glibc is built without frame
/// pointers, so from inside its `clock_nanosleep` a frame-pointer unwinder
/// would skip the frame that called it, the very function to find.
pub const SLEEPER: &str = r#"
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
volatile uint64_t sleeps;
__attribute__((noinline)) void sleeper_leaf(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
#if defined(__x86_64__)
    register long r10 __asm__("r10") = 0;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_clock_nanosleep), "D"((long)CLOCK_MONOTONIC),
                       "S"(0L), "d"(&ts), "r"(r10)
                     : "rcx", "r11", "memory");
    (void)ret;
#else
    clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, 0);
#endif
}
__attribute__((noinline)) void sleeper_caller(void) {
    for (;;) {
        sleeper_leaf();
        sleeps++;
    }
}
int main(void) {
    sleeper_caller();
    return 0;
}
"#;

/// `b` and its hot `leaf`, for [`NO_FRAME_POINTER_CALLERS`]: the stack is
/// `main` -> `a` -> `b` -> `leaf`, none inlined or tail-called, each with
/// work after its call. Built without frame pointers (in the program or
/// in a shared library), it can only be walked from `.eh_frame`.
pub const NO_FRAME_POINTER_CALLEES: &str = r#"
#include <stdint.h>
volatile uint64_t sink;
__attribute__((noinline)) uint64_t leaf(uint64_t n) {
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) { acc += i * sink; sink = acc; }
    return acc;
}
__attribute__((noinline)) uint64_t b(uint64_t n) { uint64_t r = leaf(n); sink += 1; return r + 1; }
"#;

/// `main` and `a`, which call [`NO_FRAME_POINTER_CALLEES`].
pub const NO_FRAME_POINTER_CALLERS: &str = r#"
#include <stdint.h>
uint64_t b(uint64_t n);
volatile uint64_t total;
__attribute__((noinline)) uint64_t a(uint64_t n) { uint64_t r = b(n); total += 2; return r + 2; }
int main(void) {
    uint64_t r = 0;
    for (;;) { r += a(100000000ULL); if (r == 1) break; }
    return (int)r;
}
"#;

/// Spins in `spin` under 24 calls of `deep`, each with a 2 KiB frame:
/// about 48 KiB of stack, deeper than the sampler copies.
pub const DEEP_STACK: &str = r#"
#include <stdint.h>
#include <string.h>
volatile uint64_t sink;
__attribute__((noinline)) void spin(void) { for (;;) sink++; }
__attribute__((noinline)) void deep(int n) {
    volatile char pad[2048];
    memset((char *)pad, n, sizeof pad);
    if (n == 0) spin(); else deep(n - 1);
    sink += pad[n];
}
int main(void) { deep(24); return 0; }
"#;
