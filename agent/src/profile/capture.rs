//! Taking a profile: reset the maps, attach the sampler to every online
//! CPU, wait, detach, read. One capture at a time; a few later requests
//! wait (see `admission.rs`), and shutdown ends them all.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, StackTraceMap};
use hostscope_common::profile::{
    PROFILE_COMMS_MAP, PROFILE_COUNTS_MAP, PROFILE_DROPPED_MAP, PROFILE_FILTER_MAP,
    PROFILE_PROGRAM, PROFILE_STACKS_MAP, ProfileFilter, SampleKey,
};

use super::{
    Limits, Profile, ProfileError, Request,
    admission::{Admission, DEFAULT_MAX_QUEUE},
    symbolize,
};
use crate::{probes::Probes, sandbox::Sandbox};

/// What the kernel counted, before symbolization.
#[derive(Debug, Default)]
pub struct Raw {
    /// Sample counts per (cgroup, process, user stack, kernel stack).
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
}

/// Takes CPU profiles with the `profile_sample` program.
pub struct Profiler {
    probes: Arc<Mutex<Probes>>,
    maps: Mutex<Maps>,
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
    /// Loads the sampler (not attached) and takes its maps.
    pub fn new(probes: Arc<Mutex<Probes>>, limits: Limits) -> Result<Self, ProfileError> {
        let maps = {
            let mut p = probes.lock().unwrap_or_else(PoisonError::into_inner);
            p.load_perf_event(PROFILE_PROGRAM)
                .map_err(|e| failed("loading the sampler")(&e))?;
            let take = |e: crate::probes::AttachError| failed("taking the profile maps")(&e);
            Maps {
                stacks: p.take_map(PROFILE_STACKS_MAP).map_err(take)?,
                counts: p.take_map(PROFILE_COUNTS_MAP).map_err(take)?,
                comms: p.take_map(PROFILE_COMMS_MAP).map_err(take)?,
                filter: p.take_map(PROFILE_FILTER_MAP).map_err(take)?,
                dropped: p.take_map(PROFILE_DROPPED_MAP).map_err(take)?,
            }
        };
        Ok(Self {
            probes,
            maps: Mutex::new(maps),
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

    /// Samples for `request.seconds`, then symbolizes. Dropping the future
    /// (a client that went away) detaches the sampler at once, as does
    /// [`Profiler::shut_down`].
    pub async fn capture(&self, request: Request) -> Result<Profile, ProfileError> {
        let _place = self.admission.admit()?;
        let _turn = self.admission.unless_shutdown(self.turn.lock()).await?;
        self.reset(ProfileFilter {
            cgroup: request.cgroup.as_ref().map_or(0, |c| c.id),
            tgid: request.pid.unwrap_or(0),
            reserved: 0,
        })?;
        let symbolizer = symbolize::Worker::start(self.sandbox.clone(), request.cgroup.clone());
        {
            let _sampling = Sampling::start(&self.probes, request.frequency)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(request.seconds);
            let _estimate = self.admission.sampling(deadline.into_std());
            let mut seen = HashSet::new();
            loop {
                let tick = tokio::time::Instant::now() + Duration::from_millis(500);
                let pause = tokio::time::sleep_until(tick.min(deadline));
                self.admission.unless_shutdown(pause).await?;
                // Cache each new process's mappings while it is alive, so
                // that one that exits before the end still symbolizes.
                for tgid in self.sampled_processes() {
                    if seen.insert(tgid) {
                        symbolizer.cache(tgid);
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        let raw = self.read()?;
        let symbolized = symbolizer.symbolize(raw, request);
        self.admission.unless_shutdown(symbolized).await?
    }

    fn reset(&self, filter: ProfileFilter) -> Result<(), ProfileError> {
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
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
        maps.filter
            .set(0, filter, 0)
            .map_err(|e| failed("setting the pid and cgroup filter")(&e))
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
        let wanted: HashSet<u32> = raw
            .counts
            .iter()
            .flat_map(|(k, _)| [k.user_stack, k.kernel_stack])
            .filter_map(|id| u32::try_from(id).ok())
            .collect();
        for id in wanted {
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
        Ok(raw)
    }
}

fn maps_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

/// The sampler attached to every online CPU; detached on drop.
struct Sampling<'p> {
    probes: &'p Mutex<Probes>,
    links: Vec<aya::programs::perf_event::PerfEventLinkId>,
}

impl<'p> Sampling<'p> {
    fn start(probes: &'p Mutex<Probes>, frequency: u64) -> Result<Self, ProfileError> {
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
                    return Err(failed("attaching the sampler")(&err));
                }
            }
        }
        drop(p);
        Ok(Sampling { probes, links })
    }
}

impl Drop for Sampling<'_> {
    fn drop(&mut self) {
        let mut p = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        for link in self.links.drain(..) {
            p.detach_perf_event(PROFILE_PROGRAM, link);
        }
    }
}
