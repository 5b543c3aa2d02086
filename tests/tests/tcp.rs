//! The TCP collector against the kernel's own per-socket accounting
//! (TCP_INFO) and against connections the test makes itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use hostscope_tests::{
    assert_close,
    daemon::Daemon,
    exposition::{Exposition, HistogramSample},
    netns::{NetnsPair, tcp_info, write_for},
};

const RTT: &str = "hostscope_tcp_rtt_seconds";
const CONNECT: &str = "hostscope_tcp_connect_latency_seconds";

fn histogram(e: &Exposition, name: &str) -> HistogramSample {
    e.histogram(name, &[])
        .unwrap_or_else(|| panic!("{name} is exported"))
}

fn counter(e: &Exposition, name: &str) -> f64 {
    e.value(name, &[])
        .unwrap_or_else(|| panic!("{name} is exported"))
}

/// Connects to a listening socket on 127.0.0.1 and ::1 and to a closed port
/// are counted exactly: each established connect once in the latency
/// histogram, each refused one as a failure. The second scrape's own HTTP
/// connection is established before the daemon reads its maps, so it counts
/// too: exactly one more.
#[test]
fn connects_and_failures_are_counted_exactly() {
    let daemon = Daemon::start("tcp");
    let v4 = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    let v6 = TcpListener::bind("[::1]:0").expect("listen on ::1");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");

    let before = daemon.scrape();
    let mut kept = Vec::new();
    for _ in 0..20 {
        kept.push(TcpStream::connect(v4.local_addr().unwrap()).expect("connect over IPv4"));
    }
    for _ in 0..10 {
        kept.push(TcpStream::connect(v6.local_addr().unwrap()).expect("connect over IPv6"));
    }
    for _ in 0..5 {
        assert!(
            TcpStream::connect(closed).is_err(),
            "{closed} should be closed"
        );
    }
    let after = daemon.scrape();

    let connects = histogram(&after, CONNECT).count - histogram(&before, CONNECT).count;
    let failures = counter(&after, "hostscope_tcp_connect_failures_total")
        - counter(&before, "hostscope_tcp_connect_failures_total");
    println!("connects counted {connects} (made 30 + 1 scrape), failures {failures} (made 5)");
    assert_eq!(
        connects, 31.0,
        "20 IPv4 + 10 IPv6 connects + the scrape's own"
    );
    assert_eq!(failures, 5.0);
    assert_eq!(counter(&after, "hostscope_tcp_connect_dropped_total"), 0.0);
}

/// Ping-pong over one connection, sampling TCP_INFO's smoothed RTT on both
/// ends as it goes: the mean of the probe's RTT samples over the same window
/// must agree with the mean of what TCP_INFO reported, within 35%. Both sides
/// read the same srtt, but at different instants (the probe on every received
/// segment, TCP_INFO every 50 round trips), and srtt on a fast link moves by
/// tens of percent from one segment to the next; a unit error (us vs ns,
/// srtt_us's x8 scaling) would be off by 8x or 1000x.
fn rtt_agrees_with_tcp_info(daemon: &Daemon, client: TcpStream, mut server: TcpStream) {
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while server.read_exact(&mut buf).is_ok() {
            if server.write_all(&buf).is_err() {
                break;
            }
        }
        server
    });
    let mut client = client;
    client.set_nodelay(true).expect("nodelay");
    let before = daemon.scrape();
    let mut reported = Vec::new();
    let mut buf = [0u8; 64];
    for round in 0..3000 {
        client.write_all(&buf).expect("ping");
        client.read_exact(&mut buf).expect("pong");
        if round % 50 == 49 {
            reported.push(f64::from(tcp_info(&client).0) * 1e-6);
        }
    }
    let after = daemon.scrape();
    drop(client);
    let _server = echo.join().expect("echo thread");

    let (a, b) = (histogram(&after, RTT), histogram(&before, RTT));
    let samples = a.count - b.count;
    let mean = (a.sum - b.sum) / samples;
    let tcp_info_mean = reported.iter().sum::<f64>() / reported.len() as f64;
    println!(
        "{samples} RTT samples, mean {:.1} us; TCP_INFO mean {:.1} us",
        mean * 1e6,
        tcp_info_mean * 1e6
    );
    // Each round trip is a segment received at each end.
    assert!(
        samples >= 6000.0,
        "only {samples} RTT samples for 3000 round trips"
    );
    assert_close("mean RTT vs TCP_INFO", mean, tcp_info_mean, 0.35);
}

#[test]
fn rtt_agrees_with_tcp_info_on_loopback() {
    let daemon = Daemon::start("tcp");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    rtt_agrees_with_tcp_info(&daemon, client, server);
}

/// The same across two network namespaces joined by a veth pair.
#[test]
fn rtt_agrees_with_tcp_info_over_veth() {
    let daemon = Daemon::start("tcp");
    let pair = NetnsPair::create();
    let (client, server) = pair.connect_a_to_b(7000);
    rtt_agrees_with_tcp_info(&daemon, client, server);
}

/// Making the receiver drop everything for a while under a sending
/// connection makes the sender retransmit;
/// the counter rises by exactly what TCP_INFO's tcpi_total_retrans says
/// both ends retransmitted (small writes, so one segment per retransmission).
#[test]
fn retransmits_match_tcp_info() {
    let daemon = Daemon::start("tcp");
    let pair = NetnsPair::create();
    let (mut client, mut server) = pair.connect_a_to_b(7001);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(server.read(&mut buf), Ok(n) if n > 0) {}
        server
    });

    let before = daemon.scrape();
    client.set_nodelay(true).expect("nodelay");
    write_for(&mut client, Duration::from_millis(200));
    pair.set_b_reachable(false);
    write_for(&mut client, Duration::from_millis(900));
    pair.set_b_reachable(true);
    write_for(&mut client, Duration::from_millis(1500));
    let (_, client_retrans) = tcp_info(&client);
    drop(client);
    let server = reader.join().expect("reader");
    let (_, server_retrans) = tcp_info(&server);
    let after = daemon.scrape();

    let counted = counter(&after, "hostscope_tcp_retransmits_total")
        - counter(&before, "hostscope_tcp_retransmits_total");
    let kernel = f64::from(client_retrans + server_retrans);
    println!("retransmits counted {counted}; TCP_INFO total_retrans {kernel}");
    assert!(kernel >= 1.0, "dropping segments caused no retransmission");
    assert_eq!(counted, kernel);
}

/// `hostscope hist tcp` counts the connects made during its interval
/// exactly, and the failures, as histogram and counter lines.
#[test]
fn terminal_histogram_counts_connects() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut kept = Vec::new();
    let lines = hostscope_tests::hist_json("tcp", 3, || {
        for _ in 0..12 {
            kept.push(TcpStream::connect(listener.local_addr().unwrap()).expect("connect"));
        }
        for _ in 0..3 {
            assert!(TcpStream::connect(closed).is_err());
        }
    });
    let connect = lines
        .iter()
        .find(|v| v["labels"]["histogram"] == "connect")
        .expect("a connect histogram line");
    assert_eq!(connect["count"], 12, "{lines:?}");
    let counters = lines
        .iter()
        .find(|v| v.get("counters").is_some())
        .expect("a counters line");
    assert_eq!(counters["counters"]["connect_failures"], 3, "{lines:?}");
}
