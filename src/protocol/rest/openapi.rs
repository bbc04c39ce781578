//! `GET /openapi` (docs/rest.md): an OpenAPI 3.0 document generated from the exported tables —
//! `/T/` and `/T/{id}` per export, a schema per table, basic and bearer security.

use serde_json::{json, Map, Value};

use crate::schema::{FieldType, TableDef};

fn type_schema(ty: &FieldType) -> Value {
    match ty {
        FieldType::ID | FieldType::String => json!({"type": "string"}),
        FieldType::Int | FieldType::Long | FieldType::BigInt => json!({"type": "integer"}),
        FieldType::Float => json!({"type": "number"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Date => json!({"type": "string", "format": "date-time"}),
        FieldType::Bytes | FieldType::Blob => json!({"type": "string", "format": "byte"}),
        FieldType::Array(element) => json!({"type": "array", "items": type_schema(element)}),
        FieldType::Any | FieldType::Object(_) => json!({}),
    }
}

fn table_schema(def: &TableDef) -> Value {
    let mut properties = Map::new();
    for attr in def.attributes.iter().filter(|a| a.relationship.is_none()) {
        let mut schema = type_schema(&attr.ty);
        if !attr.required && !attr.primary_key {
            if let Value::Object(o) = &mut schema {
                if o.contains_key("type") {
                    o.insert("nullable".into(), Value::Bool(true));
                }
            }
        }
        properties.insert(attr.name.clone(), schema);
    }
    json!({"type": "object", "properties": properties, "additionalProperties": true})
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The document for these exports (export name, definition).
pub fn document(exports: &[(&str, &TableDef)]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {"error": {"type": "string"}}}),
    );
    for (name, def) in exports {
        let schema_ref = json!({"$ref": format!("#/components/schemas/{name}")});
        schemas.insert((*name).to_string(), table_schema(def));
        let id_type = def
            .primary_key_attribute()
            .map(|a| type_schema(&a.ty))
            .unwrap_or_else(|| json!({"type": "string"}));
        let record_body = json!({
            "required": true,
            "content": {"application/json": {"schema": schema_ref}}
        });
        paths.insert(
            format!("/{name}/"),
            json!({
                "get": {
                    "summary": format!("Query {name} records (URL query language in the query string)"),
                    "responses": {
                        "200": {"description": "matching records",
                                "content": {"application/json": {"schema": {"type": "array", "items": schema_ref}}}},
                        "400": error_response("bad query"),
                        "404": error_response("unknown attribute")
                    }
                },
                "post": {
                    "summary": format!("Create a {name} record"),
                    "requestBody": record_body,
                    "responses": {
                        "201": {"description": "created; the body is the new id",
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "400": error_response("invalid record"),
                        "409": error_response("the key exists")
                    }
                }
            }),
        );
        let id_param = json!([{"name": "id", "in": "path", "required": true, "schema": id_type}]);
        paths.insert(
            format!("/{name}/{{id}}"),
            json!({
                "parameters": id_param,
                "get": {
                    "summary": format!("Read one {name} record"),
                    "responses": {
                        "200": {"description": "the record",
                                "content": {"application/json": {"schema": schema_ref}}},
                        "304": {"description": "not modified"},
                        "400": error_response("bad id"),
                        "404": {"description": "not found"}
                    }
                },
                "put": {
                    "summary": format!("Replace or create a {name} record"),
                    "requestBody": record_body,
                    "responses": {"204": {"description": "stored"}, "400": error_response("invalid record")}
                },
                "patch": {
                    "summary": format!("Merge properties into a {name} record"),
                    "requestBody": record_body,
                    "responses": {"204": {"description": "stored"}, "400": error_response("invalid record"),
                                  "415": error_response("not a structured body")}
                },
                "delete": {
                    "summary": format!("Delete a {name} record"),
                    "responses": {"200": {"description": "true",
                                          "content": {"application/json": {"schema": {"type": "boolean"}}}},
                                  "400": error_response("bad id")}
                }
            }),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "tidepool REST interface", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {"type": "http", "scheme": "bearer"}
            }
        },
        "security": [{"basicAuth": []}, {"bearerAuth": []}]
    })
}
