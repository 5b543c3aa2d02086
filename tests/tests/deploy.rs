//! The packaging under deploy/: the systemd unit passes `systemd-analyze
//! verify` and keeps its security score, grants exactly the capabilities
//! the daemon keeps (agent/src/privileges.rs), and the daemon really runs
//! with only those, as the unit's non-root user; the Kubernetes manifests
//! ask for no more host access than that; the scrape configurations parse
//! and point at the right paths and port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hostscope_tests::{
    daemon::free_local_addr,
    hostscope_bin,
    prometheus::{deploy, repo_root},
    require_root,
};
use serde_json::Value;

const UNIT: &str = "systemd/hostscope.service";

/// The exposure `systemd-analyze security` gives the unit is at most this
/// (on its 0 to 100 scale; it prints 2.8 for 28). A change that loosens
/// the unit fails here rather than going unnoticed.
const MAX_EXPOSURE: &str = "30";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The capabilities the daemon keeps, as privileges.rs lists them
/// (`CAP_BPF`, ...).
fn runtime_set() -> BTreeSet<String> {
    let source = read(&repo_root().join("agent/src/privileges.rs"));
    let block = source
        .split_once("pub const RUNTIME_SET")
        .and_then(|(_, rest)| rest.split_once("];"))
        .map(|(block, _)| block)
        .expect("RUNTIME_SET in privileges.rs");
    let caps: BTreeSet<String> = block
        .split("Capability::")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(caps.len(), 6, "RUNTIME_SET as read here: {caps:?}");
    caps
}

/// The port of the daemon's default listen address (cli.rs).
fn default_port() -> u64 {
    let source = read(&repo_root().join("agent/src/cli.rs"));
    source
        .lines()
        .find_map(|l| l.strip_prefix("pub const DEFAULT_LISTEN: &str = \""))
        .and_then(|rest| rest.split('"').next()?.rsplit_once(':')?.1.parse().ok())
        .expect("DEFAULT_LISTEN in cli.rs")
}

/// The values of `key=` lines in the unit (several lines append).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// The unit with its ExecStart pointing at the binary under test (verify
/// checks that the command exists), in a directory of its own.
fn unit_under_test() -> (tempdir::Dir, std::path::PathBuf) {
    let unit = read(&deploy(UNIT));
    let bin = hostscope_bin()
        .canonicalize()
        .expect("the hostscope binary");
    let replaced = unit.replace(
        "ExecStart=/usr/local/bin/hostscope ",
        &format!("ExecStart={} ", bin.display()),
    );
    assert_ne!(unit, replaced, "the unit starts /usr/local/bin/hostscope");
    let dir = tempdir::Dir::new("unit");
    let path = dir.0.join("hostscope.service");
    std::fs::write(&path, replaced).unwrap();
    (dir, path)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; cargo xtask test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let (_dir, unit) = unit_under_test();
    let (ok, text) = systemd_analyze(&["verify"], &unit);
    // verify also warns, with success, about unknown keys and the like.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let (ok, text) = systemd_analyze(
        &[
            "security",
            "--offline=yes",
            &format!("--threshold={MAX_EXPOSURE}"),
        ],
        &unit,
    );
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    assert!(
        ok,
        "the unit's exposure went above {MAX_EXPOSURE}/100: {overall}\n{text}"
    );
}

#[test]
fn the_unit_grants_exactly_the_runtime_set() {
    let unit = read(&deploy(UNIT));
    let kept = runtime_set();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let granted: BTreeSet<String> = unit_values(&unit, key).into_iter().collect();
        assert_eq!(granted, kept, "{key} in {UNIT}");
    }
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} lacks {line}");
    }
    // Both would break kernel frame names: one hides /proc/kallsyms, the
    // other takes CAP_SYSLOG away.
    for setting in ["ProtectKernelTunables=yes", "ProtectKernelLogs=yes"] {
        assert!(!unit.lines().any(|l| l == setting), "{UNIT} sets {setting}");
    }
}

/// A daemon started as the unit starts it: a non-root user, the unit's
/// ambient capabilities and bounding set, no_new_privs. It loads every
/// probe and names kernel frames and another user's (root's) user frames.
#[test]
fn the_daemon_runs_with_the_units_credentials() {
    require_root();
    let caps: Vec<String> = runtime_set()
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let caps = caps.join(",");
    let addr = free_local_addr();
    let log = tempdir::Dir::new("unit-credentials");
    let log_path = log.0.join("daemon.log");
    let child = Command::new("setpriv")
        // In systemd's DynamicUser range.
        .args(["--reuid=61184", "--regid=61184", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--no-new-privs")
        .arg("--")
        .arg(hostscope_bin())
        .args(["serve", "--listen", &addr.to_string(), "--by-cgroup"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let mut daemon = Killed(child);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let get = |path: &str| -> (u16, String) {
        match agent.get(format!("http://{addr}{path}")).call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    };
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("hostscope exited ({status}); log:\n{}", daemon_log());
        }
        let (status, body) = get("/metrics");
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics within 20 s; log:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for collector in ["sched", "block", "tcp"] {
        assert!(
            metrics.contains(&format!(
                "hostscope_collector_up{{collector=\"{collector}\"}} 1"
            )),
            "collector {collector} is not up; log:\n{}",
            daemon_log()
        );
    }
    let kept = runtime_set().into_iter().collect::<Vec<_>>();
    assert!(
        kept.iter().all(|cap| daemon_log().contains(cap.as_str())),
        "the daemon did not keep all of {kept:?}; log:\n{}",
        daemon_log()
    );
    assert!(
        !daemon_log().contains("bounding set cannot be narrowed"),
        "the unit's bounding set is wider than the daemon keeps; log:\n{}",
        daemon_log()
    );

    // A busy process of root's, half in the kernel: its user frames need
    // CAP_SYS_PTRACE (maps) and CAP_CHECKPOINT_RESTORE (map_files), its
    // kernel frames CAP_SYSLOG.
    let mut busy = Killed(
        Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = busy.0.id();
    let (status, stacks) = get(&format!("/stacks?seconds=2&pid={pid}"));
    busy.0.kill().unwrap();
    assert_eq!(status, 200, "{stacks}\nlog:\n{}", daemon_log());
    assert!(
        stacks
            .lines()
            .any(|l| l.contains("_[k]") && !l.contains("[kernel]_[k]")),
        "no named kernel frame in the profile:\n{stacks}"
    );
    // Without the maps, user frames would all read [unknown].
    let named_user_frame = stacks.lines().any(|line| {
        let frames = line.rsplit_once(' ').map_or("", |(frames, _)| frames);
        frames.starts_with("dd;")
            && frames.split(';').skip(1).any(|frame| {
                !frame.ends_with("_[k]") && !matches!(frame, "[unknown]" | "[truncated]")
            })
    });
    assert!(
        named_user_frame,
        "no named user frame of root's dd in the profile:\n{stacks}"
    );
    daemon.0.kill().unwrap();
}

/// Kills its child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "hostscope-test-deploy-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            // The daemon of the credentials test writes nothing here: its
            // log is opened by this process.
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A YAML file under deploy/ (one document), as JSON values.
fn one(path: &str) -> Value {
    serde_norway::from_str(&read(&deploy(path))).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every value under the key `key`, anywhere in `value`.
fn find_all<'a>(value: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    out.push(v);
                }
                find_all(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| find_all(v, key, out)),
        _ => {}
    }
}

#[test]
fn the_daemonset_asks_for_the_least_host_access() {
    let ds = one("kubernetes/daemonset.yaml");
    assert_eq!(ds["kind"], "DaemonSet");
    let mut privileged = Vec::new();
    find_all(&ds, "privileged", &mut privileged);
    assert!(
        privileged.iter().all(|v| **v == Value::Bool(false)),
        "privileged: true in the DaemonSet"
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "profiles need the host's PIDs");
    assert_ne!(pod["hostNetwork"], true, "hostNetwork is not needed");
    assert_ne!(pod["hostIPC"], true);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<String> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    assert_eq!(added, runtime_set(), "the capabilities added");

    // The host directories: exactly these, each mounted read-only.
    let volumes = pod["volumes"].as_array().unwrap();
    let mut host_paths = BTreeSet::new();
    for volume in volumes {
        let path = volume["hostPath"]["path"].as_str().unwrap_or_else(|| {
            panic!("volume {} is not a hostPath", volume["name"]);
        });
        host_paths.insert(path);
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("volume {} is not mounted", volume["name"]));
        assert_eq!(mount["mountPath"], path, "{path} is mounted where it is");
        assert_eq!(mount["readOnly"], true, "{path} is mounted read-only");
    }
    assert_eq!(
        host_paths,
        BTreeSet::from(["/sys/fs/cgroup", "/sys/kernel/btf"])
    );

    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], default_port());
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        default_port().to_string()
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &format!("--web.listen-address=:{}", default_port())),
        "the daemon listens on the port the manifests name"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The Service reaches that port, and the ServiceMonitor that Service.
    let service = one("kubernetes/service.yaml");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "the Service selects the pods");
    }
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"], default_port());
    assert_eq!(service_port["targetPort"], port["name"]);
    let monitor = one("kubernetes/servicemonitor.yaml");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][key], value);
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service_port["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // Everything in the one namespace, which allows what the pod needs.
    let namespace = one("kubernetes/namespace.yaml");
    let name = &namespace["metadata"]["name"];
    for doc in [&ds, &service, &monitor] {
        assert_eq!(&doc["metadata"]["namespace"], name);
    }
    let kustomization = one("kubernetes/kustomization.yaml");
    assert_eq!(kustomization["resources"].as_array().unwrap().len(), 4);
}

#[test]
fn the_container_recipe_grants_what_the_daemonset_does() {
    let recipe = read(&deploy("container/Containerfile"));
    assert!(
        recipe.lines().any(|l| l == "FROM scratch"),
        "the image holds the static binary alone"
    );
    assert!(recipe.contains("target/x86_64-unknown-linux-musl/release"));
    let added: BTreeSet<String> = recipe
        .split("--cap-add ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(added, runtime_set(), "the docker run example's --cap-add");
    assert!(recipe.contains(&format!("EXPOSE {}", default_port())));
}

#[test]
fn the_scrape_configurations_are_valid() {
    let output = Command::new("promtool")
        .args([
            "check",
            "config",
            "--syntax-only",
            "deploy/prometheus/scrape-tls.yml",
        ])
        .current_dir(repo_root())
        .output()
        .expect("promtool (Debian package prometheus; cargo xtask test installs it)");
    assert!(
        output.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let prometheus = one("prometheus/scrape-tls.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["scheme"], "https");
    assert!(job["basic_auth"]["password_file"].is_string());
    assert!(job["tls_config"]["cert_file"].is_string());

    // Parca asks for seconds=scrape_interval; its timeout must be longer.
    let parca = one("parca/parca.yaml");
    let job = &parca["scrape_configs"][0];
    let seconds = |v: &Value| -> u64 {
        v.as_str()
            .and_then(|s| s.strip_suffix('s')?.parse().ok())
            .expect("a duration in seconds")
    };
    assert!(seconds(&job["scrape_timeout"]) > seconds(&job["scrape_interval"]));
    assert!(
        seconds(&job["scrape_interval"]) <= 60,
        "the daemon's default --profile-max-seconds"
    );
    let pprof = job["profiling_config"]["pprof_config"].as_object().unwrap();
    for (kind, config) in pprof {
        match kind.as_str() {
            "process_cpu" => {
                assert_eq!(config["path"], "/debug/pprof/profile");
                assert_eq!(config["enabled"], true);
            }
            // hostscope serves no Go-specific profiles: 404s otherwise.
            _ => assert_eq!(config["enabled"], false, "parca's {kind}"),
        }
    }

    let alloy = read(&deploy("alloy/config.alloy"));
    let setting = |key: &str| -> u64 {
        alloy
            .lines()
            .find_map(|l| {
                let (k, v) = l.trim().split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').trim_end_matches('s'))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in config.alloy"))
    };
    let duration = setting("delta_profiling_duration");
    assert!(duration < setting("scrape_timeout"));
    assert!(duration < setting("scrape_interval"));
    assert!(alloy.contains("path    = \"/debug/pprof/profile\""));
    for kind in ["memory", "block", "mutex", "goroutine"] {
        let block = alloy
            .split_once(&format!("profile.{kind} {{"))
            .map(|(_, rest)| rest.split('}').next().unwrap_or_default())
            .unwrap_or_else(|| panic!("profile.{kind} in config.alloy"));
        assert!(block.contains("enabled = false"), "alloy's {kind}");
    }
}
