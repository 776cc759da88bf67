//! Validated names: a cluster name and a MySQL instance address.
//!
//! Both are checked once where they enter the system (CLI, gRPC) so the rest of the
//! code never has to wonder whether a string is well-formed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("cluster name {0:?} is invalid: use 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit")]
    BadClusterName(String),
    #[error("instance address {0:?} is invalid: expected HOST:PORT with a port in 1-65535")]
    BadInstanceAddr(String),
}

/// The name of a MySQL/MariaDB replication cluster registered with primus.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(ClusterName(s.to_string()))
        } else {
            Err(NameError::BadClusterName(s.to_string()))
        }
    }
}

impl TryFrom<String> for ClusterName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ClusterName> for String {
    fn from(n: ClusterName) -> String {
        n.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `host:port` of a MySQL/MariaDB instance, as the coordinators reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceAddr {
    /// Shared: addresses are copied everywhere (every probe record, every decision input,
    /// every map key) and never change, so a copy is a reference count, not an allocation.
    host: std::sync::Arc<str>,
    port: u16,
}

impl InstanceAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, NameError> {
        let host = host.into();
        format!("{host}:{port}").parse()
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for InstanceAddr {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::BadInstanceAddr(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        // Bracketed IPv6: [::1]:3306
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = !host.is_empty()
            && host.len() <= 255
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if port == 0 || !host_ok {
            return Err(bad());
        }
        Ok(InstanceAddr { host: host.into(), port })
    }
}

impl TryFrom<String> for InstanceAddr {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<InstanceAddr> for String {
    fn from(a: InstanceAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for InstanceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_validated() {
        assert!("r2d2".parse::<ClusterName>().is_ok());
        assert!("shop-eu.main_1".parse::<ClusterName>().is_ok());
        for bad in ["", "-x", "a b", "x/y", &"a".repeat(65)] {
            assert!(bad.parse::<ClusterName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn instance_addrs_round_trip_and_reject_garbage() {
        let a: InstanceAddr = "db-1.example:3306".parse().unwrap();
        assert_eq!((a.host(), a.port()), ("db-1.example", 3306));
        assert_eq!(a.to_string(), "db-1.example:3306");
        let v6: InstanceAddr = "[::1]:3307".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:3307");
        for bad in ["db", "db:", "db:0", "db:70000", ":3306", "d b:1"] {
            assert!(bad.parse::<InstanceAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
