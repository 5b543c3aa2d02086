//! hostscope: the daemon and its terminal commands, as a library that the
//! `hostscope` binary (main.rs) runs and the fuzz targets call into. See
//! ARCHITECTURE.md.
//!
//! Errors are typed in the modules below; [`run`] alone turns them into one
//! line on stderr and an exit code: 2 for bad input, 1 for the rest.

mod btf;
mod cgroup;
mod cli;
mod collector;
mod fd_limit;
#[doc(hidden)]
pub mod fuzzing;
mod generate;
mod heap;
mod hist;
mod http;
mod kernel_layout;
mod kernel_log;
mod logging;
mod mapped_array;
mod metrics;
mod privileges;
mod probes;
mod profile;
mod profile_cmd;
mod quote;
mod render;
mod sandbox;
mod serve;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// Parses the command line, runs the command, and returns its exit code.
pub fn run() -> ExitCode {
    // The symbolizer sandbox is this binary too, started by the daemon
    // alone; it reads no flags, environment or configuration.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == sandbox::SUBCOMMAND)
    {
        return sandbox::worker::run();
    }
    heap::limit_arenas();
    // clap itself exits with code 2 and a usage line on a bad flag.
    let cli = Cli::parse();
    if let Err(err) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!(
            "hostscope: error: invalid --log-level `{}`: {err}",
            cli.log_level
        );
        return ExitCode::from(2);
    }
    let log_format = cli.log_format;
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Hist(args) => hist::run(args),
        Command::Profile(args) => profile_cmd::run(args),
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man(args.command.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::fatal(log_format, &err);
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 2 when the user's input was wrong, 1 otherwise.
fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_request = matches!(
        err.downcast_ref::<profile::ProfileError>(),
        Some(profile::ProfileError::BadRequest(_))
    );
    if bad_request
        || err.downcast_ref::<serve::BindError>().is_some()
        || err.downcast_ref::<http::WebConfigError>().is_some()
    {
        2
    } else {
        1
    }
}
