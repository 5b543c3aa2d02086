//! Starting and stopping the real daemon.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::{exposition::Exposition, hostscope_bin, require_root};

/// A running `hostscope serve`, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    /// Where it serves.
    pub addr: SocketAddr,
    log: PathBuf,
    client: WebClient,
}

/// How the tests talk to the daemon: plain HTTP by default; HTTPS, a
/// client certificate and basic auth when its `--web.config.file` asks.
#[derive(Debug, Clone, Default)]
pub struct WebClient {
    /// The CA that signed the daemon's certificate (PEM); `None`: plain HTTP.
    pub ca: Option<String>,
    /// A client certificate and its key (PEM).
    pub cert: Option<(String, String)>,
    /// A user and password, sent as basic auth.
    pub basic_auth: Option<(String, String)>,
}

impl WebClient {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self.ca {
            Some(_) => "https",
            None => "http",
        }
    }

    /// A ureq agent that trusts the CA and presents the certificate;
    /// statuses are returned, not errors.
    pub fn agent(&self) -> ureq::Agent {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &self.ca {
            let ca = ureq::tls::Certificate::from_pem(ca.as_bytes()).expect("the CA's PEM");
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]));
        }
        if let Some((cert, key)) = &self.cert {
            let cert = ureq::tls::Certificate::from_pem(cert.as_bytes()).expect("a PEM cert");
            let key = ureq::tls::PrivateKey::from_pem(key.as_bytes()).expect("a PEM key");
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)));
        }
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .tls_config(tls.build())
            .build()
            .into()
    }

    /// The `Authorization` header's value, if there are credentials.
    pub fn authorization(&self) -> Option<String> {
        self.basic_auth.as_ref().map(|(user, password)| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        })
    }
}

/// How a test starts `hostscope serve`: the collectors and, where the
/// defaults do not do, the extra arguments, the binary, the listening flag,
/// changes to the command and the HTTP client.
pub struct Launch<'a> {
    collectors: &'a str,
    extra: &'a [&'a str],
    /// `None`: the binary the tests were built to run ([`hostscope_bin`]).
    binary: Option<PathBuf>,
    /// The listening flag and value, and where the daemon then answers;
    /// `None`: `--listen` on a port that was free.
    listen: Option<(&'a [&'a str], SocketAddr)>,
    configure: Box<dyn FnOnce(&mut Command) + 'a>,
    client: WebClient,
}

impl<'a> Launch<'a> {
    /// `serve --collectors collectors`, otherwise as configured below.
    pub fn new(collectors: &'a str) -> Self {
        Self {
            collectors,
            extra: &[],
            binary: None,
            listen: None,
            configure: Box::new(|_| {}),
            client: WebClient::default(),
        }
    }

    /// Extra arguments for `serve`.
    pub fn args(mut self, extra: &'a [&'a str]) -> Self {
        self.extra = extra;
        self
    }

    /// Runs `binary` instead of the one the tests were built to run.
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = Some(binary.to_owned());
        self
    }

    /// `listen` (the flag and its value, or nothing) for the listening
    /// address, where the daemon then answers at `addr`.
    pub fn listening(mut self, listen: &'a [&'a str], addr: SocketAddr) -> Self {
        self.listen = Some((listen, addr));
        self
    }

    /// Lets `configure` change the command before it starts (environment,
    /// resource limits, capabilities).
    pub fn configure(mut self, configure: impl FnOnce(&mut Command) + 'a) -> Self {
        self.configure = Box::new(configure);
        self
    }

    /// Reaches the daemon through `client` (for `--web.config.file`).
    pub fn client(mut self, client: WebClient) -> Self {
        self.client = client;
        self
    }

    /// Starts the daemon and waits until /healthz answers. Panics, with the
    /// daemon's log, if it does not.
    pub fn spawn(self) -> Daemon {
        require_root();
        self.try_spawn().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Launch::spawn`], and waits until every named collector
    /// reports up.
    pub fn start(self) -> Daemon {
        require_root();
        self.try_start().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Launch::start`], failing instead of panicking.
    pub fn try_start(self) -> anyhow::Result<Daemon> {
        let collectors = self.collectors;
        let daemon = self.try_spawn()?;
        let exposition = daemon.try_scrape()?;
        for name in collectors.split(',') {
            let up = exposition.value("hostscope_collector_up", &[("collector", name)]);
            if up != Some(1.0) {
                bail!(
                    "collector {name} is not up ({up:?}); daemon log:\n{}",
                    daemon.log()
                );
            }
        }
        Ok(daemon)
    }

    /// Like [`Launch::spawn`], failing instead of panicking.
    pub fn try_spawn(self) -> anyhow::Result<Daemon> {
        let binary = self.binary.unwrap_or_else(hostscope_bin);
        let free = free_local_addr();
        let listen_on = free.to_string();
        let default_listen = ["--listen", listen_on.as_str()];
        let (listen, addr) = self.listen.unwrap_or((&default_listen, free));
        let log = std::env::temp_dir().join(format!("hostscope-test-{}.log", addr.port()));
        let log_file = File::create(&log).context("creating the daemon's log file")?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .args(listen)
            .args(["--collectors", self.collectors])
            .args(self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        (self.configure)(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = Daemon {
            child: Some(child),
            addr,
            log,
            client: self.client,
        };
        daemon.wait_healthy()?;
        Ok(daemon)
    }
}

impl Daemon {
    /// Starts the daemon with `--collectors collectors` and waits until it
    /// serves and every named collector reports up. Panics, with the
    /// daemon's log, if it does not.
    pub fn start(collectors: &str) -> Daemon {
        Launch::new(collectors).start()
    }

    /// Like [`Daemon::start`], with extra arguments for `serve`.
    pub fn start_with(collectors: &str, extra: &[&str]) -> Daemon {
        Launch::new(collectors).args(extra).start()
    }

    /// Starts the daemon and waits only until /healthz answers.
    pub fn spawn(collectors: &str, extra: &[&str]) -> Daemon {
        Launch::new(collectors).args(extra).spawn()
    }

    /// Polls often: the bench times start-up by when this returns.
    fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                bail!("hostscope exited early ({status}); log:\n{}", self.log());
            }
            if self.get("/healthz").0 == 200 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!(
            "hostscope did not serve /healthz within 20 s; log:\n{}",
            self.log()
        );
    }

    /// The daemon's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// GETs `path`, returning the status and body (status 0 if the connection failed).
    pub fn get(&self, path: &str) -> (u16, String) {
        // A new agent each time: no connection is kept between requests.
        let mut request =
            self.client
                .agent()
                .get(format!("{}://{}{path}", self.client.scheme(), self.addr));
        if let Some(authorization) = self.client.authorization() {
            request = request.header("Authorization", authorization);
        }
        match request.call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body_mut().read_to_string().unwrap_or_default();
                (status, body)
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Scrapes /metrics.
    pub fn scrape(&self) -> Exposition {
        self.try_scrape().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Daemon::scrape`], failing instead of panicking.
    pub fn try_scrape(&self) -> anyhow::Result<Exposition> {
        let (status, body) = self.get("/metrics");
        if status != 200 {
            bail!(
                "GET /metrics failed ({status}): {body}\nlog:\n{}",
                self.log()
            );
        }
        Ok(Exposition::parse(&body))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for hostscope") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "hostscope did not exit within 10 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_local_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// A field of /proc/PID/status (`CapEff`, `VmHWM`, ...), or of a thread's
/// with `PID/task/TID`; empty if there is none.
pub fn proc_status(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

/// The soft and hard values of one row of /proc/PID/limits, such as
/// `Max open files` or `Max address space`.
pub fn proc_limit(pid: &str, row: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no `{row}` in /proc/{pid}/limits:\n{limits}"));
    let mut values = line[row.len()..].split_whitespace();
    let soft = values.next().expect("soft limit").to_owned();
    let hard = values.next().expect("hard limit").to_owned();
    (soft, hard)
}

/// How many entries /proc/PID/DIR has (`fd`: open files, `task`: threads);
/// 0 once the process is gone.
pub fn proc_entries(pid: u32, dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{dir}")).map_or(0, Iterator::count)
}

/// The names of process `pid`'s threads, for a failure message.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .map(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .map_or_else(|_| "?".to_owned(), |name| name.trim().to_owned())
        })
        .collect()
}
