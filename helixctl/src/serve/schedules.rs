//! The schedule endpoints of the API, under `/v1/queues/{domain}/{queue}/schedules`: each
//! slot of a recurring schedule becomes exactly one webhook job (`docs/scheduling.md`).
//!
//! | method and path | answer |
//! |---|---|
//! | `POST …/schedules` | 201, the schedule (409 when the queue has one of that name) |
//! | `GET …/schedules` | `{schedules}` |
//! | `GET …/schedules/{name}` | the schedule |
//! | `POST …/schedules/{name}/pause` and `/resume` | the schedule |
//! | `DELETE …/schedules/{name}` | `{deleted: name}` |

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use helix_actors::client::{ClientError, ScheduleSpec};
use helix_actors::tasks::webhook::WebhookRequest;
use helix_core::PartitionId;
use helix_store::{MissedSlots, ScheduleId, ScheduleRecord, TaskId};
use serde::{Deserialize, Serialize};

use super::api::{ApiState, json_body};
use super::error::ApiError;

type Data = web::Data<ApiState>;

/// Registers the schedule routes inside the `/v1` scope (so the token check applies).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/queues/{domain}/{queue}/schedules", web::post().to(create))
        .route("/queues/{domain}/{queue}/schedules", web::get().to(list))
        .route("/queues/{domain}/{queue}/schedules/{name}", web::get().to(get))
        .route("/queues/{domain}/{queue}/schedules/{name}", web::delete().to(delete))
        .route("/queues/{domain}/{queue}/schedules/{name}/pause", web::post().to(pause))
        .route("/queues/{domain}/{queue}/schedules/{name}/resume", web::post().to(resume));
}

/// The body of `POST …/schedules`: a webhook made by every slot.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSchedule {
    name: String,
    /// A cron expression (5 fields, or 6 with seconds first); or `every`.
    cron: Option<String>,
    /// An interval (`"10s"`, `"1h"`); or `cron`.
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    /// The IANA time zone the cron expression is read in. Default UTC.
    time_zone: Option<String>,
    url: String,
    #[serde(default, alias = "metadata")]
    body: serde_json::Value,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    key: Option<String>,
    priority: Option<i32>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    /// `skip` (the default) or `run_latest`.
    missed_slots: Option<String>,
    #[serde(default)]
    paused: bool,
}

/// A schedule as the API shows it.
#[derive(Debug, Serialize)]
struct ScheduleView {
    id: ScheduleId,
    domain: String,
    queue: String,
    name: String,
    /// The cron expression, for a cron schedule.
    cron: Option<String>,
    /// The interval in milliseconds, for an interval schedule.
    every_ms: Option<u64>,
    time_zone: String,
    partition: PartitionId,
    priority: i32,
    max_attempts: u32,
    timeout_ms: u64,
    missed_slots: &'static str,
    paused: bool,
    /// The webhook's URL, when the payload is a webhook request.
    url: Option<String>,
    /// The webhook's body template.
    body: Option<serde_json::Value>,
    next_slot_at: DateTime<Utc>,
    last_slot_at: Option<DateTime<Utc>>,
    last_task_id: Option<TaskId>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ScheduleView {
    fn of(domain: &str, queue: &str, s: ScheduleRecord) -> Self {
        let (cron, every_ms) = match &s.spec.recurrence {
            helix_store::Recurrence::Cron(expression) => (Some(expression.clone()), None),
            helix_store::Recurrence::Every(every) => (None, Some(millis(*every))),
        };
        let request = WebhookRequest::from_payload(&s.spec.payload).ok();
        Self {
            id: s.id,
            domain: domain.to_owned(),
            queue: queue.to_owned(),
            cron,
            every_ms,
            time_zone: s.spec.time_zone,
            partition: s.spec.partition,
            priority: s.spec.priority,
            max_attempts: s.spec.max_attempts,
            timeout_ms: millis(s.spec.timeout),
            missed_slots: s.spec.missed_slots.as_str(),
            paused: s.spec.paused,
            url: request.as_ref().map(|r| r.url().to_owned()),
            body: request.map(|r| r.body().clone()),
            name: s.spec.name,
            next_slot_at: s.next_slot_at,
            last_slot_at: s.last_slot_at,
            last_task_id: s.last_task_id,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A client error, with a not-found message naming the queue or the schedule.
fn named(domain: &str, queue: &str, name: Option<&str>) -> impl FnOnce(ClientError) -> ApiError {
    let what = match name {
        Some(name) => format!("schedule {name:?} of queue {domain}/{queue} not found"),
        None => format!("queue {domain}/{queue} not found"),
    };
    move |e| match ApiError::from(e) {
        e if e.status == StatusCode::NOT_FOUND => ApiError::not_found(what),
        e => e,
    }
}

async fn create(
    state: Data,
    path: web::Path<(String, String)>,
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let (domain, queue) = path.into_inner();
    let new: NewSchedule = json_body(body, state.max_body_bytes())?;
    let mut spec = match (new.cron, new.every) {
        (Some(cron), None) => ScheduleSpec::cron(cron),
        (None, Some(every)) => ScheduleSpec::every(every),
        _ => return Err(ApiError::invalid("cron, every: give exactly one of them")),
    };
    let mut request =
        WebhookRequest::new(&new.url, &new.body).map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    for (name, value) in &new.headers {
        request =
            request.header(name, value).map_err(|e| ApiError::invalid(format!("headers.{name}: {e}")))?;
    }
    request.validate().map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    let payload = request.to_payload().map_err(|e| ApiError::invalid(format!("body: {e}")))?;
    spec = spec.payload(payload);
    if let Some(zone) = new.time_zone {
        spec = spec.time_zone(zone);
    }
    if let Some(key) = new.key {
        spec = spec.key(key);
    }
    if let Some(priority) = new.priority {
        spec = spec.priority(priority);
    }
    if let Some(attempts) = new.max_attempts {
        spec = spec.max_attempts(attempts);
    }
    if let Some(ms) = new.timeout_ms {
        if ms == 0 {
            return Err(ApiError::invalid("timeout_ms: must be more than 0"));
        }
        spec = spec.timeout(Duration::from_millis(ms));
    }
    if let Some(policy) = new.missed_slots {
        let parsed = MissedSlots::parse(&policy.to_ascii_uppercase()).ok_or_else(|| {
            ApiError::invalid(format!("missed_slots: {policy:?} is not skip or run_latest"))
        })?;
        spec = spec.missed_slots(parsed);
    }
    if new.paused {
        spec = spec.paused();
    }
    let created = state
        .client()
        .create_schedule(&domain, &queue, &new.name, spec)
        .await
        .map_err(named(&domain, &queue, None))?;
    Ok(HttpResponse::Created().json(ScheduleView::of(&domain, &queue, created)))
}

async fn list(state: Data, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (domain, queue) = path.into_inner();
    let schedules = state.client().schedules(&domain, &queue).await.map_err(named(&domain, &queue, None))?;
    let views: Vec<ScheduleView> =
        schedules.into_iter().map(|s| ScheduleView::of(&domain, &queue, s)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "schedules": views })))
}

async fn get(state: Data, path: web::Path<(String, String, String)>) -> Result<HttpResponse, ApiError> {
    let (domain, queue, name) = path.into_inner();
    let found =
        state.client().schedule(&domain, &queue, &name).await.map_err(named(&domain, &queue, Some(&name)))?;
    Ok(HttpResponse::Ok().json(ScheduleView::of(&domain, &queue, found)))
}

async fn pause(state: Data, path: web::Path<(String, String, String)>) -> Result<HttpResponse, ApiError> {
    let (domain, queue, name) = path.into_inner();
    let paused = state.client().pause_schedule(&domain, &queue, &name).await.map_err(named(
        &domain,
        &queue,
        Some(&name),
    ))?;
    Ok(HttpResponse::Ok().json(ScheduleView::of(&domain, &queue, paused)))
}

async fn resume(state: Data, path: web::Path<(String, String, String)>) -> Result<HttpResponse, ApiError> {
    let (domain, queue, name) = path.into_inner();
    let resumed = state.client().resume_schedule(&domain, &queue, &name).await.map_err(named(
        &domain,
        &queue,
        Some(&name),
    ))?;
    Ok(HttpResponse::Ok().json(ScheduleView::of(&domain, &queue, resumed)))
}

async fn delete(state: Data, path: web::Path<(String, String, String)>) -> Result<HttpResponse, ApiError> {
    let (domain, queue, name) = path.into_inner();
    state.client().delete_schedule(&domain, &queue, &name).await.map_err(named(
        &domain,
        &queue,
        Some(&name),
    ))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "deleted": name })))
}
