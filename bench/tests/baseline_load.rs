//! Starts the real `baseline` responder on port 0 and drives a short `http` load at it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_tidepool-bench");

/// Kills the baseline if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_baseline() -> Result<(Server, String)> {
    let mut child = Command::new(BIN)
        .args(["baseline", "--listen", "127.0.0.1:0", "--cores", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning baseline")?;
    let stdout = child.stdout.take().context("baseline stdout")?;
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        bail!("baseline printed {line:?} instead of its address");
    };
    Ok((server, addr.to_string()))
}

#[test]
fn http_load_against_baseline() -> Result<()> {
    let (mut server, addr) = start_baseline()?;
    let output = Command::new(BIN)
        .args([
            "http",
            "--target",
            &addr,
            "--conns",
            "4",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .context("running http load")?;
    assert!(
        output.status.success(),
        "http load against {addr} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("report: {}", String::from_utf8_lossy(&output.stdout)))?;
    let requests = report["requests"].as_u64().context("requests")?;
    assert!(
        requests > 0,
        "no requests completed against {addr}: {report}"
    );
    let status = report["status"].as_object().context("status")?;
    assert_eq!(status.keys().collect::<Vec<_>>(), ["200"], "{report}");
    assert_eq!(status["200"].as_u64(), Some(requests), "{report}");
    for kind in ["connect", "reset", "closed", "parse"] {
        assert_eq!(
            report["errors"][kind].as_u64(),
            Some(0),
            "{kind} errors: {report}"
        );
    }
    assert!(
        report["latency_us"]["p50"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );

    // SIGTERM stops the baseline cleanly.
    let pid = libc::pid_t::try_from(server.0.id())?;
    // SAFETY: sends a signal to our own child process; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = server.0.wait()?;
    assert!(
        status.success(),
        "baseline exited with {status} after SIGTERM"
    );
    Ok(())
}
