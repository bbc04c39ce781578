//! systemd integration: `NOTIFY_SOCKET` gets READY=1 only once every listener accepts, WATCHDOG=1
//! keeps coming while the cores run, STOPPING=1 at shutdown; the unit file verifies.

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
