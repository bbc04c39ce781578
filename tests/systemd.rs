//! systemd integration: `NOTIFY_SOCKET` gets READY=1 only once every listener accepts, WATCHDOG=1
//! keeps coming while the cores run, STOPPING=1 at shutdown; the unit file verifies and rates well
//! in `systemd-analyze security`; deploy/README.md's install steps run and the installed server
//! starts as its unit says.

mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Builder;

#[test]
fn ready_after_listeners_then_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = Builder::new()
        .env("NOTIFY_SOCKET", socket_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    // Every listener was bound before READY: both ports accept right now.
    TcpStream::connect(server.rest).expect("REST accepts at READY");
    TcpStream::connect(server.ops).expect("Operations API accepts at READY");
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let n = socket.recv(&mut buf).expect("WATCHDOG=1 keeps coming");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        pings += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    server.signal(libc::SIGTERM);
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 at shutdown");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(Some(0)));
}

#[test]
fn unit_file_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: no systemd-analyze here");
        return;
    };
    assert!(out.status.success());
    // Point the unit at the binary under test; everything else is verified as shipped.
    let unit = std::fs::read_to_string(common::repo_path("deploy/tidepool.service")).unwrap();
    let unit = unit.replace("/usr/bin/tidepool", common::BIN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidepool.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A machine without the `tidepool` user only warns about it; anything else is a unit error.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !l.contains("User=")
                && !l.contains("Group=")
                && !l.contains("tidepool: ")
                && !l.contains("Documentation=")
        })
        .collect();
    assert!(
        out.status.success() || problems.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    assert!(problems.is_empty(), "{problems:?}");
}

/// deploy/README.md's install block, run as written with `PREFIX` set to a scratch folder (the
/// lines that need the `tidepool` user or a running systemd are skipped), then the installed
/// binary started the way the installed unit starts it: the FHS layout works end to end.
#[test]
fn readme_install_steps_run_in_a_scratch_prefix() {
    let readme = std::fs::read_to_string(common::repo_path("deploy/README.md")).unwrap();
    let install = readme
        .split("## Install")
        .nth(1)
        .expect("an Install section");
    let block = install
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block under Install");
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path().to_str().unwrap();
    let needs_machine = ["cargo build", "useradd", "chown", "systemctl", "journalctl"];
    let mut script = String::from("set -eu\n");
    let mut ran = 0;
    for line in block.lines() {
        if needs_machine.iter().any(|m| line.contains(m)) {
            continue;
        }
        let line = if line.trim() == "PREFIX=" {
            format!("PREFIX={p}")
        } else {
            line.replace("target/release/tidepool", common::BIN)
        };
        script.push_str(&line);
        script.push('\n');
        ran += 1;
    }
    assert!(ran >= 6, "too few install lines left to run: {script}");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(common::repo_path(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install steps failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "usr/bin/tidepool",
        "etc/tidepool/harperdb-config.yaml",
        "etc/tidepool/app/schema.graphql",
        "etc/systemd/system/tidepool.service",
    ] {
        assert!(prefix.path().join(file).is_file(), "{file} not installed");
    }
    assert!(prefix.path().join("var/lib/tidepool").is_dir());

    // Start it as the installed unit does: ExecStart's arguments, Environment='s variables.
    let unit =
        std::fs::read_to_string(prefix.path().join("etc/systemd/system/tidepool.service")).unwrap();
    let in_prefix = |s: &str| {
        s.replace("/usr/bin/", &format!("{p}/usr/bin/"))
            .replace("/etc/tidepool", &format!("{p}/etc/tidepool"))
            .replace("/var/lib/tidepool", &format!("{p}/var/lib/tidepool"))
    };
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    assert!(
        !exec.contains("--cores"),
        "cores come from the affinity mask"
    );
    let words: Vec<String> = in_prefix(exec)
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut cmd = std::process::Command::new(&words[0]);
    cmd.args(&words[1..]);
    cmd.env_remove("ROOTPATH").env_remove("HDB_CONFIG");
    for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        for pair in in_prefix(line).split_whitespace() {
            let (k, v) = pair.split_once('=').expect("KEY=value");
            cmd.env(k, v);
        }
    }
    for key in [
        "--HTTP_PORT",
        "--OPERATIONSAPI_NETWORK_PORT",
        "--MQTT_NETWORK_PORT",
        "--MQTT_NETWORK_SECUREPORT",
    ] {
        cmd.args([key, "127.0.0.1:0"]);
    }
    cmd.env("HDB_ADMIN_USERNAME", common::ADMIN_USER)
        .env("HDB_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let config_before =
        std::fs::read(prefix.path().join("etc/tidepool/harperdb-config.yaml")).unwrap();
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut rest = None;
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(addr) = common::listener_addr(&line, "REST") {
            rest = Some(addr);
            break;
        }
        seen.push(line);
    }
    let Some(rest) = rest else {
        let _ = child.kill();
        panic!("installed server did not start: {}", seen.join("\n"));
    };
    let health = ureq::get(&format!("http://{rest}/health")).call();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(health.is_ok(), "{health:?}");
    assert!(status.success(), "{status:?}");
    // Data went to /var/lib/tidepool; the configuration in /etc was read, not rewritten.
    assert!(prefix.path().join("var/lib/tidepool/database").is_dir());
    assert!(!prefix
        .path()
        .join("var/lib/tidepool/harperdb-config.yaml")
        .exists());
    let config_after =
        std::fs::read(prefix.path().join("etc/tidepool/harperdb-config.yaml")).unwrap();
    assert_eq!(config_before, config_after);
}

/// The unit's sandboxing, as `systemd-analyze security` rates it offline: 2.0 or better
/// (deploy/README.md says why the remaining exposure stays).
#[test]
fn unit_sandboxing_rates_well() {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(common::repo_path("deploy/tidepool.service"))
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no systemd-analyze here");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(level) = text
        .lines()
        .find_map(|l| l.split("exposure level for tidepool.service: ").nth(1))
    else {
        eprintln!("skipped: this systemd-analyze has no offline security rating: {text}");
        return;
    };
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 2.0, "exposure {score}: {text}");
}
