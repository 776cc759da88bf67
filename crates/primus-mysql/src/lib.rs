//! Everything primus reads from MySQL/MariaDB, and the few statements it sends them.
//!
//! Failure diagnosis is holistic: whether a primary is dead is decided from what the primary
//! *and its replicas* say (can they reach it? are their IO threads connecting? what GTIDs did
//! they receive? is the heartbeat row advancing?). This crate turns servers into typed,
//! serialisable facts for that diagnosis and knows each flavor's dialect:
//!
//! * [`gtid`]: GTID sets of both flavors and their algebra (who is ahead), and MariaDB's
//!   `gtid_binlog_state`.
//! * [`divergence`]: [`divergent_transactions`], what a former primary executed after the
//!   failover that replaced it (beyond the recorded promotion point).
//! * [`errant`]: [`errant_transactions`], the errant-transaction check between a replica's and
//!   its primary's observations.
//! * [`flavor`]: flavor/version detection and every version-dependent SQL statement.
//! * [`status`]: typed `SHOW REPLICA STATUS` / `SHOW SLAVE HOSTS` rows.
//! * [`probe`]: one reused connection per instance, one round trip per probe, strict timeouts,
//!   an [`probe::Observation`] out.
//! * [`heartbeat`]: the `primus.heartbeat` row coordinators write on the primary and read on
//!   every replica to see replication progress end to end.
//! * `conn`: the `MysqlConn`/`Connector` seam the engine talks to servers through.
//!
//! Talking to servers (the prober, `conn`, heartbeat writes) needs the `client` feature, on
//! by default: it brings mysql_async and tokio. Without it the crate is the data types and
//! pure functions above, which is all the decision crate (primus-failover) uses.

#[cfg(feature = "client")]
pub mod conn;
pub mod divergence;
pub mod errant;
pub mod flavor;
pub mod gtid;
pub mod heartbeat;
pub mod probe;
#[doc(hidden)]
pub mod samples;
pub mod status;

#[cfg(feature = "client")]
pub use conn::{Connector, MysqlConn};
pub use divergence::{divergent_transactions, promotion_point, Divergence, DivergenceError, PromotionPoint};
pub use errant::{errant_transactions, ErrantReport};
pub use flavor::{Flavor, ReplicationTls, ServerInfo, Version};
pub use gtid::{AnyGtidSet, GtidOrdering, GtidSetOps, MariaBinlogState, MariaGtidSet, MySqlGtidSet};
pub use heartbeat::{HeartbeatRow, HeartbeatTable};
#[cfg(feature = "client")]
pub use probe::Prober;
pub use probe::{ClientTls, GtidState, Observation, ProbeConfig, ProbeCost, ProbeError, ProbeStage, Secret, TlsMode};
pub use status::{ConnectedReplica, IoThreadState, ReplicaStatus, StatusRow};
