//! Small C programs a test builds (with frame pointers) and runs, killed on
//! drop: workloads whose stacks are known in advance.

use std::{
    path::PathBuf,
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
        let dir = std::env::temp_dir().join(format!("hostscope-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a build directory");
        let c = dir.join(format!("{name}.c"));
        let exe: PathBuf = dir.join(name);
        std::fs::write(&c, source).expect("write the C source");
        let status = Command::new("cc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer"])
            .arg(&c)
            .arg("-o")
            .arg(&exe)
            .status()
            .expect("cc runs");
        assert!(status.success(), "compiling {name}.c failed");
        let child = Command::new(&exe).spawn().expect("start the test program");
        Running {
            pid: child.id(),
            child,
            name: name.to_owned(),
        }
    }
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
