//! Owns hostscope's eBPF object. It is loaded once (all maps created); each
//! collector then loads and attaches only its own programs and takes only its
//! own maps, so that one collector failing leaves the others untouched.
//! Dropping [`Probes`] detaches and unloads every program.

use crate::{
    btf::VMLINUX_BTF,
    cli::{CgroupArgs, MapArgs},
    kernel_layout,
    kernel_log::{self, KernelLog},
    mapped_array::MappedArray,
};
use hostscope_common::{
    block::{
        self, BLOCK_LATENCY_BY_CGROUP_MAP, BLOCK_START_MAP, BLOCK_START_SLOTS_MAP,
        BLOCK_START_SPILLED_MAP, BlockSlot,
    },
    cgroup::{
        self, BLOCK_SERIES_PER_CGROUP, CGROUP_ADMITTED_MAP, CGROUP_EXCLUDED_ENTRIES,
        CGROUP_EXCLUDED_MAP, TCP_COUNTERS_PER_CGROUP, TCP_HISTOGRAMS_PER_CGROUP,
    },
    diag,
    sched::RUNQ_LATENCY_BY_CGROUP_MAP,
    tcp::{
        CONNECT_STARTS_PUT, CONNECT_STARTS_TAKEN, TCP_CONNECT_START_FILL_MAP,
        TCP_CONNECT_START_MAP, TCP_COUNTERS_BY_CGROUP_MAP, TCP_LATENCY_BY_CGROUP_MAP,
    },
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

use aya::{
    Btf, BtfError, Ebpf, EbpfError, EbpfLoader, Endianness,
    maps::{Map, MapData, MapError},
    programs::{
        BtfTracePoint, PerfEvent, ProgramError,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        tp_btf::BtfTracePointLinkId,
    },
};

/// The programs, built by build.rs and embedded so that one file is all a
/// host needs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostscope"));

/// The object as a whole could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel has no BTF, which BTF tracepoints need.
    #[error(
        "cannot read the kernel's BTF at /sys/kernel/btf/vmlinux ({0}); \
         hostscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Btf(BtfError),
    /// The kernel refused the object's maps.
    #[error("loading hostscope's eBPF maps failed: {0}")]
    Object(EbpfError),
}

/// One collector's programs or maps could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The object lacks a program this binary expects: a build mismatch.
    #[error("program `{0}` is missing from the embedded eBPF object")]
    MissingProgram(&'static str),
    /// The object lacks a map this binary expects: a build mismatch.
    #[error("map `{0}` is missing from the embedded eBPF object")]
    MissingMap(&'static str),
    /// A map is not of the type this binary expects: a build mismatch.
    #[error("map `{name}` has an unexpected type: {reason}")]
    MapType {
        /// The map's name.
        name: &'static str,
        /// aya's reason.
        reason: MapError,
    },
    /// The kernel does not have the tracepoint, or refused the program.
    #[error("tracepoint {tracepoint} could not be loaded: {reason}")]
    Load {
        /// The tracepoint the program was for.
        tracepoint: &'static str,
        /// The first line of the kernel's or aya's reason.
        reason: String,
    },
    /// Fields a program reads are not in this kernel's BTF.
    #[error("{0}")]
    KernelLayout(String),
    /// [`Probes::release_btf`] was called before this attach: a bug.
    #[error("the kernel BTF was already released; BTF tracepoints must attach at start-up")]
    BtfReleased,
    /// The CPU sampler's perf event could not be opened on a CPU.
    #[error("the sampler could not be attached on CPU {cpu}: {reason}")]
    PerfEvent {
        /// The CPU.
        cpu: u32,
        /// The first line of the kernel's or aya's reason, with what to do
        /// where that is known.
        reason: String,
    },
    /// The program loaded but could not be attached.
    #[error("tracepoint {tracepoint} could not be attached: {reason}")]
    Attach {
        /// The tracepoint the program was for.
        tracepoint: &'static str,
        /// The first line of the kernel's or aya's reason.
        reason: String,
    },
}

/// Finds the field offsets one collector's programs need; the flag says
/// whether per-cgroup attribution is on.
type LayoutFn =
    fn(&crate::btf::Btf, bool) -> Result<kernel_layout::Offsets, kernel_layout::LayoutError>;

/// The layouts each collector needs, with `--by-cgroup` or without.
const LAYOUTS: [(&str, LayoutFn); 3] = [
    ("sched", |btf, by_cgroup| {
        let mut offsets = kernel_layout::sched(btf)?;
        if by_cgroup {
            offsets.extend(kernel_layout::task_cgroup(btf)?);
        }
        Ok(offsets)
    }),
    // Block I/O takes the cgroup of the running task from a helper.
    ("block", |btf, _| kernel_layout::block(btf)),
    ("tcp", |btf, by_cgroup| {
        let mut offsets = kernel_layout::tcp(btf)?;
        if by_cgroup {
            offsets.extend(kernel_layout::sock_cgroup(btf)?);
        }
        Ok(offsets)
    }),
];

/// The loaded eBPF object.
pub struct Probes {
    ebpf: Ebpf,
    /// Collectors whose programs cannot run on this kernel because the
    /// fields they read were not found in its BTF, with the reason.
    layout_errors: Vec<(&'static str, String)>,
    /// The kernel's type information, needed to load BTF tracepoints; parsed
    /// it takes several MiB, so it is dropped once every collector is up.
    btf: Option<Btf>,
    /// The reader of the programs' diagnostics, when the log wants them,
    /// until the command that runs takes it ([`Probes::take_kernel_log`]).
    kernel_log: Option<KernelLog>,
    /// The block start slots, mapped to count the requests in flight; none
    /// if the mapping failed (the count is then left out).
    block_slots: Option<MappedArray>,
    /// The capacity of each in-flight hash map, asked of the kernel once
    /// (it cannot change) rather than by a system call per scrape.
    hash_capacities: Vec<(&'static str, u32)>,
}

impl Probes {
    /// Loads the embedded object: creates its maps, loads no program yet.
    /// Struct layouts for programs that read kernel fields come from the
    /// BTF at `kernel_btf`; the maps sized by the host are sized by `maps`,
    /// and the per-cgroup ones by `cgroups` (left empty without `--by-cgroup`).
    pub fn load(
        kernel_btf: &std::path::Path,
        maps: MapArgs,
        cgroups: &CgroupArgs,
    ) -> Result<Self, LoadError> {
        // Both aya (to load BTF tracepoints) and kernel_layout (for field
        // offsets) need the running kernel's BTF, several MiB: read once.
        let vmlinux = std::fs::read(VMLINUX_BTF).map_err(|error| {
            LoadError::Btf(BtfError::FileError {
                path: VMLINUX_BTF.into(),
                error,
            })
        })?;
        let btf = Btf::parse(&vmlinux, Endianness::default()).map_err(LoadError::Btf)?;
        // `--kernel-btf` may name another file (a kernel's BTF kept
        // elsewhere, or a test's decoy): then only the offsets come from it.
        let layout_source = (kernel_btf == std::path::Path::new(VMLINUX_BTF)).then_some(vmlinux);
        // Field offsets for the programs that read kernel structs; a
        // collector whose fields are missing is reported down later, alone.
        let mut globals = Vec::new();
        let mut layout_errors = Vec::new();
        match kernel_layout::kernel_btf(kernel_btf, layout_source) {
            Ok(kernel) => {
                for (collector, layout) in LAYOUTS {
                    match layout(&kernel, cgroups.by_cgroup) {
                        Ok(offsets) => globals.extend(offsets),
                        Err(err) => layout_errors.push((collector, err.to_string())),
                    }
                }
            }
            Err(err) => {
                for (collector, _) in LAYOUTS {
                    layout_errors.push((collector, err.to_string()));
                }
            }
        }
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            // Task storage has no typed wrapper in aya; only the kernel side
            // uses it, so letting aya create it untyped is all we need.
            .allow_unsupported_maps()
            .map_max_entries(BLOCK_START_MAP, maps.block_max_inflight);
        let slots = maps.block_max_inflight;
        loader.map_max_entries(BLOCK_START_SLOTS_MAP, slots);
        globals.push((block::START_SLOTS_GLOBAL, slots));
        if cgroups.by_cgroup {
            let max = cgroups.cgroup_max;
            loader
                .map_max_entries(CGROUP_ADMITTED_MAP, max)
                .map_max_entries(CGROUP_EXCLUDED_MAP, CGROUP_EXCLUDED_ENTRIES)
                .map_max_entries(RUNQ_LATENCY_BY_CGROUP_MAP, cgroup::entries(max, 1))
                .map_max_entries(
                    BLOCK_LATENCY_BY_CGROUP_MAP,
                    cgroup::entries(max, BLOCK_SERIES_PER_CGROUP),
                )
                .map_max_entries(
                    TCP_LATENCY_BY_CGROUP_MAP,
                    cgroup::entries(max, TCP_HISTOGRAMS_PER_CGROUP),
                )
                .map_max_entries(
                    TCP_COUNTERS_BY_CGROUP_MAP,
                    cgroup::entries(max, TCP_COUNTERS_PER_CGROUP),
                );
            globals.push((cgroup::globals::ENABLED, 1));
        }
        // Kernel diagnostics: decided now, for the verifier to drop their
        // code when they are off. Off, aya-log's ring (128 KiB) is cut to
        // the one page a ring buffer needs: nothing writes to it.
        let diagnostics = kernel_log::wanted();
        if diagnostics {
            globals.push((diag::ENABLED_GLOBAL, 1));
        } else {
            let page = u32::try_from(rustix::param::page_size()).unwrap_or(4096);
            loader.map_max_entries(diag::AYA_LOGS_MAP, page);
        }
        for (name, offset) in &globals {
            loader.override_global(name, offset, true);
        }
        let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let kernel_log = match diagnostics {
            true => KernelLog::take(&mut ebpf),
            false => None,
        };
        let block_slots = map_block_slots(&ebpf, slots);
        let hash_capacities = [BLOCK_START_MAP, TCP_CONNECT_START_MAP]
            .into_iter()
            .filter_map(|name| match ebpf.map(name)? {
                Map::HashMap(data) | Map::LruHashMap(data) => {
                    Some((name, data.info().ok()?.max_entries()))
                }
                _ => None,
            })
            .collect();
        Ok(Self {
            ebpf,
            layout_errors,
            btf: Some(btf),
            kernel_log,
            block_slots,
            hash_capacities,
        })
    }

    /// The reader of the kernel programs' diagnostics, if they are on; the
    /// caller runs [`KernelLog::forward`] on its runtime, which must start
    /// after capabilities are dropped (reading the ring needs none).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.kernel_log.take()
    }

    /// Whether `collector`'s programs know this kernel's struct layout.
    pub fn check_layout(&self, collector: &str) -> Result<(), AttachError> {
        match self.layout_errors.iter().find(|(c, _)| *c == collector) {
            Some((_, reason)) => Err(AttachError::KernelLayout(reason.clone())),
            None => Ok(()),
        }
    }

    /// Loads and attaches `(program, tracepoint)` pairs as BTF tracepoints,
    /// all or nothing: on failure, the ones already attached are unloaded.
    pub fn attach_btf_tracepoints(
        &mut self,
        programs: &[(&'static str, &'static str)],
    ) -> Result<(), AttachError> {
        self.attach_btf_tracepoints_or(programs, &[])
    }

    /// Like [`Probes::attach_btf_tracepoints`], loading a program's
    /// replacement from `fallbacks` (program, (replacement, tracepoint))
    /// when the kernel refuses the program itself: a tracepoint whose
    /// arguments differ between kernel versions. If both are refused, the
    /// error is the first program's.
    pub fn attach_btf_tracepoints_or(
        &mut self,
        programs: &[(&'static str, &'static str)],
        fallbacks: &[(&'static str, (&'static str, &'static str))],
    ) -> Result<(), AttachError> {
        let mut attached = Vec::with_capacity(programs.len());
        for &(program, tracepoint) in programs {
            match self.attach_btf_tracepoint_or(program, tracepoint, fallbacks) {
                Ok(loaded) => attached.push(loaded),
                Err(err) => {
                    for loaded in attached {
                        self.unload(loaded);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Attaches `program`, or its replacement in `fallbacks` if the kernel
    /// refuses to load it; returns the one attached.
    fn attach_btf_tracepoint_or(
        &mut self,
        program: &'static str,
        tracepoint: &'static str,
        fallbacks: &[(&'static str, (&'static str, &'static str))],
    ) -> Result<&'static str, AttachError> {
        let refused = match self.attach_btf_tracepoint(program, tracepoint) {
            Ok(()) => return Ok(program),
            Err(err @ AttachError::Load { .. }) => err,
            Err(err) => return Err(err),
        };
        let Some(&(_, (replacement, tracepoint))) =
            fallbacks.iter().find(|(name, _)| *name == program)
        else {
            return Err(refused);
        };
        if self.attach_btf_tracepoint(replacement, tracepoint).is_err() {
            return Err(refused);
        }
        tracing::info!(
            program,
            replacement,
            "this kernel's {tracepoint} tracepoint takes other arguments; loaded the replacement"
        );
        Ok(replacement)
    }

    fn attach_btf_tracepoint(
        &mut self,
        program: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), AttachError> {
        self.load_btf_tracepoint(program, tracepoint)?;
        // The link stays with the program until it is unloaded.
        self.attach_loaded_btf_tracepoint(program, tracepoint)?;
        tracing::debug!(program, tracepoint, "attached");
        Ok(())
    }

    /// Loads a BTF tracepoint program without attaching it (a profiler's,
    /// attached per capture). It needs the kernel BTF, so this must run
    /// before [`Probes::release_btf`].
    pub fn load_btf_tracepoint(
        &mut self,
        program: &'static str,
        tracepoint: &'static str,
    ) -> Result<(), AttachError> {
        let btf = self.btf.as_ref().ok_or(AttachError::BtfReleased)?;
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(program)
            .ok_or(AttachError::MissingProgram(program))?
            .try_into()
            .map_err(|_| AttachError::MissingProgram(program))?;
        prog.load(tracepoint, btf).map_err(|err| AttachError::Load {
            tracepoint,
            reason: first_line(&err),
        })
    }

    /// Attaches a loaded BTF tracepoint program; the link detaches it.
    pub fn attach_loaded_btf_tracepoint(
        &mut self,
        program: &'static str,
        tracepoint: &'static str,
    ) -> Result<BtfTracePointLinkId, AttachError> {
        self.btf_tracepoint(program)?
            .attach()
            .map_err(|err| AttachError::Attach {
                tracepoint,
                reason: first_line(&err),
            })
    }

    /// Detaches one link of a BTF tracepoint program (it stays loaded).
    pub fn detach_btf_tracepoint(&mut self, program: &'static str, link: BtfTracePointLinkId) {
        if let Ok(prog) = self.btf_tracepoint(program)
            && let Err(err) = prog.detach(link)
        {
            tracing::warn!(program, "detaching failed: {}", first_line(&err));
        }
    }

    fn btf_tracepoint(&mut self, program: &'static str) -> Result<&mut BtfTracePoint, AttachError> {
        self.ebpf
            .program_mut(program)
            .ok_or(AttachError::MissingProgram(program))?
            .try_into()
            .map_err(|_| AttachError::MissingProgram(program))
    }

    /// Loads a perf_event program, to be attached later, once per capture.
    pub fn load_perf_event(&mut self, program: &'static str) -> Result<(), AttachError> {
        let prog = self.perf_event(program)?;
        prog.load().map_err(|err| AttachError::Load {
            tracepoint: program,
            reason: first_line(&err),
        })
    }

    /// Attaches a loaded perf_event program to `cpu`'s software CPU clock,
    /// sampling every process `frequency` times a second.
    pub fn attach_perf_event(
        &mut self,
        program: &'static str,
        cpu: u32,
        frequency: u64,
    ) -> Result<PerfEventLinkId, AttachError> {
        let prog = self.perf_event(program)?;
        prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        )
        .map_err(|err| AttachError::PerfEvent {
            cpu,
            reason: match perf_event_denied_by_paranoid(&err) {
                Some(level) => format!(
                    "{}: kernel.perf_event_paranoid is {level}, which this kernel lets only \
                     CAP_SYS_ADMIN past (hostscope keeps CAP_PERFMON); \
                     run `sysctl kernel.perf_event_paranoid=2`",
                    first_line(&err)
                ),
                None => first_line(&err),
            },
        })
    }

    /// Detaches one link of a perf_event program.
    pub fn detach_perf_event(&mut self, program: &'static str, link: PerfEventLinkId) {
        if let Ok(prog) = self.perf_event(program)
            && let Err(err) = prog.detach(link)
        {
            tracing::warn!(program, "detaching failed: {}", first_line(&err));
        }
    }

    fn perf_event(&mut self, program: &'static str) -> Result<&mut PerfEvent, AttachError> {
        self.ebpf
            .program_mut(program)
            .ok_or(AttachError::MissingProgram(program))?
            .try_into()
            .map_err(|_| AttachError::MissingProgram(program))
    }

    /// Frees the parsed kernel BTF once no more BTF tracepoints will be
    /// loaded, and returns the freed heap to the OS: most of an idle
    /// daemon's resident memory is otherwise that parse.
    pub fn release_btf(&mut self) {
        self.btf = None;
        crate::heap::release_free();
    }

    fn unload(&mut self, program: &str) {
        let prog: Option<&mut BtfTracePoint> = self
            .ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok());
        if let Some(prog) = prog
            && let Err(err) = prog.unload()
        {
            tracing::warn!(program, "unloading failed: {}", first_line(&err));
        }
    }

    /// Each loaded program's run time and run count, as the kernel
    /// accounts them while BPF statistics are on (`--bpf-stats`, or the
    /// `kernel.bpf_stats_enabled` sysctl); both stand still while they are
    /// off. Programs not loaded (a collector that is down) are left out.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut stats: Vec<ProgramStats> = self
            .ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = prog_info(std::os::fd::AsFd::as_fd(program.fd().ok()?)).ok()?;
                Some(ProgramStats {
                    name: name.to_owned(),
                    run_time: std::time::Duration::from_nanos(info.run_time_ns),
                    runs: info.run_cnt,
                    recursion_misses: info.recursion_misses,
                })
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// How full the in-flight tables are: the slots and hash maps that hold
    /// a start time per request or connection until it completes. Full,
    /// they drop what arrives (counted by the collectors' `_dropped`
    /// counters); these say how close they are. Maps of collectors that
    /// are down read empty.
    ///
    /// The hash maps are not walked: a walk visits every bucket (16,384
    /// for 10,240 entries) and cost a tenth of a scrape. The programs keep
    /// their fill in small counters instead; the slots are mapped memory.
    pub fn in_flight_tables(&self) -> Vec<MapFill> {
        let mut fill = Vec::new();
        if let Some(slots) = &self.block_slots {
            fill.push(MapFill {
                name: BLOCK_START_SLOTS_MAP,
                entries: slots.count_nonzero_first_words() as u64,
                capacity: slots.entries() as u64,
            });
        }
        let spilled = || -> Option<u64> {
            let counter: aya::maps::Array<&MapData, u64> =
                aya::maps::Array::try_from(self.ebpf.map(BLOCK_START_SPILLED_MAP)?).ok()?;
            counter.get(&0, 0).ok()
        };
        if let Some(found) = self.fill_of(BLOCK_START_MAP, spilled) {
            fill.push(found);
        }
        let connects = || -> Option<u64> {
            let counters: aya::maps::PerCpuArray<&MapData, u64> =
                aya::maps::PerCpuArray::try_from(self.ebpf.map(TCP_CONNECT_START_FILL_MAP)?)
                    .ok()?;
            let total = |slot| -> Option<u64> {
                Some(
                    counters
                        .get(&slot, 0)
                        .ok()?
                        .iter()
                        .copied()
                        .fold(0, u64::wrapping_add),
                )
            };
            Some(total(CONNECT_STARTS_PUT)?.wrapping_sub(total(CONNECT_STARTS_TAKEN)?))
        };
        if let Some(found) = self.fill_of(TCP_CONNECT_START_MAP, connects) {
            fill.push(found);
        }
        fill
    }

    /// The fill of the hash map `name`: `entries` as its programs count
    /// them (a count that went below zero, which they never let happen,
    /// reads 0), and its capacity.
    fn fill_of(&self, name: &'static str, entries: impl Fn() -> Option<u64>) -> Option<MapFill> {
        let (_, capacity) = self.hash_capacities.iter().find(|(map, _)| *map == name)?;
        let entries = entries()?;
        Some(MapFill {
            name,
            entries: if entries > u64::MAX / 2 { 0 } else { entries },
            capacity: u64::from(*capacity),
        })
    }

    /// Takes ownership of a map, typed. Each map has exactly one owner.
    pub fn take_map<T>(&mut self, name: &'static str) -> Result<T, AttachError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(AttachError::MissingMap(name))?;
        T::try_from(map).map_err(|reason| AttachError::MapType { name, reason })
    }
}

/// Maps the block start slots read-only; a slot is in use while its first
/// word (the request) is not zero.
fn map_block_slots(ebpf: &Ebpf, slots: u32) -> Option<MappedArray> {
    let Some(Map::Array(data)) = ebpf.map(BLOCK_START_SLOTS_MAP) else {
        return None;
    };
    MappedArray::new(data.fd(), size_of::<BlockSlot>(), slots as usize)
        .inspect_err(|err| {
            tracing::warn!(
                "cannot map {BLOCK_START_SLOTS_MAP}: {err}; \
                 hostscope_bpf_map_entries leaves it out"
            );
        })
        .ok()
}

/// How full one map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name in the object.
    pub name: &'static str,
    /// Entries in it now.
    pub entries: u64,
    /// The most it holds.
    pub capacity: u64,
}

/// What the kernel accounted for one program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program's name in the object.
    pub name: String,
    /// Time spent running it, in all.
    pub run_time: std::time::Duration,
    /// Times it ran.
    pub runs: u64,
    /// Times it did not run because it was already running on that CPU
    /// (an interrupt's event nested in a task's): events it missed. The
    /// kernel counts these whether or not statistics are on.
    pub recursion_misses: u64,
}

/// The `kernel.perf_event_paranoid` level, if `err` is `perf_event_open`
/// refused for lack of privilege and the level is above 2. Upstream treats
/// 3 like 2, but Debian's and Android's kernels carry a patch that lets
/// only CAP_SYS_ADMIN open CPU-wide events at 3, CAP_PERFMON or not.
fn perf_event_denied_by_paranoid(err: &aya::programs::ProgramError) -> Option<i32> {
    let aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { call, io_error }) = err
    else {
        return None;
    };
    let denied = matches!(
        io_error.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM)
    );
    if *call != "perf_event_open" || !denied {
        return None;
    }
    let level: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (level > 2).then_some(level)
}

/// The kernel's `bpf_prog_info` for the program behind `fd`
/// (BPF_OBJ_GET_INFO_BY_FD): its run time and count, which aya's
/// `ProgramInfo` also shows, and its recursion misses, which that leaves
/// out, in one system call. (The descriptor's fdinfo has the misses too,
/// but reading it cost an open, a formatted read and a close per program
/// per scrape: the largest part of a scrape's time.) Kernels older than
/// a field leave it zero.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<bpf_prog_info> {
    use std::os::fd::AsRawFd as _;
    /// BPF_OBJ_GET_INFO_BY_FD's member of `union bpf_attr`.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: a C struct of integers and integer arrays: all zeroes is a
    // valid value (and what the kernel wants in fields it does not know).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd().cast_unsigned(),
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the kernel reads `attr` (its size given) and writes at most
    // `info_len` bytes at `info`; both are ours and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &raw mut attr,
            size_of::<InfoByFd>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

/// Turns the kernel's BPF run-time statistics on for as long as the
/// returned descriptor is open (`BPF_ENABLE_STATS`, as aya's
/// `enable_stats`): the daemon holds it for its lifetime. Needs
/// CAP_SYS_ADMIN, so it is called before capabilities are dropped.
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|err| err.to_string())
}

/// Whether the kernel is collecting BPF run-time statistics now.
pub fn stats_enabled(held: bool) -> bool {
    held || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() == "1")
}

/// One line for an error: the verifier's log can run to pages, and a log
/// line or metric reason must stay one line. For a verifier rejection that
/// line is the verifier's own complaint (the last line before its
/// statistics); the whole log goes to the debug log.
fn first_line(err: &ProgramError) -> String {
    let full = err.to_string();
    tracing::debug!("{full}");
    let headline = full.lines().next().unwrap_or_default();
    let headline = headline
        .split_once(" Verifier output:")
        .map_or(headline, |(before, _)| before);
    let complaint = full.lines().rev().map(str::trim).find(|line| {
        !line.is_empty()
            && !line.starts_with("verification time")
            && !line.starts_with("processed ")
            && !line.starts_with("stack depth")
    });
    match complaint {
        Some(complaint) if full.contains("Verifier output:") && complaint != headline => {
            format!("{headline}; verifier: {complaint}")
        }
        _ => headline.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use hostscope_common::{block, cgroup, diag, profile, sched, tcp};
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::OBJECT;

    /// Every map, program and load-time constant the agent names is in the
    /// embedded object: a renamed map or program fails `cargo test`, without
    /// root, instead of failing to attach on a host.
    #[test]
    fn embedded_object_has_every_name_the_agent_uses() {
        let file = object::File::parse(OBJECT).expect("the embedded eBPF object parses");
        let symbols: HashSet<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        let maps = [
            block::BLOCK_LATENCY_MAP,
            block::BLOCK_START_MAP,
            block::BLOCK_START_SLOTS_MAP,
            block::BLOCK_START_SPILLED_MAP,
            block::BLOCK_DROPPED_MAP,
            block::BLOCK_DROPPED_UNKEYED_MAP,
            sched::RUNQ_LATENCY_MAP,
            tcp::TCP_LATENCY_MAP,
            tcp::TCP_COUNTERS_MAP,
            tcp::TCP_CONNECT_START_FILL_MAP,
            profile::PROFILE_STACKS_MAP,
            profile::PROFILE_COUNTS_MAP,
            profile::PROFILE_COMMS_MAP,
            profile::PROFILE_FILTER_MAP,
            profile::PROFILE_DROPPED_MAP,
            profile::PROFILE_USER_STACKS_MAP,
            profile::PROFILE_WALKED_MAP,
            profile::PROFILE_COPY_MISSED_MAP,
            profile::OFFCPU_CONFIG_MAP,
            cgroup::CGROUP_ADMITTED_MAP,
            cgroup::CGROUP_EXCLUDED_MAP,
            cgroup::CGROUP_OVERFLOW_MAP,
            sched::RUNQ_LATENCY_BY_CGROUP_MAP,
            block::BLOCK_LATENCY_BY_CGROUP_MAP,
            tcp::TCP_LATENCY_BY_CGROUP_MAP,
            tcp::TCP_COUNTERS_BY_CGROUP_MAP,
            diag::DIAG_LAST_MAP,
            diag::AYA_LOGS_MAP,
        ];
        let mut programs = vec![profile::PROFILE_PROGRAM, profile::OFFCPU_PROGRAM];
        for list in [
            &block::BLOCK_PROGRAMS[..],
            &sched::SCHED_PROGRAMS[..],
            &tcp::TCP_PROGRAMS[..],
        ] {
            programs.extend(list.iter().map(|(program, _)| *program));
        }
        programs.extend(tcp::TCP_FALLBACKS.iter().map(|(_, (program, _))| *program));
        let globals = [
            block::offsets::REQUEST_Q,
            block::offsets::REQUEST_CMD_FLAGS,
            block::offsets::REQUEST_STATE,
            block::offsets::QUEUE_DISK,
            block::offsets::DISK_MAJOR,
            block::START_SLOTS_GLOBAL,
            sched::offsets::TASK_LAST_QUEUED,
            sched::offsets::TASK_CFS_RQ,
            sched::offsets::CFS_RQ_RQ,
            sched::offsets::RQ_CLOCK,
            sched::offsets::TASK_RUN_DELAY,
            sched::offsets::TASK_LAST_ARRIVAL,
            sched::offsets::TASK_NR_MIGRATIONS,
            tcp::offsets::TCP_SOCK_SRTT_US,
            tcp::offsets::SOCK_PROTOCOL,
            cgroup::globals::ENABLED,
            cgroup::globals::TASK_CGROUPS,
            cgroup::globals::CSS_SET_DFL_CGRP,
            cgroup::globals::CGROUP_KN,
            cgroup::globals::KERNFS_NODE_ID,
            cgroup::globals::SOCK_CGROUP,
            diag::ENABLED_GLOBAL,
        ];
        // Maps defined through BTF (task storage), in the `.maps` section.
        let btf_maps = [profile::OFFCPU_START_MAP];
        let missing: Vec<&str> = maps
            .iter()
            .chain(&btf_maps)
            .chain(&programs)
            .chain(&globals)
            .copied()
            .filter(|name| !symbols.contains(name))
            .collect();
        assert!(
            missing.is_empty(),
            "named by the agent but not in the eBPF object: {missing:?}"
        );
        // Programs live in their own sections; maps in the `maps` section,
        // BTF-defined ones in `.maps`.
        let section = |name| {
            file.section_by_name(name)
                .unwrap_or_else(|| panic!("the object has a {name} section"))
                .index()
        };
        let (maps_section, btf_maps_section) = (section("maps"), section(".maps"));
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else { continue };
            if maps.contains(&name) {
                assert_eq!(
                    symbol.section_index(),
                    Some(maps_section),
                    "{name} is not a map"
                );
            }
            if btf_maps.contains(&name) {
                assert_eq!(
                    symbol.section_index(),
                    Some(btf_maps_section),
                    "{name} is not a BTF-defined map"
                );
            }
        }
    }
}
