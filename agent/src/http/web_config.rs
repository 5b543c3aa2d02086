//! `--web.config.file`: TLS, client certificates, basic auth and response
//! headers, in exporter-toolkit's YAML format (node_exporter's
//! web-config.yml), so that the files operators already have work
//! unchanged. Read once, at start-up; anything wrong with it is one line
//! and exit code 2.
//!
//! Differences, all said in the README: rustls speaks TLS 1.2 and 1.3 only
//! (a `min_version` below 1.2 means 1.2); `cipher_suites`,
//! `curve_preferences`, `prefer_server_cipher_suites` and `rate_limit` are
//! accepted and ignored with a warning; `client_allowed_sans` is refused,
//! since ignoring it would let in clients the file keeps out; HTTP/2 is
//! never served, whatever `http2` says.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

/// A web configuration file that cannot be used: a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {}: {problem}", path.display())]
pub struct WebConfigError {
    /// The file given.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What can be wrong with a web configuration file. Causes are part of
/// each message, not separate sources, so that the one line says them once.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The file itself cannot be read.
    #[error("cannot read it: {0}")]
    Read(io::Error),
    /// Not YAML, a key exporter-toolkit does not know (a typo, say), or a
    /// value of the wrong type or out of its set; serde's message names
    /// the key, the line and the column.
    #[error("{0}")]
    Syntax(String),
    /// A file that a key names cannot be read.
    #[error("{key} {}: cannot read it: {reason}", path.display())]
    File {
        /// The key, such as `tls_server_config.cert_file`.
        key: &'static str,
        /// The file, relative paths resolved against the configuration's directory.
        path: PathBuf,
        /// Why it cannot be read.
        reason: io::Error,
    },
    /// A certificate, key or CA bundle without a usable PEM block.
    #[error("{key}: {reason}")]
    Pem {
        /// The key that gave it, such as `tls_server_config.key_file`.
        key: &'static str,
        /// What is missing or malformed.
        reason: String,
    },
    /// rustls refuses the certificate and key (they do not match, or the
    /// key's type is unsupported).
    #[error("tls_server_config: the certificate and key cannot be used: {0}")]
    Tls(rustls::Error),
    /// A user's password hash is not a bcrypt hash.
    #[error(
        "basic_auth_users: the password hash of {user} is not a bcrypt hash \
         (`$2y$...`, as `htpasswd -nBC 10 USER` writes): {reason}"
    )]
    Hash {
        /// The user, quoted.
        user: String,
        /// bcrypt's objection.
        reason: String,
    },
    /// Settings that do not go together, or that hostscope cannot honour
    /// without serving something the file does not allow.
    #[error("{0}")]
    Invalid(String),
}

/// What a web configuration file asks for, ready to serve with.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// TLS, if the file configures it (`tls_server_config` with anything set).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic-auth users and their bcrypt hashes, checked; empty: no auth.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Settings accepted but not honoured, one line each, for the log.
    pub warnings: Vec<String>,
}

/// The file as exporter-toolkit defines it. Unknown keys are refused, as
/// its strict YAML parsing refuses them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// Not honoured: the daemon bounds clients its own way.
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<ClientAuth>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted; hostscope serves HTTP/1.1 only.
    #[allow(dead_code, reason = "read to be accepted, never used")]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// `client_auth_type`, Go's `tls.ClientAuthType` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    /// No certificate asked for.
    #[default]
    #[serde(alias = "")]
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified. exporter-toolkit still takes the old name.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    /// Verified against the client CA if one is sent.
    VerifyClientCertIfGiven,
    /// Required and verified against the client CA.
    RequireAndVerifyClientCert,
}

/// `min_version` and `max_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// The headers exporter-toolkit lets a file set, and the values it takes
/// for those with a fixed set (no list: any value).
const HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// The one protocol offered by ALPN.
const HTTP1: &[u8] = b"http/1.1";

impl WebConfig {
    /// Reads and checks the file at `path`, and the certificates, keys and
    /// CA bundles it names (relative to its directory).
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let error = |problem| WebConfigError {
            path: path.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|err| error(Problem::Read(err)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(error)
    }

    /// Checks a file's `text`, whose relative paths are relative to `dir`.
    fn parse(text: &str, dir: &Path) -> Result<WebConfig, Problem> {
        // An empty file (or only comments) is a YAML null: nothing configured.
        let file: File = serde_norway::from_str::<Option<File>>(text)
            .map_err(|err| Problem::Syntax(one_line(&err.to_string())))?
            .unwrap_or_default();
        let mut config = WebConfig::default();
        if file.rate_limit.is_some() {
            config.warnings.push(
                "rate_limit is ignored: hostscope bounds connections and profile \
                 requests itself (--web.max-connections, --profile-max-queue)"
                    .to_owned(),
            );
        }
        if let Some(tls) = file.tls_server_config {
            config.tls = tls_config(tls, dir, &mut config.warnings)?;
        }
        if let Some(http) = file.http_server_config {
            config.headers = headers(http.headers.unwrap_or_default())?;
        }
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            hash.parse::<bcrypt::HashParts>()
                .map_err(|err| Problem::Hash {
                    user: crate::quote::quoted(user),
                    reason: err.to_string(),
                })?;
        }
        config.users = users;
        Ok(config)
    }
}

/// serde's messages can span lines; the error must be one.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The server's TLS configuration, or `None` if `tls` sets nothing (as
/// exporter-toolkit, which then serves plain HTTP).
fn tls_config(
    tls: TlsFile,
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<rustls::ServerConfig>>, Problem> {
    let enabled = tls.cert.is_some()
        || tls.cert_file.is_some()
        || tls.key.is_some()
        || tls.key_file.is_some()
        || tls.client_ca.is_some()
        || tls.client_ca_file.is_some()
        || tls.client_auth_type.is_some();
    if !enabled {
        return Ok(None);
    }
    for (set, key) in [
        (tls.cipher_suites.is_some(), "cipher_suites"),
        (tls.curve_preferences.is_some(), "curve_preferences"),
        (
            tls.prefer_server_cipher_suites.is_some(),
            "prefer_server_cipher_suites",
        ),
    ] {
        if set {
            warnings.push(format!(
                "tls_server_config.{key} is ignored: rustls offers only its own \
                 secure cipher suites and groups, in its own order"
            ));
        }
    }
    if tls.client_allowed_sans.is_some() {
        return Err(Problem::Invalid(
            "tls_server_config.client_allowed_sans is not supported: remove it, or \
             issue client certificates from a CA of their own (client_ca_file)"
                .to_owned(),
        ));
    }
    let versions = protocol_versions(tls.min_version, tls.max_version, warnings)?;

    let cert_pem = inline_or_file(
        tls.cert,
        tls.cert_file,
        ("tls_server_config.cert", "tls_server_config.cert_file"),
        dir,
    )?
    .ok_or_else(|| Problem::Invalid("tls_server_config needs cert_file (or cert)".to_owned()))?;
    let key_pem = inline_or_file(
        tls.key,
        tls.key_file,
        ("tls_server_config.key", "tls_server_config.key_file"),
        dir,
    )?
    .ok_or_else(|| Problem::Invalid("tls_server_config needs key_file (or key)".to_owned()))?;
    let certs = certificates(&cert_pem.bytes, cert_pem.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem.bytes).map_err(|err| Problem::Pem {
        key: key_pem.key,
        reason: format!("no usable private key in it ({err})"),
    })?;
    let client_ca = inline_or_file(
        tls.client_ca,
        tls.client_ca_file,
        (
            "tls_server_config.client_ca",
            "tls_server_config.client_ca_file",
        ),
        dir,
    )?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = tls.client_auth_type.unwrap_or_default();
    let verifier = client_verifier(client_auth, client_ca, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(Problem::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(Problem::Tls)?;
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// PEM text and the key it came from.
struct Pem {
    bytes: Vec<u8>,
    key: &'static str,
}

/// The PEM given inline or in a file (relative to `dir`); not both.
fn inline_or_file(
    inline: Option<String>,
    file: Option<PathBuf>,
    (inline_key, file_key): (&'static str, &'static str),
    dir: &Path,
) -> Result<Option<Pem>, Problem> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(Problem::Invalid(format!(
            "{inline_key} and {file_key} are both set; keep one"
        ))),
        (Some(text), None) => Ok(Some(Pem {
            bytes: text.into_bytes(),
            key: inline_key,
        })),
        (None, Some(file)) => {
            let path = dir.join(file);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(Pem {
                    bytes,
                    key: file_key,
                })),
                Err(reason) => Err(Problem::File {
                    key: file_key,
                    path,
                    reason,
                }),
            }
        }
        (None, None) => Ok(None),
    }
}

/// Every certificate in `pem`, at least one.
fn certificates(pem: &[u8], key: &'static str) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Problem::Pem {
            key,
            reason: format!("malformed PEM ({err})"),
        })?;
    if certs.is_empty() {
        return Err(Problem::Pem {
            key,
            reason: "no CERTIFICATE block in it".to_owned(),
        });
    }
    Ok(certs)
}

/// The versions between `min` (default 1.2) and `max` (default 1.3).
fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Problem> {
    let max = max.unwrap_or(TlsVersion::Tls13);
    if max < TlsVersion::Tls12 {
        return Err(Problem::Invalid(
            "tls_server_config.max_version: rustls speaks TLS 1.2 and 1.3 only; \
             use TLS12 or TLS13"
                .to_owned(),
        ));
    }
    let min = match min.unwrap_or(TlsVersion::Tls12) {
        old @ (TlsVersion::Tls10 | TlsVersion::Tls11) => {
            warnings.push(format!(
                "tls_server_config.min_version {old:?}: rustls speaks TLS 1.2 and 1.3 \
                 only, so the minimum is TLS 1.2"
            ));
            TlsVersion::Tls12
        }
        min => min,
    };
    if min > max {
        return Err(Problem::Invalid(
            "tls_server_config: min_version is above max_version".to_owned(),
        ));
    }
    Ok([
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect())
}

/// How client certificates are asked for and checked.
fn client_verifier(
    auth: ClientAuth,
    client_ca: Option<Pem>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    let algorithms = provider.signature_verification_algorithms;
    let roots = |ca: Pem| -> Result<Arc<RootCertStore>, Problem> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(&ca.bytes, ca.key)? {
            roots.add(cert).map_err(|err| Problem::Pem {
                key: ca.key,
                reason: format!("not a CA certificate rustls can use ({err})"),
            })?;
        }
        Ok(Arc::new(roots))
    };
    let verified = |ca: Option<Pem>, optional: bool| {
        let Some(ca) = ca else {
            return Err(Problem::Invalid(format!(
                "tls_server_config.client_auth_type {auth:?} needs client_ca_file (or client_ca): \
                 the CA that client certificates must be signed by"
            )));
        };
        let builder = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone());
        let builder = match optional {
            true => builder.allow_unauthenticated(),
            false => builder,
        };
        builder
            .build()
            .map_err(|err| Problem::Invalid(format!("tls_server_config: {err}")))
    };
    match auth {
        ClientAuth::NoClientCert if client_ca.is_some() => Err(Problem::Invalid(
            "tls_server_config: a client CA is set but client_auth_type is NoClientCert; \
             set client_auth_type: RequireAndVerifyClientCert to check client certificates"
                .to_owned(),
        )),
        ClientAuth::NoClientCert => Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => Ok(Arc::new(AnyClientCert {
            mandatory: false,
            algorithms,
        })),
        ClientAuth::RequireAnyClientCert => Ok(Arc::new(AnyClientCert {
            mandatory: true,
            algorithms,
        })),
        ClientAuth::VerifyClientCertIfGiven => verified(client_ca, true),
        ClientAuth::RequireAndVerifyClientCert => verified(client_ca, false),
    }
}

/// `RequestClientCert` and `RequireAnyClientCert`, as Go has them: any
/// certificate is taken without checking who issued it (only that the
/// client holds its key). They authenticate no one; exporter-toolkit keeps
/// them for compatibility, and so does hostscope.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks `http_server_config.headers` as exporter-toolkit does: only the
/// headers in [`HEADERS`], with an allowed value where it fixes a set.
fn headers(headers: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, Problem> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let Some((canonical, allowed)) = HEADERS.iter().find(|(known, _)| *known == name) else {
            return Err(Problem::Invalid(format!(
                "http_server_config.headers: {} cannot be set; these can: {}",
                crate::quote::quoted(&name),
                HEADERS.map(|(known, _)| known).join(", ")
            )));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(Problem::Invalid(format!(
                "http_server_config.headers.{canonical}: {} is not one of {}",
                crate::quote::quoted(&value),
                allowed.join(", ")
            )));
        }
        let header_value = HeaderValue::from_str(&value).map_err(|_| {
            Problem::Invalid(format!(
                "http_server_config.headers.{canonical}: {} is not a valid header value",
                crate::quote::quoted(&value)
            ))
        })?;
        let header_name = HeaderName::from_bytes(canonical.as_bytes())
            .map_err(|err| Problem::Invalid(format!("{canonical}: {err}")))?;
        out.push((header_name, header_value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of PEM files: a server certificate and key, a CA, and
    /// a second key that belongs to no certificate.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "hostscope-web-config-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
            for (file, text) in [
                ("server.crt", server.cert.pem()),
                ("server.key", server.signing_key.serialize_pem()),
                ("ca.crt", ca.cert.pem()),
                ("other.key", ca.signing_key.serialize_pem()),
            ] {
                std::fs::write(dir.join(file), text).unwrap();
            }
            Dir(dir)
        }

        fn parse(&self, text: &str) -> Result<WebConfig, Problem> {
            WebConfig::parse(text, &self.0)
        }

        #[track_caller]
        fn error(&self, text: &str, mentions: &str) {
            let err = self.parse(text).expect_err(text).to_string();
            assert!(err.contains(mentions), "`{mentions}` not in: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

    #[test]
    fn an_empty_file_configures_nothing() {
        let dir = Dir::new("empty");
        for text in ["", "# only a comment\n", "---\n"] {
            let config = dir.parse(text).unwrap();
            assert!(config.tls.is_none() && config.users.is_empty() && config.headers.is_empty());
        }
        // A section with nothing set leaves TLS off, as exporter-toolkit does.
        assert!(dir.parse("tls_server_config: {}\n").unwrap().tls.is_none());
    }

    #[test]
    fn tls_basic_auth_and_headers() {
        let dir = Dir::new("full");
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!(
            "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\n\
             http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        );
        let config = dir.parse(&text).unwrap();
        let tls = config.tls.expect("TLS");
        assert_eq!(tls.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(config.users.get("prometheus"), Some(&hash));
        assert_eq!(config.headers.len(), 2);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        // Absolute paths and inline PEM work too.
        let cert = dir.0.join("server.crt");
        let key = std::fs::read_to_string(dir.0.join("server.key")).unwrap();
        let text = format!(
            "tls_server_config:\n  cert_file: {}\n  key: |\n{}",
            cert.display(),
            key.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        assert!(dir.parse(&text).unwrap().tls.is_some());
    }

    #[test]
    fn what_rustls_cannot_honour_is_a_warning() {
        let dir = Dir::new("ignored");
        let text = format!(
            "{TLS}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  \
             curve_preferences: [X25519]\n  prefer_server_cipher_suites: true\n  \
             min_version: TLS10\n\
             rate_limit:\n  interval: 1s\n  burst: 10\n"
        );
        let config = dir.parse(&text).unwrap();
        assert!(config.tls.is_some());
        let warnings = config.warnings.join("\n");
        for key in [
            "cipher_suites",
            "curve_preferences",
            "prefer_server_cipher_suites",
            "min_version",
            "rate_limit",
        ] {
            assert!(warnings.contains(key), "{key} not in:\n{warnings}");
        }
    }

    #[test]
    fn bad_files_are_one_line_naming_the_problem() {
        let dir = Dir::new("bad");
        // A typo names the key and where it is.
        dir.error(
            "tls_server_config:\n  cert_fle: server.crt\n",
            "unknown field `cert_fle`",
        );
        dir.error("basic_auth_user: {}\n", "unknown field `basic_auth_user`");
        dir.error("tls_server_config: [1, 2\n", "tls_server_config");
        dir.error(
            &format!("{TLS}  client_auth_type: RequireClientCerts\n"),
            "unknown variant `RequireClientCerts`",
        );
        dir.error(&format!("{TLS}  min_version: TLS14\n"), "TLS14");
        dir.error(
            &format!("{TLS}  max_version: TLS11\n"),
            "TLS 1.2 and 1.3 only",
        );
        dir.error(
            &format!("{TLS}  min_version: TLS13\n  max_version: TLS12\n"),
            "min_version is above max_version",
        );
        dir.error(
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
            &format!(
                "tls_server_config.cert_file {}: cannot read it",
                dir.0.join("missing.crt").display()
            ),
        );
        dir.error(
            "tls_server_config:\n  cert_file: server.crt\n",
            "needs key_file",
        );
        dir.error(
            "tls_server_config:\n  key_file: server.key\n",
            "needs cert_file",
        );
        dir.error(
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
            "tls_server_config.cert_file: no CERTIFICATE block",
        );
        dir.error(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
            "tls_server_config.key_file: no usable private key",
        );
        dir.error(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
            "the certificate and key cannot be used",
        );
        dir.error(
            &format!("{TLS}  cert: inline\n"),
            "cert and tls_server_config.cert_file are both set",
        );
        dir.error(
            &format!("{TLS}  client_ca_file: ca.crt\n"),
            "client_auth_type is NoClientCert",
        );
        dir.error(
            &format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n"),
            "needs client_ca_file",
        );
        dir.error(
            &format!(
                "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
                 client_allowed_sans: [prometheus]\n"
            ),
            "client_allowed_sans is not supported",
        );
        dir.error(
            "http_server_config:\n  headers:\n    Server: hostscope\n",
            "`Server` cannot be set",
        );
        dir.error(
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            "`allow` is not one of deny, sameorigin",
        );
        dir.error(
            "basic_auth_users:\n  prometheus: plaintext\n",
            "the password hash of `prometheus` is not a bcrypt hash",
        );
    }

    #[test]
    fn client_auth_types() {
        let dir = Dir::new("client-auth");
        for (auth, ca) in [
            ("NoClientCert", false),
            ("\"\"", false),
            ("RequestClientCert", false),
            ("RequireAnyClientCert", false),
            ("RequireClientCert", false),
            ("VerifyClientCertIfGiven", true),
            ("RequireAndVerifyClientCert", true),
        ] {
            let ca = if ca { "  client_ca_file: ca.crt\n" } else { "" };
            let text = format!("{TLS}  client_auth_type: {auth}\n{ca}");
            let config = dir
                .parse(&text)
                .unwrap_or_else(|err| panic!("{auth}: {err}"));
            assert!(config.tls.is_some(), "{auth}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = Dir::new("load");
        let path = dir.0.join("web-config.yml");
        let err = WebConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "--web.config.file {}: cannot read it",
                path.display()
            )),
            "{err}"
        );
        std::fs::write(&path, TLS).unwrap();
        // Relative paths are relative to the file, not to the working directory.
        assert!(WebConfig::load(&path).unwrap().tls.is_some());
    }
}
