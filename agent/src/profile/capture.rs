//! Taking a profile: reset the maps, attach the sampler to every online
//! CPU (or, for an off-CPU profile, the `sched_switch` program), wait,
//! detach, read. One capture at a time; a few later requests wait (see
//! `admission.rs`), and shutdown ends them all.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{perf_event::PerfEventLinkId, tp_btf::BtfTracePointLinkId},
};
use hostscope_common::profile::{
    COPY_USER_STACKS, OFFCPU_CONFIG_MAP, OFFCPU_PROGRAM, OFFCPU_TRACEPOINT, OffCpuConfig,
    PROFILE_COMMS_MAP, PROFILE_COPY_MISSED_MAP, PROFILE_COUNTS_MAP, PROFILE_DROPPED_MAP,
    PROFILE_FILTER_MAP, PROFILE_PROGRAM, PROFILE_STACKS_MAP, PROFILE_USER_STACKS_MAP,
    PROFILE_WALKED_MAP, ProfileFilter, SampleKey,
};
use tokio::io::unix::AsyncFd;

use super::{
    Kind, Limits, Profile, ProfileError, Request, Stack,
    admission::{Admission, DEFAULT_MAX_QUEUE},
    symbolize,
    unwound::Copied,
};
use crate::{probes::Probes, sandbox::Sandbox};

/// What the kernel counted, before symbolization.
#[derive(Debug, Default)]
pub struct Raw {
    /// Samples (off CPU: nanoseconds blocked) per (cgroup, process, user
    /// stack, kernel stack).
    pub counts: Vec<(SampleKey, u64)>,
    /// Instruction pointers of each stack, leaf first.
    pub stacks: HashMap<u32, Vec<u64>>,
    /// Process names by tgid.
    pub comms: HashMap<u32, String>,
    /// Samples lost.
    pub dropped: u64,
}

struct Maps {
    stacks: StackTraceMap<MapData>,
    counts: BpfHashMap<MapData, SampleKey, u64>,
    comms: BpfHashMap<MapData, u32, [u8; 16]>,
    filter: Array<MapData, ProfileFilter>,
    dropped: PerCpuArray<MapData, u64>,
    /// Processes whose user stacks the kernel walks by frame pointers.
    walked: BpfHashMap<MapData, u32, u8>,
    /// Samples walked by frame pointers because the ring was full.
    copy_missed: PerCpuArray<MapData, u64>,
    /// The off-CPU program's settings, or why that program did not load.
    offcpu: Result<Array<MapData, OffCpuConfig>, String>,
}

/// Takes CPU profiles with the `profile_sample` program and off-CPU
/// profiles with `offcpu_switch`.
pub struct Profiler {
    probes: Arc<Mutex<Probes>>,
    maps: Mutex<Maps>,
    /// Copied user stacks; lent to the capture under way.
    user_stacks: Mutex<Option<RingBuf<MapData>>>,
    /// Held for a whole capture: never two samplers at once.
    turn: tokio::sync::Mutex<()>,
    /// Names user frames, out of the daemon's process; shared by captures.
    sandbox: Arc<Mutex<Sandbox>>,
    /// Who may wait for `turn`; shutdown.
    admission: Admission,
    /// What requests are checked against.
    pub limits: Limits,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ProfileError + '_ {
    move |err| ProfileError::Failed(format!("{what}: {err}"))
}

impl Profiler {
    /// Loads the sampler and the off-CPU program (neither attached) and
    /// takes their maps. The off-CPU program is a BTF tracepoint, so this
    /// must run before [`Probes::release_btf`]. If it cannot load (an old
    /// kernel, a verifier that refuses it), CPU profiles still work: the
    /// reason is logged once and given to each off-CPU request.
    pub fn new(probes: Arc<Mutex<Probes>>, limits: Limits) -> Result<Self, ProfileError> {
        let maps = {
            let mut p = probes.lock().unwrap_or_else(PoisonError::into_inner);
            p.load_perf_event(PROFILE_PROGRAM)
                .map_err(|e| failed("loading the sampler")(&e))?;
            let take = |e: crate::probes::AttachError| failed("taking the profile maps")(&e);
            let offcpu = p
                .load_btf_tracepoint(OFFCPU_PROGRAM, OFFCPU_TRACEPOINT)
                .and_then(|()| p.take_map(OFFCPU_CONFIG_MAP))
                .map_err(|err| {
                    let why = format!("off-CPU profiles are unavailable: {err}");
                    tracing::warn!("{why}");
                    why
                });
            let user_stacks = p.take_map(PROFILE_USER_STACKS_MAP).map_err(take)?;
            let maps = Maps {
                stacks: p.take_map(PROFILE_STACKS_MAP).map_err(take)?,
                counts: p.take_map(PROFILE_COUNTS_MAP).map_err(take)?,
                comms: p.take_map(PROFILE_COMMS_MAP).map_err(take)?,
                filter: p.take_map(PROFILE_FILTER_MAP).map_err(take)?,
                dropped: p.take_map(PROFILE_DROPPED_MAP).map_err(take)?,
                walked: p.take_map(PROFILE_WALKED_MAP).map_err(take)?,
                copy_missed: p.take_map(PROFILE_COPY_MISSED_MAP).map_err(take)?,
                offcpu,
            };
            (maps, user_stacks)
        };
        let (maps, user_stacks) = maps;
        Ok(Self {
            probes,
            maps: Mutex::new(maps),
            user_stacks: Mutex::new(Some(user_stacks)),
            turn: tokio::sync::Mutex::new(()),
            sandbox: Arc::default(),
            admission: Admission::new(DEFAULT_MAX_QUEUE),
            limits,
        })
    }

    /// Lets at most `max_queue` requests wait behind the running capture;
    /// more get [`ProfileError::Busy`].
    #[must_use]
    pub fn with_max_queue(mut self, max_queue: usize) -> Self {
        self.admission = Admission::new(max_queue);
        self
    }

    /// Ends the running capture and every waiting one with
    /// [`ProfileError::ShuttingDown`], and refuses new ones.
    pub fn shut_down(&self) {
        self.admission.shut_down();
    }

    /// Why off-CPU profiles cannot be taken here, if they cannot.
    pub fn offcpu_unavailable(&self) -> Option<String> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.offcpu.as_ref().err().cloned()
    }

    /// Samples for `request.seconds`, then symbolizes. Dropping the future
    /// (a client that went away) detaches the sampler at once, as does
    /// [`Profiler::shut_down`].
    pub async fn capture(&self, request: Request) -> Result<Profile, ProfileError> {
        if matches!(request.kind, Kind::OffCpu { .. })
            && let Some(why) = self.offcpu_unavailable()
        {
            return Err(ProfileError::Unavailable(why));
        }
        let _place = self.admission.admit()?;
        let _turn = self.admission.unless_shutdown(self.turn.lock()).await?;
        self.reset(
            ProfileFilter {
                cgroup: request.cgroup.as_ref().map_or(0, |c| c.id),
                tgid: request.pid.unwrap_or(0),
                flags: match request.kind {
                    Kind::Cpu => COPY_USER_STACKS,
                    Kind::OffCpu { .. } => 0,
                },
            },
            request.kind,
        )?;
        let mut symbolizer = symbolize::Worker::start(self.sandbox.clone(), request.cgroup.clone());
        let mut ring = RingLease::take(&self.user_stacks)?;
        {
            let _sampling = Sampling::start(&self.probes, &request)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(request.seconds);
            let _estimate = self.admission.sampling(deadline.into_std());
            let mut seen = HashSet::new();
            let mut last_look = tokio::time::Instant::now();
            loop {
                // Copied stacks are drained at least this often (the
                // kernel wakes us sooner only when its ring is half full).
                let tick = tokio::time::Instant::now() + Duration::from_millis(100);
                let pause = tokio::time::sleep_until(tick.min(deadline));
                let copies = ring.copies();
                let wake = async {
                    tokio::select! {
                        () = pause => {}
                        () = copies => {}
                    }
                };
                self.admission.unless_shutdown(wake).await?;
                let copies = ring.drain();
                if !copies.is_empty() {
                    symbolizer.unwind(copies);
                }
                self.walk_by_frame_pointers(&symbolizer.walkable());
                // Cache each new process's mappings while it is alive, so
                // that one that exits before the end still symbolizes.
                if due(&mut last_look, Duration::from_millis(500)) {
                    for tgid in self.sampled_processes() {
                        if seen.insert(tgid) {
                            symbolizer.cache(tgid);
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        let ended = std::time::Instant::now();
        let copies = ring.drain();
        if !copies.is_empty() {
            symbolizer.unwind(copies);
        }
        drop(ring);
        let raw = self.read()?;
        let symbolized = symbolizer.symbolize(raw, request, ended);
        let mut profile = self.admission.unless_shutdown(symbolized).await??;
        if matches!(profile.request.kind, Kind::OffCpu { .. }) {
            profile.stacks = without_tracepoint_frames(std::mem::take(&mut profile.stacks));
        }
        Ok(profile)
    }

    /// Lets the kernel walk these processes' stacks itself.
    fn walk_by_frame_pointers(&self, tgids: &[u32]) {
        if tgids.is_empty() {
            return;
        }
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        for tgid in tgids {
            // A full map only costs the copy.
            let _ = maps.walked.insert(tgid, 1, 0);
        }
    }

    fn reset(&self, filter: ProfileFilter, kind: Kind) -> Result<(), ProfileError> {
        // Copies left by a capture that was cut short.
        if let Some(ring) = self
            .user_stacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            while ring.next().is_some() {}
        }
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        // A pid may since be another program (exec, reuse): ask again.
        let walked: Vec<u32> = maps.walked.keys().filter_map(Result::ok).collect();
        for tgid in walked {
            let _ = maps.walked.remove(&tgid);
        }
        let keys: Vec<SampleKey> = maps.counts.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = maps.counts.remove(&key);
        }
        let tgids: Vec<u32> = maps.comms.keys().filter_map(Result::ok).collect();
        for tgid in tgids {
            let _ = maps.comms.remove(&tgid);
        }
        let ids: Vec<u32> = maps.stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = maps.stacks.remove(&id);
        }
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; maps_cpus()])
            .map_err(|e| failed("resetting the dropped counter")(&e))?;
        maps.dropped
            .set(0, zeros, 0)
            .map_err(|e| failed("resetting the dropped counter")(&e))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; maps_cpus()])
            .map_err(|e| failed("resetting the missed-copy counter")(&e))?;
        maps.copy_missed
            .set(0, zeros, 0)
            .map_err(|e| failed("resetting the missed-copy counter")(&e))?;
        maps.filter
            .set(0, filter, 0)
            .map_err(|e| failed("setting the pid and cgroup filter")(&e))?;
        if let Kind::OffCpu { min_block_us } = kind {
            let config = OffCpuConfig {
                // Blocks that began before now were seen, if at all, by an
                // earlier capture, whose stack ids were just cleared.
                since_ns: monotonic_ns()?,
                min_block_ns: u64::from(min_block_us.get()) * 1_000,
            };
            maps.offcpu
                .as_mut()
                .map_err(|why| ProfileError::Unavailable(why.clone()))?
                .set(0, config, 0)
                .map_err(|e| failed("setting the off-CPU threshold")(&e))?;
        }
        Ok(())
    }

    fn sampled_processes(&self) -> Vec<u32> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.comms.keys().filter_map(Result::ok).collect()
    }

    fn read(&self) -> Result<Raw, ProfileError> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut raw = Raw::default();
        for entry in maps.counts.iter() {
            raw.counts
                .push(entry.map_err(|e| failed("reading sample counts")(&e))?);
        }
        // Every stack in the map is this capture's (it was cleared), and
        // the counts here do not name the kernel stacks of copied samples.
        let ids: Vec<u32> = maps.stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            if let Ok(trace) = maps.stacks.get(&id, 0) {
                raw.stacks
                    .insert(id, trace.frames().iter().map(|f| f.ip).collect());
            }
        }
        for entry in maps.comms.iter().filter_map(Result::ok) {
            let (tgid, comm) = entry;
            let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
            raw.comms
                .insert(tgid, String::from_utf8_lossy(&comm[..end]).into_owned());
        }
        raw.dropped = maps
            .dropped
            .get(&0, 0)
            .map_err(|e| failed("reading the dropped counter")(&e))?
            .iter()
            .sum();
        let missed: u64 = maps
            .copy_missed
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        if missed > 0 {
            tracing::info!(
                "{missed} samples were walked by frame pointers because the stack-copy ring was full"
            );
        }
        Ok(raw)
    }
}

/// Whether `every` has passed since `last`, which it then resets.
fn due(last: &mut tokio::time::Instant, every: Duration) -> bool {
    let now = tokio::time::Instant::now();
    if now.duration_since(*last) < every {
        return false;
    }
    *last = now;
    true
}

/// The ring of copied stacks, lent to one capture and given back when it
/// ends, however it ends.
struct RingLease<'p> {
    home: &'p Mutex<Option<RingBuf<MapData>>>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
}

impl<'p> RingLease<'p> {
    fn take(home: &'p Mutex<Option<RingBuf<MapData>>>) -> Result<Self, ProfileError> {
        let mut slot = home.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = match slot.take() {
            // SAFETY: the ring owns its descriptor, which stays open and
            // the same until `into_inner` gives the ring back.
            Some(ring) => match unsafe {
                AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
            } {
                Ok(ring) => Some(ring),
                Err(err) => {
                    let (ring, err) = err.into_parts();
                    *slot = Some(ring);
                    return Err(failed("watching the stack-copy ring")(&err));
                }
            },
            None => None,
        };
        Ok(Self { home, ring })
    }

    /// Resolves when copies are waiting (never, without a ring).
    async fn copies(&mut self) {
        match self.ring.as_mut() {
            Some(ring) => {
                if let Ok(mut ready) = ring.readable_mut().await {
                    ready.clear_ready();
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Every copy waiting; malformed records are skipped.
    fn drain(&mut self) -> Vec<Copied> {
        let mut copies = Vec::new();
        if let Some(ring) = self.ring.as_mut() {
            let ring = ring.get_mut();
            while let Some(record) = ring.next() {
                copies.extend(Copied::parse(&record));
            }
        }
        copies
    }
}

impl Drop for RingLease<'_> {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            *self.home.lock().unwrap_or_else(PoisonError::into_inner) = Some(ring.into_inner());
        }
    }
}

/// Kernel functions that run between `__schedule` and the off-CPU program:
/// the tracepoint's iterator (5.10+), its BPF shim, and the BPF runner.
const TRACEPOINT_FRAMES: [&str; 3] = [
    "__traceiter_sched_switch",
    "__bpf_trace_sched_switch",
    "bpf_trace_run",
];

/// Off-CPU kernel stacks are taken inside the tracepoint, so each ends in
/// the tracepoint's machinery and the program itself: the same few frames
/// atop every tower of the flame graph, saying nothing about why the thread
/// blocked. They are cut from the first such frame on (the leaf is then
/// `__schedule`); stacks that become equal are merged. Without kernel
/// symbols (`[kernel]` frames) nothing is recognised and nothing is cut.
fn without_tracepoint_frames(stacks: Vec<Stack>) -> Vec<Stack> {
    let mut merged: HashMap<(u32, String, Vec<String>), Stack> = HashMap::new();
    for mut stack in stacks {
        let machinery = stack.frames.iter().position(|frame| {
            frame.ends_with("_[k]") && TRACEPOINT_FRAMES.iter().any(|f| frame.starts_with(f))
        });
        if let Some(first) = machinery {
            stack.frames.truncate(first);
            stack.addresses.truncate(first);
        }
        merged
            .entry((stack.pid, stack.cgroup.clone(), stack.frames.clone()))
            .and_modify(|s| s.count += stack.count)
            .or_insert(stack);
    }
    merged.into_values().collect()
}

fn maps_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> Result<u64, ProfileError> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(failed("reading the monotonic clock")(
            &std::io::Error::last_os_error(),
        ));
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// What a capture attached.
enum Links {
    /// The sampler, once per online CPU.
    Sampler(Vec<PerfEventLinkId>),
    /// The off-CPU program on `sched_switch` (None once detached).
    OffCpu(Option<BtfTracePointLinkId>),
}

/// The capture's program, attached; detached on drop.
struct Sampling<'p> {
    probes: &'p Mutex<Probes>,
    links: Links,
}

impl<'p> Sampling<'p> {
    fn start(probes: &'p Mutex<Probes>, request: &Request) -> Result<Self, ProfileError> {
        let links = match request.kind {
            Kind::Cpu => Links::Sampler(Self::attach_sampler(probes, request.frequency)?),
            Kind::OffCpu { .. } => {
                let mut p = probes.lock().unwrap_or_else(PoisonError::into_inner);
                let link = p
                    .attach_loaded_btf_tracepoint(OFFCPU_PROGRAM, OFFCPU_TRACEPOINT)
                    .map_err(|err| failed("attaching the off-CPU program")(&err))?;
                Links::OffCpu(Some(link))
            }
        };
        Ok(Sampling { probes, links })
    }

    fn attach_sampler(
        probes: &Mutex<Probes>,
        frequency: u64,
    ) -> Result<Vec<PerfEventLinkId>, ProfileError> {
        let cpus = aya::util::online_cpus()
            .map_err(|(what, err)| ProfileError::Failed(format!("{what}: {err}")))?;
        let mut p = probes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut links = Vec::new();
        for cpu in cpus {
            match p.attach_perf_event(PROFILE_PROGRAM, cpu, frequency) {
                Ok(link) => links.push(link),
                Err(err) => {
                    for link in links {
                        p.detach_perf_event(PROFILE_PROGRAM, link);
                    }
                    return Err(ProfileError::Failed(err.to_string()));
                }
            }
        }
        Ok(links)
    }
}

impl Drop for Sampling<'_> {
    fn drop(&mut self) {
        let mut p = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut self.links {
            Links::Sampler(links) => {
                for link in links.drain(..) {
                    p.detach_perf_event(PROFILE_PROGRAM, link);
                }
            }
            Links::OffCpu(link) => {
                if let Some(link) = link.take() {
                    p.detach_btf_tracepoint(OFFCPU_PROGRAM, link);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracepoint_frames_are_cut_and_stacks_merged() {
        let stack = |frames: &[&str], count| Stack {
            cgroup: "/".to_owned(),
            comm: "sleeper".to_owned(),
            pid: 7,
            frames: frames.iter().map(|f| (*f).to_owned()).collect(),
            addresses: vec![None; frames.len()],
            count,
        };
        let mut stacks = without_tracepoint_frames(vec![
            stack(
                &[
                    "main",
                    "schedule_[k]",
                    "__schedule_[k]",
                    "__traceiter_sched_switch_[k]",
                    "bpf_trace_run4_[k]",
                    "[kernel]_[k]",
                ],
                1_000,
            ),
            stack(
                &[
                    "main",
                    "schedule_[k]",
                    "__schedule_[k]",
                    "__bpf_trace_sched_switch_[k]",
                    "bpf_trace_run4_[k]",
                ],
                500,
            ),
            // A user function of that name is not the kernel's.
            stack(&["bpf_trace_run4", "[kernel]_[k]"], 3),
        ]);
        stacks.sort_by_key(|s| s.count);
        let frames: Vec<(&[String], u64)> = stacks
            .iter()
            .map(|s| (s.frames.as_slice(), s.count))
            .collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].0, ["bpf_trace_run4", "[kernel]_[k]"]);
        assert_eq!(frames[1].0, ["main", "schedule_[k]", "__schedule_[k]"]);
        assert_eq!(frames[1].1, 1_500);
    }
}
