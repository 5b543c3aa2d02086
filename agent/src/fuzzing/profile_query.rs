//! Profile request parameters: the query string of `/flamegraph.svg`,
//! `/stacks` and `/debug/pprof/profile`, and the command-line numbers
//! (`--profile-max-*`, `hist --interval/--count`, `profile --seconds/...`).

use std::{collections::HashMap, path::PathBuf};

use axum::{extract::Query, http::Uri};
use clap::Parser as _;

use super::{Violation, one_line};
use crate::{
    cli::{self, Cli, Command},
    profile::{Kind, Limits, MIN_BLOCK_US, Params, ProfileError, Request, cgroups},
    profile_cmd,
};

/// Stands in for the cgroup2 mount: it does not exist, so every `cgroup`
/// that passes the syntax checks is then refused as missing. Whatever the
/// input, nothing on this host is looked at but this one path.
const NO_SUCH_ROOT: &str = "/nonexistent/hostscope-fuzz-cgroup2";

/// The daemon's limits when the input sets none (the flags' defaults).
const DAEMON_LIMITS: Limits = Limits {
    max_seconds: 60,
    max_frequency: 1000,
};

/// `data` is what a client puts after `?`. It is decoded as the endpoints
/// decode it (hyper's URI parser, then axum's `Query`); besides `kind`,
/// `min_block_us`, `seconds`, `pid`, `frequency`, `cgroup` and `group_by`,
/// the keys `max_seconds`, `max_frequency`, `interval` and `count` go to
/// the command-line flags of those names, so that one input reaches every
/// parser. Promises: no panic; a request is
/// within its limits or refused with one short line; a flag's value is
/// accepted or refused, never crashes.
pub(super) fn check(data: &[u8]) -> Result<(), Violation> {
    let mut target = b"/stacks?".to_vec();
    target.extend_from_slice(data);
    // Bytes hyper would refuse never reach the handlers.
    let Ok(uri) = Uri::from_maybe_shared(target) else {
        return Ok(());
    };
    // axum answers 400 itself for a query it cannot decode.
    let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&uri) else {
        return Ok(());
    };
    let param = |name: &str| params.get(name).map(String::as_str);

    let daemon_limits = serve_limits(param("max_seconds"), param("max_frequency"))?;
    let params = Params::from_query(&params);
    // With no cgroup2 mounted, and with one that has no such cgroup.
    let roots = [None, Some(PathBuf::from(NO_SUCH_ROOT))];
    for root in &roots {
        let request = |limits: &Limits| limits.request_in(&params, || root.clone());
        within_limits(&daemon_limits, request(&daemon_limits))?;
        within_limits(&profile_cmd::LIMITS, request(&profile_cmd::LIMITS))?;
    }
    if let Some(text) = params.cgroup {
        cgroup_path(text)?;
    }
    // `hostscope profile` hands its flags to the same checks, through clap.
    let mut args = vec!["hostscope", "profile"];
    for (flag, key) in [
        ("--kind", "kind"),
        ("--min-block-us", "min_block_us"),
        ("--seconds", "seconds"),
        ("--pid", "pid"),
        ("--frequency", "frequency"),
        ("--cgroup", "cgroup"),
        ("--group-by", "group_by"),
    ] {
        if let Some(value) = param(key) {
            args.extend([flag, value]);
        }
    }
    if let Ok(cli) = Cli::try_parse_from(&args)
        && let Command::Profile(profile) = cli.command
    {
        let result =
            profile_cmd::LIMITS.request_in(&profile_cmd::params(&profile), || roots[1].clone());
        within_limits(&profile_cmd::LIMITS, result)?;
    }
    hist_flags(param("interval"), param("count"))
}

/// A cgroup path is refused in one line, or normalized: absolute, no empty,
/// `.` or `..` component, within the limits, and normalized again unchanged.
fn cgroup_path(text: &str) -> Result<(), Violation> {
    let path = match cgroups::normalize(text) {
        Ok(path) => path,
        Err(ProfileError::BadRequest(reason)) => return one_line("a cgroup refusal", &reason),
        Err(err) => {
            return Err(Violation::Broken(format!(
                "checking a cgroup failed instead of refusing it: {err}"
            )));
        }
    };
    let components: Vec<&str> = path.split('/').skip(1).collect();
    let normal = path.starts_with('/')
        && path.len() <= cgroups::MAX_PATH_BYTES
        && (path == "/"
            || components
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != ".."))
        && components.len() <= crate::cgroup::paths::MAX_DEPTH
        && cgroups::normalize(&path).is_ok_and(|again| again == path);
    if !normal {
        return Err(Violation::Broken(format!(
            "cgroup {text:?} normalized to {path:?}"
        )));
    }
    Ok(())
}

/// The limits `hostscope serve` would run with, given these flag values.
fn serve_limits(
    max_seconds: Option<&str>,
    max_frequency: Option<&str>,
) -> Result<Limits, Violation> {
    if max_seconds.is_none() && max_frequency.is_none() {
        return Ok(DAEMON_LIMITS);
    }
    let mut args = vec!["hostscope", "serve"];
    if let Some(value) = max_seconds {
        args.extend(["--profile-max-seconds", value]);
    }
    if let Some(value) = max_frequency {
        args.extend(["--profile-max-frequency", value]);
    }
    match Cli::try_parse_from(&args) {
        Ok(Cli {
            command: Command::Serve(serve),
            ..
        }) => Ok(Limits {
            max_seconds: serve.profile_max_seconds,
            max_frequency: serve.profile_max_frequency,
        }),
        Ok(other) => Err(Violation::Broken(format!(
            "`serve` parsed as {:?}",
            other.command
        ))),
        // A refused value ends the daemon at start-up; requests never see it.
        Err(_) => Ok(DAEMON_LIMITS),
    }
}

/// `hist --interval` (our own parser) and `--count` (clap's).
fn hist_flags(interval: Option<&str>, count: Option<&str>) -> Result<(), Violation> {
    if let Some(text) = interval {
        match cli::parse_positive_seconds(text) {
            // What `hist` does next with it.
            Ok(seconds)
                if std::time::Duration::try_from_secs_f64(seconds)
                    .is_ok_and(|interval| !interval.is_zero()) => {}
            Ok(seconds) => {
                return Err(Violation::Broken(format!(
                    "--interval {text:?} gave {seconds}"
                )));
            }
            Err(reason) => one_line("the --interval error", &reason)?,
        }
    }
    let mut args = vec!["hostscope", "hist", "sched"];
    if let Some(value) = interval {
        args.extend(["--interval", value]);
    }
    if let Some(value) = count {
        args.extend(["--count", value]);
    }
    let _ = Cli::try_parse_from(&args);
    Ok(())
}

/// A request is within its limits, or refused with one line.
fn within_limits(limits: &Limits, result: Result<Request, ProfileError>) -> Result<(), Violation> {
    match result {
        Ok(request) => {
            let Request {
                kind,
                seconds,
                pid,
                frequency,
                ref cgroup,
                group_by: _,
            } = request;
            let kind_ok = match kind {
                Kind::Cpu => (1..=limits.max_frequency).contains(&frequency),
                Kind::OffCpu { min_block_us } => {
                    frequency == 0 && MIN_BLOCK_US.contains(&min_block_us.get())
                }
            };
            // Every root the checks are given lacks every cgroup.
            if !(1..=limits.max_seconds).contains(&seconds)
                || !kind_ok
                || pid == Some(0)
                || cgroup.is_some()
            {
                return Err(Violation::Broken(format!(
                    "{request:?} accepted under {limits:?}"
                )));
            }
            Ok(())
        }
        Err(ProfileError::BadRequest(reason)) => one_line("a refusal", &reason),
        Err(
            err @ (ProfileError::Failed(_)
            | ProfileError::Unavailable(_)
            | ProfileError::Busy { .. }
            | ProfileError::ShuttingDown),
        ) => Err(Violation::Broken(format!(
            "checking parameters failed instead of refusing them: {err}"
        ))),
    }
}

/// Queries a client or a script might send, good and bad.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    [
        "",
        "seconds=5",
        "seconds=5&pid=1&frequency=99",
        "seconds=0&frequency=0",
        "seconds=-3&pid=-1&frequency=-5",
        "seconds=%2B7&pid=%201%20&frequency=1e3",
        "seconds=99999999999999999999&pid=4294967296&frequency=18446744073709551616",
        "seconds=61&frequency=1001",
        "seconds=%0A5&pid=1%00&frequency=%E2%80%8B99",
        "seconds=%EF%BC%95&pid=%D9%A1",
        "seconds=3600&frequency=10000&max_seconds=3600&max_frequency=10000",
        "max_seconds=0&max_frequency=0",
        "max_seconds=18446744073709551615&max_frequency=-1",
        "interval=0.5&count=3",
        "interval=NaN&count=-1",
        "interval=inf&count=18446744073709551616",
        "interval=1e-320",
        "seconds=5&seconds=6&pid&frequency=",
        "seconds=5&cgroup=/system.slice/nginx.service",
        "cgroup=%2Fsystem.slice%2F%2Fnginx.service%2F&group_by=cgroup",
        "cgroup=/&group_by=cgroup&pid=1",
        "cgroup=system.slice&group_by=process",
        "cgroup=/a/../../etc&group_by=",
        "cgroup=/./a/%00b/%0A&group_by=CGROUP",
        "cgroup=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_4a7b_8c9d_0e1f2a3b4c5d.slice/cri-containerd-7f3c9a1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8.scope",
        "cgroup=/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d",
        "group_by=cgroup&group_by=pid",
        "kind=offcpu&seconds=2&pid=1",
        "kind=offcpu&min_block_us=1",
        "kind=offcpu&min_block_us=10000001&frequency=99",
        "kind=cpu&min_block_us=5",
        "kind=OFFCPU&min_block_us=%2B1e3",
        "kind=&min_block_us=-1",
        "kind=offcpu&kind=cpu&min_block_us=99999999999999999999999",
    ]
    .into_iter()
    .map(|query| query.as_bytes().to_vec())
    .collect()
}
