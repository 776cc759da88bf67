//! TCP "links" that a test can cut and heal.
//!
//! A [`LinkProxy`] listens on a free loopback port and forwards every connection to
//! one target. Putting one proxy on every (coordinator, instance) path — see
//! [`LinkMatrix`] — makes partitions such as "the primary is unreachable from
//! coordinator 2 only" real, without touching the servers.
//!
//! # Cut modes
//! * [`CutMode::Silent`] (default) models a partition: nothing is forwarded in either
//!   direction, but no connection is closed. Bytes a peer sends stay queued (in the
//!   kernel's socket buffers and the proxy's buffer). New connections are accepted —
//!   the kernel completes the handshake — but are not connected onwards. The client
//!   sees *timeouts*, not errors. Note that the client's own TCP stack still gets ACKs
//!   and keepalive answers from the proxy's side, so only application-level read
//!   timeouts (e.g. MariaDB's `slave_net_timeout`, a client's query timeout) notice.
//! * [`CutMode::Reset`] closes every connection with a RST and resets new connections
//!   right after accepting them: the client fails fast with "connection reset".
//!
//! # Heal
//! [`LinkProxy::heal`] lets traffic flow again. Connections that were silently cut and
//! are still open *resume*, delivering what was queued — as TCP connections do when a
//! partition heals before their timeouts; connections accepted during a silent cut are
//! connected to the target then. A client that gave up during the cut has closed its
//! socket; the proxy sees that EOF after the heal and closes the other side. Use a new
//! connection after a heal to be independent of this. Connections reset by a
//! [`CutMode::Reset`] cut stay closed.
//!
//! Dropping the proxy stops its accept loop and resets all its connections. IO errors
//! only end the connection they happen on; nothing here panics on them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How [`LinkProxy::cut_with`] cuts a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CutMode {
    /// Stop forwarding, close nothing: peers see silence and time out.
    #[default]
    Silent,
    /// Reset every connection and every new one: peers fail fast.
    Reset,
}

/// State of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Cut(CutMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Silent,
    Reset,
    Closed,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    active: AtomicUsize,
    bytes_to_target: AtomicU64,
    bytes_from_target: AtomicU64,
}

/// Timeout for connecting to the target once a connection may flow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BUF_SIZE: usize = 16 * 1024;

/// A cut-able TCP forwarder from a loopback port to one target. See the module docs.
pub struct LinkProxy {
    listen: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    stats: Arc<Stats>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for LinkProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkProxy")
            .field("listen", &self.listen)
            .field("target", &self.target)
            .field("state", &self.state())
            .finish()
    }
}

impl LinkProxy {
    /// Listens on a free loopback port (from [`crate::ports::free_port`]) and forwards
    /// to `target`. Must be called inside a tokio runtime; the proxy's tasks run on it.
    pub async fn start(target: SocketAddr) -> Result<LinkProxy> {
        let mut last_err = None;
        let mut listener = None;
        for _ in 0..20 {
            let port = crate::ports::free_port().context("finding a free port for a link proxy")?;
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let listener = match listener {
            Some(l) => l,
            None => {
                return Err(anyhow::anyhow!("binding a link proxy listener failed 20 times: {last_err:?}"));
            }
        };
        let listen = listener.local_addr().context("link proxy local_addr")?;
        let (state, state_rx) = watch::channel(State::Up);
        let stats = Arc::new(Stats::default());
        let accept_task = tokio::spawn(accept_loop(listener, target, state_rx, Arc::clone(&stats)));
        debug!(%listen, %target, "link proxy started");
        Ok(LinkProxy { listen, target, state, stats, accept_task })
    }

    /// Where clients connect.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Cuts the link silently ([`CutMode::Silent`]).
    pub fn cut(&self) {
        self.cut_with(CutMode::Silent);
    }

    /// Cuts the link in the given mode.
    pub fn cut_with(&self, mode: CutMode) {
        let new = match mode {
            CutMode::Silent => State::Silent,
            CutMode::Reset => State::Reset,
        };
        debug!(listen = %self.listen, target = %self.target, ?mode, "link cut");
        self.state.send_replace(new);
    }

    /// Lets traffic flow again (see the module docs for old connections).
    pub fn heal(&self) {
        debug!(listen = %self.listen, target = %self.target, "link healed");
        self.state.send_replace(State::Up);
    }

    pub fn state(&self) -> LinkState {
        match *self.state.borrow() {
            State::Up => LinkState::Up,
            State::Silent => LinkState::Cut(CutMode::Silent),
            State::Reset | State::Closed => LinkState::Cut(CutMode::Reset),
        }
    }

    pub fn is_cut(&self) -> bool {
        self.state() != LinkState::Up
    }

    /// Connections accepted so far.
    pub fn accepted_connections(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Connections currently open on the client side.
    pub fn active_connections(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Bytes forwarded client -> target and target -> client.
    pub fn bytes_forwarded(&self) -> (u64, u64) {
        (self.stats.bytes_to_target.load(Ordering::Relaxed), self.stats.bytes_from_target.load(Ordering::Relaxed))
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.send_replace(State::Closed);
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Receiver<State>, stats: Arc<Stats>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; never give up.
                warn!(%target, "link proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let now = *state.borrow();
        match now {
            State::Closed => return,
            State::Reset => {
                reset(&sock);
                continue;
            }
            State::Up | State::Silent => {}
        }
        let _ = sock.set_nodelay(true);
        tokio::spawn(handle_connection(sock, peer, target, state.clone(), Arc::clone(&stats)));
    }
}

fn reset(sock: &TcpStream) {
    // Zero linger turns close into a RST; does not block.
    let _ = sock.set_zero_linger();
}

struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source closed its side; the FIN was passed on.
    Eof,
    /// An IO error on either socket.
    Error,
    /// The link was reset or the proxy dropped.
    Reset,
}

/// Waits while the link is silently cut. Returns `true` when traffic may flow,
/// `false` when the connection must be reset.
async fn wait_flowing(state: &mut watch::Receiver<State>) -> bool {
    loop {
        let now = *state.borrow_and_update();
        match now {
            State::Up => return true,
            State::Reset | State::Closed => return false,
            State::Silent => {
                if state.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Resolves when the link is reset or closed.
async fn wait_reset(state: &mut watch::Receiver<State>) {
    loop {
        if matches!(*state.borrow_and_update(), State::Reset | State::Closed) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

async fn handle_connection(
    client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    mut state: watch::Receiver<State>,
    stats: Arc<Stats>,
) {
    stats.active.fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(Arc::clone(&stats));

    // A connection accepted during a silent cut waits for the heal before it goes on.
    if !wait_flowing(&mut state).await {
        reset(&client);
        return;
    }
    let upstream = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)) => r,
        _ = wait_reset(&mut state) => {
            reset(&client);
            return;
        }
    };
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, %target, "link proxy cannot connect to target: {e}");
            reset(&client);
            return;
        }
        Err(_) => {
            debug!(%peer, %target, "link proxy connect to target timed out");
            reset(&client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);

    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let end = {
        let to_target = pump(&mut client_r, &mut up_w, state.clone(), &stats.bytes_to_target);
        let from_target = pump(&mut up_r, &mut client_w, state.clone(), &stats.bytes_from_target);
        tokio::pin!(to_target);
        tokio::pin!(from_target);
        let (first, other_done) = tokio::select! {
            e = &mut to_target => (e, false),
            e = &mut from_target => (e, true),
        };
        if first == End::Eof {
            // Half-close: keep the other direction going until it ends too.
            if other_done {
                to_target.await
            } else {
                from_target.await
            }
        } else {
            first
        }
    };
    if end == End::Reset {
        reset(client_r.as_ref());
        reset(up_r.as_ref());
    }
    debug!(%peer, %target, ?end, "link proxy connection ended");
}

/// Forwards `from` -> `to` while the link is up; pauses while it is silently cut.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    counter: &AtomicU64,
) -> End {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        if !wait_flowing(&mut state).await {
            return End::Reset;
        }
        let n = tokio::select! {
            // Reading is cancel-safe: a state change never loses bytes.
            changed = state.changed() => {
                if changed.is_err() {
                    return End::Reset;
                }
                continue;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return End::Eof;
                }
                Ok(n) => n,
                Err(_) => return End::Error,
            },
        };
        // Bytes read just before a silent cut are held until the heal.
        if !wait_flowing(&mut state).await {
            return End::Reset;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => {
                if r.is_err() {
                    return End::Error;
                }
            }
            _ = wait_reset(&mut state) => return End::Reset,
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One [`LinkProxy`] per (source, target) pair, e.g. per (coordinator, MariaDB
/// instance): source `s` reaches target `t` only through `link(s, t)`.
#[derive(Debug)]
pub struct LinkMatrix {
    targets: Vec<SocketAddr>,
    links: Vec<Vec<LinkProxy>>,
}

impl LinkMatrix {
    /// Starts `sources * targets.len()` proxies.
    pub async fn start(sources: usize, targets: &[SocketAddr]) -> Result<LinkMatrix> {
        let mut links = Vec::with_capacity(sources);
        for s in 0..sources {
            let mut row = Vec::with_capacity(targets.len());
            for (t, addr) in targets.iter().enumerate() {
                row.push(
                    LinkProxy::start(*addr)
                        .await
                        .with_context(|| format!("starting link proxy {s} -> {t} ({addr})"))?,
                );
            }
            links.push(row);
        }
        Ok(LinkMatrix { targets: targets.to_vec(), links })
    }

    pub fn sources(&self) -> usize {
        self.links.len()
    }

    /// Real target addresses, by index.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Index of a real target address.
    pub fn target_index(&self, addr: SocketAddr) -> Option<usize> {
        self.targets.iter().position(|a| *a == addr)
    }

    /// The proxy from `source` to `target`. Panics when out of range.
    pub fn link(&self, source: usize, target: usize) -> &LinkProxy {
        &self.links[source][target]
    }

    /// The address `source` must use to reach `target`.
    pub fn proxied_addr(&self, source: usize, target: usize) -> SocketAddr {
        self.link(source, target).listen_addr()
    }

    /// Real target address -> address `source` must use instead (e.g. to translate
    /// what `SHOW SLAVE HOSTS` reports).
    pub fn address_map(&self, source: usize) -> HashMap<SocketAddr, SocketAddr> {
        self.targets.iter().zip(&self.links[source]).map(|(t, l)| (*t, l.listen_addr())).collect()
    }

    /// [`LinkMatrix::address_map`] as "ip:port" strings.
    pub fn address_map_strings(&self, source: usize) -> HashMap<String, String> {
        self.address_map(source).into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Cuts `source` -> `target`.
    pub fn cut(&self, source: usize, target: usize, mode: CutMode) {
        self.link(source, target).cut_with(mode);
    }

    /// Heals `source` -> `target`.
    pub fn heal(&self, source: usize, target: usize) {
        self.link(source, target).heal();
    }

    /// Cuts every link of `source`: it reaches no target.
    pub fn isolate_source(&self, source: usize, mode: CutMode) {
        self.links[source].iter().for_each(|l| l.cut_with(mode));
    }

    /// Cuts `target` off from every source.
    pub fn isolate_target(&self, target: usize, mode: CutMode) {
        self.links.iter().for_each(|row| row[target].cut_with(mode));
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.links.iter().flatten().for_each(LinkProxy::heal);
    }
}
