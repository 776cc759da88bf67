//! Real MariaDB sandboxes: N `mariadbd` processes on loopback ports, wired up with
//! GTID replication, with handles to kill, freeze, restart and query them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use primus_testkit::mariadb::{Sandbox, SandboxOptions, Topology};
//! let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
//! sb.insert_rows(10).await?;
//! sb.wait_replicas_caught_up(std::time::Duration::from_secs(10)).await?;
//! sb.replicas()[0].kill9()?;
//! sb.replicas()[0].restart().await?;
//! # Ok(()) }
//! ```
//!
//! # How an instance is made
//! * One *template* data directory is initialised with `mariadb-install-db` and the
//!   sandbox users (see [`COORDINATOR_USER`], [`REPLICATION_USER`]) are created in it
//!   with the binary log off, so no instance starts with any GTID history. The
//!   template is cached in `$TMPDIR/primus-testkit-cache/template-<hash>` (override
//!   with `PRIMUS_TESTKIT_CACHE_DIR`), keyed by the server version and the bootstrap
//!   SQL, and shared by all test processes; building it costs ~1-2 s once.
//! * A sandbox lives in a fresh directory under `$PRIMUS_TESTKIT_TMPDIR`, else
//!   `/dev/shm` (tmpfs: 3-10x faster than disk here), else the temp dir — or in the
//!   caller's [`SandboxOptions::base_dir`]. Each instance gets a sparse copy of the
//!   template (a few ms) in its own directory
//!   (`node-<i>/{data,tmp,mariadbd.sock,mariadbd.pid,error.log}`), a free loopback
//!   port, `server_id = first_server_id + i`, binary log in ROW format with
//!   `log_slave_updates`, `gtid_strict_mode=1`, `gtid_domain_id=0`, tiny buffers and
//!   `report_host/report_port` set to its real address.
//! * Replicas replicate with `MASTER_USE_GTID=slave_pos` as `repl` and run with
//!   `read_only=1` (also after [`Instance::restart`]).
//!
//! # Durability
//! `innodb_flush_log_at_trx_commit=2` and `sync_binlog=0`: a committed transaction
//! survives `kill -9` of the server (it is in the OS page cache), not a machine crash
//! (on tmpfs nothing survives a reboot anyway).
//!
//! # Cleanup
//! Dropping a [`Sandbox`] SIGKILLs every instance (stopped ones too), reaps it and
//! removes its directories. Servers are also started with `PR_SET_PDEATHSIG=SIGKILL`
//! from a dedicated long-lived thread, so they die with the test process even if it is
//! killed without unwinding; the next sandbox removes the directories such a process
//! left behind. With [`SandboxOptions::keep`] none of that happens: the
//! servers survive this process and [`Sandbox::destroy`] removes them later.
//!
//! # Connecting through TCP
//! `mysql_async` by default *switches a TCP connection to the server's unix socket*
//! when the server is local (`prefer_socket=true`). That would bypass link proxies:
//! use [`Credentials::opts`], which turns it off.

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::{FromRow, FromValue, Queryable};
use mysql_async::{Conn, OptsBuilder, Row};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// User the coordinator connects as.
pub const COORDINATOR_USER: &str = "primus";
/// Password of [`COORDINATOR_USER`].
pub const COORDINATOR_PASSWORD: &str = "primus-pass";
/// User replicas connect to their primary as.
pub const REPLICATION_USER: &str = "repl";
/// Password of [`REPLICATION_USER`].
pub const REPLICATION_PASSWORD: &str = "repl-pass";
/// Database of the test table used by [`Sandbox::insert_rows`].
pub const TEST_DATABASE: &str = "primus_test";
/// Test table used by [`Sandbox::insert_rows`].
pub const TEST_TABLE: &str = "primus_test.t";

/// Global privileges of [`COORDINATOR_USER`] (plus `ALL` on `primus.*`).
///
/// MariaDB 10.11 splits what `SUPER` used to cover: `SLAVE MONITOR` for
/// `SHOW [ALL] SLAVE[S] STATUS`, `REPLICATION MASTER ADMIN` for `SHOW SLAVE HOSTS`,
/// `REPLICATION SLAVE ADMIN` for `CHANGE MASTER`/`START SLAVE`/`gtid_slave_pos`,
/// `READ_ONLY ADMIN` for `SET GLOBAL read_only` (it also lets the user write while
/// `read_only=1` — a coordinator must not write to replicas), `BINLOG ADMIN` for
/// `sql_log_bin`/`PURGE`, `BINLOG MONITOR` (= `REPLICATION CLIENT`) for
/// `SHOW BINLOG STATUS`, `CONNECTION ADMIN` to kill client connections.
pub const COORDINATOR_GLOBAL_PRIVILEGES: &str = "SELECT, RELOAD, PROCESS, SUPER, REPLICATION SLAVE, BINLOG MONITOR, \
     SLAVE MONITOR, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, BINLOG ADMIN, READ_ONLY ADMIN, CONNECTION ADMIN";

const MARIADBD_MISSING: &str =
    "mariadbd not found: run scripts/ensure-mariadb.sh (apt-get install -y mariadb-server mariadb-client)";
const INSTALL_DB_MISSING: &str =
    "mariadb-install-db not found: run scripts/ensure-mariadb.sh (apt-get install -y mariadb-server mariadb-client)";

/// Bump to invalidate cached templates when the way they are made changes.
const TEMPLATE_FORMAT: u32 = 2;

/// InnoDB sizing shared by the template and the instances (must stay compatible).
const INNODB_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-log-buffer-size=1M",
    "--innodb-data-file-path=ibdata1:4M:autoextend",
    // The default 64 MB step makes ibdata1 ~70 MB of zeros; 1 MB steps keep it ~10 MB.
    "--innodb-autoextend-increment=1",
    "--innodb-use-native-aio=0",
    "--innodb-buffer-pool-dump-at-shutdown=0",
    "--innodb-buffer-pool-load-at-startup=0",
    "--innodb-read-io-threads=1",
    "--innodb-write-io-threads=1",
    "--innodb-purge-threads=1",
];

/// Small, fast, loopback-only settings shared by the template server and the instances.
const COMMON_ARGS: &[&str] = &[
    "--performance-schema=OFF",
    "--skip-name-resolve",
    "--skip-host-cache",
    "--key-buffer-size=1M",
    "--aria-pagecache-buffer-size=8M",
    "--query-cache-size=0",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--max-connections=500",
    "--skip-external-locking",
];

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The MariaDB programs the sandbox uses.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
    /// Output of `mariadbd --version`.
    pub version: String,
}

fn find_program(names: &[&str], extra_dirs: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(extra_dirs.iter().map(PathBuf::from));
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if let Ok(meta) = fs::metadata(&candidate) {
                if meta.is_file() && meta.mode() & 0o111 != 0 {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

/// Finds `mariadbd` (`$PRIMUS_MARIADBD`, `PATH`, `/usr/sbin`, `/usr/libexec`, …) and
/// `mariadb-install-db`. A missing server is an error that says how to install it.
pub fn find_binaries() -> Result<Binaries> {
    static FOUND: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    FOUND.get_or_init(|| find_binaries_uncached().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn find_binaries_uncached() -> Result<Binaries> {
    let sbin_dirs = ["/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/local/mysql/bin", "/usr/local/bin"];
    let mariadbd = match std::env::var_os("PRIMUS_MARIADBD") {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("PRIMUS_MARIADBD={} does not exist; {MARIADBD_MISSING}", p.display());
            }
            p
        }
        None => find_program(&["mariadbd"], &sbin_dirs).ok_or_else(|| anyhow!(MARIADBD_MISSING))?,
    };
    let install_db = find_program(
        &["mariadb-install-db", "mysql_install_db"],
        &["/usr/bin", "/usr/local/bin", "/usr/local/mysql/scripts", "/usr/local/mysql/bin"],
    )
    .ok_or_else(|| anyhow!(INSTALL_DB_MISSING))?;
    let out = Command::new(&mariadbd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", mariadbd.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", mariadbd.display(), String::from_utf8_lossy(&out.stderr));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(Binaries { mariadbd, install_db, version })
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

/// A MariaDB user and its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// The coordinator's user: `primus` / `primus-pass`.
    pub fn coordinator() -> Self {
        Self { user: COORDINATOR_USER.into(), password: COORDINATOR_PASSWORD.into() }
    }

    /// The replication user: `repl` / `repl-pass`.
    pub fn replication() -> Self {
        Self { user: REPLICATION_USER.into(), password: REPLICATION_PASSWORD.into() }
    }

    /// Connection options for a TCP connection to `addr` as this user, with
    /// `prefer_socket(false)` so the connection really stays on TCP (through a proxy).
    pub fn opts(&self, addr: SocketAddr) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname(addr.ip().to_string())
            .tcp_port(addr.port())
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .prefer_socket(false)
    }
}

/// Users that exist on every sandbox instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCredentials {
    /// `primus`@`%`: [`COORDINATOR_GLOBAL_PRIVILEGES`] on `*.*` and `ALL` on `primus.*`.
    pub coordinator: Credentials,
    /// `repl`@`%`: `REPLICATION SLAVE`.
    pub replication: Credentials,
    /// `root`@`localhost` without password over the instance's unix socket (also
    /// `root`@`127.0.0.1` without password over TCP). Used by the testkit itself.
    pub root_user: String,
}

impl Default for SandboxCredentials {
    fn default() -> Self {
        Self {
            coordinator: Credentials::coordinator(),
            replication: Credentials::replication(),
            root_user: "root".into(),
        }
    }
}

fn bootstrap_sql() -> Vec<String> {
    vec![
        format!("CREATE USER '{COORDINATOR_USER}'@'%' IDENTIFIED BY '{COORDINATOR_PASSWORD}'"),
        format!("GRANT {COORDINATOR_GLOBAL_PRIVILEGES} ON *.* TO '{COORDINATOR_USER}'@'%'"),
        format!("GRANT ALL PRIVILEGES ON `primus`.* TO '{COORDINATOR_USER}'@'%'"),
        format!("CREATE USER '{REPLICATION_USER}'@'%' IDENTIFIED BY '{REPLICATION_PASSWORD}'"),
        format!("GRANT REPLICATION SLAVE ON *.* TO '{REPLICATION_USER}'@'%'"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// Shape of the replication topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `n` independent servers, no replication, all writable.
    Standalone(usize),
    /// Instance 0 is the primary; instances `1..=n` replicate from it.
    PrimaryWithReplicas(usize),
    /// Instance 0 -> instance 1 (intermediate primary) -> instances `2..n+2` (leaves).
    Chain(usize),
}

impl Topology {
    /// Number of instances.
    pub fn len(&self) -> usize {
        match *self {
            Topology::Standalone(n) => n,
            Topology::PrimaryWithReplicas(n) => n + 1,
            Topology::Chain(n) => n + 2,
        }
    }

    /// True when there are no instances.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the instance that instance `i` initially replicates from.
    pub fn master_of(&self, i: usize) -> Option<usize> {
        match *self {
            Topology::Standalone(_) => None,
            Topology::PrimaryWithReplicas(_) => (i > 0).then_some(0),
            Topology::Chain(_) => match i {
                0 => None,
                1 => Some(0),
                _ => Some(1),
            },
        }
    }
}

/// How to start a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub topology: Topology,
    /// Directory for the instances' `node-<i>` directories; a fresh temporary directory
    /// when `None`.
    pub base_dir: Option<PathBuf>,
    /// Leave everything running and on disk when the sandbox is dropped, and let the
    /// servers outlive this process. Remove later with [`Sandbox::destroy`].
    pub keep: bool,
    /// Start every instance with `rpl_semi_sync_master_enabled=ON` and
    /// `rpl_semi_sync_slave_enabled=ON` (built into MariaDB 10.3+). Off by default;
    /// see also [`Instance::set_semi_sync`].
    pub semi_sync: bool,
    /// `rpl_semi_sync_master_timeout` when `semi_sync` is on.
    pub semi_sync_timeout: Duration,
    /// `MASTER_HEARTBEAT_PERIOD` of every replica (default 0.5 s).
    pub heartbeat_period: Duration,
    /// `slave_net_timeout` in seconds (default 2): how long a replica waits for data or
    /// a heartbeat before it reconnects.
    pub slave_net_timeout_secs: u32,
    /// `MASTER_CONNECT_RETRY` in seconds (default 1).
    pub connect_retry_secs: u32,
    /// `server_id` of instance 0; instance `i` gets `first_server_id + i`.
    pub first_server_id: u32,
    /// How long one server may take to accept connections.
    pub startup_timeout: Duration,
    /// Timeout of every SQL call the testkit makes.
    pub db_timeout: Duration,
    /// More `mariadbd` arguments for every instance (later arguments win).
    pub extra_args: Vec<String>,
    /// Run instance `i` inside network namespace `netns[i]` (when present), listening
    /// on all of that namespace's addresses and known to everybody by its address there
    /// (see [`crate::netns`]). Other instances stay on 127.0.0.1.
    pub netns: Vec<Option<crate::netns::NetHost>>,
    /// Replicas connect to their sources over TLS (`MASTER_SSL=1`); see
    /// [`SandboxOptions::with_tls`].
    pub replication_ssl: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            topology: Topology::PrimaryWithReplicas(2),
            base_dir: None,
            keep: false,
            semi_sync: false,
            semi_sync_timeout: Duration::from_secs(1),
            netns: Vec::new(),
            heartbeat_period: Duration::from_millis(500),
            slave_net_timeout_secs: 2,
            connect_retry_secs: 1,
            first_server_id: 1,
            startup_timeout: Duration::from_secs(30),
            db_timeout: Duration::from_secs(10),
            extra_args: Vec::new(),
            replication_ssl: false,
        }
    }
}

impl SandboxOptions {
    /// Defaults with the given topology.
    pub fn new(topology: Topology) -> Self {
        Self { topology, ..Self::default() }
    }

    /// Persistent mode: instances live in `base_dir` and are left running on drop.
    pub fn keep_in(mut self, base_dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(base_dir.into());
        self.keep = true;
        self
    }

    /// Enables semi-synchronous replication on every instance.
    pub fn with_semi_sync(mut self, timeout: Duration) -> Self {
        self.semi_sync = true;
        self.semi_sync_timeout = timeout;
        self
    }

    /// Sets `MASTER_HEARTBEAT_PERIOD`.
    pub fn with_heartbeat_period(mut self, period: Duration) -> Self {
        self.heartbeat_period = period;
        self
    }

    /// Every server gets `pki`'s node certificate (valid for 127.0.0.1 and localhost) and
    /// CA; replication runs over TLS (`MASTER_SSL=1`); with `require_secure_transport`,
    /// servers refuse every TCP client without TLS (unix-socket clients, as the testkit's
    /// own root connections, stay allowed).
    pub fn with_tls(mut self, pki: &crate::pki::TestPki, require_secure_transport: bool) -> Self {
        self.extra_args.extend([
            format!("--ssl-ca={}", pki.ca.display()),
            format!("--ssl-cert={}", pki.node_cert.display()),
            format!("--ssl-key={}", pki.node_key.display()),
        ]);
        if require_secure_transport {
            self.extra_args.push("--require-secure-transport=ON".into());
        }
        self.replication_ssl = true;
        self
    }

    /// Adds `mariadbd` arguments for every instance.
    pub fn with_extra_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Process spawning
// ---------------------------------------------------------------------------------------------

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Spawns `cmd` from a thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` (which fires when the *spawning thread* exits) only fires when
/// the whole test process goes away.
fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<std::result::Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("primus-testkit-spawner".into())
            .spawn(move || {
                for req in rx {
                    let mut cmd = req.cmd;
                    // The requester may have gone away; then the child is killed by its Drop-less
                    // handle never being used — nothing to do here.
                    let _ = req.reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start spawner thread: {e}"))
    });
    let tx = spawner.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send(SpawnRequest { cmd, reply: reply_tx }).map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// Makes the child receive SIGKILL when the thread that spawned it exits.
#[allow(unsafe_code)]
fn kill_child_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec. It only calls
    // prctl(2), which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn check_socket_path(path: &Path) -> Result<()> {
    // sun_path is 108 bytes including the terminating NUL.
    if path.as_os_str().len() >= 107 {
        bail!("unix socket path too long for mariadbd ({} bytes): {}", path.as_os_str().len(), path.display());
    }
    Ok(())
}

fn root_socket_opts(socket: &Path) -> OptsBuilder {
    OptsBuilder::default().socket(Some(socket.to_string_lossy().into_owned())).user(Some("root")).pass(None::<String>)
}

/// Polls until the server on `socket` answers `SELECT 1`, the child exits, or the deadline passes.
async fn wait_socket_ready(
    what: &str,
    socket: &Path,
    child: &Mutex<Option<Child>>,
    error_log: &Path,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        {
            let mut guard = lock(child);
            match guard.as_mut() {
                None => bail!("{what}: not running"),
                Some(c) => {
                    if let Some(status) = c.try_wait().with_context(|| format!("{what}: waiting for the process"))? {
                        *guard = None;
                        bail!(
                            "{what}: mariadbd exited during startup with {status}; tail of {}:\n{}",
                            error_log.display(),
                            tail_of_file(error_log, 30)
                        );
                    }
                }
            }
        }
        let attempt = async {
            let mut conn = Conn::new(root_socket_opts(socket)).await?;
            conn.query_drop("SELECT 1").await?;
            conn.disconnect().await
        };
        let last_err = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out after 2s".to_owned(),
        };
        if start.elapsed() > timeout {
            bail!(
                "{what}: not accepting connections on {} after {timeout:?} (last error: {last_err}); tail of {}:\n{}",
                socket.display(),
                error_log.display(),
                tail_of_file(error_log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Template datadir
// ---------------------------------------------------------------------------------------------

/// A fresh temporary directory for a sandbox: under `$PRIMUS_TESTKIT_TMPDIR`, else
/// `/dev/shm` (tmpfs: copying the template and booting InnoDB are 3-10x faster than on
/// a disk, and nothing here needs to survive a reboot), else the system temp dir.
fn sandbox_tempdir() -> Result<tempfile::TempDir> {
    let parent = match std::env::var_os("PRIMUS_TESTKIT_TMPDIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        }
    };
    remove_abandoned_sandboxes(&parent);
    let dir = tempfile::Builder::new()
        .prefix(SANDBOX_DIR_PREFIX)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a sandbox dir in {}", parent.display()))?;
    let owner = dir.path().join(OWNER_FILE);
    fs::write(&owner, std::process::id().to_string()).with_context(|| format!("writing {}", owner.display()))?;
    Ok(dir)
}

const SANDBOX_DIR_PREFIX: &str = "primus-mariadb-";
/// PID of the process a temporary sandbox directory belongs to.
const OWNER_FILE: &str = "owner.pid";

/// Removes temporary sandbox directories whose owning process is gone (it was killed
/// before it could clean up; its servers died with it through PDEATHSIG). Directories
/// without an owner file (kept with [`Sandbox::keep`]) and those still used by a live
/// `mariadbd` are left alone.
fn remove_abandoned_sandboxes(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(SANDBOX_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<u32>() else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() || !mariadbd_pids_under(&dir).is_empty() {
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => info!(dir = %dir.display(), pid, "removed sandbox dir of a dead process"),
            Err(e) => debug!("removing abandoned sandbox dir {}: {e}", dir.display()),
        }
    }
}

fn cache_root() -> PathBuf {
    match std::env::var_os("PRIMUS_TESTKIT_CACHE_DIR") {
        Some(p) => PathBuf::from(p),
        None => std::env::temp_dir().join("primus-testkit-cache"),
    }
}

/// The template data directory (initialised once, cached on disk across processes).
async fn template_datadir(bins: &Binaries) -> Result<PathBuf> {
    static TEMPLATE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    TEMPLATE.get_or_try_init(|| build_or_reuse_template(bins)).await.cloned()
}

async fn build_or_reuse_template(bins: &Binaries) -> Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    (TEMPLATE_FORMAT, &bins.version, bootstrap_sql(), INNODB_ARGS, COMMON_ARGS).hash(&mut hasher);
    let key = hasher.finish();
    let root = cache_root();
    fs::create_dir_all(&root).with_context(|| format!("creating template cache dir {}", root.display()))?;
    let final_dir = root.join(format!("template-{key:016x}"));
    if final_dir.join("READY").exists() {
        debug!(dir = %final_dir.display(), "reusing cached MariaDB template datadir");
        return Ok(final_dir.join("data"));
    }

    let started = Instant::now();
    let build = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&root)
        .with_context(|| format!("creating template build dir in {}", root.display()))?;
    // Initialised in raw/, then copied sparsely to data/ (~7 MB on disk instead of ~20 MB).
    let datadir = build.path().join("raw");
    let install_log = build.path().join("install.log");
    let log_file = File::create(&install_log).with_context(|| format!("creating {}", install_log.display()))?;
    let log_file2 = log_file.try_clone().context("cloning install log handle")?;
    let mut cmd = tokio::process::Command::new(&bins.install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .args(INNODB_ARGS)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_file2)
        .kill_on_drop(true);
    if running_as_root() {
        cmd.arg("--user=root");
    }
    let status = tokio::time::timeout(Duration::from_secs(120), cmd.status())
        .await
        .map_err(|_| anyhow!("mariadb-install-db timed out after 120s"))?
        .with_context(|| format!("running {}", bins.install_db.display()))?;
    if !status.success() {
        bail!(
            "{} failed with {status}; tail of {}:\n{}",
            bins.install_db.display(),
            install_log.display(),
            tail_of_file(&install_log, 30)
        );
    }

    // Create the users on a private, binlog-less server so no GTID history exists.
    let socket = build.path().join("t.sock");
    check_socket_path(&socket)?;
    let error_log = build.path().join("error.log");
    let mut server = Command::new(&bins.mariadbd);
    server
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", build.path().join("t.pid").display()))
        .arg(format!("--log-error={}", error_log.display()))
        .arg("--skip-networking")
        .arg("--skip-log-bin")
        .args(INNODB_ARGS)
        .args(COMMON_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if running_as_root() {
        server.arg("--user=root");
    }
    kill_child_with_parent(&mut server);
    let child = spawn_from_long_lived_thread(server).context("starting template mariadbd")?;
    let child = Mutex::new(Some(child));
    let result = async {
        wait_socket_ready("template server", &socket, &child, &error_log, Duration::from_secs(60)).await?;
        let setup = async {
            let mut conn = Conn::new(root_socket_opts(&socket)).await?;
            for sql in bootstrap_sql() {
                conn.query_drop(sql).await?;
            }
            // SHUTDOWN ends the connection; its result does not matter, the exit below does.
            let _ = conn.query_drop("SHUTDOWN").await;
            Ok::<_, mysql_async::Error>(())
        };
        tokio::time::timeout(Duration::from_secs(30), setup)
            .await
            .map_err(|_| anyhow!("creating sandbox users in the template timed out"))?
            .context("creating sandbox users in the template")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status =
                lock(&child).as_mut().map(|c| c.try_wait()).transpose().context("waiting for template server")?;
            match status {
                Some(Some(s)) if s.success() => break,
                Some(Some(s)) => bail!("template server exited with {s}:\n{}", tail_of_file(&error_log, 30)),
                _ if Instant::now() > deadline => bail!("template server did not shut down within 60s"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(())
    }
    .await;
    if let Some(mut c) = lock(&child).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    result?;

    let (raw, sparse) = (datadir.clone(), build.path().join("data"));
    tokio::task::spawn_blocking(move || copy_tree_sparse(&raw, &sparse).and_then(|()| fs::remove_dir_all(&raw)))
        .await
        .context("template copy task failed")?
        .context("copying the template datadir")?;
    fs::write(build.path().join("READY"), &bins.version).context("writing template READY marker")?;
    match fs::rename(build.path(), &final_dir) {
        Ok(()) => {
            info!(dir = %final_dir.display(), elapsed = ?started.elapsed(), "built MariaDB template datadir");
        }
        Err(e) if final_dir.join("READY").exists() => {
            debug!("another process built the template first ({e}); using it");
        }
        Err(e) => return Err(e).with_context(|| format!("moving template into {}", final_dir.display())),
    }
    Ok(final_dir.join("data"))
}

/// Copies a directory tree, leaving all-zero 64 KiB blocks as holes.
fn copy_tree_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_tree_sparse(&entry.path(), &to)?;
        } else if kind.is_file() {
            copy_file_sparse(&entry.path(), &to)?;
        }
    }
    Ok(())
}

const COPY_BLOCK: usize = 64 * 1024;
static ZEROS: [u8; COPY_BLOCK] = [0; COPY_BLOCK];

fn copy_file_sparse(src: &Path, dst: &Path) -> io::Result<()> {
    let mut input = File::open(src)?;
    let meta = input.metadata()?;
    let mut output = File::create(dst)?;
    let mut buf = vec![0u8; COPY_BLOCK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Slice equality is a memcmp, fast even in unoptimised test builds.
        if buf[..n] == ZEROS[..n] {
            output.seek(SeekFrom::Current(n as i64))?;
        } else {
            output.write_all(&buf[..n])?;
        }
    }
    output.set_len(meta.len())?;
    fs::set_permissions(dst, meta.permissions())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Instance
// ---------------------------------------------------------------------------------------------

/// `SHOW SLAVE STATUS` of an instance, the fields tests look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlaveStatus {
    pub master_host: String,
    pub master_port: u16,
    /// "Yes", "No" or "Connecting".
    pub io_running: String,
    /// "Yes" or "No".
    pub sql_running: String,
    pub last_io_error: String,
    pub last_sql_error: String,
    /// "Slave_Pos", "Current_Pos" or "No".
    pub using_gtid: String,
    pub gtid_io_pos: String,
    pub seconds_behind_master: Option<u64>,
    pub master_server_id: u64,
}

impl SlaveStatus {
    /// Both replication threads run.
    pub fn is_running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }

    fn from_row(row: &Row) -> Self {
        fn col<T: FromValue>(row: &Row, name: &str) -> Option<T> {
            row.get_opt::<Option<T>, _>(name).and_then(|r| r.ok()).flatten()
        }
        Self {
            master_host: col(row, "Master_Host").unwrap_or_default(),
            master_port: col(row, "Master_Port").unwrap_or_default(),
            io_running: col(row, "Slave_IO_Running").unwrap_or_default(),
            sql_running: col(row, "Slave_SQL_Running").unwrap_or_default(),
            last_io_error: col(row, "Last_IO_Error").unwrap_or_default(),
            last_sql_error: col(row, "Last_SQL_Error").unwrap_or_default(),
            using_gtid: col(row, "Using_Gtid").unwrap_or_default(),
            gtid_io_pos: col(row, "Gtid_IO_Pos").unwrap_or_default(),
            seconds_behind_master: col(row, "Seconds_Behind_Master"),
            master_server_id: col(row, "Master_Server_Id").unwrap_or_default(),
        }
    }
}

/// Where an instance lives, as written to `sandbox.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub index: usize,
    pub server_id: u32,
    pub port: u16,
    pub addr: String,
    pub pid: Option<u32>,
    pub dir: PathBuf,
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub error_log: PathBuf,
    /// Index of the instance it replicates from at start.
    pub master: Option<usize>,
}

/// What `sandbox.json` in the base directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub version: String,
    pub instances: Vec<InstanceInfo>,
    pub credentials: SandboxCredentials,
}

struct InstanceInner {
    index: usize,
    server_id: u32,
    port: u16,
    dir: PathBuf,
    datadir: PathBuf,
    socket: PathBuf,
    error_log: PathBuf,
    mariadbd: PathBuf,
    args: Vec<String>,
    keep: bool,
    db_timeout: Duration,
    startup_timeout: Duration,
    heartbeat_period: Duration,
    connect_retry_secs: u32,
    replication_ssl: bool,
    /// Its address (127.0.0.1, or its network namespace's).
    host: Ipv4Addr,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    child: Mutex<Option<Child>>,
}

/// Handle to one `mariadbd` of a sandbox. Cheap to clone; all clones control the same
/// process. The [`Sandbox`] owns the process: once it is dropped, calls fail.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<InstanceInner>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("index", &self.inner.index)
            .field("server_id", &self.inner.server_id)
            .field("addr", &self.addr())
            .field("pid", &self.pid())
            .finish()
    }
}

impl Instance {
    /// Position in the sandbox (0 = initial primary).
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// "HOST:PORT" (HOST is 127.0.0.1 unless it runs in a network namespace).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.inner.host, self.inner.port)
    }

    /// The TCP address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.inner.host, self.inner.port))
    }

    /// Its IP address.
    pub fn host(&self) -> Ipv4Addr {
        self.inner.host
    }

    /// The network namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.inner.netns.as_deref()
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    pub fn server_id(&self) -> u32 {
        self.inner.server_id
    }

    /// PID of the running server, `None` when it is not running (killed, exited).
    pub fn pid(&self) -> Option<u32> {
        let mut guard = lock(&self.inner.child);
        match guard.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => Some(c.id()),
                _ => None,
            },
            None => None,
        }
    }

    /// True while the process exists (also when SIGSTOPped).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// The instance directory (`node-<i>`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn datadir(&self) -> &Path {
        &self.inner.datadir
    }

    /// The server's `--pid-file` (what a fencing agent's `fence.mysqld_pid_file` names).
    pub fn pid_file(&self) -> PathBuf {
        self.inner.dir.join("mariadbd.pid")
    }

    /// Unix socket the testkit's root connections use.
    pub fn unix_socket(&self) -> &Path {
        &self.inner.socket
    }

    pub fn error_log(&self) -> &Path {
        &self.inner.error_log
    }

    /// Last `lines` lines of the error log.
    pub fn error_log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.inner.error_log, lines)
    }

    /// Options for a root connection over the unix socket.
    pub fn admin_opts(&self) -> OptsBuilder {
        root_socket_opts(&self.inner.socket)
    }

    /// Options for a TCP connection as the coordinator user, directly to this instance.
    pub fn coordinator_opts(&self) -> OptsBuilder {
        Credentials::coordinator().opts(self.socket_addr())
    }

    fn what(&self) -> String {
        format!("instance {} (server_id {}, {})", self.inner.index, self.inner.server_id, self.addr())
    }

    async fn timed<T>(
        &self,
        timeout: Duration,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, mysql_async::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow!(e).context(format!("{}: {what}", self.what()))),
            Err(_) => Err(anyhow!("{}: {what}: timed out after {timeout:?}", self.what())),
        }
    }

    /// A root connection over the unix socket (within the sandbox's DB timeout).
    pub async fn admin_conn(&self) -> Result<Conn> {
        self.timed(self.inner.db_timeout, "connecting as root", Conn::new(self.admin_opts())).await
    }

    /// Runs one statement as root.
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.exec_timeout(sql, self.inner.db_timeout).await
    }

    /// Runs one statement as root; connecting and running together must fit `timeout`.
    pub async fn exec_timeout(&self, sql: &str, timeout: Duration) -> Result<()> {
        debug!(instance = self.inner.index, sql, "exec");
        let fut = async {
            let mut conn = Conn::new(self.admin_opts()).await?;
            conn.query_drop(sql).await?;
            conn.disconnect().await
        };
        self.timed(timeout, sql, fut).await
    }

    /// First row of a query as root (`None` when it returns no rows).
    pub async fn query_one<T: FromRow + Send + 'static>(&self, sql: &str) -> Result<Option<T>> {
        self.query_one_timeout(sql, self.inner.db_timeout).await
    }

    /// [`Instance::query_one`] with an explicit timeout.
    pub async fn query_one_timeout<T: FromRow + Send + 'static>(
        &self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<T>> {
        let fut = async {
            let mut conn = Conn::new(self.admin_opts()).await?;
            let row = conn.query_first::<T, _>(sql).await?;
            conn.disconnect().await?;
            Ok(row)
        };
        self.timed(timeout, sql, fut).await
    }

    /// All rows of a query as root.
    pub async fn query<T: FromRow + Send + 'static>(&self, sql: &str) -> Result<Vec<T>> {
        let fut = async {
            let mut conn = Conn::new(self.admin_opts()).await?;
            let rows = conn.query::<T, _>(sql).await?;
            conn.disconnect().await?;
            Ok(rows)
        };
        self.timed(self.inner.db_timeout, sql, fut).await
    }

    async fn query_string(&self, sql: &str) -> Result<String> {
        Ok(self.query_one::<Option<String>>(sql).await?.flatten().unwrap_or_default())
    }

    /// `@@gtid_current_pos`.
    pub async fn gtid_current_pos(&self) -> Result<String> {
        self.query_string("SELECT @@GLOBAL.gtid_current_pos").await
    }

    /// `@@gtid_binlog_pos`.
    pub async fn gtid_binlog_pos(&self) -> Result<String> {
        self.query_string("SELECT @@GLOBAL.gtid_binlog_pos").await
    }

    /// `@@gtid_slave_pos`.
    pub async fn gtid_slave_pos(&self) -> Result<String> {
        self.query_string("SELECT @@GLOBAL.gtid_slave_pos").await
    }

    /// `@@read_only`.
    pub async fn read_only(&self) -> Result<bool> {
        Ok(self.query_one::<i64>("SELECT @@GLOBAL.read_only").await?.unwrap_or(0) != 0)
    }

    /// `SET GLOBAL read_only`.
    pub async fn set_read_only(&self, on: bool) -> Result<()> {
        self.exec(&format!("SET GLOBAL read_only = {}", u8::from(on))).await
    }

    /// Waits until this server's `gtid_slave_pos` includes `pos` (`MASTER_GTID_WAIT`).
    pub async fn wait_gtid(&self, pos: &str, timeout: Duration) -> Result<()> {
        if !pos.chars().all(|c| c.is_ascii_digit() || c == '-' || c == ',') {
            bail!("not a GTID position: {pos:?}");
        }
        let secs = timeout.as_secs_f64();
        let sql = format!("SELECT MASTER_GTID_WAIT('{pos}', {secs:.3})");
        let r = self.query_one_timeout::<Option<i64>>(&sql, timeout + self.inner.db_timeout).await?.flatten();
        match r {
            Some(0) => Ok(()),
            Some(-1) => bail!(
                "{}: GTID {pos} not reached within {timeout:?} (gtid_slave_pos {:?}, slave status {:?})",
                self.what(),
                self.gtid_slave_pos().await.unwrap_or_default(),
                self.slave_status().await.ok().flatten()
            ),
            other => bail!("{}: MASTER_GTID_WAIT returned {other:?}", self.what()),
        }
    }

    /// `SHOW SLAVE STATUS` (`None` when the instance is not a replica).
    pub async fn slave_status(&self) -> Result<Option<SlaveStatus>> {
        Ok(self.query_one::<Row>("SHOW SLAVE STATUS").await?.map(|r| SlaveStatus::from_row(&r)))
    }

    /// Polls until both replication threads run.
    pub async fn wait_replication_running(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let status = self.slave_status().await?;
            if status.as_ref().is_some_and(SlaveStatus::is_running) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{}: replication not running after {timeout:?}: {status:?}", self.what());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `STOP SLAVE IO_THREAD`.
    pub async fn stop_replication_io(&self) -> Result<()> {
        self.exec("STOP SLAVE IO_THREAD").await
    }

    /// `START SLAVE IO_THREAD`.
    pub async fn start_replication_io(&self) -> Result<()> {
        self.exec("START SLAVE IO_THREAD").await
    }

    /// `STOP SLAVE SQL_THREAD`.
    pub async fn stop_replication_sql(&self) -> Result<()> {
        self.exec("STOP SLAVE SQL_THREAD").await
    }

    /// `START SLAVE SQL_THREAD`.
    pub async fn start_replication_sql(&self) -> Result<()> {
        self.exec("START SLAVE SQL_THREAD").await
    }

    /// `STOP SLAVE`.
    pub async fn stop_replication(&self) -> Result<()> {
        self.exec("STOP SLAVE").await
    }

    /// `START SLAVE`.
    pub async fn start_replication(&self) -> Result<()> {
        self.exec("START SLAVE").await
    }

    /// Points replication at `host:port` (e.g. a [`crate::proxy::LinkProxy`] in front of
    /// the primary) as `repl`, with GTID `slave_pos`, and starts it.
    pub async fn change_master_to(&self, host: &str, port: u16) -> Result<()> {
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':') {
            bail!("suspicious master host {host:?}");
        }
        self.exec("STOP SLAVE").await?;
        let sql = format!(
            "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, MASTER_USER='{REPLICATION_USER}', \
             MASTER_PASSWORD='{REPLICATION_PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_HEARTBEAT_PERIOD={:.3}, \
             MASTER_CONNECT_RETRY={}{}",
            self.inner.heartbeat_period.as_secs_f64(),
            self.inner.connect_retry_secs,
            if self.inner.replication_ssl { ", MASTER_SSL=1" } else { "" }
        );
        self.exec(&sql).await?;
        self.exec("START SLAVE").await
    }

    /// Turns semi-sync on or off at runtime (restarts the IO thread of a replica so the
    /// slave side takes effect).
    pub async fn set_semi_sync(&self, master: bool, slave: bool) -> Result<()> {
        self.exec(&format!("SET GLOBAL rpl_semi_sync_master_enabled = {}", u8::from(master))).await?;
        self.exec(&format!("SET GLOBAL rpl_semi_sync_slave_enabled = {}", u8::from(slave))).await?;
        if self.slave_status().await?.is_some() {
            self.exec("STOP SLAVE IO_THREAD").await?;
            self.exec("START SLAVE IO_THREAD").await?;
        }
        Ok(())
    }

    /// Creates the test table if needed and inserts `n` rows on this instance; returns
    /// `@@gtid_binlog_pos` afterwards.
    pub async fn insert_test_rows(&self, n: usize) -> Result<String> {
        self.exec(&format!("CREATE DATABASE IF NOT EXISTS {TEST_DATABASE}")).await?;
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {TEST_TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             v VARCHAR(64) NOT NULL, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
        ))
        .await?;
        let mut left = n;
        while left > 0 {
            let chunk = left.min(500);
            let values: Vec<String> = (0..chunk).map(|i| format!("('row-{i}')")).collect();
            self.exec(&format!("INSERT INTO {TEST_TABLE} (v) VALUES {}", values.join(","))).await?;
            left -= chunk;
        }
        self.gtid_binlog_pos().await
    }

    /// Rows in the test table.
    pub async fn test_row_count(&self) -> Result<u64> {
        Ok(self.query_one::<u64>(&format!("SELECT COUNT(*) FROM {TEST_TABLE}")).await?.unwrap_or(0))
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("{}: not running, cannot send {sig}", self.what()))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("{}: sending {sig}", self.what()))
    }

    /// SIGKILL the server and reap it. No-op when it is not running.
    pub fn kill9(&self) -> Result<()> {
        let mut guard = lock(&self.inner.child);
        if let Some(mut child) = guard.take() {
            let pid = child.id();
            child.kill().with_context(|| format!("{}: SIGKILL pid {pid}", self.what()))?;
            let status = child.wait().with_context(|| format!("{}: reaping pid {pid}", self.what()))?;
            info!(instance = self.inner.index, pid, %status, "killed mariadbd");
        }
        Ok(())
    }

    /// SIGSTOP: the server freezes; clients see timeouts, not errors. Returns once
    /// every thread of the process is stopped (`kill` returns before a thread running
    /// on another CPU has stopped: a statement sent right after could still be served).
    pub fn sigstop(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        let pid = self.pid().ok_or_else(|| anyhow!("{}: exited after SIGSTOP", self.what()))?;
        let start = Instant::now();
        while !all_threads_stopped(pid) {
            if start.elapsed() > Duration::from_secs(2) {
                bail!("{}: pid {pid} not stopped 2 s after SIGSTOP", self.what());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGCONT after [`Instance::sigstop`].
    pub fn sigcont(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Clean `SHUTDOWN` and wait for the process to exit.
    pub async fn shutdown(&self) -> Result<()> {
        let fut = async {
            let mut conn = Conn::new(self.admin_opts()).await?;
            // The server may close the connection before answering.
            let _ = conn.query_drop("SHUTDOWN").await;
            Ok(())
        };
        self.timed(self.inner.db_timeout, "SHUTDOWN", fut).await?;
        let start = Instant::now();
        loop {
            let exited: Option<ExitStatus> = {
                let mut guard = lock(&self.inner.child);
                match guard.as_mut() {
                    None => return Ok(()),
                    Some(c) => {
                        let s = c.try_wait().with_context(|| format!("{}: waiting for exit", self.what()))?;
                        if s.is_some() {
                            *guard = None;
                        }
                        s
                    }
                }
            };
            if let Some(status) = exited {
                info!(instance = self.inner.index, %status, "mariadbd shut down");
                return Ok(());
            }
            if start.elapsed() > self.inner.startup_timeout {
                bail!("{}: did not exit within {:?} after SHUTDOWN", self.what(), self.inner.startup_timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same port and datadir (SIGKILLing it first if it
    /// still runs) and waits until it accepts connections. A replica resumes
    /// replication by itself (its master info is on disk).
    pub async fn restart(&self) -> Result<()> {
        self.restart_with_args(&[]).await
    }

    /// [`Instance::restart`] with extra `mariadbd` arguments for this start only, e.g.
    /// `--skip-slave-start` or `--read-only=0`.
    pub async fn restart_with_args(&self, extra: &[&str]) -> Result<()> {
        self.kill9()?;
        self.spawn(extra)?;
        self.wait_ready().await
    }

    fn spawn(&self, extra: &[&str]) -> Result<()> {
        let mut guard = lock(&self.inner.child);
        if let Some(c) = guard.as_mut() {
            if c.try_wait().context("checking mariadbd")?.is_none() {
                bail!("{}: already running (pid {})", self.what(), c.id());
            }
        }
        let out_path = self.inner.dir.join("mariadbd.out");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("opening {}", out_path.display()))?;
        let err = out.try_clone().context("cloning output handle")?;
        let mut cmd = match &self.inner.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.inner.mariadbd);
                c
            }
            None => Command::new(&self.inner.mariadbd),
        };
        cmd.args(&self.inner.args).args(extra).stdin(Stdio::null()).stdout(out).stderr(err);
        if self.inner.keep {
            // Own process group: survives the terminal's Ctrl-C and this process.
            cmd.process_group(0);
        } else {
            kill_child_with_parent(&mut cmd);
        }
        let child = spawn_from_long_lived_thread(cmd)
            .with_context(|| format!("{}: spawning {}", self.what(), self.inner.mariadbd.display()))?;
        debug!(instance = self.inner.index, pid = child.id(), "spawned mariadbd");
        *guard = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) -> Result<()> {
        wait_socket_ready(
            &self.what(),
            &self.inner.socket,
            &self.inner.child,
            &self.inner.error_log,
            self.inner.startup_timeout,
        )
        .await
    }

    fn info(&self, master: Option<usize>) -> InstanceInfo {
        InstanceInfo {
            index: self.inner.index,
            server_id: self.inner.server_id,
            port: self.inner.port,
            addr: self.addr(),
            pid: self.pid(),
            dir: self.inner.dir.clone(),
            datadir: self.inner.datadir.clone(),
            socket: self.inner.socket.clone(),
            error_log: self.inner.error_log.clone(),
            master,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sandbox
// ---------------------------------------------------------------------------------------------

/// A set of MariaDB servers in a replication topology. See the module docs.
pub struct Sandbox {
    instances: Vec<Instance>,
    topology: Topology,
    base_dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    keep: bool,
    startup_time: Duration,
    version: String,
}

/// Alias: the sandbox is "the MariaDB" of a test.
pub type MariaDb = Sandbox;

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("topology", &self.topology)
            .field("base_dir", &self.base_dir)
            .field("instances", &self.instances)
            .finish()
    }
}

impl Sandbox {
    /// Starts the servers, sets up replication and waits until every replica's IO and
    /// SQL threads run. On error everything started so far is cleaned up.
    pub async fn start(opts: SandboxOptions) -> Result<Sandbox> {
        // A port from free_port() can be taken by another process before mariadbd binds
        // it; then the whole start is retried with new ports.
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts).await {
                Err(e) if attempt < 3 && is_port_clash(&e) => {
                    warn!("sandbox start attempt {attempt} lost a port race, retrying: {e:#}");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(opts: &SandboxOptions) -> Result<Sandbox> {
        let started = Instant::now();
        let count = opts.topology.len();
        if count == 0 {
            bail!("a sandbox needs at least one instance");
        }
        if opts.heartbeat_period.as_secs_f64() > f64::from(opts.slave_net_timeout_secs) {
            bail!("heartbeat_period must not exceed slave_net_timeout");
        }
        let bins = find_binaries()?;
        let template = template_datadir(&bins).await?;

        let (tempdir, base_dir) = match &opts.base_dir {
            Some(dir) => {
                fs::create_dir_all(dir).with_context(|| format!("creating sandbox base dir {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let t = sandbox_tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        // From here on, Drop cleans up whatever has been started.
        let mut sandbox = Sandbox {
            instances: Vec::with_capacity(count),
            topology: opts.topology,
            base_dir,
            tempdir,
            // A sandbox that fails to start is always cleaned up; `keep` applies on success.
            keep: false,
            startup_time: Duration::ZERO,
            version: bins.version.clone(),
        };

        for i in 0..count {
            let instance = sandbox.create_instance(i, opts, &bins, &template).await?;
            sandbox.instances.push(instance);
        }
        // All copies first, then all servers: they boot in parallel without slowing the copies.
        for instance in &sandbox.instances {
            instance.spawn(&[])?;
        }
        for instance in &sandbox.instances {
            instance.wait_ready().await?;
        }
        let booted = started.elapsed();

        for i in 0..count {
            if let Some(m) = opts.topology.master_of(i) {
                let master_port = sandbox.instances[m].port();
                let master_host = sandbox.instances[m].host().to_string();
                sandbox.instances[i].change_master_to(&master_host, master_port).await?;
            }
        }
        for i in 0..count {
            if opts.topology.master_of(i).is_some() {
                sandbox.instances[i].wait_replication_running(opts.startup_timeout).await?;
            }
        }
        sandbox.write_info()?;
        sandbox.keep = opts.keep;
        sandbox.startup_time = started.elapsed();
        info!(
            topology = ?opts.topology,
            dir = %sandbox.base_dir.display(),
            servers_up = ?booted,
            total = ?sandbox.startup_time,
            "MariaDB sandbox started"
        );
        Ok(sandbox)
    }

    async fn create_instance(
        &self,
        i: usize,
        opts: &SandboxOptions,
        bins: &Binaries,
        template: &Path,
    ) -> Result<Instance> {
        let dir = self.base_dir.join(format!("node-{i}"));
        if dir.exists() {
            bail!("{} already exists: a sandbox is there already (Sandbox::destroy removes it)", dir.display());
        }
        let datadir = dir.join("data");
        let tmpdir = dir.join("tmp");
        fs::create_dir_all(&tmpdir).with_context(|| format!("creating {}", tmpdir.display()))?;
        let (src, dst) = (template.to_path_buf(), datadir.clone());
        tokio::task::spawn_blocking(move || copy_tree_sparse(&src, &dst))
            .await
            .context("template copy task failed")?
            .with_context(|| format!("copying template datadir into {}", datadir.display()))?;

        let socket = dir.join("mariadbd.sock");
        check_socket_path(&socket)?;
        let error_log = dir.join("error.log");
        let port = crate::ports::free_port().context("finding a free port")?;
        let server_id = opts.first_server_id + u32::try_from(i).context("too many instances")?;
        let is_replica = opts.topology.master_of(i).is_some();
        let host_net = opts.netns.get(i).and_then(Option::as_ref);
        let host = host_net.map_or(Ipv4Addr::LOCALHOST, |h| h.addr);

        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", datadir.display()),
            format!("--tmpdir={}", tmpdir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.join("mariadbd.pid").display()),
            format!("--log-error={}", error_log.display()),
            format!("--port={port}"),
            format!("--bind-address={}", if host_net.is_some() { "0.0.0.0".to_string() } else { host.to_string() }),
            format!("--server-id={server_id}"),
            "--log-bin=mysql-bin".into(),
            "--relay-log=relay-bin".into(),
            "--log-slave-updates=1".into(),
            "--binlog-format=ROW".into(),
            "--gtid-strict-mode=1".into(),
            "--gtid-domain-id=0".into(),
            format!("--report-host={host}"),
            format!("--report-port={port}"),
            format!("--slave-net-timeout={}", opts.slave_net_timeout_secs),
        ];
        if running_as_root() {
            args.push("--user=root".into());
        }
        args.extend(INNODB_ARGS.iter().map(|s| s.to_string()));
        args.extend(COMMON_ARGS.iter().map(|s| s.to_string()));
        if opts.semi_sync {
            args.push("--rpl-semi-sync-master-enabled=ON".into());
            args.push("--rpl-semi-sync-slave-enabled=ON".into());
            args.push(format!("--rpl-semi-sync-master-timeout={}", opts.semi_sync_timeout.as_millis()));
        }
        if is_replica {
            args.push("--read-only=1".into());
        }
        args.extend(opts.extra_args.iter().cloned());

        let instance = Instance {
            inner: Arc::new(InstanceInner {
                index: i,
                server_id,
                port,
                dir,
                datadir,
                socket,
                error_log,
                mariadbd: bins.mariadbd.clone(),
                args,
                keep: opts.keep,
                db_timeout: opts.db_timeout,
                startup_timeout: opts.startup_timeout,
                heartbeat_period: opts.heartbeat_period,
                connect_retry_secs: opts.connect_retry_secs,
                replication_ssl: opts.replication_ssl,
                host,
                netns: host_net.map(|h| h.ns.clone()),
                child: Mutex::new(None),
            }),
        };
        Ok(instance)
    }

    fn write_info(&self) -> Result<()> {
        let info = self.info();
        let path = self.base_dir.join("sandbox.json");
        let json = serde_json::to_string_pretty(&info).context("serialising sandbox info")?;
        fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// Description of the sandbox (also in `<base_dir>/sandbox.json`).
    pub fn info(&self) -> SandboxInfo {
        SandboxInfo {
            version: self.version.clone(),
            instances: self.instances.iter().map(|i| i.info(self.topology.master_of(i.index()))).collect(),
            credentials: SandboxCredentials::default(),
        }
    }

    /// Instance 0: the primary the sandbox was started with (not updated by failovers).
    pub fn primary(&self) -> &Instance {
        &self.instances[0]
    }

    /// Instances `1..`: the replicas (in a chain: the intermediate primary first).
    pub fn replicas(&self) -> &[Instance] {
        &self.instances[1..]
    }

    /// All instances, by index.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Instance `i`. Panics when out of range.
    pub fn instance(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    /// TCP addresses of all instances, by index.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.instances.iter().map(Instance::socket_addr).collect()
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Users that exist on every instance.
    pub fn credentials(&self) -> SandboxCredentials {
        SandboxCredentials::default()
    }

    /// The primusd `[mysql]` section for this sandbox: writes the coordinator's
    /// password (`password`, or the sandbox's) and the replication password into
    /// `dir`, names them, and appends `more` (further `[mysql]` keys, one per line).
    pub fn coordinator_mysql_section(&self, dir: &Path, password: Option<&str>, more: &str) -> Result<String> {
        let creds = self.credentials();
        let pw = dir.join("mysql.pass");
        std::fs::write(&pw, format!("{}\n", password.unwrap_or(&creds.coordinator.password)))
            .with_context(|| format!("write {}", pw.display()))?;
        let rpw = dir.join("repl.pass");
        std::fs::write(&rpw, format!("{}\n", creds.replication.password))
            .with_context(|| format!("write {}", rpw.display()))?;
        Ok(format!(
            "[mysql]\nuser = {:?}\npassword_file = {:?}\nreplication_user = {:?}\nreplication_password_file = {:?}\n{more}\n",
            creds.coordinator.user,
            pw.display().to_string(),
            creds.replication.user,
            rpw.display().to_string(),
        ))
    }

    /// Directory holding `node-<i>` directories and `sandbox.json`.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// How long [`Sandbox::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Inserts `n` rows into the test table on [`Sandbox::primary`]; returns its
    /// `gtid_binlog_pos` afterwards.
    pub async fn insert_rows(&self, n: usize) -> Result<String> {
        self.primary().insert_test_rows(n).await
    }

    /// Waits until every replica has applied everything in the primary's binary log.
    pub async fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let pos = self.primary().gtid_binlog_pos().await?;
        for replica in self.replicas() {
            let left = timeout.saturating_sub(start.elapsed());
            replica.wait_gtid(&pos, left).await?;
        }
        Ok(())
    }

    /// Disables cleanup on drop and returns the base directory. The servers keep
    /// running until this process exits, unless the sandbox was started with
    /// [`SandboxOptions::keep`] (then they outlive it).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        if let Some(t) = self.tempdir.take() {
            // Without an owner file it is not swept up as abandoned later.
            let _ = fs::remove_file(t.path().join(OWNER_FILE));
            let _ = t.keep();
        }
        self.base_dir.clone()
    }

    /// SIGKILLs every running instance (also stopped ones) and reaps it.
    pub fn kill_all(&self) {
        for instance in &self.instances {
            if let Err(e) = instance.kill9() {
                warn!("{e:#}");
            }
        }
    }

    /// Kills the servers of a sandbox left in `base_dir` (by [`SandboxOptions::keep`])
    /// and removes its `node-*` directories and `sandbox.json`.
    pub fn destroy(base_dir: &Path) -> Result<()> {
        let entries = match fs::read_dir(base_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", base_dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", base_dir.display()))?;
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("node-") {
                continue;
            }
            let dir = entry.path();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pids = mariadbd_pids_under(&dir);
                if pids.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("mariadbd processes {pids:?} under {} survive SIGKILL", dir.display());
                }
                for pid in pids {
                    if let Ok(raw) = i32::try_from(pid) {
                        let pid = Pid::from_raw(raw);
                        let _ = kill(pid, Signal::SIGKILL);
                        // Reap it if it is our own child (kept by this process); otherwise
                        // this fails at once with ECHILD and its adopter reaps it.
                        let _ = waitpid(pid, None);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let json = base_dir.join("sandbox.json");
        if json.exists() {
            fs::remove_file(&json).with_context(|| format!("removing {}", json.display()))?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.keep {
            info!(dir = %self.base_dir.display(), "keeping MariaDB sandbox");
            return;
        }
        self.kill_all();
        if self.tempdir.is_none() {
            // Caller-provided base dir: remove only what we made in it.
            for instance in &self.instances {
                if let Err(e) = fs::remove_dir_all(instance.dir()) {
                    warn!("removing {}: {e}", instance.dir().display());
                }
            }
            let _ = fs::remove_file(self.base_dir.join("sandbox.json"));
        }
        if let Some(t) = self.tempdir.take() {
            if let Err(e) = t.close() {
                warn!("removing sandbox dir {}: {e}", self.base_dir.display());
            }
        }
    }
}

fn is_port_clash(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("Address already in use") || text.contains("Can't start server: Bind on TCP/IP port")
}

/// PIDs of live `mariadbd` processes whose command line mentions a path under `dir`.
/// Used by leak checks and [`Sandbox::destroy`].
pub fn mariadbd_pids_under(dir: &Path) -> Vec<u32> {
    let mut needle = dir.to_string_lossy().into_owned();
    if !needle.ends_with('/') {
        needle.push('/');
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let is_mariadbd = cmdline.split(' ').next().is_some_and(|prog| prog.ends_with("mariadbd"));
        if is_mariadbd && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether every thread of `pid` is stopped (`T`, or `t` under a tracer) per
/// /proc/PID/task/*/stat. A process that is gone counts as not stopped.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // "TID (comm) STATE ...": comm may hold spaces and parentheses; the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some("T") | Some("t") => any = true,
            Some("X") | Some("Z") => {}
            _ => return false,
        }
    }
    any
}
