//! The store's two boundaries, checked on the source text (DESIGN.md "Threads", STYLE.md
//! "Layout"): only the writer opens LMDB write transactions, and only `src/store/` imports heed.
//! An executor thread that opened a write transaction would block its core on LMDB's writer lock
//! and on fsync, and a second writer path would break the one order of a database's changes.

use std::path::{Path, PathBuf};

/// Places outside `src/store/writer.rs` allowed to open a write transaction: (file, enclosing
/// function, why it cannot deadlock with or reorder the writer).
const WRITE_TXN_ALLOWED: &[(&str, &str, &str)] = &[
    (
        "src/store/mod.rs",
        "create_db",
        "creates a sub-database in its own transaction; called while a database opens (before its \
         writer thread starts) and from ensure_table, which runs on the writer thread",
    ),
    (
        "src/store/grow.rs",
        "write_step",
        "holds LMDB's writer lock (a write transaction it aborts, writing nothing through it) while \
         it writes zeros past the file's end; called only from the writer thread's loop, between \
         commits (docs/design.md \"Writing the file ahead\")",
    ),
    (
        "src/store/tests.rs",
        "the_index_checker_reports_stray_and_missing_entries",
        "a unit test damages an index behind the writer's back to prove the checker sees it",
    ),
];

/// The writer's own file: group commit (`commit_batch`) and table creation (`ensure_table`, on
/// the writer thread or before it starts).
const WRITER_FILE: &str = "src/store/writer.rs";

const WRITE_TXN_CALLS: &[&str] = &["write_txn(", "nested_write_txn("];
const HEED_USES: &[&str] = &["heed::", "use heed", "extern crate heed"];

#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    function: String,
    what: &'static str,
}

/// Finds write-transaction openings outside the allowed places and heed imports outside the store
/// in one file's text. `file` is the path relative to the repository root.
fn scan(file: &str, text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut function = String::new();
    for (n, raw) in text.lines().enumerate() {
        // Comments may name these calls; only code counts.
        let code = raw.split("//").next().unwrap_or("");
        if let Some(name) = function_name(code) {
            function = name;
        }
        if WRITE_TXN_CALLS.iter().any(|c| code.contains(c))
            && file != WRITER_FILE
            && !WRITE_TXN_ALLOWED
                .iter()
                .any(|(f, func, _)| *f == file && *func == function)
        {
            out.push(Violation {
                file: file.into(),
                line: n + 1,
                function: function.clone(),
                what: "opens a write transaction",
            });
        }
        if HEED_USES.iter().any(|u| code.contains(u)) && !file.starts_with("src/store/") {
            out.push(Violation {
                file: file.into(),
                line: n + 1,
                function: function.clone(),
                what: "uses heed outside src/store/",
            });
        }
    }
    out
}

/// The name of the function a line declares, if it declares one.
fn function_name(code: &str) -> Option<String> {
    let at = code.find("fn ")?;
    let before = &code[..at];
    if !before.trim().is_empty()
        && !before.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "async" | "unsafe" | "const" | "extern"
            )
        })
    {
        return None;
    }
    let name: String = code[at + 3..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn write_transactions_only_on_the_writer_and_heed_only_in_the_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "io_uring"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} Rust files; is the repository layout unchanged?",
        files.len()
    );
    let mut violations = Vec::new();
    let mut allowed_seen = vec![false; WRITE_TXN_ALLOWED.len()];
    for path in &files {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        violations.extend(scan(&rel, &text));
        for (i, (file, _, _)) in WRITE_TXN_ALLOWED.iter().enumerate() {
            if *file == rel {
                allowed_seen[i] = true;
            }
        }
    }
    assert!(
        violations.is_empty(),
        "store boundary broken:\n{}",
        violations
            .iter()
            .map(|v| format!("  {}:{} (in fn {}) {}", v.file, v.line, v.function, v.what))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A stale allowance would hide nothing today but silently permit a new opening tomorrow.
    for (seen, (file, func, _)) in allowed_seen.iter().zip(WRITE_TXN_ALLOWED) {
        assert!(
            seen,
            "allowed place {file} (fn {func}) no longer exists; drop it from the list"
        );
    }
}

fn check(file: &str, text: &str, expected: &[(usize, &str, &str)]) {
    let got: Vec<(usize, String, &str)> = scan(file, text)
        .into_iter()
        .map(|v| (v.line, v.function, v.what))
        .collect();
    let expected: Vec<(usize, String, &str)> = expected
        .iter()
        .map(|(l, f, w)| (*l, f.to_string(), *w))
        .collect();
    assert_eq!(got, expected, "{file}:\n{text}");
}

#[test]
fn the_scanner_finds_what_it_must() {
    let w = "opens a write transaction";
    let h = "uses heed outside src/store/";
    check(
        "src/resource/mod.rs",
        "fn f() {\n    let t = env.write_txn()?;\n}",
        &[(2, "f", w)],
    );
    check(
        "src/store/read.rs",
        "pub(super) fn g() {\n    let n = env.nested_write_txn(&mut t)?;\n}",
        &[(2, "g", w)],
    );
    check("src/store/writer.rs", "fn any() { env.write_txn() }", &[]);
    check(
        "src/store/mod.rs",
        "fn create_db() {\n env.write_txn()\n}",
        &[],
    );
    check(
        "src/store/mod.rs",
        "fn other() {\n env.write_txn()\n}",
        &[(2, "other", w)],
    );
    check(
        "src/server/mod.rs",
        "use heed::Env;\n// heed::Env in a comment",
        &[(1, "", h)],
    );
    check("src/store/read.rs", "use heed::{RoTxn, WithoutTls};", &[]);
    check(
        "io_uring/src/lib.rs",
        "// env.write_txn() is only mentioned",
        &[],
    );
}
