//! GraphQL schema text → table and object type definitions (docs/applications.md). graphql-parser does the
//! syntax; this file checks everything it does not: which directives exist, where they may stand,
//! their arguments, field types, keys, relationships, names and the cross-file rules.

use std::collections::HashMap;
use std::fmt;

use graphql_parser::schema::{
    Definition, Directive, Field, ObjectType, Type, TypeDefinition, TypeExtension, Value,
};

use super::table::{AttributeDef, FieldType, Location, ObjectTypeDef, Relationship, TableDef};

/// Largest schema file accepted; a bigger one is an error rather than a long parse.
pub const SCHEMA_FILE_BYTES_MAX: usize = 4 << 20;
/// Most type definitions in one application, over all its schema files.
pub const TYPE_COUNT_MAX: usize = 1024;
/// Most fields in one type.
pub const FIELD_COUNT_MAX: usize = 1024;
/// Deepest list nesting in a field type: `[[Int]]` is depth 2.
pub const LIST_DEPTH_MAX: usize = 8;
/// Most directives on one type or field; the real ones number at most five.
pub const DIRECTIVE_COUNT_MAX: usize = 16;
/// Longest database, table, export, type or attribute name, in bytes (docs/operations-api.md).
pub const NAME_BYTES_MAX: usize = 250;
/// The database every `@table` goes to unless it names another.
pub const DATABASE_DEFAULT: &str = "data";
/// Database names a schema may not use: the server's own.
const DATABASES_RESERVED: &[&str] = &["system"];

/// A schema problem, located in its file. Displays as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl SchemaError {
    pub fn at(location: &Location, message: impl Into<String>) -> SchemaError {
        SchemaError {
            file: location.file.clone(),
            line: location.line,
            column: location.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for SchemaError {}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Everything a set of schema files defines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    pub tables: Vec<TableDef>,
    pub object_types: Vec<ObjectTypeDef>,
    /// Ignored definitions and other things worth a `warn` log line, each `file:line:col: ...`.
    pub warnings: Vec<String>,
}

/// Parses one schema file on its own. `file` names it in errors and warnings.
pub fn parse_schema_str(source: &str, file: &str) -> Result<Schema, SchemaError> {
    parse_schema_files(&[(file, source)])
}

/// Parses the schema files of one application, given as `(file name, text)`, and checks the
/// rules that span files: type names, export names and tables are unique, relationships resolve.
pub fn parse_schema_files(files: &[(&str, &str)]) -> Result<Schema, SchemaError> {
    let mut warnings = Vec::new();
    let mut documents = Vec::with_capacity(files.len());
    for &(file, source) in files {
        documents.push((file, parse_document(file, source)?));
    }

    // Collect the object types of every file, with their names, before converting any: a field
    // may name a type declared later or in another file.
    let mut types: Vec<(Location, &ObjectType<'_, String>)> = Vec::new();
    let mut declared: HashMap<&str, Location> = HashMap::new();
    for (file, document) in &documents {
        let Some(document) = document else { continue };
        for definition in &document.definitions {
            let (position, what) = match definition {
                Definition::TypeDefinition(TypeDefinition::Object(object)) => {
                    let location = locate(file, object.position);
                    if types.len() >= TYPE_COUNT_MAX {
                        return Err(SchemaError::at(
                            &location,
                            format!("more than {TYPE_COUNT_MAX} types"),
                        ));
                    }
                    check_name(&location, "type", &object.name)?;
                    if let Some(first) = declared.get(object.name.as_str()) {
                        return Err(SchemaError::at(
                            &location,
                            format!("type {} is already defined at {first}", object.name),
                        ));
                    }
                    declared.insert(&object.name, location.clone());
                    types.push((location, object));
                    continue;
                }
                Definition::TypeDefinition(TypeDefinition::Scalar(d)) => (d.position, "scalar"),
                Definition::TypeDefinition(TypeDefinition::Interface(d)) => {
                    (d.position, "interface")
                }
                Definition::TypeDefinition(TypeDefinition::Union(d)) => (d.position, "union"),
                Definition::TypeDefinition(TypeDefinition::Enum(d)) => (d.position, "enum"),
                Definition::TypeDefinition(TypeDefinition::InputObject(d)) => (d.position, "input"),
                Definition::SchemaDefinition(d) => (d.position, "schema"),
                Definition::DirectiveDefinition(d) => (d.position, "directive"),
                Definition::TypeExtension(extension) => (
                    match extension {
                        TypeExtension::Scalar(d) => d.position,
                        TypeExtension::Object(d) => d.position,
                        TypeExtension::Interface(d) => d.position,
                        TypeExtension::Union(d) => d.position,
                        TypeExtension::Enum(d) => d.position,
                        TypeExtension::InputObject(d) => d.position,
                    },
                    "extend",
                ),
            };
            let location = locate(file, position);
            warnings.push(format!("{location}: {what} definition ignored"));
        }
    }

    let kinds: HashMap<&str, TypeKind> = types
        .iter()
        .map(|(_, object)| {
            let kind = if object.directives.iter().any(|d| d.name == "table") {
                TypeKind::Table
            } else {
                TypeKind::Object
            };
            (object.name.as_str(), kind)
        })
        .collect();

    let mut schema = Schema {
        warnings,
        ..Schema::default()
    };
    for (location, object) in &types {
        match convert_type(location, object, &kinds, &mut schema.warnings)? {
            Converted::Table(table) => schema.tables.push(table),
            Converted::Object(object) => schema.object_types.push(object),
        }
    }
    check_tables(&schema.tables)?;
    Ok(schema)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TypeKind {
    Table,
    Object,
}

enum Converted {
    Table(TableDef),
    Object(ObjectTypeDef),
}

fn locate(file: &str, position: graphql_parser::Pos) -> Location {
    Location {
        file: file.to_string(),
        line: position.line,
        column: position.column,
    }
}

/// Parses one file's text; `None` when it holds no definitions at all (graphql-parser insists on
/// at least one, but an empty or comment-only schema file is harmless).
fn parse_document<'a>(
    file: &str,
    source: &'a str,
) -> Result<Option<graphql_parser::schema::Document<'a, String>>, SchemaError> {
    let start = Location {
        file: file.to_string(),
        line: 1,
        column: 1,
    };
    if source.len() > SCHEMA_FILE_BYTES_MAX {
        return Err(SchemaError::at(
            &start,
            format!(
                "schema file is {} bytes, more than {SCHEMA_FILE_BYTES_MAX}",
                source.len()
            ),
        ));
    }
    if is_blank(source) {
        return Ok(None);
    }
    // graphql-parser's tokenizer bounds bracket nesting (50), so deep input fails here instead of
    // exhausting the stack.
    graphql_parser::schema::parse_schema::<String>(source)
        .map(Some)
        .map_err(|error| syntax_error(file, &error.to_string()))
}

/// True when the text holds only whitespace, commas and `#` comments.
fn is_blank(source: &str) -> bool {
    source.lines().all(|line| {
        let rest =
            line.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '\u{feff}');
        rest.is_empty() || rest.starts_with('#')
    })
}

/// Turns graphql-parser's message into a located error.
///
/// ```text
/// schema parse error: Parse error at 3:5
/// Unexpected `}[Punctuator]`
/// Expected Name or [
/// ```
fn syntax_error(file: &str, message: &str) -> SchemaError {
    let mut lines = message.lines();
    let head = lines.next().unwrap_or_default();
    let (line, column) = head
        .rsplit_once(" at ")
        .and_then(|(_, position)| position.split_once(':'))
        .and_then(|(line, column)| Some((line.trim().parse().ok()?, column.trim().parse().ok()?)))
        .unwrap_or((1, 1));
    let details: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut text = if details.is_empty() {
        "syntax error".to_string()
    } else {
        format!("syntax error: {}", details.join("; "))
    };
    // Tokens print with their kind (`}[Punctuator]`); the kind only adds noise for a user.
    for kind in [
        "Punctuator",
        "Name",
        "IntValue",
        "FloatValue",
        "StringValue",
        "BlockString",
    ] {
        text = text.replace(&format!("[{kind}]`"), "`");
    }
    SchemaError {
        file: file.to_string(),
        line,
        column,
        message: text,
    }
}

/// Checks a database, table, export, type or attribute name (docs/operations-api.md).
fn check_name(location: &Location, what: &str, name: &str) -> Result<(), SchemaError> {
    let problem = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.len() > NAME_BYTES_MAX {
        format!("is {} bytes, more than {NAME_BYTES_MAX}", name.len())
    } else if name.contains(['/', '.']) {
        "must not contain '/' or '.'".to_string()
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(SchemaError::at(
        location,
        format!("{what} name {name:?} {problem}"),
    ))
}

const TYPE_DIRECTIVES: &[&str] = &["table", "export", "sealed"];
const FIELD_DIRECTIVES: &[&str] = &[
    "primaryKey",
    "indexed",
    "createdTime",
    "updatedTime",
    "relationship",
];

/// Checks the directive list of a type or field: each known, allowed here, and given once.
fn check_directives(
    location: &Location,
    directives: &[Directive<'_, String>],
    allowed: &[&str],
    target: &str,
) -> Result<(), SchemaError> {
    if directives.len() > DIRECTIVE_COUNT_MAX {
        return Err(SchemaError::at(
            location,
            format!("more than {DIRECTIVE_COUNT_MAX} directives on {target}"),
        ));
    }
    for (index, directive) in directives.iter().enumerate() {
        let at = locate(&location.file, directive.position);
        let name = directive.name.as_str();
        if !allowed.contains(&name) {
            let message = if TYPE_DIRECTIVES.contains(&name) || FIELD_DIRECTIVES.contains(&name) {
                format!("directive @{name} is not allowed on {target}")
            } else {
                format!("unknown directive @{name}")
            };
            return Err(SchemaError::at(&at, message));
        }
        if directives
            .iter()
            .take(index)
            .any(|d| d.name == directive.name)
        {
            return Err(SchemaError::at(
                &at,
                format!("directive @{name} given twice"),
            ));
        }
    }
    Ok(())
}

fn find<'d, 'a>(
    directives: &'d [Directive<'a, String>],
    name: &str,
) -> Option<&'d Directive<'a, String>> {
    directives.iter().find(|d| d.name == name)
}

/// The arguments of one directive, checked against the names it accepts.
struct Arguments<'d, 'a> {
    at: Location,
    directive: &'d Directive<'a, String>,
}

impl<'d, 'a> Arguments<'d, 'a> {
    fn new(
        file: &str,
        directive: &'d Directive<'a, String>,
        accepted: &[&str],
    ) -> Result<Self, SchemaError> {
        let at = locate(file, directive.position);
        for (index, (name, _)) in directive.arguments.iter().enumerate() {
            if !accepted.contains(&name.as_str()) {
                let message = if accepted.is_empty() {
                    format!("directive @{} takes no arguments", directive.name)
                } else {
                    format!("unknown argument {name} of @{}", directive.name)
                };
                return Err(SchemaError::at(&at, message));
            }
            if directive
                .arguments
                .iter()
                .take(index)
                .any(|(n, _)| n == name)
            {
                return Err(SchemaError::at(
                    &at,
                    format!("argument {name} of @{} given twice", directive.name),
                ));
            }
        }
        Ok(Arguments { at, directive })
    }

    fn get(&self, name: &str) -> Option<&'d Value<'a, String>> {
        self.directive
            .arguments
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    fn ill_typed(&self, name: &str, expected: &str) -> SchemaError {
        SchemaError::at(
            &self.at,
            format!(
                "argument {name} of @{} must be {expected}",
                self.directive.name
            ),
        )
    }

    fn string(&self, name: &str) -> Result<Option<String>, SchemaError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(self.ill_typed(name, "a string")),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, SchemaError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Boolean(value)) => Ok(Some(*value)),
            Some(_) => Err(self.ill_typed(name, "true or false")),
        }
    }

    fn positive_integer(&self, name: &str) -> Result<Option<u64>, SchemaError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(number)) => match number.as_i64() {
                Some(value) if value > 0 => Ok(Some(value.unsigned_abs())),
                _ => Err(self.ill_typed(name, "a positive integer")),
            },
            Some(_) => Err(self.ill_typed(name, "a positive integer")),
        }
    }
}

fn convert_type(
    location: &Location,
    object: &ObjectType<'_, String>,
    kinds: &HashMap<&str, TypeKind>,
    warnings: &mut Vec<String>,
) -> Result<Converted, SchemaError> {
    let file = location.file.as_str();
    let is_table = kinds.get(object.name.as_str()) == Some(&TypeKind::Table);
    let target = format!("type {}", object.name);
    check_directives(location, &object.directives, TYPE_DIRECTIVES, &target)?;
    check_type_header(location, object, is_table, warnings)?;
    let attributes = convert_fields(location, object, is_table, kinds, warnings)?;
    let Some(table_directive) = find(&object.directives, "table") else {
        return Ok(Converted::Object(ObjectTypeDef {
            name: object.name.clone(),
            attributes,
            location: Some(location.clone()),
        }));
    };
    let TableArguments {
        table,
        database,
        expiration_s,
        replicate,
        audit,
    } = table_arguments(file, object, table_directive)?;
    let export = match find(&object.directives, "export") {
        None => None,
        Some(directive) => {
            let arguments = Arguments::new(file, directive, &["name"])?;
            let name = arguments
                .string("name")?
                .unwrap_or_else(|| object.name.clone());
            check_name(&arguments.at, "export", &name)?;
            Some(name)
        }
    };
    let sealed = match find(&object.directives, "sealed") {
        None => false,
        Some(directive) => {
            Arguments::new(file, directive, &[])?;
            true
        }
    };
    let primary_key = attributes
        .iter()
        .find(|a| a.primary_key)
        .map(|a| a.name.clone());
    Ok(Converted::Table(TableDef {
        database,
        table,
        type_name: object.name.clone(),
        export,
        primary_key,
        attributes,
        expiration_s,
        replicate,
        audit,
        sealed,
        location: Some(location.clone()),
    }))
}

/// What a type's header says that its fields do not depend on: `implements` (ignored, with a
/// warning), the field count, `@export`/`@sealed` only with `@table`.
fn check_type_header(
    location: &Location,
    object: &ObjectType<'_, String>,
    is_table: bool,
    warnings: &mut Vec<String>,
) -> Result<(), SchemaError> {
    let file = location.file.as_str();
    if !object.implements_interfaces.is_empty() {
        warnings.push(format!(
            "{location}: implements on type {} ignored",
            object.name
        ));
    }
    if object.fields.len() > FIELD_COUNT_MAX {
        return Err(SchemaError::at(
            location,
            format!(
                "type {} has more than {FIELD_COUNT_MAX} fields",
                object.name
            ),
        ));
    }
    if !is_table {
        for name in ["export", "sealed"] {
            if let Some(directive) = find(&object.directives, name) {
                return Err(SchemaError::at(
                    &locate(file, directive.position),
                    format!("directive @{name} needs @table on type {}", object.name),
                ));
            }
        }
    }
    Ok(())
}

/// The fields of a type as attributes: no name twice, one `@primaryKey` at most, and every
/// relationship's `from` naming a plain field of the type.
fn convert_fields(
    location: &Location,
    object: &ObjectType<'_, String>,
    is_table: bool,
    kinds: &HashMap<&str, TypeKind>,
    warnings: &mut Vec<String>,
) -> Result<Vec<AttributeDef>, SchemaError> {
    let file = location.file.as_str();
    let mut attributes: Vec<AttributeDef> = Vec::with_capacity(object.fields.len());
    for field in &object.fields {
        let attribute = convert_field(file, &object.name, is_table, field, kinds, warnings)?;
        let at = locate(file, field.position);
        if let Some(first) = attributes.iter().find(|a| a.name == attribute.name) {
            let first_at = first
                .location
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(SchemaError::at(
                &at,
                format!("field {} is already defined at {first_at}", attribute.name),
            ));
        }
        if attribute.primary_key {
            if let Some(first) = attributes.iter().find(|a| a.primary_key) {
                return Err(SchemaError::at(
                    &at,
                    format!(
                        "type {} has two @primaryKey fields: {} and {}",
                        object.name, first.name, attribute.name
                    ),
                ));
            }
        }
        attributes.push(attribute);
    }
    // `from` names a field of this type, so it can only be checked once all are known.
    for attribute in &attributes {
        let Some(Relationship {
            from: Some(from), ..
        }) = &attribute.relationship
        else {
            continue;
        };
        let at = attribute
            .location
            .clone()
            .unwrap_or_else(|| location.clone());
        match attributes.iter().find(|a| &a.name == from) {
            None => {
                return Err(SchemaError::at(
                    &at,
                    format!(
                        "relationship from: {from} names no field of type {}",
                        object.name
                    ),
                ))
            }
            Some(source) if source.relationship.is_some() => {
                return Err(SchemaError::at(
                    &at,
                    format!("relationship from: {from} names another relationship field"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(attributes)
}

/// The arguments of `@table`.
struct TableArguments {
    table: String,
    database: String,
    expiration_s: Option<u64>,
    replicate: bool,
    audit: bool,
}

/// Reads `@table(table, database, expiration, replicate, audit)` with their defaults: the type's
/// name, the default database (not a reserved one), no expiration, replicated, audited.
fn table_arguments(
    file: &str,
    object: &ObjectType<'_, String>,
    table_directive: &Directive<'_, String>,
) -> Result<TableArguments, SchemaError> {
    let arguments = Arguments::new(
        file,
        table_directive,
        &["table", "database", "expiration", "replicate", "audit"],
    )?;
    let table = arguments
        .string("table")?
        .unwrap_or_else(|| object.name.clone());
    check_name(&arguments.at, "table", &table)?;
    let database = arguments
        .string("database")?
        .unwrap_or_else(|| DATABASE_DEFAULT.to_string());
    check_name(&arguments.at, "database", &database)?;
    if DATABASES_RESERVED.contains(&database.as_str()) {
        return Err(SchemaError::at(
            &arguments.at,
            format!("database {database:?} is reserved for the server"),
        ));
    }
    let expiration_s = arguments.positive_integer("expiration")?;
    let replicate = arguments.boolean("replicate")?.unwrap_or(true);
    let audit = arguments.boolean("audit")?.unwrap_or(true);
    Ok(TableArguments {
        table,
        database,
        expiration_s,
        replicate,
        audit,
    })
}

fn convert_field(
    file: &str,
    type_name: &str,
    is_table: bool,
    field: &Field<'_, String>,
    kinds: &HashMap<&str, TypeKind>,
    warnings: &mut Vec<String>,
) -> Result<AttributeDef, SchemaError> {
    let at = locate(file, field.position);
    check_name(&at, "field", &field.name)?;
    let target = format!("field {type_name}.{}", field.name);
    check_directives(&at, &field.directives, FIELD_DIRECTIVES, &target)?;
    if !field.arguments.is_empty() {
        warnings.push(format!("{at}: arguments of {target} ignored"));
    }
    let (ty, required) = convert_type_ref(&at, &field.field_type, kinds, 0)?;
    let mut attribute = AttributeDef::new(field.name.clone(), ty);
    attribute.required = required;
    attribute.location = Some(at.clone());

    for directive in &field.directives {
        let directive_at = locate(file, directive.position);
        if !is_table {
            return Err(SchemaError::at(
                &directive_at,
                format!(
                    "directive @{} needs @table on type {type_name}",
                    directive.name
                ),
            ));
        }
        match directive.name.as_str() {
            "primaryKey" => {
                Arguments::new(file, directive, &[])?;
                if !matches!(
                    attribute.ty,
                    FieldType::ID
                        | FieldType::String
                        | FieldType::Int
                        | FieldType::Long
                        | FieldType::Float
                        | FieldType::BigInt
                        | FieldType::Any
                ) {
                    return Err(SchemaError::at(
                        &directive_at,
                        format!(
                            "@primaryKey field {} has type {}; a key is a string or a number",
                            field.name,
                            type_text(&attribute.ty)
                        ),
                    ));
                }
                attribute.primary_key = true;
            }
            "indexed" => {
                Arguments::new(file, directive, &[])?;
                attribute.indexed = true;
            }
            "createdTime" | "updatedTime" => {
                Arguments::new(file, directive, &[])?;
                if !matches!(
                    attribute.ty,
                    FieldType::Long | FieldType::Float | FieldType::Date
                ) {
                    return Err(SchemaError::at(
                        &directive_at,
                        format!(
                            "@{} field {} has type {}; it must be Long, Float or Date",
                            directive.name,
                            field.name,
                            type_text(&attribute.ty)
                        ),
                    ));
                }
                if directive.name == "createdTime" {
                    attribute.created_time = true;
                } else {
                    attribute.updated_time = true;
                }
            }
            "relationship" => {
                let relationship =
                    relationship(file, directive, &directive_at, field, &attribute.ty, kinds)?;
                attribute.relationship = Some(relationship);
            }
            // check_directives admitted only the names above.
            other => unreachable!("field directive @{other} passed the check"),
        }
    }
    let flags = [
        attribute.primary_key,
        attribute.indexed,
        attribute.created_time,
        attribute.updated_time,
    ];
    if attribute.relationship.is_some() && flags.iter().any(|&f| f) {
        return Err(SchemaError::at(
            &at,
            format!(
                "@relationship field {} is not stored; it takes no other directive",
                field.name
            ),
        ));
    }
    if attribute.created_time && attribute.updated_time {
        return Err(SchemaError::at(
            &at,
            format!(
                "field {} cannot be both @createdTime and @updatedTime",
                field.name
            ),
        ));
    }
    Ok(attribute)
}

/// A field's `@relationship(from, to)`: the field's type is a `@table` type (or a list of one,
/// which `to:` needs), and at least one of the two is given.
fn relationship(
    file: &str,
    directive: &Directive<'_, String>,
    directive_at: &Location,
    field: &Field<'_, String>,
    ty: &FieldType,
    kinds: &HashMap<&str, TypeKind>,
) -> Result<Relationship, SchemaError> {
    let field_name = &field.name;
    let arguments = Arguments::new(file, directive, &["from", "to"])?;
    let from = arguments.string("from")?;
    let to = arguments.string("to")?;
    for name in [&from, &to].into_iter().flatten() {
        check_name(directive_at, "relationship field", name)?;
    }
    let (is_list, target) = match ty {
        FieldType::Object(target) => (false, target),
        FieldType::Array(element) => match element.as_ref() {
            FieldType::Object(target) => (true, target),
            _ => (true, &String::new()),
        },
        _ => (false, &String::new()),
    };
    if kinds.get(target.as_str()) != Some(&TypeKind::Table) {
        return Err(SchemaError::at(
            directive_at,
            format!(
                "@relationship field {} has type {}; it must be a @table type or a list of one",
                field_name,
                type_text(ty)
            ),
        ));
    }
    if from.is_none() && to.is_none() {
        return Err(SchemaError::at(
            directive_at,
            "@relationship needs from:, to: or both",
        ));
    }
    if to.is_some() && !is_list {
        return Err(SchemaError::at(
            directive_at,
            format!(
                "@relationship with to: needs a list type; field {} has type {}",
                field_name,
                type_text(ty)
            ),
        ));
    }
    Ok(Relationship { from, to })
}

/// Resolves a GraphQL type reference: the field type and whether it is required (`T!`). The
/// non-null marks inside a list (`[T!]`) are accepted and not kept.
fn convert_type_ref(
    at: &Location,
    ty: &Type<'_, String>,
    kinds: &HashMap<&str, TypeKind>,
    depth: usize,
) -> Result<(FieldType, bool), SchemaError> {
    match ty {
        Type::NonNullType(inner) => {
            let (ty, _) = convert_type_ref(at, inner, kinds, depth)?;
            Ok((ty, true))
        }
        Type::ListType(element) => {
            if depth >= LIST_DEPTH_MAX {
                return Err(SchemaError::at(
                    at,
                    format!("list types nest deeper than {LIST_DEPTH_MAX}"),
                ));
            }
            let (element, _) = convert_type_ref(at, element, kinds, depth + 1)?;
            Ok((FieldType::Array(Box::new(element)), false))
        }
        Type::NamedType(name) => {
            if let Some(scalar) = FieldType::scalar(name) {
                Ok((scalar, false))
            } else if kinds.contains_key(name.as_str()) {
                Ok((FieldType::Object(name.clone()), false))
            } else {
                Err(SchemaError::at(at, format!("unknown type {name}")))
            }
        }
    }
}

/// A field type as GraphQL writes it, for messages.
fn type_text(ty: &FieldType) -> String {
    match ty {
        FieldType::Array(element) => format!("[{}]", type_text(element)),
        other => other.name().to_string(),
    }
}

/// The rules across tables: export names, `database.table` pairs, relationship targets.
fn check_tables(tables: &[TableDef]) -> Result<(), SchemaError> {
    let nowhere = Location {
        file: String::new(),
        line: 0,
        column: 0,
    };
    for (index, table) in tables.iter().enumerate() {
        let at = table.location.as_ref().unwrap_or(&nowhere);
        let earlier = tables.get(..index).unwrap_or_default();
        if let Some(export) = &table.export {
            if let Some(first) = earlier.iter().find(|t| t.export.as_ref() == Some(export)) {
                return Err(SchemaError::at(
                    at,
                    format!(
                        "types {} and {} are both exported as {export:?}",
                        first.type_name, table.type_name
                    ),
                ));
            }
        }
        if let Some(first) = earlier
            .iter()
            .find(|t| t.database == table.database && t.table == table.table)
        {
            return Err(SchemaError::at(
                at,
                format!(
                    "types {} and {} both define table {}.{}",
                    first.type_name, table.type_name, table.database, table.table
                ),
            ));
        }
        for attribute in &table.attributes {
            let Some(Relationship { to: Some(to), .. }) = &attribute.relationship else {
                continue;
            };
            let attribute_at = attribute.location.as_ref().unwrap_or(at);
            let target_name = match &attribute.ty {
                FieldType::Array(element) => match element.as_ref() {
                    FieldType::Object(name) => name.as_str(),
                    _ => "",
                },
                _ => "",
            };
            let Some(target) = tables.iter().find(|t| t.type_name == target_name) else {
                continue;
            };
            match target.attribute(to) {
                None => {
                    return Err(SchemaError::at(
                        attribute_at,
                        format!("relationship to: {to} names no field of type {target_name}"),
                    ))
                }
                Some(field) if !field.indexed => {
                    return Err(SchemaError::at(
                        attribute_at,
                        format!("relationship to: {target_name}.{to} must be @indexed"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
