//! Cascade's REST API: an axum [`Router`] that speaks the Confluent REST Proxy's paths, bodies
//! and content types, and reaches the brokers only over gRPC through [`cascade_client`].
//!
//! It holds no broker state, so the same router runs embedded in a node (`cascade server`,
//! whose HTTP listener serves it next to `/healthz`, `/readyz` and `/metrics`) and as a
//! separately scaled gateway (`cascade gateway --brokers ...`).
//!
//! | route | what |
//! |---|---|
//! | `GET /topics`, `GET /topics/{topic}` | topic names; one topic's configs and partitions (v2) |
//! | `GET /topics/{topic}/partitions[/{p}[/offsets]]` | partitions, one partition, its offsets (v2) |
//! | `POST /topics/{topic}`, `POST /topics/{topic}/partitions/{p}` | produce (v2, json or binary embedded format, `Idempotency-Key`) |
//! | `GET /topics/{topic}/partitions/{p}/records?offset=&max_bytes=&timeout=` | stateless fetch, long poll |
//! | `GET /topics/{topic}/partitions/{p}/stream?offset=&format=` | server-sent events, resumable with `Last-Event-ID` |
//! | `GET /v3/clusters`, `GET /v3/clusters/{id}` | the cluster (v3) |
//! | `GET|POST /v3/clusters/{id}/topics`, `GET|DELETE /v3/clusters/{id}/topics/{topic}` | topic admin (v3) |
//! | `GET /v3/clusters/{id}/topics/{topic}/configs` and `.../partitions` | a topic's settings and partitions (v3) |
//! | `POST /consumers/{group}`, `DELETE /consumers/{group}/instances/{name}` | create, delete a consumer instance (v2) |
//! | `POST|GET|DELETE .../instances/{name}/subscription`, `GET .../assignments` | subscribe, read the subscription, unsubscribe; the assigned partitions (v2) |
//! | `GET .../instances/{name}/records?timeout=&max_bytes=` | read at the instance's positions (v2) |
//! | `POST|GET .../instances/{name}/offsets`, `POST .../positions[/beginning|/end]` | commit, committed offsets; seek (v2) |
//! | `GET /openapi.json`, `GET /docs` | the OpenAPI document generated from this code, and Swagger UI |
//!
//! Consumer instances live on the brokers ([`consumers`]): the gateway drives them over gRPC,
//! so an instance created through one replica is used through any other.
//!
//! Errors are `{"error_code", "message"}` with a matching status everywhere, including for
//! unknown routes, wrong methods, bad paths, queries and bodies, and oversized bodies
//! ([`MAX_BODY_BYTES`]); see [`error::codes`] for the table. Invalid input never writes
//! anything and never yields a 5xx. A body the answer did not need (a 413's, say) is read
//! and discarded before the answer goes out, within bounds ([`linger`]), so that clients
//! that send everything before reading see the answer rather than a reset connection.
//!
//! `Idempotency-Key` on produce is passed to the broker, which remembers the first answer per
//! topic and key, so a retry through any gateway replica writes once (see [`idempotency`]).

pub mod consumers;
pub mod error;
pub mod extract;
pub mod format;
pub mod idempotency;
pub mod linger;
pub mod produce;
pub mod records;
pub mod topics;
pub mod v3;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use cascade_client::Client;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

/// Largest request body accepted (413 beyond it).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// How often an idle event stream sends a keep-alive comment, by default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the handlers share: the gRPC client of the cluster, the idempotent producers of
/// produce requests (one per topic, shared by every request), and the event streams'
/// keep-alive interval. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RestState {
    client: Client,
    keep_alive: Duration,
    producers: produce::Producers,
}

impl RestState {
    /// State over a client of the cluster.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            keep_alive: DEFAULT_KEEP_ALIVE,
            producers: produce::Producers::default(),
        }
    }

    /// Sets the keep-alive interval of event streams.
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// The cluster client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The OpenAPI document's fixed parts; paths and schemas come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cascade REST API",
        description = "Produce, read and administer Cascade topics over HTTP. Paths, bodies and content types follow the Confluent REST Proxy (v2 for records, v3 for admin). Every error is {\"error_code\", \"message\"} with a matching HTTP status.",
        license(name = "Apache-2.0")
    ),
    components(schemas(error::ErrorBody)),
    tags(
        (name = "topics (v2)", description = "Topic and partition metadata"),
        (name = "produce (v2)", description = "Writing records"),
        (name = "records", description = "Reading records without a consumer: fetch and live stream"),
        (name = "admin (v3)", description = "Clusters and topics"),
        (name = "consumers (v2)", description = "Consumer instances kept by the brokers: subscribe, read, commit, seek"),
    )
)]
struct ApiDoc;

/// The v2 consumer-instance routes (`POST /consumers/{group}`, `.../instances/{name}/...`).
///
/// They drive broker-side consumer instances over gRPC ([`consumers`]), so that any gateway
/// replica can serve any instance.
pub fn consumer_routes() -> OpenApiRouter<RestState> {
    OpenApiRouter::new()
        .routes(routes!(consumers::create_consumer))
        .routes(routes!(consumers::delete_consumer))
        .routes(routes!(
            consumers::subscribe,
            consumers::subscription,
            consumers::unsubscribe
        ))
        .routes(routes!(consumers::assignments, consumers::assign))
        .routes(routes!(consumers::records))
        .routes(routes!(
            consumers::commit_offsets,
            consumers::committed_offsets
        ))
        .routes(routes!(consumers::seek_to_offsets))
        .routes(routes!(consumers::seek_to_beginning))
        .routes(routes!(consumers::seek_to_end))
}

/// Every REST route with its OpenAPI description.
fn api_routes() -> OpenApiRouter<RestState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(topics::list_topics))
        .routes(routes!(topics::get_topic, produce::produce_to_topic))
        .routes(routes!(topics::list_partitions))
        .routes(routes!(
            topics::get_partition,
            produce::produce_to_partition
        ))
        .routes(routes!(topics::get_partition_offsets))
        .routes(routes!(records::fetch))
        .routes(routes!(records::stream))
        .routes(routes!(v3::list_clusters))
        .routes(routes!(v3::get_cluster))
        .routes(routes!(v3::list_topics, v3::create_topic))
        .routes(routes!(v3::get_topic, v3::delete_topic))
        .routes(routes!(v3::list_topic_configs))
        .routes(routes!(v3::list_topic_partitions))
        .merge(consumer_routes())
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The REST API.
pub fn router(state: RestState) -> Router {
    router_with(state, Router::new())
}

/// The REST API plus `extra` routes (e.g. a node's `/healthz`, `/readyz`, `/metrics`), all
/// under the same JSON 404/405 answers, body limit and panic guard.
pub fn router_with(state: RestState, extra: Router) -> Router {
    let (api, openapi) = api_routes().split_for_parts();
    api.with_state(state)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .merge(extra)
        .route_layer(middleware::from_fn(observe))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_declared_oversize))
        // Outermost, so that what a 413 left unread is read before the answer goes out.
        .layer(middleware::from_fn(linger::drain_unread_body))
        .layer(CatchPanicLayer::custom(error::panicked))
}

/// Answers 413 to a request whose `Content-Length` is over [`MAX_BODY_BYTES`] before anything
/// reads its body. The body limit alone would read the first 16 MiB first, and reading is what
/// makes hyper send `100 Continue`: a client that asked (`Expect: 100-continue`) would be told
/// to send a body only to have it refused.
async fn refuse_declared_oversize(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            axum::response::IntoResponse::into_response(error::ApiError::too_large(format!(
                "request body of {n} bytes is larger than the limit of {MAX_BODY_BYTES} bytes"
            )))
        }
        _ => next.run(req).await,
    }
}

/// Counts requests and their latency per matched route and status.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("cascade_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("cascade_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}
