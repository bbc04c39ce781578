//! The command line as an operator meets it (docs/cli.md): `--help` on every command without
//! side effects, `--KEY=value`, mistakes that stop the start with the nearest right word, warnings
//! on stderr, `status`/`stop` by the root's lock, and `tidepool <operation> key=value`.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Builder, ADMIN_PASSWORD, ADMIN_USER, BIN};

fn tidepool(args: &[&str], home: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env_remove("ROOTPATH")
        .env_remove("HDB_CONFIG")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_on_every_command_touches_nothing() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["help"],
        &["run", "--help"],
        &["run", "-h"],
        &["run", "app", "--help"],
        &["dev", "--help"],
        &["status", "--help"],
        &["stop", "-h"],
        &["describe_all", "--help"],
        &["help", "settings"],
    ] {
        let out = tidepool(args, home.path());
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).is_empty(), "{args:?} printed nothing");
    }
    // No root was made in the home folder by asking for help.
    assert!(!home.path().join("hdb").exists());
    let run_help = stdout(&tidepool(&["run", "--help"], home.path()));
    assert!(run_help.contains("docs/configuration.md"), "{run_help}");
    assert!(run_help.contains("--share-ports"), "{run_help}");
    let settings = stdout(&tidepool(&["help", "settings"], home.path()));
    assert!(settings.contains("keepAliveTimeout"), "{settings}");
}

#[test]
fn mistakes_stop_the_start_with_a_suggestion() {
    let home = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    let app = common::repo_path("deploy/app");
    let app = app.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["run", app, "--root", root_arg, "--core", "2"],
            "did you mean --cores?",
        ),
        (
            vec!["run", app, "--root", root_arg, "--HTTP_PROT", "51000"],
            "did you mean --HTTP_PORT?",
        ),
        (
            vec!["run", app, "--root", root_arg, "--cores=two"],
            "--cores takes a whole number",
        ),
        (vec!["rnu", app], "did you mean `tidepool run`?"),
        (vec!["stats"], "did you mean `tidepool status`?"),
    ] {
        let out = tidepool(&args, home.path());
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A misspelt section in harperdb-config.yaml.
    std::fs::write(
        root.path().join("harperdb-config.yaml"),
        "loging:\n  level: info\n",
    )
    .unwrap();
    let out = tidepool(&["run", app, "--root", root_arg], home.path());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown configuration key loging; did you mean logging?"),
        "{}",
        stderr(&out)
    );
    // A misspelt key in the application's config.yaml.
    let app_dir = tempfile::tempdir().unwrap();
    common::write_schema_app(
        app_dir.path(),
        "type Dog @table @export { id: ID @primaryKey }",
    );
    std::fs::write(
        app_dir.path().join("config.yaml"),
        "graphqlSchem:\n  files: '*.graphql'\n",
    )
    .unwrap();
    std::fs::remove_file(root.path().join("harperdb-config.yaml")).unwrap();
    let out = Builder::new()
        .app(app_dir.path())
        .command(root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did you mean \"graphqlSchema\"?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn harperdb_settings_start_with_a_warning_on_stderr() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("harperdb-config.yaml"),
        "clustering:\n  enabled: true\n  hubServer:\n    cluster:\n      network:\n        port: 9932\n",
    )
    .unwrap();
    let mut child = Builder::new()
        .command(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
        let listening = common::listener_addr(&line, "REST").is_some();
        seen.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("[warn]") && l.contains("clustering is a HarperDB setting")),
        "{seen:#?}"
    );
}

#[test]
fn status_stop_and_operations_by_the_root() {
    let home = tempfile::tempdir().unwrap();
    let server = Builder::new().require_credentials().start();
    let root = server.root.path().to_str().unwrap().to_string();
    let out = tidepool(&["status", "--root", &root], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("pid {}", server.pid())));

    // Operations against the running server, at the address it recorded (port 0 here).
    let user = format!("username={ADMIN_USER}");
    let password = format!("password={ADMIN_PASSWORD}");
    let op = |words: &[&str]| {
        let mut args = words.to_vec();
        args.extend([user.as_str(), password.as_str(), "--root", root.as_str()]);
        let out = tidepool(&args, home.path());
        assert!(out.status.success(), "{words:?}: {}", stderr(&out));
        stdout(&out)
    };
    let answer = op(&["sql", "sql=SELECT 2 + 2 AS four", "json=true"]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, serde_json::json!([{"four": 4}]));
    let made = op(&[
        "create_table",
        "database=cli",
        "table=dog",
        "primary_key=id",
    ]);
    assert!(made.contains("message:"), "YAML: {made}");
    op(&[
        "insert",
        "database=cli",
        "table=dog",
        r#"records=[{"id":1,"name":"Penny"}]"#,
    ]);
    let found = op(&[
        "search_by_id",
        "database=cli",
        "table=dog",
        "ids=[1]",
        "json=true",
    ]);
    assert!(found.contains("Penny"), "{found}");
    // Without credentials: the server's refusal, and what to give.
    let out = tidepool(&["describe_all", "--root", &root], home.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("username="), "{}", stderr(&out));

    let mut server = server;
    let out = tidepool(&["stop", "--root", &root], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.wait_exit(Duration::from_secs(5)),
        Some(Some(0)),
        "stop waited for the exit"
    );
    let out = tidepool(&["status", "--root", &root], home.path());
    assert_eq!(out.status.code(), Some(3));
}
