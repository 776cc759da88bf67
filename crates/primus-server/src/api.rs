//! The JSON API under `/api/v1/` on the HTTP endpoint: what `primusctl -o json`
//! shows for `status`, `cluster list`, `topology`, `analysis`, `history` and
//! `primary`, with the same fields (one conversion: [`primus_client::json`]).
//!
//! Every answer is a **local read**, like the rest of the HTTP endpoint: the
//! gRPC handler is asked for its STALE answer (this node's state machine, its own
//! probes, its own analysis), never forwarded to the leader. `history`, which gRPC
//! always answers through the leader, is read from this node's state machine here
//! (the history is replicated: the same on every node that applied the same index).
//!
//! Reads need the bearer token when `[auth] require_token_for_reads` is set, as on
//! gRPC (the same [`AuthPolicy`] decides). `/api/v1/openapi.json`, the description of
//! these paths, is open. Every error is `{"error": "…"}`.

use crate::auth::{AuthPolicy, Token};
use crate::context::NodeCtx;
use crate::service::CoordinatorService;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use primus_proto::v1::coordinator_server::Coordinator;
use primus_proto::v1::{
    AckRequest, AnalysisRequest, FailoverRequest, GetPrimaryRequest, GetStatusRequest, GetTopologyRequest,
    ListClustersRequest, MaintenanceRequest, ReadConsistency,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The OpenAPI 3 description of these paths, checked in beside this file.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every path served under `/api/v1` (as axum routes; `{name}` is a cluster name),
/// with the gRPC method whose read rule it follows (`None`: open).
pub const ROUTES: &[(&str, Option<&str>)] = &[
    ("/api/v1/status", Some("GetStatus")),
    ("/api/v1/clusters", Some("ListClusters")),
    ("/api/v1/clusters/{name}/topology", Some("GetTopology")),
    ("/api/v1/clusters/{name}/analysis", Some("Analysis")),
    ("/api/v1/clusters/{name}/history", Some("History")),
    ("/api/v1/clusters/{name}/primary", Some("GetPrimary")),
    ("/api/v1/openapi.json", None),
];

/// Every action served under `/api/v1` (POST), with the gRPC method it calls (and
/// whose write rule it follows: the `[auth]` token, always).
pub const ACTION_ROUTES: &[(&str, &str)] = &[
    ("/api/v1/clusters/{name}/switchover", "Failover"),
    ("/api/v1/clusters/{name}/maintenance", "Maintenance"),
    ("/api/v1/clusters/{name}/ack", "Ack"),
];

/// How long an action may take before the caller gets a 503 (a switchover waits
/// for its end; it goes on on the leader if the caller stops waiting).
pub const ACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Who may use the API: reads need the token when `[auth] require_token_for_reads`
/// is set; actions always need it, and are refused when no `[auth]` token is set
/// (then the HTTP endpoint is read-only).
#[derive(Clone, Default)]
pub struct ApiAuth {
    /// Present when reads need the token.
    reads: Option<Arc<AuthPolicy>>,
    /// Present when `[auth]` has a token.
    actions: Option<Arc<AuthPolicy>>,
}

impl ApiAuth {
    /// `token` is `[auth]`'s token, if any.
    pub fn new(token: Option<Token>, require_token_for_reads: bool) -> Self {
        let policy =
            token.map(|t| Arc::new(AuthPolicy { token: Some(t), require_token_for_reads, ..Default::default() }));
        ApiAuth { reads: policy.clone().filter(|_| require_token_for_reads), actions: policy }
    }

    /// Whether a read following gRPC `method`'s rule may go through.
    pub(crate) fn check_read(&self, method: &str, headers: &axum::http::HeaderMap) -> Result<(), Denied> {
        let Some(policy) = &self.reads else {
            return Ok(());
        };
        check(policy, method, headers)
    }

    /// Whether an action calling gRPC `method` may go through.
    pub(crate) fn check_action(&self, method: &str, headers: &axum::http::HeaderMap) -> Result<(), Denied> {
        let Some(policy) = &self.actions else {
            return Err(Denied {
                status: StatusCode::FORBIDDEN,
                message: "this coordinator's HTTP endpoint is read-only: actions need an [auth] token_file on the \
                          coordinators, sent as `Authorization: Bearer <token>`",
                challenge: false,
            });
        };
        check(policy, method, headers)
    }
}

/// A request the auth rules refuse: its status and why.
pub(crate) struct Denied {
    status: StatusCode,
    message: &'static str,
    /// Answer with `WWW-Authenticate: Bearer`.
    challenge: bool,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut resp = error(self.status, self.message);
        if self.challenge {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn check(policy: &AuthPolicy, method: &str, headers: &axum::http::HeaderMap) -> Result<(), Denied> {
    let grpc_path = format!("{}{}", crate::auth::COORDINATOR_PREFIX, method);
    match policy.check(&grpc_path, headers, None) {
        Ok(()) => Ok(()),
        Err(s) => {
            let (code, message) = if s.code() == tonic::Code::PermissionDenied {
                (StatusCode::FORBIDDEN, "the bearer token is not the one this coordinator accepts")
            } else if crate::auth::classify(&grpc_path) == crate::auth::Access::Read {
                (
                    StatusCode::UNAUTHORIZED,
                    "this coordinator requires a token for reads: send `Authorization: Bearer <token>` \
                     ([auth] require_token_for_reads)",
                )
            } else {
                (StatusCode::UNAUTHORIZED, "actions need the [auth] token: send `Authorization: Bearer <token>`")
            };
            tracing::info!(method, "API request refused: {}", s.message());
            Err(Denied { status: code, message, challenge: true })
        }
    }
}

/// The `/api/v1` routes (the caller adds the fallbacks and the request bound).
pub fn routes(ctx: Arc<NodeCtx>, auth: ApiAuth) -> Router {
    let data = Router::new()
        .route(ROUTES[0].0, get(status))
        .route(ROUTES[1].0, get(clusters))
        .route(ROUTES[2].0, get(topology))
        .route(ROUTES[3].0, get(analysis))
        .route(ROUTES[4].0, get(history))
        .route(ROUTES[5].0, get(primary))
        .with_state(ctx)
        .route_layer(axum::middleware::from_fn_with_state(auth, authorize));
    data.route(ROUTES[6].0, get(openapi))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The gRPC status of a refused read as an HTTP answer.
fn refused(s: tonic::Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::FailedPrecondition | Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, s.message())
}

/// The method behind a request's path, for the read rule (matched routes only).
fn method_of(path: &str) -> &'static str {
    let route = if path == "/api/v1/status" {
        ROUTES[0]
    } else if path == "/api/v1/clusters" {
        ROUTES[1]
    } else {
        let tail = path.rsplit('/').next().unwrap_or_default();
        ROUTES[2..6].iter().copied().find(|(r, _)| r.ends_with(&format!("/{tail}"))).unwrap_or(ROUTES[0])
    };
    route.1.unwrap_or("GetStatus")
}

async fn authorize(State(auth): State<ApiAuth>, req: Request, next: Next) -> Response {
    match auth.check_read(method_of(req.uri().path()), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => denied.into_response(),
    }
}

/// Actions check the write rule of the gRPC method they call.
async fn authorize_action(State(auth): State<ApiAuth>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST {
        let mut resp =
            error(StatusCode::METHOD_NOT_ALLOWED, format!("method {} not allowed here: use POST", req.method()));
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let tail = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
    let method = ACTION_ROUTES.iter().find(|(r, _)| r.ends_with(&format!("/{tail}"))).map_or("Failover", |(_, m)| m);
    match auth.check_action(method, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(denied) => denied.into_response(),
    }
}

/// The `/api/v1` actions (POST), bounded by [`ACTION_TIMEOUT`] rather than the
/// endpoint's request timeout (a switchover waits for its end).
pub fn action_routes(ctx: Arc<NodeCtx>, auth: ApiAuth) -> Router {
    Router::new()
        .route(ACTION_ROUTES[0].0, post(switchover))
        .route(ACTION_ROUTES[1].0, post(maintenance))
        .route(ACTION_ROUTES[2].0, post(ack))
        .with_state(ctx)
        .route_layer(axum::middleware::from_fn_with_state(auth, authorize_action))
}

/// The caller's credentials go with the request, for the leader to check when
/// this node forwards it.
fn with_authorization<T>(headers: &axum::http::HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Ok(mut v) = v.parse::<tonic::metadata::AsciiMetadataValue>() {
            v.set_sensitive(true);
            req.metadata_mut().insert(primus_raft::security::AUTHORIZATION, v);
        }
    }
    req
}

fn actor_of(given: Option<String>, headers: &axum::http::HeaderMap) -> String {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("unknown client");
    let agent: String = agent.chars().take(60).collect();
    match given.filter(|a| !a.trim().is_empty()) {
        Some(a) => format!("http api: {}", a.chars().take(100).collect::<String>()),
        None => format!("http api ({agent})"),
    }
}

/// An action's cluster (400 malformed, 404 unknown) and JSON body (400 malformed).
fn action_input<T>(
    ctx: &NodeCtx,
    path: Result<Path<String>, PathRejection>,
    b: Result<Json<T>, JsonRejection>,
) -> Result<(primus_types::ClusterName, T), Refused> {
    let name = known(ctx, &cluster_name(path)?)?;
    let Json(body) = b.map_err(|r| Refused(StatusCode::BAD_REQUEST, format!("bad request body: {}", r.body_text())))?;
    Ok((name, body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    /// host:port of the replica to promote; absent lets primus choose.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    actor: Option<String>,
}

/// `POST /api/v1/clusters/{name}/switchover` (`primusctl switchover`): answers once
/// the switchover has ended, with its record.
async fn switchover(
    State(ctx): State<Arc<NodeCtx>>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    b: Result<Json<SwitchoverBody>, JsonRejection>,
) -> Response {
    let (name, b) = match action_input(&ctx, path, b) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let msg = FailoverRequest {
        cluster: name.to_string(),
        to: b.to.unwrap_or_default(),
        actor: actor_of(b.actor, &headers),
        switchover: true,
        accept_loss: false,
        request_id: primus_client::new_request_id(),
    };
    let svc = CoordinatorService::new(ctx);
    let r = svc.failover(with_authorization(&headers, msg)).await;
    answer(r.map(|r| r.into_inner().failover.as_ref().map(primus_client::json::failover).unwrap_or(Value::Null)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    /// true starts maintenance, false ends it.
    start: bool,
    /// host:port of one instance; absent: the whole cluster.
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// How long it lasts (starting only).
    #[serde(default)]
    duration_s: Option<u64>,
    #[serde(default)]
    actor: Option<String>,
}

/// `POST /api/v1/clusters/{name}/maintenance` (`primusctl maintenance start|end`).
async fn maintenance(
    State(ctx): State<Arc<NodeCtx>>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    b: Result<Json<MaintenanceBody>, JsonRejection>,
) -> Response {
    let (name, b) = match action_input(&ctx, path, b) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if b.start && b.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return error(StatusCode::BAD_REQUEST, "starting maintenance needs a reason");
    }
    let msg = MaintenanceRequest {
        cluster: name.to_string(),
        instance: b.instance.unwrap_or_default(),
        start: b.start,
        reason: b.reason.unwrap_or_default(),
        duration_ms: b.duration_s.unwrap_or(0).saturating_mul(1000),
        actor: actor_of(b.actor, &headers),
    };
    let svc = CoordinatorService::new(ctx);
    let r = svc.maintenance(with_authorization(&headers, msg)).await;
    answer(r.map(|r| json!({"log_index": r.get_ref().log_index})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// One failover's id; absent acknowledges every failover of the cluster.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    actor: Option<String>,
}

/// `POST /api/v1/clusters/{name}/ack` (`primusctl ack`).
async fn ack(
    State(ctx): State<Arc<NodeCtx>>,
    headers: axum::http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    b: Result<Json<AckBody>, JsonRejection>,
) -> Response {
    let (name, b) = match action_input(&ctx, path, b) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let msg =
        AckRequest { cluster: name.to_string(), id: b.id.unwrap_or_default(), actor: actor_of(b.actor, &headers) };
    let svc = CoordinatorService::new(ctx);
    let r = svc.ack(with_authorization(&headers, msg)).await;
    answer(r.map(|r| json!({"log_index": r.get_ref().log_index})))
}

/// A refused request: its status and why (small, unlike a `Response`).
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn cluster_name(path: Result<Path<String>, PathRejection>) -> Result<String, Refused> {
    path.map(|Path(n)| n).map_err(|r| Refused(StatusCode::BAD_REQUEST, format!("malformed path: {}", r.body_text())))
}

fn answer(r: Result<Value, tonic::Status>) -> Response {
    match r {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(s) => refused(s),
    }
}

const STALE: i32 = ReadConsistency::Stale as i32;

/// `GET /api/v1/status`: this node's own view of the group (`primusctl status --stale`).
async fn status(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let svc = CoordinatorService::new(ctx);
    let r = svc.get_status(tonic::Request::new(GetStatusRequest { linearizable: false })).await;
    answer(r.map(|r| primus_client::json::status(r.get_ref())))
}

/// `GET /api/v1/clusters` (`primusctl cluster list --stale`).
async fn clusters(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let svc = CoordinatorService::new(ctx);
    let r = svc.list_clusters(tonic::Request::new(ListClustersRequest { consistency: STALE })).await;
    answer(r.map(|r| primus_client::json::cluster_list(r.get_ref())))
}

/// `GET /api/v1/clusters/{name}/topology` (`primusctl topology --stale`).
async fn topology(State(ctx): State<Arc<NodeCtx>>, path: Result<Path<String>, PathRejection>) -> Response {
    let cluster = match cluster_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let svc = CoordinatorService::new(ctx);
    let r = svc.get_topology(tonic::Request::new(GetTopologyRequest { cluster, consistency: STALE })).await;
    answer(r.map(|r| primus_client::json::topology(r.get_ref())))
}

/// `GET /api/v1/clusters/{name}/analysis` (`primusctl analysis --stale`).
async fn analysis(State(ctx): State<Arc<NodeCtx>>, path: Result<Path<String>, PathRejection>) -> Response {
    let cluster = match cluster_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    // An unknown cluster is 404 before a node without [mysql] is 503.
    if let Err(e) = known(&ctx, &cluster) {
        return e.into_response();
    }
    let svc = CoordinatorService::new(ctx);
    let r = svc.analysis(tonic::Request::new(AnalysisRequest { cluster: cluster.clone(), consistency: STALE })).await;
    answer(r.map(|r| primus_client::json::analysis(&cluster, r.get_ref())))
}

/// 400 for a malformed cluster name, 404 for one not registered here.
fn known(ctx: &NodeCtx, name: &str) -> Result<primus_types::ClusterName, Refused> {
    let name: primus_types::ClusterName =
        name.parse().map_err(|e: primus_types::NameError| Refused(StatusCode::BAD_REQUEST, e.to_string()))?;
    if ctx.read_state(|s| s.clusters.contains_key(&name)).1 {
        Ok(name)
    } else {
        Err(Refused(StatusCode::NOT_FOUND, format!("cluster {name} is not registered")))
    }
}

/// `GET /api/v1/clusters/{name}/history` (`primusctl history`), from this node's state.
async fn history(State(ctx): State<Arc<NodeCtx>>, path: Result<Path<String>, PathRejection>) -> Response {
    let name = match cluster_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let name = match known(&ctx, &name) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    match ctx.read_state(|s| s.clusters.get(&name).map(|c| crate::service::history_response(c))) {
        (applied_index, Some(h)) => {
            let h = primus_proto::v1::HistoryResponse { applied_index, served_by: ctx.id, ..h };
            answer(Ok(primus_client::json::history(&h)))
        }
        (_, None) => error(StatusCode::NOT_FOUND, format!("cluster {name} is not registered")),
    }
}

/// `GET /api/v1/clusters/{name}/primary` (`primusctl primary --stale`).
async fn primary(State(ctx): State<Arc<NodeCtx>>, path: Result<Path<String>, PathRejection>) -> Response {
    let cluster = match cluster_name(path) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let svc = CoordinatorService::new(ctx);
    let r = svc.get_primary(tonic::Request::new(GetPrimaryRequest { cluster, consistency: STALE })).await;
    answer(r.map(|r| primus_client::json::primary(r.get_ref())))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_json_describes_exactly_the_served_api_paths() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
        let described: std::collections::BTreeSet<&str> =
            doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
        let served: std::collections::BTreeSet<&str> =
            ROUTES.iter().map(|(p, _)| *p).chain(ACTION_ROUTES.iter().map(|(p, _)| *p)).collect();
        assert_eq!(described, served);
    }

    #[test]
    fn each_api_path_follows_the_read_rule_of_its_grpc_method() {
        assert_eq!(method_of("/api/v1/status"), "GetStatus");
        assert_eq!(method_of("/api/v1/clusters"), "ListClusters");
        assert_eq!(method_of("/api/v1/clusters/c/topology"), "GetTopology");
        assert_eq!(method_of("/api/v1/clusters/c/analysis"), "Analysis");
        assert_eq!(method_of("/api/v1/clusters/c/history"), "History");
        assert_eq!(method_of("/api/v1/clusters/c/primary"), "GetPrimary");
        for (_, m) in ROUTES {
            if let Some(m) = m {
                assert!(crate::auth::READ_METHODS.contains(m), "{m} is not a read");
            }
        }
        for (_, m) in ACTION_ROUTES {
            assert!(crate::auth::WRITE_METHODS.contains(m), "{m} is not a write");
        }
    }
}
