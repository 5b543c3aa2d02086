//! Bounded resources: connections, slow clients, the profile queue, and
//! shutdown, against the real daemon.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::daemon::{Daemon, Launch, proc_entries, proc_limit};

/// Idle connections held open against the daemon: more than its 1,024 files.
const IDLE: usize = 1100;
/// `--web.max-connections`' default.
const MAX_CONNECTIONS: usize = 512;

/// Starts the daemon with RLIMIT_NOFILE at `soft` and `hard`, as `ulimit`
/// or LimitNOFILE= would.
fn limit_open_files(command: &mut Command, soft: u64, hard: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `rlimit`,
    // which is copied into the closure.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Lets this test process hold `needed` sockets.
fn raise_own_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "this test needs {needed} open files; the hard limit is {}",
            limit.rlim_max
        );
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Whether the daemon has closed `stream` (without waiting).
fn closed_by_peer(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != ErrorKind::WouldBlock,
    }
}

/// One HTTP answer, read to the end.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `GET path` on a connection of its own (closed after the answer).
fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: hostscope\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    stream
}

/// Reads the answer to [`send`]'s request (status 0 if there is none).
fn answer(mut stream: TcpStream) -> Answer {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// With 1,024 open files and 1,100 idle connections, /metrics and /healthz
/// still answer a new client at once: the daemon never holds more than its
/// connection limit and makes room by closing the connection idle longest;
/// it says so once, not once per connection.
#[test]
fn idle_connections_do_not_starve_metrics() {
    raise_own_limit(IDLE as u64 + 200);
    let daemon = Launch::new("sched")
        .configure(|c| limit_open_files(c, 1024, 1024))
        .spawn();
    assert_eq!(
        proc_limit(&daemon.pid().to_string(), "Max open files"),
        ("1024".into(), "1024".into()),
        "the scenario: the daemon may open 1,024 files"
    );
    let before = proc_entries(daemon.pid(), "fd");

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&daemon.addr, Duration::from_secs(5))
                .unwrap_or_else(|err| panic!("idle connection {i}: {err}; log:\n{}", daemon.log()))
        })
        .collect();
    for path in ["/metrics", "/healthz"] {
        let started = Instant::now();
        let (status, body) = daemon.get(path);
        let took = started.elapsed();
        assert_eq!(status, 200, "{path}: {body}\nlog:\n{}", daemon.log());
        assert!(
            took < Duration::from_secs(1),
            "{path} took {took:?} with {IDLE} idle connections open"
        );
    }

    // The daemon held at most its limit of them, and closed the rest.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed;
    loop {
        closed = idle.iter().filter(|s| closed_by_peer(s)).count();
        if closed >= IDLE - MAX_CONNECTIONS || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = proc_entries(daemon.pid(), "fd");
    println!(
        "{closed} of {IDLE} idle connections closed by the daemon; {before} files open before, {during} with them"
    );
    assert!(
        closed >= IDLE - MAX_CONNECTIONS,
        "only {closed} of {IDLE} idle connections were closed"
    );
    assert!(
        during <= before + MAX_CONNECTIONS + 1,
        "{during} files open, {before} before: more than {MAX_CONNECTIONS} connections held"
    );
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("--web.max-connections"))
        .collect();
    assert_eq!(warnings.len(), 1, "the limit is logged once:\n{log}");
    assert!(warnings[0].contains("connection limit reached"), "{log}");
}

/// The inherited soft limit on open files is raised to the hard limit.
#[test]
fn soft_open_files_limit_is_raised_to_the_hard_limit() {
    let daemon = Launch::new("sched")
        .configure(|c| limit_open_files(c, 1024, 4096))
        .spawn();
    assert_eq!(
        proc_limit(&daemon.pid().to_string(), "Max open files"),
        ("4096".into(), "4096".into())
    );
    assert!(
        daemon
            .log()
            .contains("open-file limit raised from 1024 to 4096"),
        "{}",
        daemon.log()
    );
}

/// A client that sends its headers a byte at a time forever, and one that
/// keeps a connection open after its answer, are both disconnected after
/// the header timeout; neither is answered meanwhile.
#[test]
fn slow_and_idle_clients_are_disconnected() {
    let daemon = Daemon::start("sched");
    let addr = daemon.addr;
    // Generous: the daemon's timeout is 10 s.
    let deadline = Duration::from_secs(30);

    let slowloris = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: hostscope\r\nX-Slow: ")
            .expect("send");
        let started = Instant::now();
        let mut answer = Vec::new();
        while started.elapsed() < deadline {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => return Some((started.elapsed(), answer)),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some((started.elapsed(), answer)),
            }
            if stream.write_all(b"x").is_err() {
                return Some((started.elapsed(), answer));
            }
        }
        None
    });

    let keep_alive = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: hostscope\r\n\r\n")
            .expect("send");
        stream.set_read_timeout(Some(deadline)).expect("timeout");
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (Some(started.elapsed()), answer),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(_) => return (None, answer),
            }
        }
    });

    let (took, answered) = slowloris
        .join()
        .expect("slow client")
        .unwrap_or_else(|| panic!("a slowloris client was still connected after {deadline:?}"));
    println!("slowloris client disconnected after {took:?}");
    assert!(
        !String::from_utf8_lossy(&answered).contains("200 OK"),
        "an incomplete request was answered"
    );
    let (closed, answered) = keep_alive.join().expect("keep-alive client");
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let took = closed.unwrap_or_else(|| {
        panic!("an idle keep-alive connection was still open after {deadline:?}")
    });
    println!("idle keep-alive connection closed after {took:?}");
}

/// 12 profile requests at once, 2 allowed to wait (set through the
/// environment): 1 runs, 2 wait and are answered in turn, and the other 9
/// are refused at once with 429, a Retry-After and one line.
#[test]
fn profile_requests_beyond_the_queue_get_429_at_once() {
    let daemon = Launch::new("sched")
        .configure(|c| {
            c.env("HOSTSCOPE_PROFILE_MAX_QUEUE", "2");
        })
        .spawn();
    let addr = daemon.addr;
    let requests: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let answer = answer(send(addr, "/stacks?seconds=2"));
                (answer, Instant::now())
            })
        })
        .collect();
    let answers: Vec<(Answer, Instant)> = requests
        .into_iter()
        .map(|r| r.join().expect("request thread"))
        .collect();
    let (served, refused): (Vec<_>, Vec<_>) = answers.iter().partition(|(a, _)| a.status == 200);
    let statuses: Vec<u16> = answers.iter().map(|(a, _)| a.status).collect();
    assert_eq!(served.len(), 3, "{statuses:?}\nlog:\n{}", daemon.log());
    assert_eq!(refused.len(), 9, "{statuses:?}");
    for (refusal, _) in &refused {
        assert_eq!(refusal.status, 429, "{}", refusal.head);
        let retry: u64 = refusal
            .header("Retry-After")
            .unwrap_or_else(|| panic!("no Retry-After: {}", refusal.head))
            .parse()
            .expect("Retry-After in whole seconds");
        assert!(
            (1..=2).contains(&retry),
            "Retry-After {retry}: the running capture has at most 2 s left"
        );
        assert_eq!(refusal.body.lines().count(), 1, "{}", refusal.body);
        assert!(
            refusal.body.contains("2 more requests are waiting")
                && refusal.body.contains("--profile-max-queue"),
            "{}",
            refusal.body
        );
    }
    let last_refused = refused.iter().map(|(_, at)| *at).max().unwrap();
    let first_served = served.iter().map(|(_, at)| *at).min().unwrap();
    assert!(
        last_refused < first_served,
        "refusals waited for a capture to finish"
    );
}

/// SIGTERM while one capture runs and four wait: all five are answered 503
/// at once, and the daemon exits 0 within 2 s.
#[test]
fn sigterm_cancels_captures_and_exits_promptly() {
    let mut daemon = Daemon::start("sched");
    let addr = daemon.addr;
    // Running + the default queue of 4.
    let streams: Vec<TcpStream> = (0..5).map(|_| send(addr, "/stacks?seconds=30")).collect();
    let requests: Vec<_> = streams
        .into_iter()
        .map(|s| std::thread::spawn(move || answer(s)))
        .collect();
    // Wait until all five are admitted (a sixth is refused) and the first
    // is sampling (the refusal's Retry-After counts down its 30 s).
    std::thread::sleep(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = answer(send(addr, "/stacks?seconds=30"));
        assert_eq!(
            probe.status, 429,
            "a sixth request was admitted: {}",
            probe.head
        );
        let retry: u64 = probe
            .header("Retry-After")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        if retry > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the capture did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let signalled = Instant::now();
    let status = daemon.stop();
    let took = signalled.elapsed();
    println!("exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
    assert!(
        took < Duration::from_secs(2),
        "exit took {took:?} after SIGTERM"
    );
    for request in requests {
        let answer = request.join().expect("request thread");
        assert_eq!(answer.status, 503, "{}{}", answer.head, answer.body);
        assert!(answer.body.contains("shutting down"), "{}", answer.body);
    }
}
