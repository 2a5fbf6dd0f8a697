//! `GET /openapi.json`: the OpenAPI 3 description of the HTTP API, generated from the
//! handlers' own `#[utoipa::path]` annotations and the model's schemas, so it follows
//! the code.

use crate::http;
use crate::model::{
    Accepted, AdjustedLimit, ApiError, Circuit, Dependency, Graph, GraphEdge, GraphNode, Health,
    HealthStatus, LastExit, LimitEnforcement, LimitStatus, LogStream, LogStreamStatus, Process,
    ProcessType, ReloadResult, Resources, State,
};
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

/// The name of the bearer-token security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "HSU Process Manager control API",
        description = "Supervise the manager's processes: status, start, stop, restart, logs, \
                       events, config reload and shutdown. With a token configured, every \
                       request but `GET /healthz` needs `Authorization: Bearer <token>`. \
                       Errors are `{\"error\": \"...\", \"code\": \"...\"}`."
    ),
    paths(
        http::healthz,
        http::metrics,
        http::openapi_json,
        http::list_processes,
        http::get_process,
        http::start_process,
        http::stop_process,
        http::restart_process,
        http::process_logs,
        http::events,
        http::reload,
        http::shutdown,
        http::graph,
    ),
    components(schemas(
        Process,
        LimitStatus,
        LogStreamStatus,
        LimitEnforcement,
        AdjustedLimit,
        Dependency,
        Graph,
        GraphNode,
        GraphEdge,
        LastExit,
        Health,
        Resources,
        ApiError,
        Accepted,
        ReloadResult,
        State,
        ProcessType,
        HealthStatus,
        Circuit,
        LogStream
    )),
    modifiers(&BearerToken),
    security(("bearer_token" = [])),
    tags(
        (name = "processes", description = "The supervised processes"),
        (name = "events", description = "The event journal"),
        (name = "manager", description = "The manager itself"),
    )
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The manager's API token (process_manager.api_token_file or HSU_API_TOKEN)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this API.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, built once.
pub(crate) fn json() -> String {
    static JSON: LazyLock<String> =
        LazyLock::new(|| document().to_pretty_json().unwrap_or_default());
    JSON.clone()
}
