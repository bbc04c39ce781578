//! `export_local` (docs/operations-api.md, "Jobs"): a search run as a job, its result written to a
//! file on the server as JSON (the array a search answers) or CSV (a header of every property
//! met, then one row per record). Super users only (the gate in `run`). The search and the file
//! write happen on the job thread, never on a core; the file is written whole through a
//! temporary file and a rename.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode::ExportLocal;
use super::{OpError, Reply, ReplyType};
use crate::resource::jobs::{self, block_on};
use crate::resource::{Caller, Resources};
use crate::value::{self, Object, Value};

/// Largest export written (the same bound as a CSV load reads).
pub const EXPORT_BYTES_MAX: usize = jobs::CSV_BYTES_MAX;

/// Where the export goes: `path` (relative to the server's root when not absolute) joined with
/// `filename`, `.<format>` added unless the name already ends with it. The folder must lie in
/// the root folder (docs/operations-api.md, "Bulk loads and jobs"): no `..`, no absolute path
/// elsewhere; [`inside_root`] checks the folder as it resolves (symbolic links) on the job.
fn target(root: &Path, export: &ExportLocal) -> Result<PathBuf, OpError> {
    let dir = Path::new(&export.path);
    let outside = || {
        OpError::bad(format!(
            "'path' must be a folder inside the server's root folder ({}), not '{}'",
            root.display(),
            export.path
        ))
    };
    if dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(outside());
    }
    let dir = if dir.is_absolute() {
        if !dir.starts_with(root) {
            return Err(outside());
        }
        dir.to_path_buf()
    } else {
        root.join(dir)
    };
    let suffix = format!(".{}", export.format);
    let name = if export.filename.ends_with(&suffix) {
        export.filename.clone()
    } else {
        format!("{}{suffix}", export.filename)
    };
    Ok(dir.join(name))
}

/// The folder of `file` as it resolves, checked against the root folder as it resolves.
fn inside_root(root: &Path, file: &Path) -> Result<(), String> {
    let dir = file.parent().unwrap_or(root);
    let shown = dir.display();
    let real = dir
        .canonicalize()
        .map_err(|e| format!("cannot use folder '{shown}': {e}"))?;
    let real_root = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve the root folder: {e}"))?;
    if !real.starts_with(&real_root) {
        return Err(format!(
            "folder '{shown}' resolves outside the server's root folder"
        ));
    }
    Ok(())
}

pub async fn start(
    resources: &Arc<Resources>,
    caller: &Caller,
    export: ExportLocal,
) -> Result<String, OpError> {
    if export.filename.is_empty() || export.filename.contains('/') {
        return Err(OpError::bad(
            "'filename' must be a file name, without '/' (put folders in 'path')",
        ));
    }
    let root = resources.config.root.clone();
    let file = target(&root, &export)?;
    let mut body = Object::new();
    body.insert("operation", Value::from("export_local"));
    body.insert("path", Value::from(export.path.as_str()));
    body.insert("filename", Value::from(export.filename.as_str()));
    body.insert("format", Value::from(export.format.as_str()));
    let r = resources.clone();
    let who = caller.clone();
    let task: jobs::Task = Box::new(move || {
        let ExportLocal { format, search, .. } = export;
        inside_root(&root, &file)?;
        let reply = block_on(super::run(&r, &who, search)).map_err(|e| e.message)?;
        let mut json = Vec::new();
        match reply {
            Reply::Search(s) => s
                .write(ReplyType::Json, &mut json)
                .map_err(|e: OpError| e.message)?,
            Reply::Value(v) => value::json::write(&v, &mut json),
        }
        if json.len() > EXPORT_BYTES_MAX {
            return Err(format!(
                "the search answered more than {EXPORT_BYTES_MAX} bytes; export less at a time"
            ));
        }
        let bytes = match format.as_str() {
            "csv" => to_csv(&json)?,
            _ => json,
        };
        write_file(&file, &bytes)?;
        Ok(format!(
            "Successfully exported {} locally.",
            format.to_ascii_uppercase()
        ))
    });
    Ok(jobs::start_task(resources, caller, "export_local", body, task).await?)
}

/// The search's JSON array as CSV: a header of every property in the order first met.
fn to_csv(json: &[u8]) -> Result<Vec<u8>, String> {
    let records = value::json::parse(json).map_err(|e| e.to_string())?;
    let Value::Array(records) = records else {
        return Err("the search did not answer an array".into());
    };
    let mut fields: Vec<String> = Vec::new();
    for record in &records {
        if let Value::Object(o) = record {
            for (k, _) in o.iter() {
                if !fields.iter().any(|f| f == k) {
                    fields.push(k.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    value::csv::write_header(&fields, &mut out);
    for record in &records {
        value::csv::write_row(&fields, record, &mut out);
    }
    Ok(out)
}

fn write_file(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let shown = file.display();
    let tmp = file.with_extension("export.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write '{shown}': {e}"))?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write '{shown}': {e}")
    })
}
