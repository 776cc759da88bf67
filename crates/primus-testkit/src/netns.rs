//! Real network partitions for tests: Linux network namespaces on a bridge.
//!
//! A [`NetLab`] creates a bridge in the root namespace (`10.<a>.<b>.1/24`) and, per
//! [`NetLab::add_host`], a namespace with a veth pair into the bridge and the address
//! `10.<a>.<b>.<10 + i>`. Processes started in a host's namespace (`ip netns exec`)
//! reach the root namespace, and each other, through the bridge; their unix sockets
//! stay reachable through the shared file system (a "local client" on that host).
//!
//! [`NetLab::cut`] partitions a host **silently**, as a real partition does: it pins
//! every peer's address to an unused MAC on both sides (`ip neigh replace … lladdr
//! 02:00:00:00:00:99 nud permanent`), so packets leave and are never answered — TCP
//! peers time out instead of being refused. [`NetLab::heal`] removes the pins.
//! Everything is deleted on drop. Needs root (the tests run as root).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;

const DEAD_MAC: &str = "02:00:00:00:00:99";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

/// One network namespace on the lab's bridge.
#[derive(Debug, Clone)]
pub struct NetHost {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The veth end inside the namespace.
    pub dev: String,
}

pub struct NetLab {
    tag: String,
    bridge: String,
    pub gateway: Ipv4Addr,
    prefix: [u8; 2],
    hosts: Mutex<Vec<NetHost>>,
}

impl NetLab {
    /// A bridge named after `tag` (≤ 8 characters, unique per concurrent lab).
    pub fn new(tag: &str) -> Result<NetLab> {
        // 10.77.X.0/24 with X from the process id: concurrent test processes differ.
        // 20..=99: the nemesis numbers its labs from 100 up.
        Self::with_subnet(tag, (std::process::id() % 80 + 20) as u8)
    }

    /// [`NetLab::new`] on `10.77.<x>.0/24`: for callers that run several labs at once
    /// and number them themselves.
    pub fn with_subnet(tag: &str, x: u8) -> Result<NetLab> {
        anyhow::ensure!(tag.len() <= 8 && !tag.is_empty(), "netns tag must be 1-8 characters");
        let lab = NetLab {
            tag: tag.to_string(),
            bridge: format!("pb{tag}"),
            gateway: Ipv4Addr::new(10, 77, x, 1),
            prefix: [77, x],
            hosts: Mutex::new(Vec::new()),
        };
        let _ = ip(&["link", "del", &lab.bridge]);
        ip(&["link", "add", &lab.bridge, "type", "bridge"])
            .context("creating a bridge (network namespace tests need root and iproute2)")?;
        ip(&["addr", "add", &format!("{}/24", lab.gateway), "dev", &lab.bridge])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        Ok(lab)
    }

    /// A new namespace `p<tag><i>` on the bridge.
    pub fn add_host(&self) -> Result<NetHost> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let i = hosts.len();
        let ns = format!("p{}{i}", self.tag);
        let outside = format!("v{}{i}", self.tag);
        let inside = format!("e{}{i}", self.tag);
        let addr = Ipv4Addr::new(10, self.prefix[0], self.prefix[1], 10 + i as u8);
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &outside]);
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
        ip(&["link", "set", &inside, "netns", &ns])?;
        ip(&["link", "set", &outside, "master", &self.bridge])?;
        ip(&["link", "set", &outside, "up"])?;
        ip_in(&ns, &["addr", "add", &format!("{addr}/24"), "dev", &inside])?;
        ip_in(&ns, &["link", "set", &inside, "up"])?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        ip_in(&ns, &["route", "add", "default", "via", &self.gateway.to_string()])?;
        let h = NetHost { ns, addr, dev: inside };
        hosts.push(h.clone());
        Ok(h)
    }

    /// Silently cut `host` off from the root namespace and every other host.
    pub fn cut(&self, host: &NetHost) -> Result<()> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gw = self.gateway.to_string();
        let me = host.addr.to_string();
        ip_in(&host.ns, &["neigh", "replace", &gw, "lladdr", DEAD_MAC, "dev", &host.dev, "nud", "permanent"])?;
        ip(&["neigh", "replace", &me, "lladdr", DEAD_MAC, "dev", &self.bridge, "nud", "permanent"])?;
        for other in hosts.iter().filter(|h| h.ns != host.ns) {
            let o = other.addr.to_string();
            ip_in(&host.ns, &["neigh", "replace", &o, "lladdr", DEAD_MAC, "dev", &host.dev, "nud", "permanent"])?;
            ip_in(&other.ns, &["neigh", "replace", &me, "lladdr", DEAD_MAC, "dev", &other.dev, "nud", "permanent"])?;
        }
        Ok(())
    }

    /// Silently drop every packet `from` sends to `to` (one direction only): `from`'s
    /// neighbour entry for `to` is pinned to an unused MAC. TCP between them then
    /// times out both ways (no answer gets back), UDP from `to` still arrives.
    pub fn block(&self, from: &NetHost, to: &NetHost) -> Result<()> {
        ip_in(
            &from.ns,
            &["neigh", "replace", &to.addr.to_string(), "lladdr", DEAD_MAC, "dev", &from.dev, "nud", "permanent"],
        )
    }

    /// Undo [`NetLab::block`] (a no-op when there is no such block).
    pub fn unblock(&self, from: &NetHost, to: &NetHost) -> Result<()> {
        let _ = ip_in(&from.ns, &["neigh", "del", &to.addr.to_string(), "dev", &from.dev]);
        Ok(())
    }

    /// Every host of the lab, in the order they were added.
    pub fn hosts(&self) -> Vec<NetHost> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Undo [`NetLab::cut`].
    pub fn heal(&self, host: &NetHost) -> Result<()> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let me = host.addr.to_string();
        // `neigh flush` leaves permanent entries alone: delete each pin.
        ip_in(&host.ns, &["neigh", "del", &self.gateway.to_string(), "dev", &host.dev])?;
        ip(&["neigh", "del", &me, "dev", &self.bridge])?;
        for other in hosts.iter().filter(|h| h.ns != host.ns) {
            ip_in(&host.ns, &["neigh", "del", &other.addr.to_string(), "dev", &host.dev])?;
            ip_in(&other.ns, &["neigh", "del", &me, "dev", &other.dev])?;
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, h) in hosts.iter().enumerate() {
            let _ = ip(&["netns", "del", &h.ns]);
            let _ = ip(&["link", "del", &format!("v{}{i}", self.tag)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
