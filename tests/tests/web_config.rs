//! `--web.config.file` (TLS, client certificates, basic auth, headers) and
//! `--web.disable-profiling`, against the real daemon and a real
//! Prometheus. Certificates and password hashes are made here, at test
//! time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use hostscope_tests::{
    daemon::{Daemon, Launch, WebClient},
    hostscope_bin,
    prometheus::Prometheus,
    require_root,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// A directory with a CA, a server certificate it signed (for localhost
/// and 127.0.0.1), a client certificate it signed, and a client
/// certificate nobody trusts; removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "hostscope-test-web-config-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hostscope test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(vec![USER.to_owned()]).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();

        let stranger = rcgen::generate_simple_self_signed(vec![USER.to_owned()]).unwrap();

        for (file, pem) in [
            ("ca.crt", ca_cert.pem()),
            ("server.crt", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.crt", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
            ("stranger.crt", stranger.cert.pem()),
            ("stranger.key", stranger.signing_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }

    /// Writes `web-config.yml` (relative paths: they are relative to it)
    /// and returns its path.
    fn config(&self, text: &str) -> String {
        let path = self.path("web-config.yml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// A client that trusts the CA, with `cert` (`client` or `stranger`)
    /// and the password if given.
    fn client(&self, cert: Option<&str>, password: Option<&str>) -> WebClient {
        WebClient {
            ca: Some(self.read("ca.crt")),
            cert: cert.map(|name| {
                (
                    self.read(&format!("{name}.crt")),
                    self.read(&format!("{name}.key")),
                )
            }),
            basic_auth: password.map(|p| (USER.to_owned(), p.to_owned())),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `basic_auth_users` with [`USER`] and [`PASSWORD`], hashed as
/// `htpasswd -nBC 10` does.
fn users() -> String {
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    format!("basic_auth_users:\n  {USER}: '{hash}'\n")
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

const MTLS: &str = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";

/// A GET through `client` with its credentials, or with `authorization`
/// instead if given: the status and the response's headers.
fn get(
    daemon: &Daemon,
    client: &WebClient,
    path: &str,
    authorization: Option<&str>,
) -> (u16, Vec<(String, String)>) {
    let mut request = client
        .agent()
        .get(format!("{}://{}{path}", client.scheme(), daemon.addr));
    if let Some(value) = authorization
        .map(str::to_owned)
        .or_else(|| client.authorization())
    {
        request = request.header("Authorization", value);
    }
    let response = request
        .call()
        .unwrap_or_else(|err| panic!("GET {path}: {err}\nlog:\n{}", daemon.log()));
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (response.status().as_u16(), headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The point of it all: Prometheus scrapes over TLS, with a client
/// certificate and basic auth, and the target is up.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let pki = Pki::new("prometheus");
    let config = pki.config(&format!("{TLS}{MTLS}{}", users()));
    let daemon = Launch::new("sched")
        .args(&["--web.config.file", &config])
        .client(pki.client(Some("client"), Some(PASSWORD)))
        .start();
    let job = format!(
        "  - job_name: hostscope\n    scheme: https\n    tls_config:\n      ca_file: '{}'\n      \
         cert_file: '{}'\n      key_file: '{}'\n    basic_auth:\n      username: {USER}\n      \
         password: '{PASSWORD}'\n    static_configs:\n      - targets: ['{}']\n",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display(),
        daemon.addr,
    );
    let prometheus = Prometheus::start_job(&job, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prometheus.query("up{job=\"hostscope\"}");
        let samples = prometheus.query("hostscope_collector_up{collector=\"sched\"}");
        if up.first().is_some_and(|s| s["value"][1] == "1") && !samples.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the target is not up after 30 s: {up:?}\ntargets: {}\nPrometheus log:\n{}\ndaemon log:\n{}",
            prometheus.get("/api/v1/targets", &[]).1,
            prometheus.log(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every path but /healthz needs the password; a wrong one, an unknown
/// user or none get 401 with `WWW-Authenticate: Basic`. The configured
/// headers are on every answer.
#[test]
fn basic_auth_is_required_except_for_healthz() {
    let pki = Pki::new("basic-auth");
    let config = pki.config(&format!(
        "{TLS}http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
         X-Content-Type-Options: nosniff\n{}",
        users()
    ));
    let client = pki.client(None, Some(PASSWORD));
    let daemon = Launch::new("sched")
        .args(&["--web.config.file", &config])
        .client(client.clone())
        .start();

    let anonymous = pki.client(None, None);
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    };
    let wrong = basic(USER, "wrong");
    let stranger = basic("nobody", PASSWORD);
    for path in ["/metrics", "/", "/stacks", "/no-such-path"] {
        for (who, authorization) in [
            ("no credentials", None),
            ("a wrong password", Some(wrong.as_str())),
            ("an unknown user", Some(stranger.as_str())),
        ] {
            let (status, headers) = get(&daemon, &anonymous, path, authorization);
            assert_eq!(status, 401, "{path} with {who}");
            assert_eq!(
                header(&headers, "www-authenticate"),
                Some("Basic"),
                "{path}"
            );
            assert_eq!(header(&headers, "x-frame-options"), Some("deny"), "{path}");
        }
    }
    // Twice: the second answer comes from the remembered verification.
    for _ in 0..2 {
        let (status, headers) = get(&daemon, &client, "/metrics", None);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    }
    let (status, headers) = get(&daemon, &anonymous, "/healthz", None);
    assert_eq!(status, 200, "/healthz needs no credentials");
    assert_eq!(header(&headers, "x-frame-options"), Some("deny"));
    // The listener speaks TLS only.
    let plain = WebClient::default().agent();
    assert!(
        plain
            .get(format!("http://{}/healthz", daemon.addr))
            .call()
            .is_err(),
        "plain HTTP was answered"
    );
}

/// What a TLS client sees: the handshake's outcome, then a GET /healthz.
fn handshake(
    addr: SocketAddr,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|err| format!("handshake: {err}"))?;
    }
    let mut tls = rustls::Stream::new(&mut connection, &mut socket);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|err| format!("write: {err}"))?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .map_err(|err| format!("read: {err}"))?;
    Ok(answer)
}

/// With `RequireAndVerifyClientCert`, a client without a certificate, or
/// with one the CA did not sign, fails the TLS handshake: no HTTP answer
/// at all. In TLS 1.2 the handshake itself fails; in TLS 1.3 the client
/// finishes first and receives the server's alert instead of the answer.
#[test]
fn without_a_client_certificate_the_handshake_fails() {
    let pki = Pki::new("mtls");
    let config = pki.config(&format!("{TLS}{MTLS}"));
    let daemon = Launch::new("sched")
        .args(&["--web.config.file", &config])
        .client(pki.client(Some("client"), None))
        .start();
    let ca = pki.path("ca.crt");
    let (client, client_key) = (pki.path("client.crt"), pki.path("client.key"));
    let (stranger, stranger_key) = (pki.path("stranger.crt"), pki.path("stranger.key"));
    for (version, versions) in [
        ("TLS 1.2", [&rustls::version::TLS12]),
        ("TLS 1.3", [&rustls::version::TLS13]),
    ] {
        let answer = handshake(daemon.addr, &ca, Some((&client, &client_key)), &versions)
            .unwrap_or_else(|err| panic!("{version} with the client certificate: {err}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for (who, cert) in [
            ("no certificate", None),
            (
                "an unknown CA's",
                Some((stranger.as_path(), stranger_key.as_path())),
            ),
        ] {
            let err = handshake(daemon.addr, &ca, cert, &versions)
                .expect_err(&format!("{version}: answered with {who}"));
            println!("{version}, {who}: {err}");
            assert!(
                err.contains("alert") || err.contains("Alert"),
                "{version}, {who}: not a TLS alert: {err}"
            );
            if version == "TLS 1.2" {
                assert!(err.starts_with("handshake:"), "{err}");
            }
        }
    }
    // The failure is logged, for whoever set the scraper up.
    assert!(
        daemon.log().contains("TLS handshake failed"),
        "{}",
        daemon.log()
    );
}

/// A client that opens a connection and never starts the handshake is
/// closed within the header timeout (10 s), as over plain HTTP.
#[test]
fn a_silent_client_is_closed_during_the_handshake() {
    let pki = Pki::new("silent");
    let config = pki.config(TLS);
    let daemon = Launch::new("sched")
        .args(&["--web.config.file", &config])
        .client(pki.client(None, None))
        .start();
    let started = Instant::now();
    let mut socket = TcpStream::connect(daemon.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = socket.read(&mut byte);
    let took = started.elapsed();
    println!("closed after {took:?}: {read:?}");
    assert!(
        !matches!(read, Ok(1..)),
        "the daemon sent something: {read:?}"
    );
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
        "closed after {took:?}"
    );
}

/// `--web.disable-profiling`: the profile endpoints are 404 and the index
/// does not list them; metrics are served as before.
#[test]
fn disabled_profiling_answers_404() {
    let daemon = Daemon::start_with("sched", &["--web.disable-profiling"]);
    for path in [
        "/flamegraph.svg?seconds=1",
        "/stacks?seconds=1",
        "/debug/pprof/profile?seconds=1",
    ] {
        assert_eq!(daemon.get(path).0, 404, "{path}");
    }
    let (status, index) = daemon.get("/");
    assert_eq!(status, 200);
    assert!(
        index.contains("/metrics") && index.contains("/healthz"),
        "{index}"
    );
    for route in ["/flamegraph.svg", "/stacks", "/debug/pprof"] {
        assert!(!index.contains(route), "{route} listed:\n{index}");
    }
    assert!(
        daemon
            .log()
            .contains("--web.disable-profiling: no profile endpoints"),
        "{}",
        daemon.log()
    );
    // Every capability the daemon keeps is for profiles: without them, it
    // keeps none, in any set.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{set}:")))
            .unwrap_or_else(|| panic!("no {set} in:\n{status}"));
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(daemon.log().contains("kept none"), "{}", daemon.log());
}

/// A bad file stops the daemon at start-up: one line naming the file and
/// the problem, exit code 2.
#[test]
fn a_bad_web_config_is_a_usage_error() {
    require_root();
    let pki = Pki::new("bad");
    for (text, mentions) in [
        (
            "tls_server_config:\n  cert_fle: server.crt\n",
            "unknown field `cert_fle`",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
            "missing.crt: cannot read it",
        ),
        (
            &format!("{TLS}  client_auth_type: VerifyClientCertIfGivn\n"),
            "unknown variant `VerifyClientCertIfGivn`",
        ),
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "not a bcrypt hash",
        ),
    ] {
        let config = pki.config(text);
        let output = Command::new(hostscope_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--collectors", "sched"])
            .args(["--web.config.file", &config])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{text}: one line: {stderr}");
        assert!(
            stderr.contains(&format!("--web.config.file {config}: ")) && stderr.contains(mentions),
            "{text}: `{mentions}` not in: {stderr}"
        );
    }
}
