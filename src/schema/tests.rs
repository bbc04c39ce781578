//! Schema and application tests, each through one helper: `check` renders what a set of schema
//! files defines (or the error) as text; `check_app` does the same for a whole folder.

use std::path::Path;

use super::*;

/// One line per table, object type and attribute, then the warnings; or the error.
fn render(result: Result<Schema, SchemaError>) -> String {
    let schema = match result {
        Ok(schema) => schema,
        Err(error) => return format!("error {error}"),
    };
    let mut out = String::new();
    for table in &schema.tables {
        out.push_str(&format!(
            "table {}.{} ({})",
            table.database, table.table, table.type_name
        ));
        if let Some(export) = &table.export {
            out.push_str(&format!(" export={export}"));
        }
        if let Some(key) = &table.primary_key {
            out.push_str(&format!(" key={key}"));
        }
        if let Some(expiration_s) = table.expiration_s {
            out.push_str(&format!(" expiration={expiration_s}s"));
        }
        out.push_str(if table.replicate {
            " replicate"
        } else {
            " no-replicate"
        });
        out.push_str(if table.audit { " audit" } else { " no-audit" });
        if table.sealed {
            out.push_str(" sealed");
        }
        out.push('\n');
        render_attributes(&mut out, &table.attributes);
    }
    for object in &schema.object_types {
        out.push_str(&format!("object {}\n", object.name));
        render_attributes(&mut out, &object.attributes);
    }
    for warning in &schema.warnings {
        out.push_str(&format!("warn {warning}\n"));
    }
    out
}

fn render_attributes(out: &mut String, attributes: &[AttributeDef]) {
    for a in attributes {
        out.push_str(&format!("  {} {}", a.name, type_text(&a.ty)));
        for (flag, name) in [
            (a.required, "required"),
            (a.indexed, "indexed"),
            (a.primary_key, "key"),
            (a.created_time, "created"),
            (a.updated_time, "updated"),
        ] {
            if flag {
                out.push(' ');
                out.push_str(name);
            }
        }
        if let Some(relationship) = &a.relationship {
            if let Some(from) = &relationship.from {
                out.push_str(&format!(" from={from}"));
            }
            if let Some(to) = &relationship.to {
                out.push_str(&format!(" to={to}"));
            }
        }
        out.push('\n');
    }
}

fn type_text(ty: &FieldType) -> String {
    match ty {
        FieldType::Array(element) => format!("[{}]", type_text(element)),
        FieldType::Object(name) => format!("<{name}>"),
        other => other.name().to_string(),
    }
}

/// Parses the files together and compares the rendering, whitespace-trimmed per line.
fn check(files: &[(&str, &str)], expected: &str) {
    let actual = render(parse_schema_files(files));
    let normalise = |text: &str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        normalise(&actual),
        normalise(expected),
        "schema files: {files:#?}"
    );
}

/// One file named `s.graphql`.
fn check1(source: &str, expected: &str) {
    check(&[("s.graphql", source)], expected);
}

#[test]
fn dog_table() {
    check1(
        "type Dog @table @export {
  id: ID @primaryKey
  name: String @indexed
  breed: String @indexed
  age: Int @indexed
  owner: String
  tags: [String] @indexed
  createdAt: Long @createdTime
  updatedAt: Long @updatedTime
}",
        "table data.Dog (Dog) export=Dog key=id replicate audit
           id ID key
           name String indexed
           breed String indexed
           age Int indexed
           owner String
           tags [String] indexed
           createdAt Long created
           updatedAt Long updated",
    );
}

#[test]
fn table_directive_arguments() {
    let cases = [
        (
            r#"type T @table(database: "inv", table: "items", expiration: 60) { id: ID @primaryKey }"#,
            "table inv.items (T) key=id expiration=60s replicate audit\n id ID key",
        ),
        (
            "type T @table(replicate: false, audit: false) @sealed { a: Int }",
            "table data.T (T) no-replicate no-audit sealed\n a Int",
        ),
        (
            r#"type T @table @export(name: "things")"#,
            "table data.T (T) export=things replicate audit",
        ),
        (
            "type T @table(replicate: true, audit: true)",
            "table data.T (T) replicate audit",
        ),
        // Without a declared key the key lives in the URL only.
        (
            "type Sensor @table @export",
            "table data.Sensor (Sensor) export=Sensor replicate audit",
        ),
        // Description strings and comments are accepted.
        (
            "\"\"\"A dog\"\"\"\n# comment\ntype T @table { \"the key\" id: ID! @primaryKey }",
            "table data.T (T) key=id replicate audit\n id ID required key",
        ),
    ];
    for (source, expected) in cases {
        check1(source, expected);
    }
}

#[test]
fn every_type() {
    check1(
        "type T @table {
            a: ID b: String c: Int d: Long e: Float f: BigInt g: Boolean h: Date i: Bytes
            j: Any k: Blob l: [Int] m: [[String!]]! n: Inner o: [Inner!] p: Date @createdTime
            q: Float @updatedTime r: String!
        }
        type Inner { x: Int, y: [Inner] }",
        "table data.T (T) replicate audit
           a ID
           b String
           c Int
           d Long
           e Float
           f BigInt
           g Boolean
           h Date
           i Bytes
           j Any
           k Blob
           l [Int]
           m [[String]] required
           n <Inner>
           o [<Inner>]
           p Date created
           q Float updated
           r String required
         object Inner
           x Int
           y [<Inner>]",
    );
}

#[test]
fn primary_key_types() {
    for ty in [
        "ID", "String", "Int", "Long", "Float", "BigInt", "Any", "ID!",
    ] {
        let source = format!("type T @table {{ k: {ty} @primaryKey }}");
        let required = if ty.ends_with('!') { " required" } else { "" };
        let expected = format!(
            "table data.T (T) key=k replicate audit\n k {}{required} key",
            ty.trim_end_matches('!')
        );
        check1(&source, &expected);
    }
    for ty in ["Boolean", "Date", "Bytes", "Blob", "[ID]", "Inner"] {
        let source =
            format!("type T @table {{\n  k: {ty} @primaryKey\n}}\ntype Inner {{ a: Int }}");
        let expected = format!(
            "error s.graphql:2:{}: @primaryKey field k has type {}; a key is a string or a number",
            7 + ty.len(),
            if ty == "Inner" { "Inner" } else { ty }
        );
        check1(&source, &expected);
    }
}

#[test]
fn relationships() {
    check1(
        r#"type Product @table @export {
  id: ID @primaryKey
  brandId: ID @indexed
  brand: Brand @relationship(from: "brandId")
  featureIds: [ID]
  features: [Feature] @relationship(from: "featureIds")
}
type Brand @table @export {
  id: ID @primaryKey
  products: [Product] @relationship(to: "brandId")
  both: [Product] @relationship(from: "id", to: "brandId")
}
type Feature @table { id: ID @primaryKey }"#,
        "table data.Product (Product) export=Product key=id replicate audit
           id ID key
           brandId ID indexed
           brand <Brand> from=brandId
           featureIds [ID]
           features [<Feature>] from=featureIds
         table data.Brand (Brand) export=Brand key=id replicate audit
           id ID key
           products [<Product>] to=brandId
           both [<Product>] from=id to=brandId
         table data.Feature (Feature) key=id replicate audit
           id ID key",
    );
}

#[test]
fn warnings_for_other_definitions() {
    check1(
        "enum Color { RED }\ninput I { a: Int }\nschema { query: Q }\ntype Q { a: Int }\n  scalar S\n\
         interface N { a: Int }\nunion U = Q\ndirective @d on FIELD\nextend type Q { b: Int }\n\
         type R implements N { a(x: Int): Int }",
        "object Q
           a Int
         object R
           a Int
         warn s.graphql:1:1: enum definition ignored
         warn s.graphql:2:1: input definition ignored
         warn s.graphql:3:1: schema definition ignored
         warn s.graphql:5:3: scalar definition ignored
         warn s.graphql:6:1: interface definition ignored
         warn s.graphql:7:1: union definition ignored
         warn s.graphql:8:1: directive definition ignored
         warn s.graphql:9:8: extend definition ignored
         warn s.graphql:10:1: implements on type R ignored
         warn s.graphql:10:23: arguments of field R.a ignored",
    );
}

#[test]
fn empty_files() {
    for source in ["", "  \n", "# only a comment\n  # another\n", ",,\n"] {
        check1(source, "");
    }
}

#[test]
fn errors() {
    let cases = [
        // Syntax.
        ("type T @table {\n  a: \n}", "error s.graphql:3:1: syntax error: Unexpected `}`; Expected Name or ["),
        ("type T @table { a: Int", "error s.graphql:1:23: syntax error: Unexpected end of input; Expected }"),
        ("type", "error s.graphql:1:5: syntax error: Unexpected end of input; Expected Name"),
        ("type T @table { a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[Int",
         "error s.graphql:1:69: syntax error: Unexpected end of input; Expected Name or [; Recursion limit exceeded"),
        // Directives.
        ("type T @table @cached { a: Int }", "error s.graphql:1:15: unknown directive @cached"),
        ("type T @table {\n  a: Int @index\n}", "error s.graphql:2:10: unknown directive @index"),
        ("type T @table @table { a: Int }", "error s.graphql:1:15: directive @table given twice"),
        ("type T @table { a: Int @indexed @indexed }", "error s.graphql:1:33: directive @indexed given twice"),
        ("type T @primaryKey { a: Int }", "error s.graphql:1:8: directive @primaryKey is not allowed on type T"),
        ("type T @table { a: Int @export }", "error s.graphql:1:24: directive @export is not allowed on field T.a"),
        ("type T @export { a: Int }", "error s.graphql:1:8: directive @export needs @table on type T"),
        ("type T @sealed { a: Int }", "error s.graphql:1:8: directive @sealed needs @table on type T"),
        ("type T { a: Int @indexed }", "error s.graphql:1:17: directive @indexed needs @table on type T"),
        // Arguments.
        ("type T @table(name: \"x\")", "error s.graphql:1:8: unknown argument name of @table"),
        ("type T @table(database: 5)", "error s.graphql:1:8: argument database of @table must be a string"),
        ("type T @table(table: \"a\", table: \"b\")", "error s.graphql:1:8: argument table of @table given twice"),
        ("type T @table(expiration: \"60s\")", "error s.graphql:1:8: argument expiration of @table must be a positive integer"),
        ("type T @table(expiration: 0)", "error s.graphql:1:8: argument expiration of @table must be a positive integer"),
        ("type T @table(expiration: -5)", "error s.graphql:1:8: argument expiration of @table must be a positive integer"),
        ("type T @table(expiration: 1.5)", "error s.graphql:1:8: argument expiration of @table must be a positive integer"),
        ("type T @table(replicate: \"no\")", "error s.graphql:1:8: argument replicate of @table must be true or false"),
        ("type T @table(audit: null)", "error s.graphql:1:8: argument audit of @table must be true or false"),
        ("type T @table(database: $x)", "error s.graphql:1:8: argument database of @table must be a string"),
        ("type T @table @export(name: A)", "error s.graphql:1:15: argument name of @export must be a string"),
        ("type T @table @sealed(yes: true)", "error s.graphql:1:15: directive @sealed takes no arguments"),
        ("type T @table { a: Int @indexed(unique: true) }", "error s.graphql:1:24: directive @indexed takes no arguments"),
        // Names.
        ("type T @table(database: \"a.b\")", "error s.graphql:1:8: database name \"a.b\" must not contain '/' or '.'"),
        ("type T @table(table: \"a/b\")", "error s.graphql:1:8: table name \"a/b\" must not contain '/' or '.'"),
        ("type T @table(table: \"\")", "error s.graphql:1:8: table name \"\" must not be empty"),
        ("type T @table(table: \"a\\tb\")", "error s.graphql:1:8: table name \"a\\tb\" must not contain control characters"),
        ("type T @table @export(name: \"\")", "error s.graphql:1:15: export name \"\" must not be empty"),
        ("type T @table(database: \"system\")", "error s.graphql:1:8: database \"system\" is reserved for the server"),
        // Types and fields.
        ("type T @table {\n  a: Integer\n}", "error s.graphql:2:3: unknown type Integer"),
        ("type T @table { a: [[[[[[[[[Int]]]]]]]]] }", "error s.graphql:1:17: list types nest deeper than 8"),
        ("type T @table { a: Int\n a: String }", "error s.graphql:2:2: field a is already defined at s.graphql:1:17"),
        ("type T { a: Int }\ntype T { b: Int }", "error s.graphql:2:1: type T is already defined at s.graphql:1:1"),
        ("type T @table {\n  a: ID @primaryKey\n  b: ID @primaryKey\n}", "error s.graphql:3:3: type T has two @primaryKey fields: a and b"),
        ("type T @table { a: Int @createdTime }", "error s.graphql:1:24: @createdTime field a has type Int; it must be Long, Float or Date"),
        ("type T @table { a: [Long] @updatedTime }", "error s.graphql:1:27: @updatedTime field a has type [Long]; it must be Long, Float or Date"),
        ("type T @table { a: Long @createdTime @updatedTime }", "error s.graphql:1:17: field a cannot be both @createdTime and @updatedTime"),
        // Relationships.
        ("type T @table { id: ID @primaryKey\n u: [U] @relationship(to: \"tId\") }\ntype U @table { tId: ID @indexed }", "table data.T (T) key=id replicate audit\n id ID key\n u [<U>] to=tId\n table data.U (U) replicate audit\n tId ID indexed"),
        ("type T @table { u: U @relationship(to: \"tId\") }\ntype U @table { tId: ID @indexed }", "error s.graphql:1:22: @relationship with to: needs a list type; field u has type U"),
        ("type T @table { u: [U] @relationship(to: \"tId\") }\ntype U @table { tId: ID }", "error s.graphql:1:17: relationship to: U.tId must be @indexed"),
        ("type T @table { u: [U] @relationship(to: \"x\") }\ntype U @table { tId: ID }", "error s.graphql:1:17: relationship to: x names no field of type U"),
        ("type T @table { u: U @relationship(from: \"uId\") }\ntype U @table { id: ID }", "error s.graphql:1:17: relationship from: uId names no field of type T"),
        ("type T @table { uId: ID  u: U @relationship }\ntype U @table { id: ID }", "error s.graphql:1:31: @relationship needs from:, to: or both"),
        ("type T @table { uId: ID  u: O @relationship(from: \"uId\") }\ntype O { id: ID }", "error s.graphql:1:31: @relationship field u has type O; it must be a @table type or a list of one"),
        ("type T @table { uId: ID  u: String @relationship(from: \"uId\") }", "error s.graphql:1:36: @relationship field u has type String; it must be a @table type or a list of one"),
        ("type T @table { uId: ID  u: U @relationship(from: \"uId\") @indexed }\ntype U @table { id: ID }", "error s.graphql:1:26: @relationship field u is not stored; it takes no other directive"),
        ("type T @table { uId: ID  u: U @relationship(from: \"uId\", via: \"x\") }\ntype U @table { id: ID }", "error s.graphql:1:31: unknown argument via of @relationship"),
        ("type T @table { a: U @relationship(from: \"b\")  b: U @relationship(from: \"a\") }\ntype U @table { id: ID }", "error s.graphql:1:17: relationship from: b names another relationship field"),
        // Cross-type rules.
        ("type A @table @export(name: \"X\")\ntype B @table @export(name: \"X\")", "error s.graphql:2:1: types A and B are both exported as \"X\""),
        ("type A @table @export\ntype B @table @export(name: \"A\")", "error s.graphql:2:1: types A and B are both exported as \"A\""),
        ("type A @table(table: \"t\")\ntype B @table(table: \"t\")", "error s.graphql:2:1: types A and B both define table data.t"),
    ];
    for (source, expected) in cases {
        check1(source, expected);
    }
}

#[test]
fn limits() {
    let big = format!("type T {{ a: Int }}\n{}", " ".repeat(SCHEMA_FILE_BYTES_MAX));
    check1(
        &big,
        &format!(
            "error s.graphql:1:1: schema file is {} bytes, more than {SCHEMA_FILE_BYTES_MAX}",
            big.len()
        ),
    );

    let fields: String = (0..=FIELD_COUNT_MAX)
        .map(|i| format!("f{i}: Int\n"))
        .collect();
    check1(
        &format!("type T {{\n{fields}}}"),
        "error s.graphql:1:1: type T has more than 1024 fields",
    );

    let types: String = (0..=TYPE_COUNT_MAX)
        .map(|i| format!("type T{i}\n"))
        .collect();
    check1(&types, "error s.graphql:1025:1: more than 1024 types");

    let long = "a".repeat(NAME_BYTES_MAX + 1);
    check1(
        &format!("type {long}"),
        &format!("error s.graphql:1:1: type name {long:?} is 251 bytes, more than 250"),
    );
    check1(
        &format!("type T {{ {long}: Int }}"),
        &format!("error s.graphql:1:10: field name {long:?} is 251 bytes, more than 250"),
    );
    let ok = "a".repeat(NAME_BYTES_MAX);
    check1(
        &format!("type T @table(table: \"{ok}\")"),
        &format!("table data.{ok} (T) replicate audit"),
    );

    // graphql-parser stops bracket nesting at 50; just below that must parse on a test thread's
    // small stack, in a debug build.
    let deep_list = format!("{}1{}", "[".repeat(48), "]".repeat(48));
    check1(
        &format!("type T @table(x: {deep_list})"),
        "error s.graphql:1:8: unknown argument x of @table",
    );
    let deep_object = format!("{}1{}", "{a: ".repeat(48), "}".repeat(48));
    check1(
        &format!("type T @table(x: {deep_object})"),
        "error s.graphql:1:8: unknown argument x of @table",
    );
    let too_deep = format!("type T @table(x: {}1{})", "[".repeat(60), "]".repeat(60));
    let result = parse_schema_str(&too_deep, "s.graphql");
    assert!(result.is_err_and(|e| e.message.contains("Recursion limit exceeded")));

    let directives = " @indexed".repeat(DIRECTIVE_COUNT_MAX + 1);
    check1(
        &format!("type T @table {{ a: Int{directives} }}"),
        "error s.graphql:1:17: more than 16 directives on field T.a",
    );
}

#[test]
fn multiple_files() {
    // Types may refer to each other across files; positions name the right file.
    check(
        &[
            ("a.graphql", "type Dog @table @export { id: ID @primaryKey  breed: Breed @relationship(from: \"breedId\")  breedId: ID }"),
            ("b.graphql", "type Breed @table @export { id: ID @primaryKey  origin: Origin }\ntype Origin { country: String }"),
        ],
        "table data.Dog (Dog) export=Dog key=id replicate audit
           id ID key
           breed <Breed> from=breedId
           breedId ID
         table data.Breed (Breed) export=Breed key=id replicate audit
           id ID key
           origin <Origin>
         object Origin
           country String",
    );
    check(
        &[
            ("a.graphql", "type Dog @table @export"),
            ("b.graphql", "\n\ntype Canine @table @export(name: \"Dog\")"),
        ],
        "error b.graphql:3:1: types Dog and Canine are both exported as \"Dog\"",
    );
    check(
        &[
            ("a.graphql", "type Dog { a: Int }"),
            ("b.graphql", "# comment\n type Dog { a: Int }"),
        ],
        "error b.graphql:2:2: type Dog is already defined at a.graphql:1:1",
    );
    check(
        &[
            ("a.graphql", "type Dog @table"),
            ("b.graphql", "type X {\n a: Int \n}\n}"),
        ],
        "error b.graphql:4:1: syntax error: Unexpected `}`; Expected end of input",
    );
}

#[test]
fn describe_and_keys() {
    let schema = parse_schema_str(
        r#"type Dog @table(database: "inv", table: "dog", expiration: 60, replicate: false) @export @sealed {
  id: ID! @primaryKey
  name: String @indexed
  tags: [String] @indexed
  nested: [[Int]]
  createdAt: Long @createdTime
  updatedAt: Date @updatedTime
  owner: Owner @relationship(from: "ownerId")
  ownerId: Long
}
type Owner @table { id: Long @primaryKey }
type Sensor @table
type Reading @table { at: Float @primaryKey }
type Anything @table { k: Any @primaryKey }
"#,
        "d.graphql",
    );
    let schema = match schema {
        Ok(schema) => schema,
        Err(error) => panic!("{error}"),
    };
    let find = |name: &str| schema.tables.iter().find(|t| t.type_name == name).cloned();
    let Some(dog) = find("Dog") else {
        panic!("no Dog")
    };
    let expected = serde_json::json!({
        "schema": "inv", "name": "dog", "hash_attribute": "id", "audit": true, "schema_defined": true,
        "attributes": [
            {"attribute": "id", "type": "ID", "is_primary_key": true, "nullable": false},
            {"attribute": "name", "type": "String", "indexed": true},
            {"attribute": "tags", "type": "array", "elements": {"type": "String"}, "indexed": true},
            {"attribute": "nested", "type": "array", "elements": {"type": "array", "elements": {"type": "Int"}}},
            {"attribute": "createdAt", "type": "Long", "assigned_created_time": true},
            {"attribute": "updatedAt", "type": "Date", "assigned_updated_time": true},
            {"attribute": "owner", "type": "Owner", "relationship": {"from": "ownerId"}},
            {"attribute": "ownerId", "type": "Long"},
        ],
        "expiration": "60s", "replicate": false, "sealed": true,
    });
    assert_eq!(dog.describe(), expected);
    assert_eq!(dog.describe_attributes(), expected["attributes"]);
    let sensor = find("Sensor").map(|t| t.describe());
    assert_eq!(
        sensor,
        Some(
            serde_json::json!({"schema": "data", "name": "Sensor", "audit": true,
            "schema_defined": true, "attributes": [], "replicate": true})
        )
    );

    let keys: Vec<(String, KeyType)> = schema
        .tables
        .iter()
        .map(|t| (t.type_name.clone(), t.key_type()))
        .collect();
    let expected = [
        ("Dog", KeyType::Uuid),
        ("Owner", KeyType::Increment),
        ("Sensor", KeyType::UrlOnly),
        ("Reading", KeyType::NotGenerated),
        ("Anything", KeyType::Increment),
    ];
    let expected: Vec<(String, KeyType)> =
        expected.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    assert_eq!(keys, expected);
}

fn render_files(files: &Option<FilesConfig>) -> String {
    match files {
        Some(files) => format!("{:?}", files.files),
        None => "off".to_string(),
    }
}

/// The config, then the schema's rendering, then config and schema warnings; or the error.
fn render_app(result: Result<App, AppError>) -> String {
    let app = match result {
        Ok(app) => app,
        Err(error) => return format!("error {error}"),
    };
    let config = &app.config;
    let mut out = String::new();
    match &config.rest {
        Some(rest) => out.push_str(&format!(
            "rest lastModified={} webSocket={}\n",
            rest.last_modified, rest.web_socket
        )),
        None => out.push_str("rest off\n"),
    }
    out.push_str(&format!(
        "graphqlSchema {}\n",
        render_files(&config.graphql_schema)
    ));
    match &config.static_files {
        Some(s) => out.push_str(&format!(
            "static {:?} urlPath={:?} index={} extensions={:?} fallthrough={} notFound={:?}\n",
            s.files, s.url_path, s.index, s.extensions, s.fallthrough, s.not_found
        )),
        None => out.push_str("static off\n"),
    }
    out.push_str(&format!("roles {}\n", render_files(&config.roles)));
    out.push_str(&format!(
        "dataLoader {}\n",
        render_files(&config.data_loader)
    ));
    out.push_str(&render(Ok(Schema {
        tables: app.tables,
        object_types: app.object_types,
        warnings: app.warnings,
    })));
    out
}

/// Writes `files` (relative path, contents) into a fresh folder, loads it, compares.
fn check_app(files: &[(&str, &str)], expected: &str) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("tempdir: {error}"),
    };
    for (path, contents) in files {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            if let Err(error) = std::fs::create_dir_all(parent) {
                panic!("{}: {error}", parent.display());
            }
        }
        if let Err(error) = std::fs::write(&path, contents) {
            panic!("{}: {error}", path.display());
        }
    }
    let actual = render_app(load_app(dir.path()));
    let normalise = |text: &str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        normalise(&actual),
        normalise(expected),
        "app files: {files:#?}"
    );
}

#[test]
fn app_defaults_without_config() {
    check_app(
        &[
            ("a.graphql", "type A @table @export"),
            ("b.graphql", "type B @table(database: \"other\")"),
            // `*.graphql` does not reach into folders.
            ("sub/c.graphql", "type C @table"),
            ("roles.yaml", "not read here"),
        ],
        r#"rest lastModified=false webSocket=true
           graphqlSchema ["*.graphql"]
           static ["web/**"] urlPath=None index=false extensions=[] fallthrough=true notFound=None
           roles ["roles.yaml"]
           dataLoader off
           table data.A (A) export=A replicate audit
           table other.B (B) replicate audit"#,
    );
    check_app(
        &[("web/index.html", "")],
        r#"rest lastModified=false webSocket=true
           graphqlSchema ["*.graphql"]
           static ["web/**"] urlPath=None index=false extensions=[] fallthrough=true notFound=None
           roles ["roles.yaml"]
           dataLoader off
           warn graphqlSchema: no file matches ["*.graphql"]"#,
    );
}

#[test]
fn app_explicit_config() {
    let config = r#"
rest: {lastModified: true, webSocket: false, bogus: 1}
graphqlSchema:
  files: ["schemas/**/*.graphql", extra.graphql]
static: {files: "site/**", urlPath: app, index: true, extensions: [html, htm], fallthrough: false, notFound: 404.html, cache: 1}
roles: {files: auth/roles.yaml}
dataLoader: {files: [data/*.json]}
loadEnv: {files: .env}
"@harperdb/nextjs": {package: "@harperdb/nextjs"}
"#;
    check_app(
        &[
            ("config.yaml", config),
            ("schemas/a.graphql", "type A @table"),
            ("schemas/deep/b.graphql", "type B @table"),
            ("extra.graphql", "type C @table"),
            ("ignored.graphql", "type D @table"),
        ],
        r#"rest lastModified=true webSocket=false
           graphqlSchema ["schemas/**/*.graphql", "extra.graphql"]
           static ["site/**"] urlPath=Some("app") index=true extensions=["html", "htm"] fallthrough=false notFound=Some("404.html")
           roles ["auth/roles.yaml"]
           dataLoader ["data/*.json"]
           table data.C (C) replicate audit
           table data.A (A) replicate audit
           table data.B (B) replicate audit
           warn config.yaml: unknown key "rest.bogus" ignored
           warn config.yaml: unknown key "static.cache" ignored
           warn config.yaml: "loadEnv" is a HarperDB component tidepool does not run: ignored
           warn config.yaml: "@harperdb/nextjs" is a HarperDB component tidepool does not run: ignored"#,
    );
}

#[test]
fn app_config_mistakes_stop_the_start() {
    check_app(
        &[
            ("config.yaml", "graphqlSchem:\n  files: '*.graphql'\n"),
            ("a.graphql", "type A @table"),
        ],
        r#"error config.yaml: unknown key "graphqlSchem"; did you mean "graphqlSchema"? (the keys: docs/applications.md)"#,
    );
    check_app(
        &[("config.yaml", "7: seven\n")],
        r#"error config.yaml: unknown key 7"#,
    );
    check_app(
        &[
            (
                "config.yaml",
                "graphqlSchema:\n  files: 'schemas/*.graphql'\n",
            ),
            ("a.graphql", "type A @table"),
        ],
        r#"error config.yaml: graphqlSchema: no file matches ["schemas/*.graphql"]"#,
    );
}

#[test]
fn app_config_replaces_defaults() {
    let off = "rest off\ngraphqlSchema off\nstatic off\nroles off\ndataLoader off";
    // An existing file, even an empty one, turns off every section it does not name.
    check_app(&[("config.yaml", ""), ("a.graphql", "type A @table")], off);
    check_app(&[("config.yaml", "rest: false\ngraphqlSchema: null")], off);
    check_app(
        &[
            ("config.yaml", "graphqlSchema: {files: s.graphql}"),
            ("s.graphql", "enum E { A }"),
        ],
        r#"rest off
           graphqlSchema ["s.graphql"]
           static off
           roles off
           dataLoader off
           warn s.graphql:1:1: enum definition ignored"#,
    );
    check_app(
        &[("config.yaml", "rest: true\nrest: false")],
        "error config.yaml: duplicate entry with key \"rest\"",
    );
}

#[test]
fn app_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("config.yaml", "rest: 5")], "error config.yaml: rest: expected true, false or a mapping"),
        (&[("config.yaml", "- a\n- b")], "error config.yaml: expected a mapping of keys"),
        (&[("config.yaml", "graphqlSchema: {}")], "error config.yaml: graphqlSchema: files is required"),
        (&[("config.yaml", "graphqlSchema: s.graphql")], "error config.yaml: graphqlSchema: expected a mapping with files"),
        (&[("config.yaml", "graphqlSchema: {files: 5}")], "error config.yaml: graphqlSchema.files: expected a string or a list of strings"),
        (&[("config.yaml", "graphqlSchema: {files: []}")], "error config.yaml: graphqlSchema.files: expected at least one glob"),
        (&[("config.yaml", "graphqlSchema: {files: [a, 5]}")], "error config.yaml: graphqlSchema.files: expected a string"),
        (&[("config.yaml", "rest: {webSocket: yes}")], "error config.yaml: rest.webSocket: expected true or false"),
        (&[("config.yaml", "static: {urlPath: x}")], "error config.yaml: static: files is required"),
        (&[("config.yaml", "static: {files: x, index: 1}")], "error config.yaml: static.index: expected true or false"),
        (&[("config.yaml", "rest: [")], "error config.yaml: did not find expected node content at line 2 column 1, while parsing a flow node"),
        (&[("config.yaml", "graphqlSchema: {files: ../x.graphql}")], "error glob \"../x.graphql\": must not leave the application folder"),
        (&[("config.yaml", "graphqlSchema: {files: /etc/*.graphql}")], "error glob \"/etc/*.graphql\": must be relative to the application folder"),
        (
            &[("config.yaml", "graphqlSchema: {files: '**/*.graphql'}"), ("a/b/x.graphql", "\n type X @table @nope")],
            "error a/b/x.graphql:2:16: unknown directive @nope",
        ),
        (
            &[("one.graphql", "type Dog @table @export"), ("two.graphql", "type Hund @table(table: \"h\") @export(name: \"Dog\")")],
            "error two.graphql:1:1: types Dog and Hund are both exported as \"Dog\"",
        ),
    ];
    for (files, expected) in cases {
        check_app(files, expected);
    }
}

#[test]
fn app_folder_missing() {
    let result = load_app(Path::new("/nonexistent/tidepool-app"));
    assert!(matches!(result, Err(AppError::Io { .. })), "{result:?}");
}

#[test]
fn deploy_app_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/app");
    let app = match load_app(&dir) {
        Ok(app) => app,
        Err(error) => panic!("deploy/app: {error}"),
    };
    let actual = render(Ok(Schema {
        tables: app.tables.clone(),
        object_types: app.object_types.clone(),
        warnings: app.warnings.clone(),
    }));
    let expected = "table data.Dog (Dog) export=Dog key=id replicate audit
           id ID key
           name String indexed
           breed String indexed
           age Int indexed
           owner String
           tags [String] indexed
           createdAt Long created
           updatedAt Long updated
         table dogs.breed (Breed) export=Breed key=id replicate audit
           id Long key
           name String required indexed
           origin <Origin>
         table data.Sensor (Sensor) export=Sensor expiration=60s replicate audit
         object Origin
           country String
           year Int";
    let normalise = |text: &str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(normalise(&actual), normalise(expected));
    assert_eq!(app.config.rest, Some(RestConfig::default()));
    assert_eq!(app.export("Dog").map(|t| t.key_type()), Some(KeyType::Uuid));
    assert_eq!(
        app.export("Breed").map(|t| t.key_type()),
        Some(KeyType::Increment)
    );
    assert_eq!(
        app.export("Sensor").map(|t| t.key_type()),
        Some(KeyType::UrlOnly)
    );
}

#[test]
fn key_changes() {
    let parse = |source: &str| match parse_schema_str(source, "k.graphql") {
        Ok(schema) => schema.tables,
        Err(error) => panic!("{error}"),
    };
    let cases = [
        (
            "type T @table { id: ID @primaryKey }",
            "type T @table { id: ID @primaryKey  x: Int }",
            "ok",
        ),
        (
            "type T @table { id: ID @primaryKey }",
            "type T @table { id: ID  k: ID @primaryKey }",
            "k.graphql:1:1: table data.T changes its primary key from \"id\" to \"k\"",
        ),
        (
            "type T @table",
            "type T @table { k: ID @primaryKey }",
            "k.graphql:1:1: table data.T changes its primary key from none to \"k\"",
        ),
        (
            "type T @table { k: ID @primaryKey }",
            "type T @table { k: ID }",
            "k.graphql:1:1: table data.T changes its primary key from \"k\" to none",
        ),
    ];
    for (before, after, expected) in cases {
        let (before, after) = (parse(before), parse(after));
        let actual = match (before.first(), after.first()) {
            (Some(before), Some(after)) => match after.check_replaces(before) {
                Ok(()) => "ok".to_string(),
                Err(error) => error.to_string(),
            },
            _ => "no table".to_string(),
        };
        assert_eq!(actual, expected);
    }
}
