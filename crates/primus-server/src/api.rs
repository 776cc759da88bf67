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
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use primus_proto::v1::coordinator_server::Coordinator;
use primus_proto::v1::{
    AnalysisRequest, GetPrimaryRequest, GetStatusRequest, GetTopologyRequest, ListClustersRequest, ReadConsistency,
};
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

/// Who may read the API: the token when `[auth] require_token_for_reads` is set.
#[derive(Clone, Default)]
pub struct ApiAuth {
    policy: Option<Arc<AuthPolicy>>,
}

impl ApiAuth {
    /// `token` is `[auth]`'s token when reads require it, `None` otherwise.
    pub fn reads_need(token: Option<Token>) -> Self {
        ApiAuth {
            policy: token
                .map(|t| Arc::new(AuthPolicy { token: Some(t), require_token_for_reads: true, ..Default::default() })),
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
    let Some(policy) = &auth.policy else {
        return next.run(req).await;
    };
    let grpc_path = format!("{}{}", crate::auth::COORDINATOR_PREFIX, method_of(req.uri().path()));
    match policy.check(&grpc_path, req.headers(), None) {
        Ok(()) => next.run(req).await,
        Err(s) => {
            let (code, message) = if s.code() == tonic::Code::PermissionDenied {
                (StatusCode::FORBIDDEN, "the bearer token is not the one this coordinator accepts")
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "this coordinator requires a token for reads: send `Authorization: Bearer <token>` \
                     ([auth] require_token_for_reads)",
                )
            };
            tracing::info!(path = %req.uri().path(), "API request refused: {}", s.message());
            let mut resp = error(code, message);
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
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
        let served: std::collections::BTreeSet<&str> = ROUTES.iter().map(|(p, _)| *p).collect();
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
    }
}
