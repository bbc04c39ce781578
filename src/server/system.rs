//! The `system` database's tables (docs/operations-api.md), created on first start. `hdb_job` (HarperDB's job
//! table) holds the Operations API's bulk-load jobs (`resource::jobs`), so they survive restart.

use crate::schema::{parse_schema_str, TableDef};

const SYSTEM_SCHEMA: &str = "
type hdb_user @table(database: \"sys\") { username: String @primaryKey password: String role: String active: Boolean refresh_token: String __createdtime__: Long @createdTime __updatedtime__: Long @updatedTime }
type hdb_role @table(database: \"sys\") { id: String @primaryKey role: String permission: Any __createdtime__: Long @createdTime __updatedtime__: Long @updatedTime }
type hdb_nodes @table(database: \"sys\") { name: String @primaryKey url: String subscriptions: Any replicates: Any revoked_certificates: Any shard: Int verify_tls: Boolean ca: String system_info: Any removed: Boolean }
type hdb_certificate @table(database: \"sys\") { name: String @primaryKey certificate: String is_authority: Boolean private_key_name: String is_self_signed: Boolean details: Any }
type hdb_session @table(database: \"sys\") { id: String @primaryKey user: String }
type hdb_durable_session @table(database: \"sys\") { id: String @primaryKey }
type hdb_session_will @table(database: \"sys\") { id: String @primaryKey }
type hdb_mqtt_retained @table(database: \"sys\") { topic: String @primaryKey }
type hdb_raw_analytics @table(database: \"sys\", audit: false) { id: Float @primaryKey }
type hdb_analytics @table(database: \"sys\") { id: Float @primaryKey }
type hdb_info @table(database: \"sys\") { info_id: Long @primaryKey }
type hdb_job @table(database: \"sys\") { id: String @primaryKey type: String status: String user: String message: Any result: Any job_body: Any created_datetime: Float start_datetime: Float end_datetime: Float records_total: Long records_processed: Long records_loaded: Long records_skipped: Long records_error: Long __createdtime__: Long @createdTime __updatedtime__: Long @updatedTime }
";

/// The system tables. The schema parser refuses the name `system` for application schemas, so the
/// definitions are parsed under another name and moved.
pub fn tables() -> Vec<TableDef> {
    let schema = match parse_schema_str(SYSTEM_SCHEMA, "<system>") {
        Ok(schema) => schema,
        Err(e) => panic!("built-in system schema does not parse: {e}"),
    };
    schema
        .tables
        .into_iter()
        .map(|mut t| {
            t.database = "system".to_string();
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_tables_parse() {
        let tables = super::tables();
        assert!(tables
            .iter()
            .any(|t| t.table == "hdb_user" && t.primary_key.as_deref() == Some("username")));
        assert!(tables
            .iter()
            .any(|t| t.table == "hdb_job" && t.primary_key.as_deref() == Some("id")));
        assert!(tables.iter().all(|t| t.database == "system"));
    }
}
