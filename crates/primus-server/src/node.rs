//! Wiring of one primusd node: store, Raft, network, gRPC server, bootstrap and shutdown.

use crate::config::Config;
use crate::context::NodeCtx;
use crate::service::CoordinatorService;
use anyhow::Context;
use primus_proto::raft::raft_server::RaftServer;
use primus_proto::v1::coordinator_server::CoordinatorServer;
use primus_raft::{Admission, Faults, NetworkConfig, PeerNetwork, PeerSecurity, RaftService};
use primus_types::{NodeId, Raft};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Observation reports to the leader over the peers' gRPC service (one cached
/// channel to the current leader).
pub struct GrpcPeerLink {
    peer: PeerSecurity,
    rpc_timeout: Duration,
    channel: Mutex<Option<(String, Channel)>>,
}

impl GrpcPeerLink {
    pub fn new(peer: PeerSecurity, rpc_timeout: Duration) -> GrpcPeerLink {
        GrpcPeerLink { peer, rpc_timeout, channel: Mutex::new(None) }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut g = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = g.as_ref() {
            if a == addr {
                return Ok(ch.clone());
            }
        }
        let ch = self.peer.endpoint(addr)?.connect_timeout(self.rpc_timeout).connect_lazy();
        *g = Some((addr.to_string(), ch.clone()));
        Ok(ch)
    }
}

#[async_trait::async_trait]
impl crate::monitor::PeerLink for GrpcPeerLink {
    async fn report(
        &self,
        _to: NodeId,
        addr: &str,
        report: primus_proto::raft::ObservationReport,
    ) -> Result<(), String> {
        let ch = self.channel(addr).map_err(|e| format!("bad leader address {addr:?}: {e}"))?;
        let mut client = primus_proto::raft::raft_client::RaftClient::new(ch)
            .max_encoding_message_size(primus_raft::network::MAX_MESSAGE_BYTES);
        let mut req = tonic::Request::new(report);
        req.set_timeout(self.rpc_timeout);
        self.peer.authorize(&mut req);
        client.report_observations(req).await.map(|_| ()).map_err(|e| primus_raft::security::status_detail(&e))
    }
}

/// Whether `data_dir` already holds a Raft store (a restart, not a first start).
pub fn has_store(data_dir: &std::path::Path) -> bool {
    std::fs::read_dir(data_dir.join("raft")).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// Run a node until `shutdown` resolves. Errors here are startup errors.
pub async fn run(
    cfg: Config,
    config_path: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(w) = cfg.fencing_warning() {
        tracing::warn!("{w}");
    }
    let fault_injection = crate::faults::get().enabled();
    let faults = Arc::new(Faults::new(fault_injection));
    if fault_injection {
        tracing::warn!("fault injection is ENABLED (PRIMUS_FAULT_INJECTION=1): for tests only");
    }

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let store_dir = cfg.data_dir.join("raft");
    let (log, sm) = tokio::task::spawn_blocking(move || primus_store::open(&store_dir))
        .await
        .context("store open task")?
        .with_context(|| format!("cannot open the Raft store in {}", cfg.data_dir.display()))?;
    let fresh = log.is_fresh().context("cannot read the Raft store")?;
    let state = sm.state();
    if fresh {
        cfg.check_bootstrap(config_path).map_err(crate::ExitError::config)?;
    }

    let raft_config = Arc::new(cfg.openraft_config().map_err(|e| {
        crate::ExitError::config(crate::config::ConfigError::Invalid {
            path: config_path.to_path_buf(),
            key: "raft".into(),
            message: e,
        })
    })?);
    let net_cfg = NetworkConfig {
        rpc_timeout: Duration::from_millis(cfg.raft.rpc_timeout_ms),
        snapshot_timeout: Duration::from_millis(cfg.raft.snapshot_timeout_ms),
        connect_timeout: Duration::from_millis(cfg.raft.connect_timeout_ms),
        // Retry an unreachable peer at least twice per election timeout.
        unreachable_backoff: Duration::from_millis((cfg.raft.election_timeout_min_ms / 3).clamp(10, 500)),
    };
    let config_error = |key: &str, message: String| {
        crate::ExitError::config(crate::config::ConfigError::Invalid {
            path: config_path.to_path_buf(),
            key: key.into(),
            message,
        })
    };
    // TLS and token files were checked by Config::load; read them once more for use.
    let tls = match &cfg.tls {
        Some(t) => Some((t, crate::tls::load(t).map_err(|(k, m)| config_error(&k, m))?)),
        None => None,
    };
    let policy = crate::auth::AuthPolicy {
        token: match &cfg.auth {
            Some(a) => Some(a.token().map_err(|m| config_error("auth.token_file", m))?),
            None => None,
        },
        require_token_for_reads: cfg.auth.as_ref().is_some_and(|a| a.require_token_for_reads),
        tls_only: cfg.tls.is_some(),
        require_client_cert: cfg.tls.as_ref().is_some_and(|t| t.require_client_cert),
    };
    let bearer = match &policy.token {
        Some(t) => Some(t.bearer().map_err(|m| config_error("auth.token_file", m))?),
        None => None,
    };
    let acceptor = match &tls {
        Some((t, files)) => Some((
            crate::tls::grpc_acceptor(t, files).map_err(|e| config_error("tls.key_file", e.to_string()))?,
            t.handshake_timeout(),
        )),
        None => None,
    };
    // The HTTP endpoint uses the same certificate and CA when [tls] is on.
    let http_tls = match (&cfg.tls, &cfg.http_listen) {
        (Some(t), Some(_)) => {
            Some(crate::tls::http_tls_acceptor(t).map_err(|e| config_error("tls.key_file", format!("{e:#}")))?)
        }
        _ => None,
    };
    let peer_security = PeerSecurity::new(tls.as_ref().map(|(t, f)| crate::tls::peer_tls(t, f)), bearer);
    let network = PeerNetwork::new(cfg.node_id, net_cfg, faults.clone(), peer_security.clone());
    let peer_answers = network.answers();
    let raft = Raft::new(cfg.node_id, raft_config, network, log, sm).await.context("cannot start the Raft node")?;

    let listen: std::net::SocketAddr = cfg.listen.parse().context("listen")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (key `listen`)"))?;
    let http_listener = match &cfg.http_listen {
        Some(h) => {
            let addr: std::net::SocketAddr = h.parse().context("http_listen")?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (key `http_listen`)"))?;
            Some(l)
        }
        None => None,
    };
    let metrics = Arc::new(crate::metrics::Metrics::new().context("cannot register metrics")?);
    metrics.watch_leader(raft.metrics());

    let gate_state = state.clone();
    let consensus: Arc<dyn crate::consensus::Consensus> =
        Arc::new(crate::consensus::RaftConsensus::new(raft.clone()).with_feature_gate(Arc::new(move || {
            crate::features::gate_level(gate_state.read(|s| s.registry.group_feature_level()))
        })));
    let monitor = match &cfg.mysql {
        Some(m) => {
            let config_error = |message: String| {
                crate::ExitError::config(crate::config::ConfigError::Invalid {
                    path: config_path.to_path_buf(),
                    key: "mysql".into(),
                    message,
                })
            };
            let targets = crate::discovery::Targets::from_config(m).map_err(config_error)?;
            let mon = crate::monitor::Monitor::new(crate::monitor::MonitorParts {
                me: cfg.node_id,
                cfg: m.clone(),
                connector: Arc::new(targets),
                consensus: consensus.clone(),
                clock: Arc::new(crate::clock::SystemClock),
                link: Arc::new(GrpcPeerLink::new(
                    peer_security.clone(),
                    Duration::from_millis(cfg.raft.rpc_timeout_ms),
                )),
                state: state.clone(),
                election_timeout_min_ms: cfg.raft.election_timeout_min_ms,
                metrics: metrics.clone(),
            });
            mon.start();
            Some(mon)
        }
        None => {
            tracing::warn!("no [mysql] section: this node probes no MySQL/MariaDB instance");
            None
        }
    };
    let leases = Arc::new(crate::lease::LeaseTable::new(
        cfg.node_id,
        consensus.clone(),
        Duration::from_millis(cfg.fencing.max_lease_ttl_ms),
        Duration::from_millis(cfg.fencing.lease_margin_ms),
        Duration::from_millis(cfg.raft.election_timeout_max_ms),
    ));
    leases.start();
    let engine = match (&monitor, &cfg.mysql) {
        (Some(mon), Some(m)) => {
            let e = crate::failover::Engine::new(
                cfg.node_id,
                consensus.clone(),
                state.clone(),
                mon.clone(),
                cfg.failover.clone(),
                m.clone(),
                crate::hooks::Hooks::new(cfg.hooks.clone()).with_metrics(metrics.clone()),
                leases.clone(),
                cfg.fencing.clone(),
            );
            e.start();
            Some(e)
        }
        _ => None,
    };
    let sink: Option<Arc<dyn primus_raft::ObservationSink>> =
        monitor.clone().map(|m| m as Arc<dyn primus_raft::ObservationSink>);

    let feed = crate::primary::PrimaryFeed::start(cfg.node_id, state.clone(), cfg.watch.buffer);
    let ctx = Arc::new(NodeCtx {
        id: cfg.node_id,
        cfg: cfg.clone(),
        raft: raft.clone(),
        state,
        monitor,
        engine,
        feed,
        leases,
        metrics,
        peer_answers,
        peer: peer_security,
        channels: Mutex::new(HashMap::new()),
    });

    // A first start with initial_members must not take part in Raft (vote, accept
    // entries, initialise) before the other initial members have told it whether it is
    // a founding member or a member that lost its data_dir (see crate::bootstrap). It
    // serves their JoinCheck meanwhile, so founding members starting together can decide.
    let check_first = fresh && !cfg.initial_members.is_empty();
    let admission = if check_first { Admission::closed() } else { Admission::open() };
    let joined = Arc::new(AtomicBool::new(!fresh));
    // Set when the check refuses this node: the servers stop and `run` returns it.
    let refused: Arc<Mutex<Option<crate::ExitError>>> = Arc::default();
    let refused_signal = Arc::new(tokio::sync::Notify::new());
    if check_first {
        let (ctx, admission, joined) = (ctx.clone(), admission.clone(), joined.clone());
        let (refused, refused_signal) = (refused.clone(), refused_signal.clone());
        let config_path = config_path.to_path_buf();
        tokio::spawn(async move {
            match crate::bootstrap::first_start(&ctx, &config_path).await {
                // Every founding member initialises with the same membership; whichever
                // wins the first election replicates it. A node that already received a
                // vote or log from a faster peer gets NotAllowed, which is fine.
                Ok(crate::bootstrap::Start::Initialise) => {
                    let members = ctx.cfg.initial_membership();
                    match ctx.raft.initialize(members.clone()).await {
                        Ok(()) => tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "group initialised"),
                        Err(e) => tracing::info!(error = %e, "initialisation not needed (a peer got there first)"),
                    }
                }
                Ok(crate::bootstrap::Start::Join { .. }) => {}
                Err(e) => {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    refused_signal.notify_one();
                    return;
                }
            }
            joined.store(true, Ordering::SeqCst);
            admission.admit();
        });
    } else if fresh {
        tracing::info!(
            node_id = cfg.node_id,
            "empty data_dir and no initial_members: waiting to be added with `primusctl members add`"
        );
    } else {
        tracing::info!(node_id = cfg.node_id, "recovered from data_dir; initial_members ignored");
    }
    crate::bootstrap::spawn_recorder(ctx.clone());
    crate::features::spawn_finalizer(ctx.clone());

    let coordinator = CoordinatorServer::new(CoordinatorService::new(ctx.clone()))
        .max_decoding_message_size(primus_raft::network::MAX_MESSAGE_BYTES);
    let answerer = Arc::new(crate::bootstrap::Answerer::new(ctx.clone(), joined));
    let peer = RaftServer::new(
        RaftService::new(cfg.node_id, raft.clone(), faults, sink).with_admission(admission).with_join_check(answerer),
    )
    .max_decoding_message_size(primus_raft::network::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(primus_raft::network::MAX_MESSAGE_BYTES);
    tracing::info!(
        node_id = cfg.node_id,
        %listen,
        data_dir = %cfg.data_dir.display(),
        tls = policy.tls_only,
        client_certs = policy.require_client_cert,
        token = policy.token.is_some(),
        token_for_reads = policy.token.is_some() && policy.require_token_for_reads,
        "primusd serving"
    );

    // A fatal Raft error (e.g. the disk refused a write) stops Raft on this node;
    // exit so the supervisor restarts us instead of leaving a zombie coordinator.
    {
        let mut rx = raft.metrics();
        tokio::spawn(async move {
            loop {
                if let Err(e) = &rx.borrow().running_state {
                    // Stopped is our own shutdown; anything else is a real failure.
                    if !matches!(e, openraft::error::Fatal::Stopped) {
                        tracing::error!(error = %e, "Raft stopped with a fatal error; exiting");
                        std::process::exit(1);
                    }
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    // One shutdown for both servers: the gRPC server's future fires it, and it
    // also fires if the gRPC server stops on its own (the sender is dropped).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let leaving = ctx.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = refused_signal.notified() => {}
        }
        // A planned stop of the leader: hand leadership over first, so that the group
        // is without a leader for a vote round, not for an election timeout (which
        // could outlast the agents' leases and fence every primary).
        if leaving.is_leader() {
            let bound = Duration::from_millis(2 * leaving.cfg.raft.election_timeout_max_ms + 1000);
            match crate::leadership::transfer(&leaving, None, bound).await {
                Ok((leader, term)) => tracing::info!(leader, term, "handed leadership over before stopping"),
                Err(e) => tracing::warn!(error = %e, "could not hand leadership over before stopping"),
            }
        }
        let _ = stop_tx.send(true);
    };
    // The JSON API and the page follow the gRPC rules: the token for reads when reads
    // require it, and for actions always (none without [auth]: read-only).
    let api_auth = crate::api::ApiAuth::new(policy.token.clone(), policy.require_token_for_reads);
    let http = http_listener.map(|l| {
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        tokio::spawn(crate::http::serve(ctx.clone(), l, http_tls.clone(), api_auth.clone(), stop))
    });

    let incoming = crate::tls::incoming(listener, acceptor);
    let served = tonic::transport::Server::builder()
        .timeout(Duration::from_millis(cfg.raft.membership_timeout_ms + 5000))
        .layer(crate::auth::AuthLayer::new(policy))
        .add_service(coordinator)
        .add_service(peer)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server failed");
    drop(stop_rx);
    if let Some(h) = http {
        // serve() bounds its own drain by the request timeout; this only guards it.
        match tokio::time::timeout(cfg.http.request_timeout() + Duration::from_secs(1), h).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %format!("{e:#}"), "HTTP endpoint failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP endpoint task failed"),
            Err(_) => tracing::warn!("HTTP endpoint did not stop in time"),
        }
    }
    served?;

    tracing::info!("shutting down Raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown reported an error");
    }
    if let Some(e) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.into());
    }
    tracing::info!("primusd stopped cleanly");
    Ok(())
}
