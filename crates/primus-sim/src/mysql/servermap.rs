//! The world's servers by address: a handful of entries, looked up many times per simulated
//! millisecond (every request, every replica step, every read), so a sorted vector searched
//! by address rather than a tree: iteration is in address order as a `BTreeMap`'s would be
//! (the runs stay what they were), and a replica's step takes its server out of its slot and
//! puts it back without moving anything else.

use super::server::Server;
use primus_types::InstanceAddr;

#[derive(Default)]
pub(crate) struct ServerMap {
    /// Sorted by address; a slot is empty while its server is taken out.
    slots: Vec<(InstanceAddr, Option<Box<Server>>)>,
}

impl ServerMap {
    fn index(&self, addr: &InstanceAddr) -> Option<usize> {
        // A few servers: compare ports first (cheap, and they tell most servers apart in a
        // real world), then hosts.
        self.slots.iter().position(|(a, _)| a.port() == addr.port() && a.host() == addr.host())
    }

    pub fn get(&self, addr: &InstanceAddr) -> Option<&Server> {
        self.index(addr).and_then(|i| self.slots[i].1.as_deref())
    }

    pub fn get_mut(&mut self, addr: &InstanceAddr) -> Option<&mut Server> {
        let i = self.index(addr)?;
        self.slots[i].1.as_deref_mut()
    }

    pub fn contains_key(&self, addr: &InstanceAddr) -> bool {
        self.get(addr).is_some()
    }

    /// Adds a server (or replaces the one at `addr`).
    pub fn insert(&mut self, addr: InstanceAddr, server: Box<Server>) {
        match self.slots.binary_search_by(|(a, _)| a.cmp(&addr)) {
            Ok(i) => self.slots[i].1 = Some(server),
            Err(i) => self.slots.insert(i, (addr, Some(server))),
        }
    }

    /// Takes the server at `addr` out of its slot (it is absent until [`ServerMap::put`]).
    pub fn take(&mut self, addr: &InstanceAddr) -> Option<(usize, Box<Server>)> {
        let i = self.index(addr)?;
        self.slots[i].1.take().map(|s| (i, s))
    }

    /// Puts back a server [`ServerMap::take`] took out of slot `i`.
    pub fn put(&mut self, i: usize, server: Box<Server>) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.1 = Some(server);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InstanceAddr, &Server)> {
        self.slots.iter().filter_map(|(a, s)| s.as_deref().map(|s| (a, s)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &InstanceAddr> {
        self.iter().map(|(a, _)| a)
    }

    pub fn values(&self) -> impl Iterator<Item = &Server> {
        self.iter().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::ServerConfig;

    fn server(a: &InstanceAddr) -> Box<Server> {
        let cfg = ServerConfig::mariadb(a.clone(), 1);
        let info = primus_mysql::flavor::detect(&cfg.version, &cfg.version_comment).expect("a known version");
        Box::new(Server::new(cfg, info, None, tokio::time::Instant::now()))
    }

    #[test]
    fn servers_are_found_and_iterated_in_address_order_and_a_taken_one_is_absent_until_put_back() {
        let a = |s: &str| -> InstanceAddr { s.parse().expect("address") };
        let mut m = ServerMap::default();
        for s in ["db3:3306", "db1:3306", "db2:3307", "db2:3306"] {
            m.insert(a(s), server(&a(s)));
        }
        let order: Vec<String> = m.keys().map(ToString::to_string).collect();
        assert_eq!(order, ["db1:3306", "db2:3306", "db2:3307", "db3:3306"], "a BTreeMap's order");
        assert!(m.get(&a("db2:3307")).is_some_and(|s| s.cfg.addr == a("db2:3307")));
        assert!(m.get(&a("db4:3306")).is_none());
        let (slot, s) = m.take(&a("db2:3306")).expect("present");
        assert!(!m.contains_key(&a("db2:3306")), "taken out");
        assert_eq!(m.values().count(), 3);
        m.put(slot, s);
        assert!(m.get(&a("db2:3306")).is_some_and(|s| s.cfg.addr == a("db2:3306")), "back in its slot");
        assert_eq!(m.keys().count(), 4);
    }
}
