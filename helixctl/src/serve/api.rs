//! The HTTP API, versioned under `/v1`, JSON in and out. Every handler is one or a few calls
//! of the [`Client`]; the server keeps no state of its own, so any process of a cluster
//! answers the same.
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /v1/jobs` | 201 `{id, created: true}`; 200 `{id, created: false}` when an unfinished job holds the dedup key |
//! | `GET /v1/jobs/{id}` | the job |
//! | `POST /v1/jobs/{id}/cancel` | `{id, outcome, state}` |
//! | `POST /v1/jobs/{id}/retry` | the job, pending again (409 unless it was dead) |
//! | `GET /v1/queues` | every queue |
//! | `GET /v1/queues/{domain}/{queue}/jobs?state=&after=&limit=` | `{jobs, next_after}` |
//! | `GET /v1/cluster` | leader and term, workers, assignments per queue |
//! | `GET /v1/events?after=&limit=` | `{events, next_after}` |
//! | `… /v1/queues/{domain}/{queue}/schedules` | recurring schedules, see [`super::schedules`] |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store answers, else 503 |
//!
//! Every mutating request (any method but GET, HEAD and OPTIONS) must carry
//! `Authorization: Bearer <http.token>`, else 401 before its body is read. Errors are
//! [`ApiError`]s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use helix_actors::client::{Client, TaskSpec};
use helix_actors::tasks::webhook::WebhookRequest;
use helix_core::{Epoch, PartitionId, QueueId, Term, WorkerId};
use helix_store::{
    AssignmentState, CancelOutcome, Event, MAX_EVENTS_PER_READ, StoreError, TaskId, TaskRecord, TaskState,
    WorkerFilter, WorkerStatus,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::config::Access;
use super::error::ApiError;

/// The most jobs one page of `GET /v1/queues/{d}/{q}/jobs` holds.
pub const MAX_JOBS_PAGE: u32 = 1_000;
/// The jobs in a page when `limit` is not given.
pub const DEFAULT_JOBS_PAGE: u32 = 100;
/// The events in a page when `limit` is not given.
pub const DEFAULT_EVENTS_PAGE: u32 = 100;
/// The bound on the store call of `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What every handler shares: the client of the cluster's store and who may mutate.
#[derive(Debug, Clone)]
pub struct ApiState {
    client: Client,
    access: Arc<Access>,
    max_body_bytes: usize,
}

impl ApiState {
    /// The client of the cluster's store.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// The largest request body.
    pub(super) fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The API over `client`, letting `access` mutate, reading bodies up to `max_body_bytes`.
    pub fn new(client: Client, access: Access, max_body_bytes: usize) -> Self {
        Self { client, access: Arc::new(access), max_body_bytes }
    }
}

/// Registers every route of the API on an actix-web `App` (`App::new().configure(routes(state))`).
pub fn routes(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let limit = state.max_body_bytes;
        cfg.app_data(web::Data::new(state))
            .app_data(web::PayloadConfig::new(limit))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .service(
                web::scope("/v1")
                    .wrap(from_fn(require_token))
                    .route("/jobs", web::post().to(create_job))
                    .route("/jobs/{id}", web::get().to(get_job))
                    .route("/jobs/{id}/cancel", web::post().to(cancel_job))
                    .route("/jobs/{id}/retry", web::post().to(retry_job))
                    .route("/queues", web::get().to(list_queues))
                    .route("/queues/{domain}/{queue}/jobs", web::get().to(list_jobs))
                    .route("/cluster", web::get().to(cluster))
                    .route("/events", web::get().to(events))
                    .configure(super::schedules::routes)
                    .default_service(web::to(no_route)),
            )
            .default_service(web::to(no_route));
    }
}

type Data = web::Data<ApiState>;

/// Lets a mutating request through only with the configured bearer token, compared in
/// constant time (only the token's length can be learnt from timing).
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let refusal = match req.app_data::<Data>().map(|s| Arc::clone(&s.access)) {
        Some(access) => match &*access {
            Access::Open => None,
            Access::ReadOnly => Some(ApiError::unauthorized(
                "this server is read-only: no http.token is configured (set one to allow changes)",
            )),
            Access::Token(token) => {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match given {
                    Some(given) if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) => None,
                    Some(_) => Some(ApiError::unauthorized("the bearer token is wrong")),
                    None => Some(ApiError::unauthorized(
                        "this request needs an Authorization: Bearer <token> header",
                    )),
                }
            }
        },
        None => Some(ApiError::internal("the API state is missing")),
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_boxed_body()),
        Some(error) => {
            let response = error.error_response().map_into_boxed_body();
            Ok(req.into_response(response))
        }
    }
}

async fn no_route() -> HttpResponse {
    ApiError::not_found("no such endpoint; the API lives under /v1 (see the README, \"helixctl serve\")")
        .error_response()
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok", message: None })
}

async fn readyz(state: Data) -> HttpResponse {
    let outcome = tokio::time::timeout(READY_TIMEOUT, state.client.store().now()).await;
    let message = match outcome {
        Ok(Ok(_)) => return HttpResponse::Ok().json(Health { status: "ready", message: None }),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("the store did not answer within {READY_TIMEOUT:?}"),
    };
    HttpResponse::ServiceUnavailable().json(Health { status: "unavailable", message: Some(message) })
}

/// The body of `POST /v1/jobs`: a webhook delivery.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    domain: String,
    queue: String,
    /// Where the webhook is POSTed.
    url: String,
    /// The JSON body POSTed (`metadata` is accepted as another name).
    #[serde(default, alias = "metadata")]
    body: serde_json::Value,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    run_at: Option<DateTime<Utc>>,
    delay_ms: Option<u64>,
    key: Option<String>,
    priority: Option<i32>,
    dedup_key: Option<String>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
}

/// What `POST /v1/jobs` answers.
#[derive(Debug, Serialize)]
struct Created {
    id: TaskId,
    /// False when an unfinished job holds the dedup key: `id` is that job's.
    created: bool,
}

/// Reads a JSON body, answering 413 over the limit and 400 (naming the field) when it does
/// not match `T`.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the body is not valid: {e}")))
}

async fn create_job(
    state: Data,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let job: NewJob = json_body(body, state.max_body_bytes)?;
    let mut request =
        WebhookRequest::new(&job.url, &job.body).map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    for (name, value) in &job.headers {
        request =
            request.header(name, value).map_err(|e| ApiError::invalid(format!("headers.{name}: {e}")))?;
    }
    let mut spec = TaskSpec::webhook_request(&request)?;
    match (job.run_at, job.delay_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("run_at, delay_ms: give one or the other, not both"));
        }
        (Some(at), None) => spec = spec.run_at(at),
        (None, Some(ms)) => spec = spec.delay(Duration::from_millis(ms)),
        (None, None) => {}
    }
    if let Some(key) = job.key {
        spec = spec.key(key);
    }
    if let Some(priority) = job.priority {
        spec = spec.priority(priority);
    }
    if let Some(key) = job.dedup_key {
        spec = spec.dedup_key(key);
    }
    if let Some(attempts) = job.max_attempts {
        spec = spec.max_attempts(attempts);
    }
    if let Some(ms) = job.timeout_ms {
        if ms == 0 {
            return Err(ApiError::invalid("timeout_ms: must be more than 0"));
        }
        spec = spec.timeout(Duration::from_millis(ms));
    }
    let answer =
        state.client.enqueue(&job.domain, &job.queue, spec).await.map_err(|e| match ApiError::from(e) {
            e if e.status == StatusCode::NOT_FOUND => ApiError::not_found(format!(
                "queue {}/{} not found (see GET /v1/queues)",
                job.domain, job.queue
            )),
            e => e,
        })?;
    let status = if answer.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/v1/jobs/{}", answer.id)))
        .json(Created { id: answer.id, created: answer.created }))
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
struct JobView {
    id: TaskId,
    /// The queue's domain, when the queue still exists.
    domain: Option<String>,
    /// The queue's name, when it still exists.
    queue: Option<String>,
    queue_id: QueueId,
    partition: PartitionId,
    state: TaskState,
    priority: i32,
    run_at: DateTime<Utc>,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    dedup_key: Option<String>,
    /// The webhook's URL, when the payload is a webhook request.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// The webhook's body, when the payload is a webhook request.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<serde_json::Value>,
    /// The payload as text, when it is not a webhook request.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    claimed_epoch: Option<Epoch>,
    claimed_by: Option<WorkerId>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl JobView {
    fn of(t: TaskRecord, queue: Option<(String, String)>) -> Self {
        let (url, body, payload) = match WebhookRequest::from_payload(&t.payload) {
            Ok(request) => (Some(request.url().to_owned()), Some(request.body().clone()), None),
            Err(_) => (None, None, Some(String::from_utf8_lossy(&t.payload).into_owned())),
        };
        let (domain, queue) = queue.unzip();
        Self {
            id: t.id,
            domain,
            queue,
            queue_id: t.queue_id,
            partition: t.partition,
            state: t.state,
            priority: t.priority,
            run_at: t.run_at,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            timeout_ms: u64::try_from(t.timeout.as_millis()).unwrap_or(u64::MAX),
            dedup_key: t.dedup_key,
            url,
            body,
            payload,
            claimed_epoch: t.claimed_epoch,
            claimed_by: t.claimed_by,
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            last_error: t.last_error,
        }
    }
}

fn job_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse()
        .map(TaskId)
        .map_err(|_| ApiError::invalid(format!("id: {raw:?} is not a job id (a positive integer)")))
}

fn job_not_found(id: TaskId) -> ApiError {
    ApiError::not_found(format!("job {id} not found (never created, or pruned after it finished)"))
}

/// The job `id` seen through the API, with its queue's name.
async fn job_view(client: &Client, task: TaskRecord) -> Result<JobView, ApiError> {
    let queue = match client.store().get_queue_by_id(task.queue_id).await {
        Ok(q) => Some((q.domain.to_string(), q.name.to_string())),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(JobView::of(task, queue))
}

fn or_not_found(id: TaskId) -> impl FnOnce(helix_actors::client::ClientError) -> ApiError {
    move |e| match ApiError::from(e) {
        e if e.status == StatusCode::NOT_FOUND => job_not_found(id),
        e => e,
    }
}

async fn get_job(state: Data, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    let task = state.client.task(id).await.map_err(or_not_found(id))?;
    Ok(HttpResponse::Ok().json(job_view(&state.client, task).await?))
}

/// What `POST /v1/jobs/{id}/cancel` answers.
#[derive(Debug, Serialize)]
struct Cancelled {
    id: TaskId,
    /// `cancelled` (it will not run), `requested` (running: it ends cancelled when its
    /// attempt ends) or `already_finished`.
    outcome: &'static str,
    /// The state of a job that had already finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<TaskState>,
}

async fn cancel_job(state: Data, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    let answer = match state.client.cancel_task(id).await.map_err(or_not_found(id))? {
        CancelOutcome::Cancelled => Cancelled { id, outcome: "cancelled", state: None },
        CancelOutcome::Requested => Cancelled { id, outcome: "requested", state: None },
        CancelOutcome::AlreadyFinished(s) => Cancelled { id, outcome: "already_finished", state: Some(s) },
    };
    Ok(HttpResponse::Ok().json(answer))
}

async fn retry_job(state: Data, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = job_id(&id)?;
    let task = state.client.retry_task(id).await.map_err(|e| match e {
        helix_actors::client::ClientError::Store(StoreError::Conflict(reason)) => {
            ApiError::conflict(format!("job {id} cannot be retried: {reason}; only a dead job can"))
        }
        other => or_not_found(id)(other),
    })?;
    Ok(HttpResponse::Ok().json(job_view(&state.client, task).await?))
}

/// A queue as the API shows it.
#[derive(Debug, Serialize)]
struct QueueView {
    id: QueueId,
    domain: String,
    name: String,
    partitions: u64,
    allocator: String,
}

async fn list_queues(state: Data) -> Result<HttpResponse, ApiError> {
    let queues = state.client.store().list_queues(None).await?;
    let views: Vec<QueueView> = queues
        .into_iter()
        .map(|q| QueueView {
            id: q.id,
            domain: q.domain.to_string(),
            name: q.name.to_string(),
            partitions: u64::from(q.partition_count.get()),
            allocator: q.allocator,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "queues": views })))
}

/// The query of `GET /v1/queues/{d}/{q}/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// `pending` (the default), `running`, `cancelling`, `done`, `dead` or `cancelled`.
    state: Option<String>,
    after: Option<u64>,
    limit: Option<u32>,
}

/// A page of jobs or events.
#[derive(Debug, Serialize)]
struct Page<T> {
    #[serde(flatten)]
    items: T,
    /// The value to pass as `after` for the next page; `None` when this page is the last.
    next_after: Option<u64>,
}

async fn list_jobs(
    state: Data,
    path: web::Path<(String, String)>,
    query: Result<web::Query<JobsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let query = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?.into_inner();
    let (domain, queue) = path.into_inner();
    let task_state = match query.state.as_deref() {
        None => TaskState::Pending,
        Some(name) => {
            TaskState::ALL.into_iter().find(|s| s.as_str().eq_ignore_ascii_case(name)).ok_or_else(|| {
                ApiError::invalid(format!(
                    "state: {name:?} is not one of pending, running, cancelling, done, dead, cancelled"
                ))
            })?
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_JOBS_PAGE);
    if limit == 0 || limit > MAX_JOBS_PAGE {
        return Err(ApiError::invalid(format!("limit: must be between 1 and {MAX_JOBS_PAGE}")));
    }
    let tasks =
        state.client.list_tasks(&domain, &queue, task_state, query.after.map(TaskId), limit).await.map_err(
            |e| match ApiError::from(e) {
                e if e.status == StatusCode::NOT_FOUND => {
                    ApiError::not_found(format!("queue {domain}/{queue} not found"))
                }
                e => e,
            },
        )?;
    let full = tasks.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after = if full { tasks.last().map(|t| t.id.0) } else { None };
    let jobs: Vec<JobView> =
        tasks.into_iter().map(|t| JobView::of(t, Some((domain.clone(), queue.clone())))).collect();
    Ok(HttpResponse::Ok().json(Page { items: serde_json::json!({ "jobs": jobs }), next_after }))
}

/// What `GET /v1/cluster` answers.
#[derive(Debug, Serialize)]
struct ClusterView {
    /// The store's clock, which every lease is measured on.
    now: DateTime<Utc>,
    /// The coordinator lease; `None` before anyone was elected.
    leader: Option<LeaderView>,
    workers: Vec<WorkerView>,
    queues: Vec<QueueAssignments>,
}

#[derive(Debug, Serialize)]
struct LeaderView {
    holder: Option<WorkerId>,
    term: Term,
    expires_at: DateTime<Utc>,
    expired: bool,
}

#[derive(Debug, Serialize)]
struct WorkerView {
    id: WorkerId,
    host: String,
    pid: u32,
    status: WorkerStatus,
    /// In session with a lease still running on the store's clock.
    live: bool,
    registered_at: DateTime<Utc>,
    lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct QueueAssignments {
    domain: String,
    name: String,
    partitions: u64,
    /// How many partitions each worker owns.
    owners: BTreeMap<WorkerId, usize>,
    unowned: usize,
    /// Every partition's row, in partition order.
    assignments: Vec<AssignmentView>,
}

#[derive(Debug, Serialize)]
struct AssignmentView {
    partition: PartitionId,
    owner: Option<WorkerId>,
    epoch: Epoch,
    state: AssignmentState,
    target: Option<WorkerId>,
}

async fn cluster(state: Data) -> Result<HttpResponse, ApiError> {
    let client = &state.client;
    let store = client.store();
    let now = store.now().await?;
    let leader = client.leader().await?.map(|l| LeaderView {
        holder: l.holder,
        term: l.term,
        expires_at: l.expires_at,
        expired: l.expired,
    });
    let workers = client
        .workers(WorkerFilter::All)
        .await?
        .into_iter()
        .filter(|w| w.status.in_session())
        .map(|w| WorkerView {
            live: w.lease_expires_at > now,
            id: w.id,
            host: w.host,
            pid: w.pid,
            status: w.status,
            registered_at: w.registered_at,
            lease_expires_at: w.lease_expires_at,
        })
        .collect();
    let mut queues = Vec::new();
    for q in store.list_queues(None).await? {
        let map = match client.partition_map(q.id).await {
            Ok(map) => map,
            // Deleted since it was listed.
            Err(helix_actors::client::ClientError::Store(StoreError::NotFound(_))) => continue,
            Err(e) => return Err(e.into()),
        };
        queues.push(QueueAssignments {
            domain: q.domain.to_string(),
            name: q.name.to_string(),
            partitions: u64::from(q.partition_count.get()),
            owners: map.counts(),
            unowned: map.unowned(),
            assignments: map
                .rows
                .iter()
                .map(|r| AssignmentView {
                    partition: r.partition,
                    owner: r.owner,
                    epoch: r.epoch,
                    state: r.state,
                    target: r.target,
                })
                .collect(),
        });
    }
    Ok(HttpResponse::Ok().json(ClusterView { now, leader, workers, queues }))
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

async fn events(
    state: Data,
    query: Result<web::Query<EventsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let query = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?.into_inner();
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PER_READ {
        return Err(ApiError::invalid(format!("limit: must be between 1 and {MAX_EVENTS_PER_READ}")));
    }
    let events: Vec<Event> = state.client.events_since(query.after.unwrap_or(0), limit).await?;
    let full = events.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after = if full { events.last().map(|e| e.id) } else { None };
    Ok(HttpResponse::Ok().json(Page { items: serde_json::json!({ "events": events }), next_after }))
}
