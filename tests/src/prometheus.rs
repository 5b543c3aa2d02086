//! A real Prometheus (Debian's package) on a loopback port, scraping the
//! daemon.

use std::{
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::daemon::free_local_addr;

/// The repository's root, where promtool runs and the deploy/ files are.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .expect("the repository root")
}

/// A file under deploy/.
pub fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// A real Prometheus with its own storage in a temporary directory,
/// killed and its directory removed on drop (even when the test fails).
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job
    /// `hostscope`, with both rule files evaluated every second, and waits
    /// until it is ready.
    pub fn start(target: SocketAddr) -> Prometheus {
        Self::start_with(target, &[])
    }

    /// [`Prometheus::start`] with extra command-line flags.
    pub fn start_with(target: SocketAddr, flags: &[&str]) -> Prometheus {
        let job = format!(
            "  - job_name: hostscope\n    static_configs:\n      - targets: ['{target}']\n"
        );
        Self::start_job(&job, flags)
    }

    /// [`Prometheus::start_with`] with `job` as the one entry of
    /// `scrape_configs` (YAML, indented as such an entry): a scheme, TLS
    /// settings or credentials of its own.
    pub fn start_job(job: &str, flags: &[&str]) -> Prometheus {
        let addr = free_local_addr();
        let dir = std::env::temp_dir().join(format!(
            "hostscope-test-prometheus-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("create Prometheus' directory");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n  - '{}'\n\
             scrape_configs:\n{job}",
            deploy("prometheus/recording-rules.yml").display(),
            deploy("prometheus/alert-rules.yml").display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
        let log = File::create(dir.join("prometheus.log")).expect("create Prometheus' log");
        let mut prometheus = Prometheus {
            child: None,
            dir: dir.clone(),
            addr,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
        };
        prometheus.child = Some(
            Command::new("/usr/bin/prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .args(flags)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect(
                    "/usr/bin/prometheus (Debian package prometheus; cargo xtask test installs it)",
                ),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = prometheus
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("Prometheus exited ({status}); log:\n{}", prometheus.log());
            }
            if prometheus.get("/-/ready", &[]).0 == 200 {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus was not ready within 20 s; log:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GETs `path` with `query` parameters: the status and the body.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.agent.get(format!("http://{}{path}", self.addr));
        for (key, value) in query {
            request = request.query(*key, *value);
        }
        match request.call() {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    /// GETs an API endpoint and returns its `data`, failing on any answer
    /// but `status: success`.
    pub fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(path, query);
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("GET {path} {query:?}: HTTP {status}: {body}"));
        assert_eq!(
            answer["status"], "success",
            "GET {path} {query:?}: HTTP {status}: {body}"
        );
        answer["data"].clone()
    }

    /// The series an instant query returns now.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", expr)]);
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().expect("result").clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
