//! The HTTP endpoints, one file per endpoint or family of endpoints (the three submissions
//! share `submit.rs`; `dashboard.rs` holds the dashboard's task lists, workers, bulk actions,
//! snapshot, event stream and task detail), and the router that joins them with the OpenAPI
//! document generated from their annotations.

pub mod analyze_image;
pub mod batch;
pub mod cancel;
pub mod complete_answer;
pub mod dashboard;
pub mod events;
pub mod health;
pub mod page;
pub mod query;
pub mod retry;
pub mod stats;
pub mod submit;
pub mod task;
pub mod view;

use axum::http::{Method, Uri};
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ragpool API",
        description = "Submit RAG tasks (image analysis, answers, full queries) to Redis-backed \
            queues and read their state and results. Errors are always \
            `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`. When the server has API keys, \
            send `Authorization: Bearer <key>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, view::EventView, events::DeltaView)),
    tags(
        (name = "tasks", description = "Submit tasks and follow them"),
        (name = "queues", description = "Queue statistics and workers"),
        (name = "operations", description = "Probes, metrics and this document"),
    ),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every endpoint, and the OpenAPI document that describes them.
pub fn api() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = api_router().split_for_parts();
    document_cross_site_refusals(&mut doc);
    (router, doc)
}

/// Adds the `403` of `crate::cross_site` to every operation: its rules run before any
/// route, so every operation may answer it.
fn document_cross_site_refusals(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    const REFUSED: &str = "Refused as a possible cross-site request: `host_not_allowed` (no API keys and \
        a Host that is not an IP address, localhost or an --allowed-hosts name), `origin_not_allowed` \
        (an Origin other than the API's own or an --allowed-origins one), `cross_site_request` (a \
        state-changing request without Content-Type: application/json, Authorization or X-Ragpool-Client)";
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            let description = match responses.get("403") {
                Some(RefOr::T(existing)) => format!("{}; or: {REFUSED}", existing.description),
                _ => REFUSED.to_string(),
            };
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            responses.insert("403".to_string(), RefOr::T(response));
        }
    }
}

/// Every endpoint, with its OpenAPI description (less what [`api`] adds).
fn api_router() -> OpenApiRouter<AppState> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(analyze_image::analyze_image))
        .routes(routes!(complete_answer::complete_answer))
        .routes(routes!(query::query))
        .routes(routes!(batch::batch))
        .routes(routes!(task::get_task, cancel::cancel_task))
        .routes(routes!(events::task_events))
        .routes(routes!(retry::retry_task))
        .routes(routes!(stats::queue_stats))
        .routes(routes!(dashboard::list_tasks))
        .routes(routes!(dashboard::workers))
        .routes(routes!(dashboard::retry_failed))
        .routes(routes!(dashboard::purge))
        .routes(routes!(dashboard::snapshot))
        .routes(routes!(dashboard::events))
        .routes(routes!(dashboard::task_detail))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_json))
        .route("/dashboard", get(page::index))
        .route("/dashboard/", get(page::index))
        .route("/dashboard/app.js", get(page::script))
        .route("/dashboard/style.css", get(page::style))
}

/// The answer for paths no endpoint has.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}", uri.path()))
}

/// The answer for a known path with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
