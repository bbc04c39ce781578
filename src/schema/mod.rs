//! Application folder → table definitions. Owns the reading of `config.yaml` (docs/applications.md), the
//! expansion of its file globs, and the GraphQL schema files (docs/applications.md) with every rule about
//! directives, types, keys, relationships and names. It reads files of the application folder and
//! nothing else: it never touches storage or the network, and never validates record values
//! (that is `value`'s and `resource`'s work, built on [`FieldType`]). Comparing a schema with the
//! stored tables is the caller's: [`TableDef::check_replaces`] gives the rule.

mod config;
mod glob;
mod parse;
mod table;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

pub use config::{
    AppConfig, ConfigError, FilesConfig, RestConfig, StaticConfig, CONFIG_FILE_BYTES_MAX,
    GLOB_COUNT_MAX,
};
pub use glob::{
    check_pattern, expand_globs, glob_matches, GlobError, PATTERN_BYTES_MAX, WALK_DEPTH_MAX,
    WALK_ENTRY_COUNT_MAX,
};
pub use parse::{
    parse_schema_files, parse_schema_str, Schema, SchemaError, DATABASE_DEFAULT,
    DIRECTIVE_COUNT_MAX, FIELD_COUNT_MAX, LIST_DEPTH_MAX, NAME_BYTES_MAX, SCHEMA_FILE_BYTES_MAX,
    TYPE_COUNT_MAX,
};
pub use table::{
    AttributeDef, FieldType, KeyType, Location, ObjectTypeDef, Relationship, TableDef,
};

/// Most schema files one application may have.
pub const SCHEMA_FILE_COUNT_MAX: usize = 256;
/// The application's config file, in its folder.
pub const CONFIG_FILE_NAME: &str = "config.yaml";

/// A loaded application: its config and the tables and object types its schema defines.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub dir: PathBuf,
    pub config: AppConfig,
    pub tables: Vec<TableDef>,
    pub object_types: Vec<ObjectTypeDef>,
    /// Unknown config keys, ignored definitions, globs that matched nothing: each for one `warn`.
    pub warnings: Vec<String>,
}

impl App {
    /// The table exported under `name`.
    pub fn export(&self, name: &str) -> Option<&TableDef> {
        self.tables
            .iter()
            .find(|t| t.export.as_deref() == Some(name))
    }
}

/// Why an application folder cannot be served; `tidepool run` exits with status 1 on any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    Io { path: PathBuf, message: String },
    Config(ConfigError),
    Glob(GlobError),
    Schema(SchemaError),
    TooManySchemaFiles { count: usize },
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Io { path, message } => write!(f, "{}: {message}", path.display()),
            AppError::Config(error) => error.fmt(f),
            AppError::Glob(error) => error.fmt(f),
            AppError::Schema(error) => error.fmt(f),
            AppError::TooManySchemaFiles { count } => write!(
                f,
                "graphqlSchema matches {count} files, more than {SCHEMA_FILE_COUNT_MAX}"
            ),
        }
    }
}

impl std::error::Error for AppError {}

impl From<ConfigError> for AppError {
    fn from(error: ConfigError) -> Self {
        AppError::Config(error)
    }
}

impl From<GlobError> for AppError {
    fn from(error: GlobError) -> Self {
        AppError::Glob(error)
    }
}

impl From<SchemaError> for AppError {
    fn from(error: SchemaError) -> Self {
        AppError::Schema(error)
    }
}

/// Reads `dir/config.yaml` (or takes the defaults when there is none), then every schema file its
/// `graphqlSchema` globs match, and checks them together.
pub fn load_app(dir: &Path) -> Result<App, AppError> {
    let io = |path: &Path, error: std::io::Error| AppError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let config_path = dir.join(CONFIG_FILE_NAME);
    let explicit = config_path.exists();
    let (config, mut warnings) = match fs::metadata(&config_path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if !dir.is_dir() {
                return Err(io(dir, std::io::Error::other("not a folder")));
            }
            (AppConfig::default(), Vec::new())
        }
        Err(error) => return Err(io(&config_path, error)),
        Ok(metadata) => {
            if metadata.len() > CONFIG_FILE_BYTES_MAX as u64 {
                return Err(AppError::Config(ConfigError {
                    file: CONFIG_FILE_NAME.to_string(),
                    message: format!("more than {CONFIG_FILE_BYTES_MAX} bytes"),
                }));
            }
            let text = fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
            AppConfig::parse(&text, CONFIG_FILE_NAME)?
        }
    };

    let mut sources = Vec::new();
    if let Some(graphql) = &config.graphql_schema {
        let paths = expand_globs(dir, &graphql.files)?;
        // The default glob of an app without config.yaml may match nothing (an app of static
        // files); a glob the app's config.yaml names must match (docs/applications.md).
        if paths.is_empty() && explicit {
            return Err(AppError::Config(ConfigError {
                file: CONFIG_FILE_NAME.to_string(),
                message: format!("graphqlSchema: no file matches {:?}", graphql.files),
            }));
        }
        if paths.is_empty() {
            warnings.push(format!(
                "graphqlSchema: no file matches {:?}",
                graphql.files
            ));
        }
        if paths.len() > SCHEMA_FILE_COUNT_MAX {
            return Err(AppError::TooManySchemaFiles { count: paths.len() });
        }
        for path in paths {
            let metadata = fs::metadata(&path).map_err(|e| io(&path, e))?;
            let name = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if metadata.len() > SCHEMA_FILE_BYTES_MAX as u64 {
                return Err(AppError::Schema(SchemaError {
                    file: name,
                    line: 1,
                    column: 1,
                    message: format!("schema file is more than {SCHEMA_FILE_BYTES_MAX} bytes"),
                }));
            }
            let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            sources.push((name, text));
        }
    }
    let files: Vec<(&str, &str)> = sources
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let schema = parse_schema_files(&files)?;
    warnings.extend(schema.warnings);
    Ok(App {
        dir: dir.to_path_buf(),
        config,
        tables: schema.tables,
        object_types: schema.object_types,
        warnings,
    })
}

#[cfg(test)]
mod tests;
