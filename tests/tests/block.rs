//! The block I/O collector against the kernel's own per-disk accounting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::time::Duration;

use hostscope_tests::{
    blockdev::{DiskStat, LoopDevice},
    daemon::Daemon,
    exposition::{Exposition, HistogramSample},
    hist_json,
};

const BLOCK: &str = "hostscope_block_io_latency_seconds";

/// The (device, op) histogram, or zeros if the series does not exist yet.
fn series(exposition: &Exposition, device: &str, op: &str) -> HistogramSample {
    exposition
        .histogram(BLOCK, &[("device", device), ("op", op)])
        .unwrap_or(HistogramSample {
            count: 0.0,
            sum: 0.0,
            buckets: Vec::new(),
        })
}

/// A loop device created after the daemon started: a known number of direct
/// reads and writes must be counted exactly as /sys/block/loopN/stat counts
/// its completions, under the right `op`, with the disk named `loopN`.
///
/// Sums: the kernel's I/O time runs from when it starts accounting a request
/// (allocation, before issue) to completion; ours from issue to completion.
/// So ours can only be smaller. With one request at a time on an idle loop
/// device the allocation-to-issue gap is a few microseconds of each
/// request's 30-80 us (measured: ours 85-96% of the kernel's for reads,
/// 85-98% for writes), so ours must be at least 70% of the kernel's. The
/// kernel reports whole milliseconds (truncated), so 1 ms of slack too.
/// A detached device's series must leave /metrics.
#[test]
fn loop_device_io_matches_diskstats() {
    let daemon = Daemon::start("block");
    let mut device = LoopDevice::create(64);
    let name = device.name.clone();
    std::thread::sleep(Duration::from_millis(200));

    let kernel_before = DiskStat::read(&name);
    let before = daemon.scrape();
    // Writes first, so that the reads hit allocated blocks: reads of a sparse
    // file's holes finish in microseconds, all of it block-layer overhead.
    device.direct_io(200, true);
    device.direct_io(300, false);
    let kernel = {
        let after = DiskStat::read(&name);
        DiskStat {
            reads: after.reads - kernel_before.reads,
            read_ms: after.read_ms - kernel_before.read_ms,
            writes: after.writes - kernel_before.writes,
            write_ms: after.write_ms - kernel_before.write_ms,
        }
    };
    let after = daemon.scrape();

    let delta = |op| {
        let (a, b) = (series(&after, &name, op), series(&before, &name, op));
        (a.count - b.count, (a.sum - b.sum) * 1e3)
    };
    let (reads, read_ms) = delta("read");
    let (writes, write_ms) = delta("write");
    println!(
        "{name}: probes {reads} reads in {read_ms:.3} ms, {writes} writes in {write_ms:.3} ms; \
         kernel {} reads in {} ms, {} writes in {} ms",
        kernel.reads, kernel.read_ms, kernel.writes, kernel.write_ms
    );
    assert_eq!(
        kernel.reads, 300,
        "the workload's reads did not all reach {name}"
    );
    assert_eq!(
        kernel.writes, 200,
        "the workload's writes did not all reach {name}"
    );
    // The one way an event is lost: a completion in an interrupt, nested
    // in the program's run for another disk's completion in a task on that
    // CPU, is not run (the kernel counts it as a recursion miss). Rare,
    // but a busy host disk makes it possible; every other request must
    // be counted exactly.
    let missed = |e: &Exposition| {
        e.value(
            "hostscope_bpf_program_recursion_misses_total",
            &[("program", "block_rq_complete")],
        )
        .expect("the recursion misses of block_rq_complete are exported")
    };
    let misses = missed(&after) - missed(&before);
    for (what, ours, theirs) in [
        ("reads", reads, kernel.reads),
        ("writes", writes, kernel.writes),
    ] {
        let theirs = theirs as f64;
        assert!(
            ours <= theirs && ours + misses >= theirs,
            "{what} counted: {ours} against the kernel's {theirs}, with {misses} completions \
             missed by recursion"
        );
    }
    for (what, ours, theirs) in [
        ("read", read_ms, kernel.read_ms),
        ("write", write_ms, kernel.write_ms),
    ] {
        let theirs = theirs as f64;
        assert!(
            ours <= theirs + 1.0,
            "{what} time {ours} ms above the kernel's {theirs} ms"
        );
        assert!(
            ours >= 0.7 * theirs,
            "{what} time {ours} ms below 70% of the kernel's {theirs} ms"
        );
    }

    // Detached, the disk's series leave /metrics (names are rechecked at
    // most once a second).
    device.detach();
    let count_name = format!("{BLOCK}_count");
    let labels = [("device", name.as_str())];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let exposition = daemon.scrape();
        let left: Vec<_> = exposition.matching(&count_name, &labels).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} still exported 3 s after detach: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every series is labelled with a disk name and one of the known
/// operations: never a raw major:minor number.
#[test]
fn labels_are_disk_names_and_known_ops() {
    let daemon = Daemon::start("block");
    let device = LoopDevice::create(16);
    device.direct_io(20, false);
    let exposition = daemon.scrape();
    let counts: Vec<_> = exposition
        .samples
        .iter()
        .filter(|s| s.name == format!("{BLOCK}_count"))
        .collect();
    assert!(!counts.is_empty(), "no block series at all");
    for sample in counts {
        let device = &sample.labels["device"];
        let op = &sample.labels["op"];
        assert!(
            std::path::Path::new(&format!("/sys/class/block/{device}")).exists(),
            "device label {device:?} is not a block device name"
        );
        assert!(
            ["read", "write", "flush", "discard", "other"].contains(&op.as_str()),
            "unknown op {op:?}"
        );
    }
    // Nothing dropped with the default start map: every series that has a
    // histogram has a dropped counter, and it is 0.
    let dropped: Vec<_> = exposition
        .samples
        .iter()
        .filter(|s| s.name == "hostscope_block_io_dropped_total")
        .collect();
    assert!(
        !dropped.is_empty(),
        "no hostscope_block_io_dropped_total series"
    );
    for sample in dropped {
        assert_eq!(sample.value, 0.0, "dropped with room to spare: {sample:?}");
    }
}

/// How far below the kernel's completion count ours may fall under fio at
/// high queue depth: 0.1%. Under such load the kernel sometimes runs the
/// BPF programs attached to `block_rq_complete` for fewer completions than
/// it accounts. bpftrace counting the same tracepoint misses exactly the
/// same ones (measured on 6.18: 0 to 49 of 120,000 reads, up to 0.04%, in
/// about half of 5 s runs). Never above the kernel's count: that would be a
/// request measured or counted twice.
fn assert_counts_every_completion(what: &str, measured: u64, dropped: u64, kernel: u64) {
    let ours = measured + dropped;
    println!("{what}: measured {measured} + dropped {dropped} = {ours}; kernel {kernel}");
    assert!(
        ours <= kernel,
        "{what}: measured {measured} + dropped {dropped} exceeds the kernel's {kernel} completions"
    );
    assert!(
        kernel - ours <= kernel / 1000,
        "{what}: measured {measured} + dropped {dropped} is {} short of the kernel's {kernel}",
        kernel - ours
    );
}

/// Reads and writes measured and dropped on `device` between two scrapes.
fn counted(before: &Exposition, after: &Exposition, device: &str, op: &str) -> (u64, u64) {
    let measured = series(after, device, op).count - series(before, device, op).count;
    let dropped = |e: &Exposition| {
        e.value(
            "hostscope_block_io_dropped_total",
            &[("device", device), ("op", op)],
        )
        .unwrap_or(0.0)
    };
    (measured as u64, (dropped(after) - dropped(before)) as u64)
}

/// fio at iodepth 256 x 4 jobs on one loop device (1,024 requests wanted in
/// flight, 128 tags): every completion /sys/block/loopN/stat counts is
/// measured, under its operation, and none is dropped.
#[test]
fn deep_queue_counts_match_diskstats() {
    let daemon = Daemon::start("block");
    let device = LoopDevice::create(256);
    let name = device.name.clone();
    let (kernel_before, before) = (DiskStat::read(&name), daemon.scrape());
    let fio = device.fio(256, 4, 4);
    let (kernel_after, after) = (DiskStat::read(&name), daemon.scrape());
    let kernel = |f: fn(&DiskStat) -> u64| f(&kernel_after) - f(&kernel_before);
    assert_eq!(
        kernel(|s| s.reads),
        fio.reads,
        "fio's reads vs the kernel's"
    );
    assert_eq!(
        kernel(|s| s.writes),
        fio.writes,
        "fio's writes vs the kernel's"
    );
    for (op, completed) in [("read", fio.reads), ("write", fio.writes)] {
        let (measured, dropped) = counted(&before, &after, &name, op);
        assert_eq!(dropped, 0, "{op}s dropped with the default start map");
        assert_counts_every_completion(op, measured, dropped, completed);
    }
}

/// With room to time only 32 requests at once, most of fio's are dropped,
/// and each is counted once under its disk and operation: measured plus
/// dropped is the kernel's count.
#[test]
fn small_start_map_counts_every_request_once() {
    let daemon = Daemon::start_with("block", &["--block-max-inflight", "32"]);
    let device = LoopDevice::create(256);
    let name = device.name.clone();
    let before = daemon.scrape();
    let fio = device.fio(256, 4, 4);
    let after = daemon.scrape();
    for (op, completed) in [("read", fio.reads), ("write", fio.writes)] {
        let (measured, dropped) = counted(&before, &after, &name, op);
        assert!(
            dropped > completed / 10,
            "only {dropped} of {completed} {op}s dropped: the start map was not full"
        );
        assert!(measured > 0, "no {op} measured at all");
        assert_counts_every_completion(op, measured, dropped, completed);
    }
}

/// With 32 slots and 32 spill entries, fio's 4 x 64 requests (the loop
/// device takes 128 at a time) overflow the slots into the spill map. Its
/// fill, which the programs count instead of the daemon walking the map,
/// shows entries in use but never more than the map holds, and falls back
/// once fio is done.
#[test]
fn spill_map_fill_is_counted_while_requests_spill() {
    let daemon = Daemon::start_with("block", &["--block-max-inflight", "32"]);
    let device = LoopDevice::create(256);
    let spilled = |exposition: &Exposition| {
        exposition
            .value("hostscope_bpf_map_entries", &[("map", "BLOCK_START")])
            .expect("a hostscope_bpf_map_entries series for BLOCK_START")
    };
    let during = std::thread::scope(|scope| {
        let fio = scope.spawn(|| device.fio(64, 4, 3));
        std::thread::sleep(Duration::from_millis(1500));
        let during = spilled(&daemon.scrape());
        fio.join().expect("fio thread");
        during
    });
    let after = spilled(&daemon.scrape());
    assert!(
        during > 0.0 && during <= 32.0,
        "BLOCK_START holds {during} of 32 entries while 128 requests are in flight"
    );
    assert!(
        after < during,
        "BLOCK_START holds {after} entries after fio, {during} during it"
    );
}

/// `hostscope hist block` counts the reads done on a fresh loop device
/// during its interval exactly, under that device's name and `op` read.
#[test]
fn terminal_histogram_counts_loop_device_reads() {
    let device = LoopDevice::create(16);
    let lines = hist_json("block", 3, || device.direct_io(100, false));
    let reads: f64 = lines
        .iter()
        .filter(|v| v["labels"]["device"] == device.name.as_str() && v["labels"]["op"] == "read")
        .map(|v| v["count"].as_f64().expect("count"))
        .sum();
    assert_eq!(reads, 100.0, "hist output: {lines:?}");
}
