//! docs/quickstart.md, run as a reader would: every `sh` block's commands as written, in order,
//! against a server started by the first block (the test's binary in place of `cargo run`, a
//! temporary root in place of `/tmp/tidepool`, the documented ports 9926/9925/1883), and the
//! answers the page promises checked. The Python block runs as `dogs.py`. The browser page is
//! covered by `tests/realtime.rs` (`browser_event_source_and_websocket`, headless Chromium); its
//! `python3 -m http.server` line is the one command not run here.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The page's fenced blocks in order: (language, text).
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some((_, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// A block's commands, continuation lines (`\` at the end) joined.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        if !pending.trim().is_empty() {
            out.push(std::mem::take(&mut pending));
        }
        pending.clear();
    }
    out
}

fn shell(command: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(command);
    c
}

/// A command that runs until stopped (a subscriber), its stdout collected when stopped.
struct Background {
    child: Child,
}

impl Background {
    fn start(command: &str) -> Background {
        let child = shell(&format!("exec {command}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background { child }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        out
    }
}

#[test]
fn quickstart_commands_run_as_written() {
    // `mosquitto_pub --help` exits 1; that it runs at all is what counts.
    let have_mqtt = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    assert!(
        have_mqtt || std::env::var_os("TIDEPOOL_HEAVY").is_none(),
        "mosquitto-clients are needed here; TIDEPOOL_HEAVY is set, so they must not be skipped"
    );
    let have_paho = common::have_tool(
        "python3",
        &["-c", "import paho.mqtt.client"],
        "pip install paho-mqtt",
    );
    let page = std::fs::read_to_string(common::repo_path("docs/quickstart.md")).unwrap();
    let blocks = fenced_blocks(&page);
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_str().unwrap();

    // 1. The start command.
    let (lang, start) = &blocks[0];
    assert_eq!(lang, "sh");
    assert!(start.contains("cargo run --release -- run deploy/app --root /tmp/tidepool"));
    let start = commands(start)[0]
        .replace("cargo run --release --", common::BIN)
        .replace("/tmp/tidepool", root_path);
    let mut server = shell(&format!("exec env {start}"))
        .current_dir(common::repo_path(""))
        .env_remove("ROOTPATH")
        .env_remove("HDB_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("MQTT (mqtt.network.port) listening"))
    {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = server.kill();
                panic!("the quick start's server did not start: {seen:#?}");
            }
        }
    }

    // 2. Every later block, command by command.
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut background: Vec<(String, Background)> = Vec::new();
    for (lang, block) in &blocks[1..] {
        match lang.as_str() {
            "sh" => {}
            "python" => {
                if have_paho {
                    let dir = tempfile::tempdir().unwrap();
                    std::fs::write(dir.path().join("dogs.py"), block).unwrap();
                    let out = Command::new("python3")
                        .arg("dogs.py")
                        .current_dir(dir.path())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "dogs.py: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    outputs.push((
                        "dogs.py".into(),
                        String::from_utf8_lossy(&out.stdout).into(),
                    ));
                }
                continue;
            }
            _ => continue, // html: see the module comment
        }
        for command in commands(block) {
            if command.starts_with("python3 -m http.server") {
                continue;
            }
            if command.starts_with("mosquitto") && !have_mqtt {
                continue;
            }
            let long_running =
                command.contains("text/event-stream") || command.starts_with("mosquitto_sub");
            if long_running {
                background.push((command.clone(), Background::start(&command)));
                std::thread::sleep(Duration::from_millis(700));
                continue;
            }
            let out = shell(&command).output().unwrap();
            assert!(
                out.status.success(),
                "{command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            outputs.push((command, String::from_utf8_lossy(&out.stdout).into()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let background: Vec<(String, String)> =
        background.into_iter().map(|(c, b)| (c, b.stop())).collect();
    let _ = server.kill();
    let _ = server.wait();

    // 3. What the page says each answers.
    let output = |needle: &str| -> &str {
        outputs
            .iter()
            .chain(background.iter())
            .find(|(c, _)| c.contains(needle))
            .map(|(_, o)| o.as_str())
            .unwrap_or_else(|| panic!("no command with {needle:?} ran"))
    };
    assert_eq!(output("/health").trim(), "OK");
    let json = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    assert_eq!(
        json(output("sort(-age)")),
        serde_json::json!([{"name": "Rex", "age": 4}, {"name": "Fido", "age": 2}])
    );
    assert_eq!(json(output("tags=friendly")), serde_json::json!(["Rex"]));
    assert!(
        output("&explain").contains("breed"),
        "{}",
        output("&explain")
    );
    assert_eq!(
        json(output("search_by_value"))[0]["name"],
        "Rex",
        "{}",
        output("search_by_value")
    );
    let sse = output("text/event-stream");
    assert!(
        sse.contains("Rex") && sse.contains("\"age\":5"),
        "SSE saw: {sse}"
    );
    if have_mqtt {
        let dog7 = output("http://localhost:9926/Dog/7");
        assert!(
            dog7.contains("Bolt") && !dog7.contains("not stored"),
            "{dog7}"
        );
        let sub = output("mosquitto_sub");
        assert!(
            sub.contains("Dog/1 ") && sub.contains("Bolt"),
            "mosquitto_sub saw: {sub}"
        );
        assert!(
            sub.contains("not stored"),
            "the plain publish reaches subscribers: {sub}"
        );
    }
    if have_paho {
        let dogs = output("dogs.py");
        assert!(dogs.contains("Dog/1 retained"), "{dogs}");
        assert!(dogs.contains("Dog/8 live"), "{dogs}");
    }
}
