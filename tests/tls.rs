//! TLS on the secure ports, checked with real clients: curl, `openssl s_client`, and a rustls
//! client for pipelining. Client certificates are made with the `openssl` command line.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Builder, Server};
use tidepool_io::rustls;

struct Secure {
    server: Server,
    rest: SocketAddr,
    ops: SocketAddr,
}

impl Secure {
    fn start(builder: Builder) -> Secure {
        let server = builder
            .arg("--HTTP_SECUREPORT", "127.0.0.1:0")
            .arg("--OPERATIONSAPI_NETWORK_SECUREPORT", "127.0.0.1:0")
            .start();
        let mut rest = None;
        let mut ops = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while rest.is_none() || ops.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server
                .lines
                .recv_timeout(left)
                .expect("server did not report its secure listeners");
            let addr = || {
                line.split(" listening on ")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if line.contains("[notify]: HTTPS REST (http.securePort)") {
                rest = addr();
            } else if line.contains("[notify]: HTTPS Operations API") {
                ops = addr();
            }
        }
        Secure {
            rest: rest.unwrap(),
            ops: ops.unwrap(),
            server,
        }
    }

    fn keys(&self) -> PathBuf {
        self.server.root.path().join("keys")
    }

    fn ca(&self) -> PathBuf {
        self.keys().join("ca.pem")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.rest.port())
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install {program})"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `curl` with the generated CA; returns (exit code, stdout, stderr).
fn curl(secure: &Secure, extra: &[&str], url: &str) -> (Option<i32>, String, String) {
    let ca = secure.ca();
    let mut args = vec!["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(url);
    let out = run("curl", &args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn first_start_generates_ca_signed_certificate() {
    let secure = Secure::start(Builder::new());
    let keys = secure.keys();
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("caPrivateKey.pem", 0o600),
        ("certificate.pem", 0o644),
        ("privateKey.pem", 0o600),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(keys.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    // openssl agrees the certificate chains to the CA for localhost.
    let out = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            secure.ca().to_str().unwrap(),
            "-verify_hostname",
            "localhost",
            keys.join("certificate.pem").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ]
        .into_iter()
        .chain([keys.join("certificate.pem").to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    let shown = text(&out.stdout);
    for name in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(shown.contains(name), "{name} missing in {shown}");
    }
    // A start on a root that has the files keeps them.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("keys")).unwrap();
    for file in [
        "ca.pem",
        "caPrivateKey.pem",
        "certificate.pem",
        "privateKey.pem",
    ] {
        std::fs::copy(keys.join(file), root.path().join("keys").join(file)).unwrap();
    }
    let before = std::fs::read(keys.join("certificate.pem")).unwrap();
    let again = Secure::start(Builder::new().root(root));
    assert_eq!(
        std::fs::read(again.keys().join("certificate.pem")).unwrap(),
        before
    );
    let (code, body, err) = curl(&again, &[], &again.url("/health"));
    assert_eq!((code, body.as_str()), (Some(0), "OK"), "{err}");
}

#[test]
fn curl_and_openssl_verify_both_secure_ports() {
    let secure = Secure::start(Builder::new());
    let (code, body, err) = curl(&secure, &["-w", " %{http_code}"], &secure.url("/health"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(body, "OK 200");
    let ops = format!("https://127.0.0.1:{}/health", secure.ops.port());
    let (code, body, err) = curl(&secure, &["-w", " %{http_code}"], &ops);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(body, "OK 200");
    // Without the CA, curl refuses the certificate: it really is checked.
    let out = run("curl", &["-sS", "--max-time", "10", &secure.url("/health")]);
    assert!(!out.status.success());

    let connect = format!("127.0.0.1:{}", secure.rest.port());
    let ca = secure.ca();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
            ca.to_str().unwrap(),
            "-alpn",
            "http/1.1",
        ],
    );
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    assert!(shown.contains("ALPN protocol: http/1.1"), "{shown}");
}

#[test]
fn old_protocol_versions_refused() {
    let secure = Secure::start(Builder::new());
    let connect = format!("127.0.0.1:{}", secure.rest.port());
    // SECLEVEL=0 so it is our server refusing, not the local OpenSSL policy.
    for version in ["-tls1", "-tls1_1"] {
        let out = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
        );
        assert!(!out.status.success(), "{version} was accepted");
        let shown = text(&out.stdout);
        assert!(!shown.contains("BEGIN CERTIFICATE"), "{version}: {shown}");
    }
    for (version, expected) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = run("openssl", &["s_client", "-connect", &connect, version]);
        let shown = text(&out.stdout);
        assert!(out.status.success(), "{version}: {}", text(&out.stderr));
        assert!(
            shown.contains(&format!("New, {expected}, Cipher")),
            "{shown}"
        );
    }
}

fn tls_client(ca: &Path) -> rustls::ClientConnection {
    let config = tidepool::server::tls::client_config(ca, None, &[b"http/1.1"]).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(config, name).unwrap()
}

/// Reads until `count` responses to `GET /health` ("...\r\n\r\nOK") have arrived.
fn read_health_responses(tls: &mut impl Read, count: usize) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while text(&got).matches("\r\n\r\nOK").count() < count {
        let n = tls.read(&mut chunk).expect("read over TLS");
        assert!(n > 0, "closed early after {}", text(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    text(&got)
}

#[test]
fn keep_alive_and_pipelining_over_tls() {
    let secure = Secure::start(Builder::new());
    let tcp = TcpStream::connect(secure.rest).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(tls_client(&secure.ca()), tcp);
    let get = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Keep-alive: one request, its answer, another on the same connection.
    for _ in 0..2 {
        tls.write_all(get).unwrap();
        let got = read_health_responses(&mut tls, 1);
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Pipelining: five requests in one write, answered in order.
    let batch: Vec<u8> = get.repeat(5);
    tls.write_all(&batch).unwrap();
    let got = read_health_responses(&mut tls, 5);
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 5, "{got}");

    // curl with several URLs reuses one connection.
    let url = secure.url("/health");
    let (code, out, err) = curl(&secure, &["-w", "[%{num_connects}]", &url, &url], &url);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "OK[1]OK[0]OK[0]");
}

#[test]
fn large_bodies_cross_many_records() {
    let secure = Secure::start(Builder::new());
    // Larger than rustls's 64 KiB send buffer and many 16 KiB records each way.
    let owner = "x".repeat(700 * 1024);
    let body = format!("{{\"id\":\"big\",\"name\":\"Rex\",\"owner\":\"{owner}\"}}");
    let file = secure.server.root.path().join("big.json");
    std::fs::write(&file, &body).unwrap();
    let data = format!("@{}", file.display());
    let (code, out, err) = curl(
        &secure,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
        ],
        &secure.url("/Dog/big"),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with('2'), "PUT answered {out}");
    let (code, out, err) = curl(&secure, &[], &secure.url("/Dog/big"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&owner), "GET returned {} bytes", out.len());
}

/// A client key and certificate for `cn`, signed by `ca`/`ca_key`.
fn client_certificate(dir: &Path, cn: &str, ca: &Path, ca_key: &Path) -> (PathBuf, PathBuf) {
    let extensions = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    issue(dir, cn, ca, ca_key, extensions)
}

/// A key and a certificate for `cn` with `extensions`, signed by `ca`/`ca_key`.
fn issue(dir: &Path, cn: &str, ca: &Path, ca_key: &Path, extensions: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{cn}.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let cert = dir.join(format!("{cn}.pem"));
    let ext = dir.join(format!("{cn}.ext"));
    std::fs::write(&ext, extensions).unwrap();
    let subject = format!("/CN={cn}");
    let out = run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-subj",
            &subject,
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    (cert, key)
}

/// A CA that the server does not trust.
fn other_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("other-ca.key");
    let cert = dir.join("other-ca.pem");
    let out = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-subj",
            "/CN=other CA",
            "-days",
            "30",
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    (cert, key)
}

fn mtls_check(mtls: &str, cases: &[(&str, bool)]) {
    let secure = Secure::start(Builder::new().arg("--HTTP_MTLS", mtls));
    let dir = tempfile::tempdir().unwrap();
    let keys = secure.keys();
    let trusted = client_certificate(
        dir.path(),
        "alice",
        &keys.join("ca.pem"),
        &keys.join("caPrivateKey.pem"),
    );
    let (other_cert, other_key) = other_ca(dir.path());
    let untrusted = client_certificate(dir.path(), "mallory", &other_cert, &other_key);
    for (who, accepted) in cases {
        let mut extra: Vec<&str> = vec!["-w", " %{http_code}"];
        let pair = match *who {
            "trusted" => Some(&trusted),
            "untrusted" => Some(&untrusted),
            _ => None,
        };
        if let Some((cert, key)) = pair {
            extra.extend([
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ]);
        }
        let (code, out, err) = curl(&secure, &extra, &secure.url("/health"));
        if *accepted {
            assert_eq!(code, Some(0), "mtls {mtls}, {who}: {err}");
            assert_eq!(out, "OK 200", "mtls {mtls}, {who}");
        } else {
            assert_ne!(code, Some(0), "mtls {mtls}: {who} was accepted: {out}");
        }
    }
    // The plain port is unaffected.
    let plain = ureq::get(&secure.server.url("/health")).call().unwrap();
    assert_eq!(plain.status(), 200);
}

#[test]
fn mtls_required_refuses_unknown_and_missing_certificates() {
    mtls_check(
        r#"{"required": true}"#,
        &[("trusted", true), ("untrusted", false), ("none", false)],
    );
}

#[test]
fn mtls_optional_accepts_no_certificate_but_not_a_bad_one() {
    mtls_check(
        "true",
        &[("trusted", true), ("none", true), ("untrusted", false)],
    );
}

#[test]
fn silent_handshake_does_not_hold_shutdown() {
    let mut secure = Secure::start(Builder::new());
    // A client that connects and never says hello.
    let _silent = TcpStream::connect(secure.rest).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    secure.server.signal(libc::SIGTERM);
    let exit = secure.server.wait_exit(Duration::from_secs(5));
    assert_eq!(exit, Some(Some(0)), "no clean exit within 5 s");
}

/// The subject line `openssl s_client` shows for a secure port, verified against the CA.
fn served_subject(secure: &Secure, port: u16) -> String {
    let connect = format!("127.0.0.1:{port}");
    let ca = secure.ca();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
            ca.to_str().unwrap(),
        ],
    );
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}{}", text(&out.stderr));
    shown
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_string()
}

/// Waits for `needle` in `<root>/log/hdb.log` (errors go only there), at its `count`th occurrence.
fn wait_for_log(secure: &Secure, needle: &str, count: usize) {
    let path = secure.server.root.path().join("log/hdb.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.matches(needle).count() >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no log line containing {needle:?} in {}", path.display());
}

#[test]
fn sighup_reloads_the_certificate() {
    let secure = Secure::start(Builder::new());
    let keys = secure.keys();
    let rest = secure.rest.port();
    let mqtts = mqtts_addr(&secure).port();
    let first = served_subject(&secure, rest);
    assert!(!first.contains("renewed"), "{first}");

    // A broken file: the reload fails and the running certificate stays.
    let original_key = std::fs::read(keys.join("privateKey.pem")).unwrap();
    std::fs::write(keys.join("privateKey.pem"), "not a key").unwrap();
    secure.server.signal(libc::SIGHUP);
    wait_for_log(&secure, "not reloaded", 1);
    assert_eq!(served_subject(&secure, rest), first);
    std::fs::write(keys.join("privateKey.pem"), &original_key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue(
        dir.path(),
        "renewed",
        &keys.join("ca.pem"),
        &keys.join("caPrivateKey.pem"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    std::fs::copy(&cert, keys.join("certificate.pem")).unwrap();
    std::fs::copy(&key, keys.join("privateKey.pem")).unwrap();
    secure.server.signal(libc::SIGHUP);
    wait_for_log(&secure, "reloaded the TLS certificate", 1);
    // One certificate slot serves every secure port, MQTT's included.
    for port in [rest, mqtts] {
        let now = served_subject(&secure, port);
        assert!(now.contains("CN = renewed"), "port {port}: {now}");
    }
    let (code, body, err) = curl(&secure, &[], &secure.url("/health"));
    assert_eq!((code, body.as_str()), (Some(0), "OK"), "{err}");
}

/// The MQTT secure port's address, from the start-up lines `Secure::start` left unread.
fn mqtts_addr(secure: &Secure) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = secure
            .server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server reports its MQTT secure listener");
        if let Some(rest) = line
            .split("MQTTS (mqtt.network.securePort) listening on ")
            .nth(1)
        {
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
}

/// `mqtt.network.mtls` (docs/security.md): a certificate from the trusted CA authenticates the client
/// as the user its CN names; an unknown user is not authorized, an untrusted certificate fails
/// the handshake; with `required` a client without one is refused, otherwise it logs in as usual.
#[test]
fn mqtt_mtls_maps_certificates_to_users() {
    for (mtls, required) in [(r#"{"required": true}"#, true), ("true", false)] {
        let secure = Secure::start(
            Builder::new()
                .require_credentials()
                .arg("--MQTT_NETWORK_MTLS", mtls),
        );
        let mqtts = mqtts_addr(&secure).port().to_string();
        let dir = tempfile::tempdir().unwrap();
        let keys = secure.keys();
        let (ca, ca_key) = (keys.join("ca.pem"), keys.join("caPrivateKey.pem"));
        let admin = client_certificate(dir.path(), common::ADMIN_USER, &ca, &ca_key);
        let nobody = client_certificate(dir.path(), "nobody", &ca, &ca_key);
        let (other_cert, other_key) = other_ca(dir.path());
        let untrusted = client_certificate(dir.path(), "mallory", &other_cert, &other_key);
        let password = ["-u", common::ADMIN_USER, "-P", common::ADMIN_PASSWORD];
        type Case<'a> = (&'a str, Option<&'a (PathBuf, PathBuf)>, &'a [&'a str], bool);
        let cases: [Case; 5] = [
            ("admin certificate", Some(&admin), &[], true),
            ("unknown user's certificate", Some(&nobody), &[], false),
            ("untrusted certificate", Some(&untrusted), &password, false),
            ("no certificate", None, &[], false),
            ("no certificate, password", None, &password, !required),
        ];
        for (who, pair, extra, accepted) in cases {
            let mut args = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &mqtts,
                "--cafile",
                ca.to_str().unwrap(),
                "-t",
                "Dog/mtls",
                "-r",
                "-m",
                r#"{"name":"by certificate"}"#,
            ];
            if let Some((cert, key)) = pair {
                args.extend(["--cert", cert.to_str().unwrap()]);
                args.extend(["--key", key.to_str().unwrap()]);
            }
            args.extend_from_slice(extra);
            let out = run("mosquitto_pub", &args);
            assert_eq!(
                out.status.success(),
                accepted,
                "mtls {mtls}, {who}: {}",
                text(&out.stderr)
            );
        }
    }
}

fn put_over_tls(secure: &Secure, path: &str, body: &str) {
    let headers = [
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    let (code, _, err) = curl(secure, &headers, &secure.url(path));
    assert_eq!(code, Some(0), "PUT {path}: {err}");
}

/// docs/realtime.md over `wss://`: the 101 is answered on the secure port, the record's state comes
/// first, then a change made afterwards; the client's close is echoed.
#[test]
fn websocket_subscription_over_tls() {
    let secure = Secure::start(Builder::new());
    put_over_tls(&secure, "/Dog/wss1", r#"{"name":"before"}"#);
    let tcp = TcpStream::connect(secure.rest).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = rustls::StreamOwned::new(tls_client(&secure.ca()), tcp);
    let url = format!("wss://localhost:{}/Dog/wss1", secure.rest.port());
    let (mut ws, response) = tungstenite::client(url.as_str(), tls).expect("wss handshake");
    assert_eq!(response.status(), 101);
    let mut next = || loop {
        match ws.read().expect("event") {
            tungstenite::Message::Text(t) => {
                break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()
            }
            _ => continue,
        }
    };
    let first = next();
    assert_eq!(first["type"], "put", "{first}");
    assert_eq!(first["value"]["name"], "before", "{first}");
    put_over_tls(&secure, "/Dog/wss1", r#"{"name":"after"}"#);
    let second = next();
    assert_eq!(second["value"]["name"], "after", "{second}");
    ws.close(None).unwrap();
    // The server answers the close; reading then ends the connection cleanly.
    let mut ended = false;
    for _ in 0..10 {
        match ws.read() {
            Ok(_) => continue,
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended);
}

/// docs/realtime.md over `https://`: `curl --cacert` receives the state and a later change as events.
#[test]
fn sse_subscription_over_tls() {
    let secure = Secure::start(Builder::new());
    put_over_tls(&secure, "/Dog/sse1", r#"{"name":"before"}"#);
    let ca = secure.ca();
    let url = secure.url("/Dog/sse1");
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "20",
            "--cacert",
            ca.to_str().unwrap(),
        ])
        .args(["-H", "Accept: text/event-stream", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("data: ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut data = vec![rx
        .recv_timeout(Duration::from_secs(10))
        .expect("state event")];
    put_over_tls(&secure, "/Dog/sse1", r#"{"name":"after"}"#);
    data.push(
        rx.recv_timeout(Duration::from_secs(10))
            .expect("change event"),
    );
    let _ = child.kill();
    let _ = child.wait();
    let shown = data.join("\n");
    assert!(
        data[0].contains("before") && data[1].contains("after"),
        "{shown}"
    );
}
