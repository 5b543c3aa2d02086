//! Flame graphs on a busy host: how long the SVG takes once the capture
//! ends, and the daemon's peak memory meanwhile.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use anyhow::Context as _;

use super::{
    Plan, daemon,
    report::{Report, Row, Target},
    spawn,
};

const SECTION: &str = "profiling";

/// A 10 s, 99 Hz system-wide flame graph while a few hundred processes (of
/// three different programs, niced so that the daemon is not starved) keep
/// the CPUs busy: how long after the capture ends the SVG arrives, and the
/// daemon's peak resident memory meanwhile.
pub fn costs(report: &mut Report, plan: &Plan) -> anyhow::Result<()> {
    profile_busy_host(report, plan, false)?;
    profile_busy_host(report, plan, true)
}

/// With `own_session`, the busy processes run in a session of their own
/// (`setsid`), so that the scheduler's autogroups weigh them as one group
/// against the daemon, as another service's processes would be on a
/// systemd or Kubernetes host; without, they share the daemon's group and
/// 300 nice-19 processes outweigh it about four to one.
fn profile_busy_host(report: &mut Report, plan: &Plan, own_session: bool) -> anyhow::Result<()> {
    let daemon = daemon::start()?;
    let programs: [(&str, &[&str]); 3] = [
        ("sh", &["-c", "while :; do :; done"]),
        ("perl", &["-e", "1 while 1"]),
        ("python3", &["-c", "while True: pass"]),
    ];
    let mut busy = Vec::new();
    let mut session = None;
    if own_session {
        // One shell in a new session starts them all, so that they share
        // one autogroup (a session each would weigh 300 to 1 against the
        // daemon); the whole session is killed at the end.
        let mut script = String::new();
        for i in 0..plan.busy_processes {
            let (program, args) = programs[i % programs.len()];
            script.push_str(&format!(
                "nice -n 19 {program} {} '{}' &\n",
                args[0], args[1]
            ));
        }
        script.push_str("wait\n");
        let mut command = Command::new("sh");
        command
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid(2) only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
        session = Some(Session(
            command.spawn().context("starting the busy processes")?,
        ));
    } else {
        for i in 0..plan.busy_processes {
            let (program, args) = programs[i % programs.len()];
            busy.push(spawn("nice", &[&["-n", "19", program], args].concat())?);
        }
    }
    std::thread::sleep(Duration::from_secs(1));

    let pid = daemon.pid;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((rss, _)) = daemon::memory_kib(pid) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let started = std::time::Instant::now();
    let mut response = agent
        .get(format!(
            "{}/flamegraph.svg?seconds=10&frequency=99",
            daemon.url
        ))
        .call()
        .context("requesting a flame graph")?;
    let svg = response
        .body_mut()
        .read_to_vec()
        .context("reading the flame graph")?;
    let after_capture = started.elapsed().saturating_sub(Duration::from_secs(10));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("memory watcher panicked"))?;
    drop(busy);
    drop(session);

    let ms = after_capture.as_secs_f64() * 1e3;
    let metric = format!(
        "10 s, 99 Hz capture end to served SVG ({} busy processes {}, {} KiB SVG), ms",
        plan.busy_processes,
        if own_session {
            "in a session of their own"
        } else {
            "in the daemon's scheduling group"
        },
        svg.len() / 1024
    );
    report.push(Row::value(
        SECTION,
        &metric,
        ms,
        Target::below(300.0, " ms"),
    ));
    report.push(Row::value(
        SECTION,
        "peak resident memory during capture and symbolization, MiB",
        peak as f64 / 1024.0,
        Target::at_most(100.0, " MiB"),
    ));
    Ok(())
}

/// A session of processes, all killed on drop.
struct Session(std::process::Child);

impl Drop for Session {
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.0.id()) else {
            return;
        };
        // SAFETY: kill(2) on the process group this session leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}
