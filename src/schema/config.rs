//! The application's `config.yaml` (docs/applications.md): which interfaces it serves and where its schema,
//! roles, static files and seed data are. Only reads text it is given; never opens files itself.

use std::fmt;

use serde_yaml::{Mapping, Value};

/// Largest `config.yaml` accepted.
pub const CONFIG_FILE_BYTES_MAX: usize = 1 << 20;
/// Most globs in one `files` list.
pub const GLOB_COUNT_MAX: usize = 256;

/// `rest`: exports served over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestConfig {
    /// Adds `Last-Modified` to responses.
    pub last_modified: bool,
    /// WebSocket subscriptions on REST paths.
    pub web_socket: bool,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            last_modified: false,
            web_socket: true,
        }
    }
}

/// A `{files: <glob> | [<glob>]}` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    /// Globs relative to the application folder.
    pub files: Vec<String>,
}

impl FilesConfig {
    fn one(glob: &str) -> FilesConfig {
        FilesConfig {
            files: vec![glob.to_string()],
        }
    }
}

/// `static`: files served as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub files: Vec<String>,
    pub url_path: Option<String>,
    /// Serve a folder's `index.html` for the folder's path.
    pub index: bool,
    /// Extensions tried on a path without one, e.g. `["html"]`.
    pub extensions: Vec<String>,
    /// Pass unmatched paths on rather than answering 404.
    pub fallthrough: bool,
    /// File served with 404 for unmatched paths.
    pub not_found: Option<String>,
}

impl StaticConfig {
    fn with_files(files: Vec<String>) -> StaticConfig {
        StaticConfig {
            files,
            url_path: None,
            index: false,
            extensions: Vec::new(),
            fallthrough: true,
            not_found: None,
        }
    }
}

/// An application's `config.yaml`. A section that is `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub rest: Option<RestConfig>,
    pub graphql_schema: Option<FilesConfig>,
    pub static_files: Option<StaticConfig>,
    pub roles: Option<FilesConfig>,
    pub data_loader: Option<FilesConfig>,
}

/// A `config.yaml` that cannot be used. Displays as `file: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Default for AppConfig {
    /// What an application without `config.yaml` gets.
    fn default() -> Self {
        AppConfig {
            rest: Some(RestConfig::default()),
            graphql_schema: Some(FilesConfig::one("*.graphql")),
            static_files: Some(StaticConfig::with_files(vec!["web/**".to_string()])),
            roles: Some(FilesConfig::one("roles.yaml")),
            data_loader: None,
        }
    }
}

impl AppConfig {
    /// Parses `config.yaml` text; an existing file replaces every default, so an absent section
    /// is off. Returns the config and one warning per unknown key.
    pub fn parse(text: &str, file: &str) -> Result<(AppConfig, Vec<String>), ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_string(),
            message,
        };
        if text.len() > CONFIG_FILE_BYTES_MAX {
            return Err(error(format!(
                "{} bytes, more than {CONFIG_FILE_BYTES_MAX}",
                text.len()
            )));
        }
        let document: Value = serde_yaml::from_str(text).map_err(|e| error(e.to_string()))?;
        let mut config = AppConfig {
            rest: None,
            graphql_schema: None,
            static_files: None,
            roles: None,
            data_loader: None,
        };
        let mut warnings = Vec::new();
        let root = match &document {
            Value::Null => return Ok((config, warnings)),
            Value::Mapping(root) => root,
            _ => return Err(error("expected a mapping of keys".to_string())),
        };
        let mut reader = Reader {
            file,
            warnings: &mut warnings,
        };
        for (key, value) in root {
            let Some(key) = key.as_str() else {
                return Err(error(format!("unknown key {}", key_text(key))));
            };
            match key {
                "rest" => config.rest = reader.rest(value).map_err(error)?,
                "graphqlSchema" => {
                    config.graphql_schema = reader.files_section(key, value).map_err(error)?
                }
                "roles" => config.roles = reader.files_section(key, value).map_err(error)?,
                "dataLoader" => {
                    config.data_loader = reader.files_section(key, value).map_err(error)?
                }
                "static" => config.static_files = reader.static_section(value).map_err(error)?,
                other if is_harperdb_component(other, value) => reader.warnings.push(format!(
                    "{file}: {other:?} is a HarperDB component tidepool does not run: ignored"
                )),
                other => {
                    let hint = crate::util::nearest(other, SECTIONS.iter().copied())
                        .map(|near| format!("; did you mean {near:?}?"))
                        .unwrap_or_default();
                    return Err(error(format!(
                        "unknown key {other:?}{hint} (the keys: docs/applications.md)"
                    )));
                }
            }
        }
        Ok((config, warnings))
    }
}

/// The sections tidepool reads.
const SECTIONS: &[&str] = &["rest", "graphqlSchema", "roles", "dataLoader", "static"];

/// HarperDB's other built-in components (and its component options at the top level).
const HARPERDB_COMPONENTS: &[&str] = &[
    "jsResource",
    "fastifyRoutes",
    "loadEnv",
    "graphql",
    "extensionModule",
    "pluginModule",
    "package",
    "files",
    "urlPath",
    "path",
];

/// A HarperDB component tidepool does not run: a built-in one, or a third-party one (a mapping
/// with `package:`). A HarperDB app must still start; its REST and schema parts are served.
fn is_harperdb_component(key: &str, value: &Value) -> bool {
    HARPERDB_COMPONENTS.contains(&key)
        || matches!(value, Value::Mapping(m) if m.contains_key("package"))
}

fn key_text(key: &Value) -> String {
    serde_yaml::to_string(key)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

struct Reader<'w> {
    file: &'w str,
    warnings: &'w mut Vec<String>,
}

impl Reader<'_> {
    fn unknown(&mut self, section: &str, key: &str) {
        let path = if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        };
        self.warnings
            .push(format!("{}: unknown key {path:?} ignored", self.file));
    }

    /// The entries of a section mapping with string keys; other keys are warned about.
    fn entries<'v>(&mut self, section: &str, map: &'v Mapping) -> Vec<(&'v str, &'v Value)> {
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            match key.as_str() {
                Some(key) => entries.push((key, value)),
                None => self.unknown(section, &key_text(key)),
            }
        }
        entries
    }

    fn rest(&mut self, value: &Value) -> Result<Option<RestConfig>, String> {
        let map = match value {
            Value::Bool(false) | Value::Null => return Ok(None),
            Value::Bool(true) => return Ok(Some(RestConfig::default())),
            Value::Mapping(map) => map,
            _ => return Err("rest: expected true, false or a mapping".to_string()),
        };
        let mut rest = RestConfig::default();
        for (key, value) in self.entries("rest", map) {
            match key {
                "lastModified" => rest.last_modified = boolean("rest", key, value)?,
                "webSocket" => rest.web_socket = boolean("rest", key, value)?,
                other => self.unknown("rest", other),
            }
        }
        Ok(Some(rest))
    }

    fn files_section(
        &mut self,
        section: &str,
        value: &Value,
    ) -> Result<Option<FilesConfig>, String> {
        let map = match value {
            Value::Null | Value::Bool(false) => return Ok(None),
            Value::Mapping(map) => map,
            _ => return Err(format!("{section}: expected a mapping with files")),
        };
        let mut files = None;
        for (key, value) in self.entries(section, map) {
            match key {
                "files" => files = Some(globs(section, value)?),
                other => self.unknown(section, other),
            }
        }
        match files {
            Some(files) => Ok(Some(FilesConfig { files })),
            None => Err(format!("{section}: files is required")),
        }
    }

    fn static_section(&mut self, value: &Value) -> Result<Option<StaticConfig>, String> {
        const SECTION: &str = "static";
        let map = match value {
            Value::Null | Value::Bool(false) => return Ok(None),
            Value::Mapping(map) => map,
            _ => return Err(format!("{SECTION}: expected a mapping with files")),
        };
        let mut config = StaticConfig::with_files(Vec::new());
        let mut has_files = false;
        for (key, value) in self.entries(SECTION, map) {
            match key {
                "files" => {
                    config.files = globs(SECTION, value)?;
                    has_files = true;
                }
                "urlPath" => config.url_path = Some(string(SECTION, key, value)?),
                "index" => config.index = boolean(SECTION, key, value)?,
                "extensions" => config.extensions = strings(SECTION, key, value)?,
                "fallthrough" => config.fallthrough = boolean(SECTION, key, value)?,
                "notFound" => config.not_found = Some(string(SECTION, key, value)?),
                other => self.unknown(SECTION, other),
            }
        }
        if !has_files {
            return Err(format!("{SECTION}: files is required"));
        }
        Ok(Some(config))
    }
}

fn boolean(section: &str, key: &str, value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| format!("{section}.{key}: expected true or false"))
}

fn string(section: &str, key: &str, value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(text) => Ok(text.to_string()),
        None => Err(format!("{section}.{key}: expected a string")),
    }
}

/// A string or a list of strings.
fn strings(section: &str, key: &str, value: &Value) -> Result<Vec<String>, String> {
    let list = match value {
        Value::String(one) => return Ok(vec![one.clone()]),
        Value::Sequence(list) => list,
        _ => {
            return Err(format!(
                "{section}.{key}: expected a string or a list of strings"
            ))
        }
    };
    if list.len() > GLOB_COUNT_MAX {
        return Err(format!(
            "{section}.{key}: more than {GLOB_COUNT_MAX} entries"
        ));
    }
    list.iter().map(|item| string(section, key, item)).collect()
}

fn globs(section: &str, value: &Value) -> Result<Vec<String>, String> {
    let globs = strings(section, "files", value)?;
    if globs.is_empty() {
        return Err(format!("{section}.files: expected at least one glob"));
    }
    Ok(globs)
}
