//! The operator's page on `http_listen`: an overview (`/`: the coordinator group
//! and every cluster) and one page per cluster (`/clusters/NAME`: the replication
//! tree, the current analysis with its evidence, a failover in progress step by
//! step, the history), kept live without reloads.
//!
//! The HTML is rendered here with maud. A page is a shell; its sections arrive as
//! server-sent events from `GET /ui/stream` (one event per section, named after it,
//! whose data is the section's HTML), sent when the page connects and again
//! whenever a section changes. The stream is fed by the machinery behind
//! `WatchPrimary`: it wakes on every entry this node applies (a failover's step, a
//! new primary, an acknowledgement), on every primary-feed event, and every
//! [`REFRESH`] for what the probes see (lag, heartbeat delay). The page's script
//! and style sheet are embedded in the binary (`src/web/`): the page needs nothing
//! from the internet.
//!
//! The page reads what the JSON API reads (the same gRPC handlers, asked for this
//! node's own view) under the same rule: with `[auth] require_token_for_reads` the
//! stream needs the bearer token, which the page asks for and sends in a header
//! (never in a URL). It is read-only by default; with the token entered, it offers
//! switchover, maintenance and acknowledgement, each behind a confirmation that
//! names the cluster, through the `POST /api/v1/clusters/NAME/…` actions (crate::api).

use crate::api::ApiAuth;
use crate::context::NodeCtx;
use crate::service::CoordinatorService;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use primus_proto::v1::coordinator_client::CoordinatorClient;
use primus_proto::v1::coordinator_server::Coordinator;
use primus_proto::v1::{
    AnalysisRequest, AnalysisResponse, FailoverView, GetStatusRequest, GetStatusResponse, GetTopologyRequest,
    GetTopologyResponse, HistoryResponse, InstanceView, MaintenanceView, ReadConsistency,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The page's script and style sheet, served from the binary.
pub const APP_JS: &str = include_str!("web/app.js");
pub const APP_CSS: &str = include_str!("web/app.css");

/// How often the stream looks again at what the probes see, between applied entries.
pub const REFRESH: Duration = Duration::from_millis(500);

/// How many failovers the history section lists (the newest).
const HISTORY_SHOWN: usize = 25;

const STALE: i32 = ReadConsistency::Stale as i32;
const LINEARIZABLE: i32 = ReadConsistency::Linearizable as i32;

/// How long the page waits for the leader's view before it shows this node's own.
const LEADER_BOUND: Duration = Duration::from_millis(1000);

/// The page's routes: `/`, `/clusters/{name}`, `/ui/app.js`, `/ui/app.css`, `/ui/stream`.
pub fn routes(ctx: Arc<NodeCtx>, auth: ApiAuth) -> Router {
    let stream = Router::new()
        .route("/ui/stream", get(stream))
        .with_state(ctx.clone())
        .route_layer(axum::middleware::from_fn_with_state(auth, read_rule));
    Router::new()
        .route("/", get(overview_page))
        .route("/clusters/{name}", get(cluster_page))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .with_state(ctx)
        .merge(stream)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The stream follows the read rule of `GetTopology`, like the JSON API.
async fn read_rule(State(auth): State<ApiAuth>, req: Request, next: Next) -> Response {
    match auth.check_read("GetTopology", req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => denied.into_response(),
    }
}

/// Security headers of every page: nothing but this origin's own script and style.
fn page(title: &str, body: Markup) -> Response {
    let mut resp = Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) }
                    link rel="stylesheet" href="/ui/app.css";
                    script src="/ui/app.js" defer {}
                }
                (body)
            }
        }
        .into_string(),
    )
    .into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The header bar, the token box and the confirmation dialog every page shares.
fn chrome(ctx: &NodeCtx, cluster: Option<&str>, sections: Markup) -> Markup {
    html! {
        header.bar {
            a.brand href="/" { "primus" }
            @if let Some(c) = cluster {
                span.crumb { "/ " a href={ "/clusters/" (c) } { (c) } }
            }
            span.grow {}
            span #conn .conn.wait title="the live connection to this coordinator" { "connecting…" }
            span.served { "node " (ctx.id) }
            span #updated .updated {}
            button #token-button type="button" title="enter the [auth] token to act from this page" { "read-only" }
        }
        div #notice .notice hidden {}
        main { (sections) }
        dialog #token-dialog {
            form method="dialog" {
                h3 { "Token" }
                p { "The coordinators' " code { "[auth]" } " token. It stays in this browser tab (session storage) and is sent only to this coordinator, in a header. Without it the page is read-only." }
                input #token-input type="password" autocomplete="off" placeholder="token";
                menu {
                    button value="clear" type="submit" { "Forget" }
                    button value="cancel" type="submit" { "Cancel" }
                    button value="save" type="submit" .primary { "Use token" }
                }
            }
        }
        dialog #confirm-dialog {
            form method="dialog" {
                h3 #confirm-title {}
                p #confirm-text {}
                div #confirm-fields {}
                label { "Type the cluster's name to confirm: " input #confirm-input autocomplete="off"; }
                menu {
                    button value="cancel" type="submit" { "Cancel" }
                    button #confirm-ok value="ok" type="submit" .danger disabled { "Confirm" }
                }
            }
        }
    }
}

async fn overview_page(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let body = html! {
        body data-stream="/ui/stream" {
            (chrome(&ctx, None, html! {
                section #s-banner {}
                section.card { h2 { "Clusters" } div #s-clusters { p.muted { "loading…" } } }
                section.card { h2 { "Coordinators" } div #s-group { p.muted { "loading…" } } }
            }))
        }
    };
    page("primus", body)
}

async fn cluster_page(State(ctx): State<Arc<NodeCtx>>, Path(name): Path<String>) -> Response {
    let Ok(name) = name.parse::<primus_types::ClusterName>() else {
        return (StatusCode::BAD_REQUEST, page("primus", html! { body { main { p { "not a cluster name" } } } }))
            .into_response();
    };
    let stream = format!("/ui/stream?cluster={name}");
    let body = html! {
        body data-stream=(stream) data-cluster=(name.as_str()) {
            (chrome(&ctx, Some(name.as_str()), html! {
                section #s-banner {}
                section.card #summary-card { div #s-summary { h2 { (name.as_str()) } p.muted { "loading…" } } }
                div.columns {
                    section.card { h2 { "Replication tree" } div #s-tree {} }
                    div {
                        section.card { h2 { "Analysis" } div #s-analysis {} }
                        section.card { h2 { "Failover" } div #s-failover {} }
                    }
                }
                section.card { h2 { "History" } div #s-history {} }
                section.card { h2 { "Coordinators" } div #s-group {} }
            }))
        }
    };
    page(&format!("{name} · primus"), body)
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    cluster: Option<String>,
}

/// `GET /ui/stream[?cluster=NAME]`: the page's sections as server-sent events.
async fn stream(State(ctx): State<Arc<NodeCtx>>, Query(q): Query<StreamQuery>) -> Response {
    let cluster = match q.cluster.as_deref().map(str::parse::<primus_types::ClusterName>) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(pump(ctx.clone(), cluster, tx));
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok::<Event, Infallible>)));
    // A comment now and then keeps the connection from counting as idle
    // (the endpoint closes connections that move no byte for 2 × request_timeout_ms).
    let keep = (ctx.cfg.http.request_timeout() / 2).clamp(Duration::from_millis(200), Duration::from_secs(15));
    let mut resp = Sse::new(events).keep_alive(KeepAlive::new().interval(keep)).into_response();
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Render the page's sections and send each one that changed, until the page goes.
async fn pump(ctx: Arc<NodeCtx>, cluster: Option<primus_types::ClusterName>, tx: tokio::sync::mpsc::Sender<Event>) {
    let mut applied = ctx.state.subscribe();
    let filter = crate::primary::WatchFilter { cluster: cluster.clone(), ..Default::default() };
    let (_, mut feed) = ctx.feed.subscribe(&filter);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: HashMap<&'static str, String> = HashMap::new();
    let mut leader_view = LeaderView::default();
    loop {
        let sections = match &cluster {
            None => overview_sections(&ctx, &mut leader_view).await,
            Some(c) => cluster_sections(&ctx, c, &mut leader_view).await,
        };
        for (id, html) in sections {
            if sent.get(id) == Some(&html) {
                continue;
            }
            if tx.send(Event::default().event(id).data(html.clone())).await.is_err() {
                return;
            }
            sent.insert(id, html);
        }
        tokio::select! {
            () = tx.closed() => return,
            r = applied.changed() => if r.is_err() { return },
            r = feed.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                    return;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// The group as its leader sees it (matched index and last contact are known only
/// there): asked for at most once per [`REFRESH`] when this node follows.
#[derive(Default)]
struct LeaderView {
    at: Option<tokio::time::Instant>,
    status: Option<GetStatusResponse>,
    /// The leader last failed to answer a read: why, and until when the page does
    /// not ask it again (so that a page of many clusters does not wait
    /// [`LEADER_BOUND`] for each of them while the leader is away).
    away: Option<(tokio::time::Instant, String)>,
}

async fn group_status(ctx: &Arc<NodeCtx>, leader_view: &mut LeaderView) -> Option<(GetStatusResponse, bool)> {
    let svc = CoordinatorService::new(ctx.clone());
    let local = svc.get_status(tonic::Request::new(GetStatusRequest { linearizable: false })).await.ok()?.into_inner();
    if local.leader_id == Some(ctx.id) || local.leader_addr.is_empty() {
        return Some((local, false));
    }
    if leader_view.at.is_none_or(|t| t.elapsed() >= REFRESH) {
        leader_view.at = Some(tokio::time::Instant::now());
        let bound = Duration::from_millis(ctx.cfg.raft.connect_timeout_ms.max(200));
        let ask = async {
            let ch = ctx.channel_to(&local.leader_addr).ok()?;
            let mut req = tonic::Request::new(GetStatusRequest { linearizable: false });
            ctx.peer.authorize(&mut req);
            req.set_timeout(bound);
            CoordinatorClient::new(ch).get_status(req).await.ok().map(|r| r.into_inner())
        };
        leader_view.status = tokio::time::timeout(bound, ask).await.ok().flatten();
    }
    match &leader_view.status {
        Some(l) if l.leader_id == local.leader_id && l.node_id == local.leader_id.unwrap_or(0) => {
            let mut merged = local.clone();
            merged.members = l.members.clone();
            Some((merged, true))
        }
        _ => Some((local, false)),
    }
}

fn verdicts(ctx: &NodeCtx, status: Option<&(GetStatusResponse, bool)>) -> Verdicts {
    Verdicts {
        global_off: status.is_some_and(|s| s.0.automatic_off.is_some()),
        config_automatic: ctx.cfg.failover.automatic,
    }
}

async fn overview_sections(ctx: &Arc<NodeCtx>, leader_view: &mut LeaderView) -> Vec<(&'static str, String)> {
    let status = group_status(ctx, leader_view).await;
    let names: Vec<String> = ctx.read_state(|s| s.clusters.keys().map(|n| n.to_string()).collect()).1;
    let mut rows = Vec::new();
    for name in names {
        rows.push(gather_cluster(ctx, &name, leader_view).await);
    }
    vec![
        ("banner", banner(status.as_ref().map(|s| &s.0)).into_string()),
        ("clusters", clusters_table(&rows, &verdicts(ctx, status.as_ref())).into_string()),
        ("group", group(ctx.id, status.as_ref()).into_string()),
    ]
}

/// What the page shows of one cluster, read as `primusctl topology` and `analysis`
/// read it: the leader's view (what every coordinator sees, the analysis that
/// decides), or this node's own when the leader does not answer in time.
pub(crate) struct ClusterData {
    pub name: String,
    pub topology: Result<GetTopologyResponse, String>,
    pub analysis: Result<AnalysisResponse, String>,
    pub history: Option<HistoryResponse>,
    /// Why the topology and analysis are this node's own view, if they are.
    pub own_view: Option<String>,
}

/// A request as this node's own (the stream passed the read rule already): a
/// follower forwards it to the leader with the coordinators' shared token.
fn internal<T>(ctx: &NodeCtx, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    ctx.peer.authorize(&mut req);
    req
}

/// The leader's answer within [`LEADER_BOUND`], else this node's own.
async fn leader_or_own<T, F, Fut>(lv: &mut LeaderView, ask: F) -> (Result<T, String>, Option<String>)
where
    F: Fn(i32) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let now = tokio::time::Instant::now();
    let why = match &lv.away {
        Some((until, why)) if now < *until => why.clone(),
        _ => {
            let why = match tokio::time::timeout(LEADER_BOUND, ask(LINEARIZABLE)).await {
                Ok(Ok(r)) => {
                    lv.away = None;
                    return (Ok(r.into_inner()), None);
                }
                // The cluster's own refusal (say, unknown here): not the leader's absence.
                Ok(Err(s)) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument => {
                    return (Err(s.message().to_string()), None);
                }
                Ok(Err(s)) => s.message().to_string(),
                Err(_) => format!("the leader did not answer within {} ms", LEADER_BOUND.as_millis()),
            };
            lv.away = Some((now + 2 * REFRESH, why.clone()));
            why
        }
    };
    (ask(STALE).await.map(tonic::Response::into_inner).map_err(|s| s.message().to_string()), Some(why))
}

async fn gather_cluster(ctx: &Arc<NodeCtx>, name: &str, lv: &mut LeaderView) -> ClusterData {
    let svc = CoordinatorService::new(ctx.clone());
    let (topology, own_topology) = leader_or_own(lv, |consistency| {
        svc.get_topology(internal(ctx, GetTopologyRequest { cluster: name.to_string(), consistency }))
    })
    .await;
    let (analysis, own_analysis) = leader_or_own(lv, |consistency| {
        svc.analysis(internal(ctx, AnalysisRequest { cluster: name.to_string(), consistency }))
    })
    .await;
    let history = name
        .parse::<primus_types::ClusterName>()
        .ok()
        .and_then(|n| ctx.read_state(|s| s.clusters.get(&n).map(|c| crate::service::history_response(c))).1);
    ClusterData { name: name.to_string(), topology, analysis, history, own_view: own_topology.or(own_analysis) }
}

async fn cluster_sections(
    ctx: &Arc<NodeCtx>,
    name: &primus_types::ClusterName,
    leader_view: &mut LeaderView,
) -> Vec<(&'static str, String)> {
    let status = group_status(ctx, leader_view).await;
    let group = group(ctx.id, status.as_ref()).into_string();
    let banner = banner(status.as_ref().map(|s| &s.0)).into_string();
    if !ctx.read_state(|s| s.clusters.contains_key(name)).1 {
        let gone = html! { h2 { (name.as_str()) } p.bad { "cluster " (name.as_str()) " is not registered on this coordinator" } };
        return vec![("banner", banner), ("summary", gone.into_string()), ("group", group)];
    }
    let d = gather_cluster(ctx, name.as_str(), leader_view).await;
    let v = verdicts(ctx, status.as_ref());
    vec![
        ("banner", banner),
        ("summary", summary(&d, &v).into_string()),
        ("tree", tree(&d).into_string()),
        ("analysis", analysis(&d).into_string()),
        ("failover", failover_now(&d).into_string()),
        ("history", history(&d).into_string()),
        ("group", group),
    ]
}

// ---- rendering (pure: from the gRPC answers to HTML) ----

/// A time as `<time>`, in UTC; the page's script shows it in local time.
fn at(ms: u64) -> Markup {
    let s = primus_client::json::rfc3339_ms(ms);
    html! { time datetime=(s) { (s) } }
}

fn millis(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min", ms / 60_000)
    }
}

fn banner(status: Option<&GetStatusResponse>) -> Markup {
    html! {
        @if let Some(off) = status.and_then(|s| s.automatic_off.as_ref()) {
            div.alert #automatic-off {
                strong { "Automatic failover is OFF for every cluster" }
                " (by " (off.actor) ", " (at(off.at_ms)) "): " (off.reason)
            }
        }
        @if status.is_some_and(|s| s.leader_id.is_none()) {
            div.alert { strong { "No leader." } " This coordinator knows of no leader: nothing can fail over until a quorum forms again." }
        }
    }
}

fn group(me: u64, status: Option<&(GetStatusResponse, bool)>) -> Markup {
    let Some((s, from_leader)) = status else {
        return html! { p.bad { "this coordinator's status is unavailable" } };
    };
    html! {
        p.facts {
            @match (s.leader_id, s.leader_addr.as_str()) {
                (Some(l), addr) => { "leader " strong #leader data-leader=(l) { "node " (l) } " at " code { (addr) } }
                (None, _) => { strong.bad #leader data-leader="" { "no leader" } }
            }
            " · term " (s.term)
            @if let Some(c) = s.commit_index { " · commit " (c) }
            @if let Some(a) = s.applied_index { " · applied " (a) }
            " · feature level " (s.group_feature_level.max(1)) " of " (s.feature_level)
            " · version " (s.version)
        }
        table.members {
            thead { tr { th { "node" } th { "address" } th { "datacenter" } th { "role" } th.num { "matched index" } th.num { "last contact" } } }
            tbody {
                @for m in &s.members {
                    tr data-node=(m.id) .me[m.id == me] {
                        td { (m.id) @if m.id == me { " (this page)" } }
                        td { code { (m.addr) } }
                        td { (m.datacenter) }
                        td { (primus_client::json::role_name(m.role)) }
                        td.num { @if let Some(i) = m.matched_index { (i) } @else { "—" } }
                        td.num {
                            @match m.millis_since_last_contact {
                                Some(0) if Some(m.id) == s.leader_id => "leader",
                                Some(ms) => { span .bad[ms > 2000] { (millis(ms)) " ago" } }
                                None => "—",
                            }
                        }
                    }
                }
            }
        }
        @if !from_leader && s.leader_id != Some(me) {
            p.muted { "Matched index and last contact are known to the leader only, which did not answer this coordinator." }
        }
    }
}

fn clusters_table(rows: &[ClusterData], v: &Verdicts) -> Markup {
    if rows.is_empty() {
        return html! { p.muted { "No cluster is registered. " code { "primusctl cluster add NAME --seed HOST:PORT" } } };
    }
    html! {
        table.clusters {
            thead { tr { th { "cluster" } th { "primary" } th.num { "epoch" } th { "instances" } th { "analysis" } th { "failover" } th { "automatic" } } }
            tbody {
                @for d in rows {
                    tr data-cluster=(d.name) {
                        td { a href={ "/clusters/" (d.name) } { strong { (d.name) } } }
                        @match &d.topology {
                            Ok(t) => {
                                td data-primary=(t.primary) { @if t.primary.is_empty() { span.bad { "none" } } @else { code { (t.primary) } } }
                                td.num { (t.epoch) }
                                td {
                                    @let up = t.instances.iter().filter(|i| i.reachable).count();
                                    span .bad[up < t.instances.len()] { (up) "/" (t.instances.len()) " reachable" }
                                }
                            }
                            Err(e) => { td colspan="3" .bad { (e) } }
                        }
                        td { (analysis_badge(&d.analysis)) }
                        td {
                            @match d.history.as_ref().and_then(|h| h.failovers.last()) {
                                Some(f) if f.outcome == "in_progress" => { span.warn { "in progress: " (f.candidate) } }
                                Some(f) => { span .(outcome_class(&f.outcome)) { (f.outcome) } " " (at(f.finished_at_ms.unwrap_or(f.started_at_ms))) }
                                None => { span.muted { "none yet" } }
                            }
                        }
                        td { (automatic(d.topology.as_ref().ok(), v)) }
                    }
                }
            }
        }
    }
}

fn analysis_badge(a: &Result<AnalysisResponse, String>) -> Markup {
    match a {
        Ok(a) => {
            let class = if a.code == "NoProblem" {
                "ok"
            } else if a.actionable {
                "bad"
            } else {
                "warn"
            };
            html! { span .(class) data-code=(a.code) { (a.code) } }
        }
        Err(e) => html! { span.muted title=(e) { "unavailable" } },
    }
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "succeeded" => "ok",
        "in_progress" => "warn",
        _ => "bad",
    }
}

/// Whether automatic failover is on, and what decides it: the global switch, the
/// cluster's setting, or (neither set) the coordinators' `[failover] automatic`.
fn automatic(t: Option<&GetTopologyResponse>, v: &Verdicts) -> Markup {
    let cluster = t.and_then(|t| t.settings.as_ref()).and_then(|s| s.automatic_failover);
    html! {
        @if v.global_off { span.bad data-automatic="off" { "off (everywhere)" } }
        @else {
            @match cluster {
                Some(true) => span.ok data-automatic="on" { "on" },
                Some(false) => span.bad data-automatic="off" { "off (this cluster)" },
                None if v.config_automatic => span.ok data-automatic="on" { "on" span.muted { " (config)" } },
                None => span.bad data-automatic="off" { "off" span.muted { " (config)" } },
            }
        }
    }
}

/// What decides automatic failover besides the cluster's own setting.
#[derive(Clone, Copy)]
pub(crate) struct Verdicts {
    /// `primusctl automatic off --all` is in force.
    pub global_off: bool,
    /// This coordinator's `[failover] automatic`.
    pub config_automatic: bool,
}

fn maintenance_note(m: &MaintenanceView) -> Markup {
    html! { span.warn { "maintenance until " (at(m.until_ms)) " by " (m.by) ": " (m.reason) } }
}

fn summary(d: &ClusterData, v: &Verdicts) -> Markup {
    let t = d.topology.as_ref().ok();
    let in_flight = d.history.as_ref().and_then(|h| h.failovers.last()).filter(|f| f.outcome == "in_progress");
    let primary = t.map(|t| t.primary.as_str()).unwrap_or("");
    html! {
        div.summary {
            div {
                h2 { (d.name) }
                p.primary-line {
                    "primary "
                    @if primary.is_empty() { strong.bad #primary data-primary="" { "none" } }
                    @else { strong #primary data-primary=(primary) { code { (primary) } } }
                    @if let Some(t) = t { " · epoch " strong #epoch { (t.epoch) } }
                    " · automatic failover " (automatic(t, v))
                    @if let Some(s) = t.and_then(|t| t.settings.as_ref()).and_then(|s| s.semi_sync) {
                        " · semi-sync no-loss " @if s { span.ok { "on" } } @else { "off" }
                    }
                }
                @if let Some(m) = t.and_then(|t| t.cluster_maintenance.as_ref()) { p #maintenance { (maintenance_note(m)) } }
                @if let Some(f) = in_flight {
                    p.warn #in-flight { "failover " code { (f.id) } " in progress: promoting " code { (f.candidate) } " (epoch " (f.epoch) ")" }
                }
                @if let Err(e) = &d.topology { p.bad { (e) } }
            }
            div.actions {
                button.act type="button" data-action="switchover" data-cluster=(d.name) { "Switchover…" }
                @if t.is_some_and(|t| t.cluster_maintenance.is_some()) {
                    button.act type="button" data-action="maintenance-end" data-cluster=(d.name) { "End maintenance…" }
                } @else {
                    button.act type="button" data-action="maintenance-start" data-cluster=(d.name) { "Maintenance…" }
                }
                @let unacked = d.history.as_ref().map_or(0, |h| h.failovers.iter().filter(|f| f.outcome != "in_progress" && f.acked_by.is_empty()).count());
                button.act type="button" data-action="ack" data-cluster=(d.name) disabled[unacked == 0] { "Acknowledge (" (unacked) ")…" }
            }
        }
    }
}

/// Children of `source` (`None`: the roots), the primary first.
fn children<'a>(t: &'a GetTopologyResponse, source: Option<&str>) -> Vec<&'a InstanceView> {
    let known: BTreeSet<&str> = t.instances.iter().map(|i| i.addr.as_str()).collect();
    let mut v: Vec<&InstanceView> = t
        .instances
        .iter()
        .filter(|i| match source {
            None => i.source.as_deref().is_none_or(|s| !known.contains(s)),
            Some(s) => i.source.as_deref() == Some(s),
        })
        .collect();
    v.sort_by_key(|i| (i.addr != t.primary, i.role != "primary", i.addr.clone()));
    v
}

fn tree(d: &ClusterData) -> Markup {
    let t = match &d.topology {
        Ok(t) => t,
        Err(e) => return html! { p.bad { (e) } },
    };
    if t.instances.is_empty() {
        return html! { p.muted { "no instance discovered yet" } };
    }
    let mut seen = BTreeSet::new();
    let mut roots = Vec::new();
    for r in children(t, None) {
        roots.push(node(t, r, &mut seen));
    }
    // Instances in a replication loop have no root: list them too.
    let rest: Vec<&InstanceView> = t.instances.iter().filter(|i| !seen.contains(i.addr.as_str())).collect();
    for r in rest {
        roots.push(node(t, r, &mut seen));
    }
    html! {
        @if let Some(why) = &d.own_view {
            p.warn #own-view { "This coordinator's own view (node " (t.served_by) "), not the group's: " (why) }
        }
        ul.tree { @for r in roots { (r) } }
        p.muted.small { "as served by node " (t.served_by) "; ✓/✗: whether each coordinator reaches the instance" }
    }
}

fn node<'a>(t: &'a GetTopologyResponse, i: &'a InstanceView, seen: &mut BTreeSet<&'a str>) -> Markup {
    if !seen.insert(i.addr.as_str()) {
        return html! {};
    }
    let kids: Vec<Markup> = children(t, Some(&i.addr)).into_iter().map(|c| node(t, c, seen)).collect();
    let is_primary = i.addr == t.primary;
    html! {
        li {
            div.inst .primary[is_primary] .down[!i.reachable] data-addr=(i.addr) data-role=(i.role) {
                div.head {
                    code.addr { (i.addr) }
                    span.role { (i.role) }
                    @match i.read_only {
                        Some(true) => span.ro title="read_only" { "read-only" },
                        Some(false) => span.rw title="writable" { "writable" },
                        None => {},
                    }
                    @if !i.reachable { span.bad { "UNREACHABLE" } }
                    @if let Some(m) = &i.maintenance { (maintenance_note(m)) }
                }
                div.facts {
                    @if let Some(s) = i.seconds_behind { span { "lag " (s) " s" } }
                    @if let Some(h) = i.heartbeat_delay_ms { span { "heartbeat " (millis(h.max(0) as u64)) } }
                    @if let Some(io) = &i.io_running { span .bad[io != "yes"] { "io " (io) } }
                    @if let Some(sql) = i.sql_running { span .bad[!sql] { "sql " @if sql { "yes" } @else { "no" } } }
                    @if !i.version.is_empty() { span { (i.flavor) " " (i.version) } }
                    @if i.server_id != 0 { span { "server_id " (i.server_id) } }
                    @if !i.datacenter.is_empty() { span { "dc " (i.datacenter) } }
                    @if !i.promotion_rule.is_empty() && i.promotion_rule != "neutral" { span.warn { (i.promotion_rule) } }
                }
                @if !i.gtid_executed.is_empty() { div.gtid title="gtid_executed" { code { (i.gtid_executed) } } }
                div.seen {
                    "seen by "
                    @for (node, ok) in i.seen_by.iter().collect::<BTreeMap<_, _>>() {
                        span .ok[*ok] .bad[!*ok] data-node=(node) { (node) @if *ok { " ✓" } @else { " ✗" } }
                        " "
                    }
                }
                @if !i.flags.is_empty() { ul.flags { @for f in &i.flags { li.flag { (f) } } } }
                @if let Some(e) = &i.last_error { div.bad.small { (e) } }
                @if let Some(e) = &i.last_io_error { div.bad.small { "IO: " (e) } }
                @if let Some(e) = &i.last_sql_error { div.bad.small { "SQL: " (e) } }
            }
            @if !kids.is_empty() { ul { @for k in kids { (k) } } }
        }
    }
}

fn analysis(d: &ClusterData) -> Markup {
    match &d.analysis {
        Err(e) => html! { p.muted { (e) } },
        Ok(a) => html! {
            p { (analysis_badge(&d.analysis)) @if !a.subject.is_empty() { " " code { (a.subject) } } }
            p.muted.small { "as analysed by node " (a.served_by) " at " (at(a.at_ms)) " · epoch " (a.epoch)
                @if a.actionable { " · actionable" } }
            @if !a.evidence.is_empty() { ul.evidence { @for e in &a.evidence { li { (e) } } } }
        },
    }
}

fn steps(f: &FailoverView) -> Markup {
    html! {
        ol.steps {
            @for s in &f.steps {
                li data-step=(s.index) .(step_class(&s.outcome)) {
                    span.desc { (s.description) }
                    " " span.outcome { (s.outcome) }
                    " " span.small { (at(s.at_ms)) }
                }
            }
            @if f.outcome == "in_progress" {
                @for p in f.plan.iter().skip(f.steps.len()) { li.pending { span.desc { (p) } " " span.outcome { "pending" } } }
            }
        }
    }
}

fn step_class(outcome: &str) -> &'static str {
    use primus_types::failover::StepOutcome;
    match StepOutcome::parse(outcome) {
        StepOutcome::Done(_) => "step-done",
        StepOutcome::Skipped(_) => "step-skipped",
        StepOutcome::Failed(_) => "step-failed",
    }
}

fn failover_head(f: &FailoverView) -> Markup {
    html! {
        p {
            strong { (f.kind) } " " code { (f.id) } ": "
            @if !f.old_primary.is_empty() { code { (f.old_primary) } " → " }
            code { (f.candidate) } " · epoch " (f.epoch)
            " · started " (at(f.started_at_ms))
            @if let Some(end) = f.finished_at_ms { " · took " (millis(end.saturating_sub(f.started_at_ms))) }
            @if !f.started_by.is_empty() { " · by " (f.started_by) }
        }
        @if !f.analysis_code.is_empty() {
            p.small { "on " (f.analysis_code) @if !f.evidence.is_empty() { ": " (f.evidence.join("; ")) } }
        }
    }
}

fn failover_now(d: &ClusterData) -> Markup {
    let last = d.history.as_ref().and_then(|h| h.failovers.last());
    match last {
        Some(f) if f.outcome == "in_progress" => html! {
            div #current-failover data-id=(f.id) data-outcome="in_progress" {
                p.warn { strong { "in progress" } }
                (failover_head(f))
                (steps(f))
            }
        },
        Some(f) => html! {
            div #current-failover data-id=(f.id) data-outcome=(f.outcome) {
                p { "No failover in progress. The last one " span .(outcome_class(&f.outcome)) { (f.outcome) }
                    @if !f.outcome_reason.is_empty() { ": " (f.outcome_reason) }
                    @if let Some(end) = f.finished_at_ms { " at " (at(end)) } "." }
                (failover_head(f))
                (steps(f))
            }
        },
        None => html! { p.muted #current-failover data-id="" data-outcome="" { "No failover yet." } },
    }
}

fn history(d: &ClusterData) -> Markup {
    let Some(h) = &d.history else {
        return html! { p.muted { "no history" } };
    };
    html! {
        @if h.failovers.is_empty() { p.muted { "No failover or switchover yet." } }
        @else {
            table.history {
                thead { tr { th { "started" } th { "kind" } th { "from → to" } th.num { "epoch" } th { "outcome" } th.num { "took" } th { "acknowledged" } } }
                tbody {
                    @for f in h.failovers.iter().rev().take(HISTORY_SHOWN) {
                        tr data-id=(f.id) data-outcome=(f.outcome) {
                            td { (at(f.started_at_ms)) }
                            td { (f.kind) }
                            td { code { (f.old_primary) } " → " code { (f.candidate) } }
                            td.num { (f.epoch) }
                            td { span .(outcome_class(&f.outcome)) { (f.outcome) } @if !f.outcome_reason.is_empty() { " " span.small { (f.outcome_reason) } } }
                            td.num { @if let Some(end) = f.finished_at_ms { (millis(end.saturating_sub(f.started_at_ms))) } @else { "—" } }
                            td { @if f.acked_by.is_empty() { span.warn { "no" } } @else { (f.acked_by) } }
                        }
                        tr.steps-row { td colspan="7" { details { summary { code { (f.id) } " · " (f.steps.len()) " steps" } (failover_head(f)) (steps(f)) } } }
                    }
                }
            }
        }
        @if !h.refusals.is_empty() {
            h3 { "Refused failovers" }
            ul.small { @for r in h.refusals.iter().rev().take(10) { li { (at(r.at_ms)) " " (r.analysis_code) ": " (r.reason) } } }
        }
        @if !h.split_fences.is_empty() || !h.unfences.is_empty() {
            h3 { "Fences and unfences" }
            ul.small {
                @for s in h.split_fences.iter().rev().take(10) { li { (at(s.at_ms)) " fenced " code { (s.instance) } " (split brain, epoch " (s.epoch) ") " (s.outcome) } }
                @for s in h.unfences.iter().rev().take(10) { li { (at(s.at_ms)) " made " code { (s.instance) } " writable again (epoch " (s.epoch) ") " (s.outcome) } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use primus_proto::v1::FailoverStepView;

    fn inst(addr: &str, role: &str, source: Option<&str>) -> InstanceView {
        InstanceView {
            addr: addr.into(),
            role: role.into(),
            source: source.map(Into::into),
            reachable: true,
            read_only: Some(role != "primary"),
            ..Default::default()
        }
    }

    fn data(instances: Vec<InstanceView>, failovers: Vec<FailoverView>) -> ClusterData {
        ClusterData {
            name: "c1".into(),
            topology: Ok(GetTopologyResponse {
                cluster: "c1".into(),
                epoch: 3,
                primary: "db1:3306".into(),
                instances,
                ..Default::default()
            }),
            analysis: Ok(AnalysisResponse { code: "NoProblem".into(), ..Default::default() }),
            history: Some(HistoryResponse { failovers, ..Default::default() }),
            own_view: None,
        }
    }

    #[test]
    fn the_tree_nests_replicas_under_their_source_with_the_primary_first() {
        let d = data(
            vec![
                inst("db3:3306", "replica", Some("db2:3306")),
                inst("db2:3306", "intermediate", Some("db1:3306")),
                inst("db1:3306", "primary", None),
            ],
            vec![],
        );
        let html = tree(&d).into_string();
        let (p1, p2, p3) =
            (html.find("db1:3306").unwrap(), html.find("db2:3306").unwrap(), html.find("db3:3306").unwrap());
        assert!(p1 < p2 && p2 < p3, "{html}");
        // db3 sits in a list nested inside db2's item, which is inside db1's.
        assert_eq!(html[..p3].matches("<ul").count(), 3, "{html}");
    }

    #[test]
    fn instances_in_a_replication_loop_are_still_listed() {
        let d = data(
            vec![
                inst("db1:3306", "primary", None),
                inst("db2:3306", "replica", Some("db3:3306")),
                inst("db3:3306", "replica", Some("db2:3306")),
            ],
            vec![],
        );
        let html = tree(&d).into_string();
        assert!(html.contains("db2:3306") && html.contains("db3:3306"), "{html}");
    }

    #[test]
    fn text_from_servers_is_escaped() {
        let mut i = inst("db1:3306", "primary", None);
        i.last_io_error = Some("<script>alert(1)</script>".into());
        i.flags = vec!["<b>x</b>".into()];
        let html = tree(&data(vec![i], vec![])).into_string();
        assert!(!html.contains("<script>") && !html.contains("<b>x"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn a_failover_in_progress_shows_done_and_pending_steps() {
        let f = FailoverView {
            id: "c1-4".into(),
            kind: "failover".into(),
            old_primary: "db1:3306".into(),
            candidate: "db2:3306".into(),
            epoch: 4,
            outcome: "in_progress".into(),
            plan: vec!["fence db1".into(), "promote db2".into(), "repoint db3".into()],
            steps: vec![FailoverStepView { index: 0, description: "fence db1".into(), outcome: "ok".into(), at_ms: 1 }],
            ..Default::default()
        };
        let d = data(vec![inst("db1:3306", "primary", None)], vec![f]);
        let html = failover_now(&d).into_string();
        assert!(html.contains(r#"data-outcome="in_progress""#), "{html}");
        assert_eq!(html.matches(r#"class="pending""#).count(), 2, "{html}");
        let v = Verdicts { global_off: false, config_automatic: true };
        assert!(summary(&d, &v).into_string().contains("in progress: promoting"));
    }

    #[test]
    fn the_global_switch_wins_over_the_cluster_setting_on_the_page() {
        let d = data(vec![], vec![]);
        let v = Verdicts { global_off: true, config_automatic: true };
        assert!(summary(&d, &v).into_string().contains("off (everywhere)"));
        let v = Verdicts { global_off: false, config_automatic: false };
        assert!(summary(&d, &v).into_string().contains(r#"data-automatic="off""#));
    }
}
