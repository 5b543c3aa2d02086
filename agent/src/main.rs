//! The `hostscope` binary: everything is in the library (lib.rs).

fn main() -> std::process::ExitCode {
    hostscope::run()
}
