//! The heartbeat row: `primus.heartbeat(cluster, epoch, ts_ms, coordinator)`.
//!
//! "Can I connect to the primary" and "are the replicas' IO threads running" are both weak
//! signals (see the holistic-diagnosis notes): the only end-to-end proof that the primary
//! accepts writes *and* that they flow to every replica is a row written on the primary and
//! seen advancing on the replicas. The coordinator that leads a cluster writes
//! `(cluster, epoch, ts_ms, coordinator)` on the primary; every probe reads the table back, so a
//! replica's observation carries how far its copy of the heartbeat has got.
//!
//! Writes are fenced by `epoch`: a row holding a newer epoch is never overwritten by an older
//! one, so a deposed coordinator that still reaches the old primary cannot make its heartbeats
//! look current. [`write()`] reports whether the row was changed.

use crate::flavor::{quote_ident, quote_string};
use crate::status::StatusRow;
#[cfg(feature = "client")]
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// MySQL error: table does not exist.
pub const ER_NO_SUCH_TABLE: u16 = 1146;
/// MySQL error: unknown database.
pub const ER_BAD_DB_ERROR: u16 = 1049;
/// MySQL error: `--read-only` (or `super_read_only`) prevents the statement.
pub const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
/// MariaDB error 1836 `ER_READ_ONLY_MODE`.
pub const ER_READ_ONLY_MODE: u16 = 1836;

/// A heartbeat row as read back by a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeartbeatRow {
    pub cluster: String,
    /// Epoch of the writer (the coordinators' term/leadership epoch for the cluster).
    pub epoch: u64,
    /// Writer's wall clock, unix milliseconds.
    pub ts_ms: u64,
    /// Node id of the writing coordinator.
    pub coordinator: u64,
}

impl HeartbeatRow {
    pub fn from_row(row: &StatusRow) -> Result<HeartbeatRow, String> {
        let num = |c: &str| -> Result<u64, String> {
            let v = row.text(&[c]).ok_or_else(|| format!("heartbeat row has no {c}"))?;
            v.trim().parse().map_err(|e| format!("heartbeat {c} = {v:?}: {e}"))
        };
        Ok(HeartbeatRow {
            cluster: row.text(&["cluster"]).ok_or("heartbeat row has no cluster")?.to_string(),
            epoch: num("epoch")?,
            ts_ms: num("ts_ms")?,
            coordinator: num("coordinator")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("heartbeat table {0:?} is invalid: expected DATABASE.TABLE, each 1-64 characters from [A-Za-z0-9_$]")]
pub struct BadHeartbeatTable(String);

/// Where heartbeats live; `primus.heartbeat` by default. (De)serializes as `db.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeartbeatTable {
    db: String,
    table: String,
}

impl Default for HeartbeatTable {
    fn default() -> Self {
        HeartbeatTable { db: "primus".into(), table: "heartbeat".into() }
    }
}

impl FromStr for HeartbeatTable {
    type Err = BadHeartbeatTable;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |p: &str| {
            !p.is_empty() && p.len() <= 64 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        match s.split_once('.') {
            Some((db, table)) if ok(db) && ok(table) => {
                Ok(HeartbeatTable { db: db.to_string(), table: table.to_string() })
            }
            _ => Err(BadHeartbeatTable(s.to_string())),
        }
    }
}

impl TryFrom<String> for HeartbeatTable {
    type Error = BadHeartbeatTable;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HeartbeatTable> for String {
    fn from(t: HeartbeatTable) -> String {
        t.to_string()
    }
}

impl fmt::Display for HeartbeatTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.table)
    }
}

impl HeartbeatTable {
    pub fn database(&self) -> &str {
        &self.db
    }
    pub fn table(&self) -> &str {
        &self.table
    }

    fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.db), quote_ident(&self.table))
    }

    pub fn create_database_sql(&self) -> String {
        format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(&self.db))
    }

    pub fn create_table_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             cluster VARCHAR(64) NOT NULL PRIMARY KEY, \
             epoch BIGINT UNSIGNED NOT NULL, \
             ts_ms BIGINT UNSIGNED NOT NULL, \
             coordinator BIGINT UNSIGNED NOT NULL\
             ) ENGINE=InnoDB",
            self.qualified()
        )
    }

    /// Upsert fenced by epoch: an existing row with a higher epoch is left untouched.
    /// (`ON DUPLICATE KEY UPDATE` assigns left to right, so `epoch` is updated last and the
    /// `IF`s see the old value. `VALUES()` is deprecated in MySQL 8.0.20+ but is the only
    /// spelling MariaDB understands.)
    pub fn upsert_sql(&self, cluster: &str, epoch: u64, ts_ms: u64, coordinator: u64) -> String {
        format!(
            "INSERT INTO {} (cluster, epoch, ts_ms, coordinator) VALUES ({}, {epoch}, {ts_ms}, {coordinator}) \
             ON DUPLICATE KEY UPDATE \
             ts_ms = IF(VALUES(epoch) >= epoch, VALUES(ts_ms), ts_ms), \
             coordinator = IF(VALUES(epoch) >= epoch, VALUES(coordinator), coordinator), \
             epoch = GREATEST(epoch, VALUES(epoch))",
            self.qualified(),
            quote_string(cluster)
        )
    }

    /// Reads every cluster's row (one table may serve several clusters sharing servers).
    pub fn select_sql(&self) -> String {
        format!("SELECT cluster, epoch, ts_ms, coordinator FROM {} ORDER BY cluster", self.qualified())
    }
}

/// Why [`write_to`] failed (feature `client`).
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("heartbeat write refused: the server is read-only ({message})")]
    ReadOnly { message: String },
    #[error("heartbeat statement failed: {query}: {source}")]
    Query {
        query: String,
        #[source]
        source: mysql_async::Error,
    },
}

#[cfg(feature = "client")]
fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Writes the heartbeat of `cluster` into the default table `primus.heartbeat`; see [`write_to`].
#[cfg(feature = "client")]
pub async fn write(
    conn: &mut mysql_async::Conn,
    cluster: &str,
    epoch: u64,
    ts_ms: u64,
    coordinator: u64,
) -> Result<bool, HeartbeatError> {
    write_to(conn, &HeartbeatTable::default(), cluster, epoch, ts_ms, coordinator).await
}

/// Upserts the heartbeat row, creating the database and table the first time (detected by the
/// upsert failing with "unknown database/table", so the common path is one round trip).
///
/// Returns `true` if the row was inserted or changed, `false` if it was left as it was (a newer
/// epoch holds it, or it already had exactly these values). No timeout is applied here: wrap the
/// call, or use [`crate::Prober::write_heartbeat`]. Feature `client`.
#[cfg(feature = "client")]
pub async fn write_to(
    conn: &mut mysql_async::Conn,
    table: &HeartbeatTable,
    cluster: &str,
    epoch: u64,
    ts_ms: u64,
    coordinator: u64,
) -> Result<bool, HeartbeatError> {
    let upsert = table.upsert_sql(cluster, epoch, ts_ms, coordinator);
    let wrap = |query: &str, source: mysql_async::Error| match (server_code(&source), &source) {
        (Some(ER_OPTION_PREVENTS_STATEMENT | ER_READ_ONLY_MODE), mysql_async::Error::Server(s)) => {
            HeartbeatError::ReadOnly { message: s.message.clone() }
        }
        _ => HeartbeatError::Query { query: query.to_string(), source },
    };
    match conn.query_drop(&upsert).await {
        Ok(()) => return Ok(conn.affected_rows() > 0),
        Err(e) if matches!(server_code(&e), Some(ER_NO_SUCH_TABLE | ER_BAD_DB_ERROR)) => {}
        Err(e) => return Err(wrap(&upsert, e)),
    }
    for ddl in [table.create_database_sql(), table.create_table_sql()] {
        conn.query_drop(&ddl).await.map_err(|e| wrap(&ddl, e))?;
    }
    conn.query_drop(&upsert).await.map_err(|e| wrap(&upsert, e))?;
    Ok(conn.affected_rows() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_and_quoted() {
        let t: HeartbeatTable = "ops_db.hb$1".parse().expect("valid");
        assert_eq!(t.to_string(), "ops_db.hb$1");
        assert_eq!(t.select_sql(), "SELECT cluster, epoch, ts_ms, coordinator FROM `ops_db`.`hb$1` ORDER BY cluster");
        for bad in ["", "x", "a.b.c", "a`.b", ".b", "a.", "a b.c"] {
            assert!(bad.parse::<HeartbeatTable>().is_err(), "{bad:?}");
        }
        assert_eq!(HeartbeatTable::default().to_string(), "primus.heartbeat");
    }

    #[test]
    fn ddl_and_upsert_sql() {
        let t = HeartbeatTable::default();
        assert_eq!(t.create_database_sql(), "CREATE DATABASE IF NOT EXISTS `primus`");
        assert_eq!(
            t.create_table_sql(),
            "CREATE TABLE IF NOT EXISTS `primus`.`heartbeat` (cluster VARCHAR(64) NOT NULL PRIMARY KEY, \
             epoch BIGINT UNSIGNED NOT NULL, ts_ms BIGINT UNSIGNED NOT NULL, coordinator BIGINT UNSIGNED NOT NULL\
             ) ENGINE=InnoDB"
        );
        let up = t.upsert_sql("shop'eu", 7, 1_700_000_000_123, 2);
        assert!(
            up.starts_with(
                "INSERT INTO `primus`.`heartbeat` (cluster, epoch, ts_ms, coordinator) \
                 VALUES ('shop''eu', 7, 1700000000123, 2) ON DUPLICATE KEY UPDATE "
            ),
            "{up}"
        );
        // epoch is assigned last so the IFs compare against the stored epoch.
        assert!(up.ends_with("epoch = GREATEST(epoch, VALUES(epoch))"), "{up}");
    }

    #[test]
    fn rows_parse_from_generic_rows() {
        let row: StatusRow =
            [("cluster", Some("c1")), ("epoch", Some("3")), ("ts_ms", Some("99")), ("coordinator", Some("2"))]
                .into_iter()
                .collect();
        assert_eq!(
            HeartbeatRow::from_row(&row),
            Ok(HeartbeatRow { cluster: "c1".into(), epoch: 3, ts_ms: 99, coordinator: 2 })
        );
        let bad: StatusRow = [("cluster", Some("c1")), ("epoch", None::<&str>)].into_iter().collect();
        assert!(HeartbeatRow::from_row(&bad).is_err());
    }
}
