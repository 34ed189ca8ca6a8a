//! Webhook delivery through a real worker on the memory store, against HTTP servers on
//! 127.0.0.1 started by the tests (`docs/scheduling.md`, "Webhooks"): outcomes by status, retries and
//! `Retry-After`, the idempotency key across attempts, connection failures and timeouts,
//! refused destinations, redirects, and URLs refused at enqueue.
//!
//! Real time (real sockets); waits poll state with generous deadlines and never assert how
//! fast something happened, only lower bounds a retry must respect.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use helix_actors::client::{Client, ClientError, TaskSpec};
use helix_actors::node::{CoordinatorHandle, CoordinatorNode, Worker, WorkerHandle};
use helix_actors::tasks::TaskPolicy;
use helix_actors::tasks::webhook::{
    Destinations, MAX_URL_BYTES, WebhookConfig, WebhookError, WebhookHandler, WebhookRequest, idempotency_key,
};
use helix_actors::testing::fast_config;
use helix_store::{TaskId, TaskRecord, TaskState};

/// Generous against a busy two-core machine; only a real failure exceeds it.
const DEADLINE: Duration = Duration::from_secs(60);

/// One request as the test server received it.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// An HTTP server on 127.0.0.1 that records every request and answers by its path:
/// - `/status/N` answers N with the body `status N body`;
/// - `/status/N/after/S`: N with `Retry-After: S`;
/// - `/status/N/date/S`: N with `Retry-After` an HTTP-date S seconds ahead;
/// - `/flaky/K`: 500 for the first K requests on that path, then 200 `finally`;
/// - `/slow/MS`: 200 after MS milliseconds; `/hang`: never answers;
/// - `/redirect/N/to/…`: status N with `Location` the rest of the path (`metadata` stands
///   for `http://169.254.169.254/latest/meta-data/`; `port/P/…` for the rest of the path on
///   `http://127.0.0.1:P`, another origin).
struct Server {
    port: u16,
    hits: Hits,
}

impl Server {
    async fn start() -> Self {
        let hits: Hits = Arc::default();
        let data = web::Data::new(Arc::clone(&hits));
        let server =
            HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(answer)))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .bind(("127.0.0.1", 0))
                .expect("bind");
        let port = server.addrs()[0].port();
        actix_rt::spawn(server.run());
        Self { port, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().expect("hits").iter().filter(|h| h.path == path).cloned().collect()
    }

    fn all_hits(&self) -> usize {
        self.hits.lock().expect("hits").len()
    }
}

async fn answer(hits: web::Data<Hits>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let path = req.path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    let seen = {
        let mut hits = hits.lock().expect("hits");
        hits.push(Hit { path: path.clone(), headers, body: body.to_vec(), at: Instant::now() });
        hits.iter().filter(|h| h.path == path).count()
    };
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let status = |code: &str| StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::OK);
    match parts.as_slice() {
        ["status", code] => HttpResponse::build(status(code)).body(format!("status {code} body")),
        ["status", code, "after", secs] => HttpResponse::build(status(code))
            .insert_header(("Retry-After", *secs))
            .body(format!("status {code} body")),
        ["status", code, "date", secs] => {
            let at = SystemTime::now() + Duration::from_secs(secs.parse().unwrap_or(1));
            HttpResponse::build(status(code))
                .insert_header(("Retry-After", httpdate::fmt_http_date(at)))
                .body(format!("status {code} body"))
        }
        ["flaky", failures] if seen <= failures.parse().unwrap_or(0) => {
            HttpResponse::InternalServerError().body("not yet")
        }
        ["flaky", _] => HttpResponse::Ok().body("finally"),
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            HttpResponse::Ok().body("slow but fine")
        }
        ["hang"] => {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            HttpResponse::Ok().finish()
        }
        ["redirect", code, "to", "metadata"] => HttpResponse::build(status(code))
            .insert_header(("Location", "http://169.254.169.254/latest/meta-data/"))
            .finish(),
        ["redirect", code, "to", "port", port, rest @ ..] => HttpResponse::build(status(code))
            .insert_header(("Location", format!("http://127.0.0.1:{port}/{}", rest.join("/"))))
            .finish(),
        ["redirect", code, "to", rest @ ..] => HttpResponse::build(status(code))
            .insert_header(("Location", format!("/{}", rest.join("/"))))
            .finish(),
        _ => HttpResponse::NotFound().body("no such route"),
    }
}

/// A coordinator and one worker delivering the webhooks of `hooks/out` with `config`.
struct Cluster {
    client: Client,
    worker: WorkerHandle,
    coordinator: CoordinatorHandle,
}

impl Cluster {
    async fn start(config: WebhookConfig) -> Self {
        let client = Client::connect("memory://").await.expect("client");
        let queue = client.ensure_queue("hooks", "out", 4).await.expect("queue");
        let cluster = fast_config();
        let coordinator = CoordinatorNode::new(client.store(), cluster.clone()).start().expect("coordinator");
        let policy = TaskPolicy::default().backoff(Duration::from_millis(20), Duration::from_millis(100));
        let handler = WebhookHandler::new(config).expect("handler");
        let worker = Worker::builder(client.store(), cluster)
            .tasks(queue.id, handler, policy)
            .task_poll_interval(Duration::from_millis(100))
            .start()
            .await
            .expect("worker");
        Self { client, worker, coordinator }
    }

    async fn enqueue(&self, spec: TaskSpec) -> TaskId {
        self.client.enqueue("hooks", "out", spec).await.expect("enqueue").id
    }

    /// A webhook of `{"n": n}` to `url`, with `attempts` attempts.
    async fn hook(&self, url: &str, attempts: u32) -> TaskId {
        let spec = TaskSpec::webhook(url, &serde_json::json!({ "n": 1 })).expect("a valid webhook");
        self.enqueue(spec.max_attempts(attempts).timeout(Duration::from_secs(10))).await
    }

    /// Waits until every task in `ids` has finished; their records.
    async fn finished(&self, ids: &[TaskId]) -> Vec<TaskRecord> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut records = Vec::new();
            for id in ids {
                records.push(self.client.task(*id).await.expect("task"));
            }
            if records.iter().all(|r| r.state.is_finished()) {
                return records;
            }
            assert!(Instant::now() < deadline, "tasks still unfinished: {records:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.worker.leave().await.expect("leave");
        self.coordinator.stop().await;
    }
}

/// Delivers only to 127.0.0.1 (the tests' servers), with short timeouts.
fn local() -> WebhookConfig {
    WebhookConfig::default()
        .destinations(Destinations::new().allow_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        .timeouts(Duration::from_millis(500), Duration::from_millis(1_500))
}

fn error_of(task: &TaskRecord) -> &str {
    task.last_error.as_deref().unwrap_or("")
}

#[actix_rt::test]
async fn statuses_end_done_retried_or_dead() {
    let server = Server::start().await;
    let cluster = Cluster::start(local()).await;
    let mut cases = Vec::new();
    for code in ["200", "201", "400", "404", "410", "408", "429", "500", "503"] {
        let path = format!("/status/{code}");
        cases.push((code, path.clone(), cluster.hook(&server.url(&path), 3).await));
    }
    let redirect = cluster.hook(&server.url("/redirect/302/to/target"), 3).await;
    let ids: Vec<TaskId> = cases.iter().map(|c| c.2).chain([redirect]).collect();
    let records = cluster.finished(&ids).await;

    for ((code, path, _), task) in cases.iter().zip(&records) {
        let hits = server.hits(path).len();
        match *code {
            "200" | "201" => {
                assert_eq!((task.state, task.attempts, hits), (TaskState::Done, 1, 1), "{task:?}");
                let result = task.result.as_deref().unwrap_or("");
                assert!(result.starts_with(&format!("HTTP {code} ")), "{result}");
                assert!(result.ends_with(&format!(": status {code} body")), "{result}");
                assert_eq!(task.last_error, None);
            }
            "400" | "404" | "410" => {
                assert_eq!(
                    (task.state, task.attempts, hits),
                    (TaskState::Dead, 1, 1),
                    "a permanent failure: {task:?}"
                );
                assert!(error_of(task).starts_with(&format!("HTTP {code} ")), "{task:?}");
                assert!(error_of(task).contains(&format!("status {code} body")), "{task:?}");
                assert_eq!(task.result, None);
            }
            _ => {
                assert_eq!(
                    (task.state, task.attempts, hits),
                    (TaskState::Dead, 3, 3),
                    "retried to the last: {task:?}"
                );
                assert!(error_of(task).starts_with(&format!("HTTP {code} ")), "{task:?}");
            }
        }
    }
    let redirected = &records[cases.len()];
    assert_eq!((redirected.state, redirected.attempts), (TaskState::Dead, 1), "{redirected:?}");
    assert!(error_of(redirected).contains("HTTP 302 Found"), "{redirected:?}");
    assert!(error_of(redirected).contains("/target not followed"), "{redirected:?}");
    assert!(server.hits("/target").is_empty(), "the redirect was not followed");
    cluster.stop().await;
}

#[actix_rt::test]
async fn retry_after_is_honoured_in_both_forms_and_capped() {
    let server = Server::start().await;
    let cluster = Cluster::start(local().max_retry_after(Duration::from_secs(2))).await;
    let seconds = cluster.hook(&server.url("/status/429/after/1"), 2).await;
    let date = cluster.hook(&server.url("/status/503/date/2"), 2).await;
    let capped = cluster.hook(&server.url("/status/429/after/3600"), 2).await;
    let records = cluster.finished(&[seconds, date, capped]).await;
    for task in &records {
        assert_eq!((task.state, task.attempts), (TaskState::Dead, 2), "{task:?}");
    }
    let gap = |path: &str| {
        let hits = server.hits(path);
        assert_eq!(hits.len(), 2, "{path}");
        hits[1].at.duration_since(hits[0].at)
    };
    // The queue's backoff is 20 ms: a wait of about a second is the header's doing.
    assert!(gap("/status/429/after/1") >= Duration::from_millis(900), "delta-seconds honoured");
    assert!(error_of(&records[0]).contains("retry after 1000 ms"), "{:?}", records[0]);
    // A date 2 s ahead, to the second: between 1 and 2 s away when the answer is read.
    assert!(gap("/status/503/date/2") >= Duration::from_millis(900), "HTTP-date honoured");
    // An hour asked, two seconds granted (the task finished well within the deadline).
    assert!(gap("/status/429/after/3600") >= Duration::from_millis(1_900), "capped, not ignored");
    assert!(error_of(&records[2]).contains("retry after 2000 ms"), "{:?}", records[2]);
    cluster.stop().await;
}

#[actix_rt::test]
async fn every_attempt_carries_the_same_idempotency_key() {
    let server = Server::start().await;
    let cluster = Cluster::start(local()).await;
    let body = serde_json::json!({ "order": 42, "items": ["a", "b"] });
    let request = WebhookRequest::new(&server.url("/flaky/2"), &body)
        .expect("request")
        .header("X-Signature", "s1")
        .expect("header");
    let id = cluster.enqueue(TaskSpec::webhook_request(&request).expect("spec").max_attempts(5)).await;
    let task = cluster.finished(&[id]).await.remove(0);
    assert_eq!((task.state, task.attempts), (TaskState::Done, 3), "{task:?}");
    assert_eq!(task.result.as_deref(), Some("HTTP 200 OK: finally"));
    // The failed attempts' error is kept until the task completes.
    assert!(error_of(&task).starts_with("HTTP 500 Internal Server Error: not yet"), "{task:?}");

    let hits = server.hits("/flaky/2");
    assert_eq!(hits.len(), 3);
    let key = idempotency_key(&task);
    assert_eq!(key, format!("helix-{}-{}-{}", task.queue_id, task.id, task.created_at.timestamp_millis()));
    for (i, hit) in hits.iter().enumerate() {
        let h = &hit.headers;
        assert_eq!(h.get("idempotency-key"), Some(&key), "attempt {}", i + 1);
        assert_eq!(h.get("helix-attempt"), Some(&(i + 1).to_string()));
        assert_eq!(h.get("helix-task-id"), Some(&id.to_string()));
        assert_eq!(h.get("content-type").map(String::as_str), Some("application/json"));
        assert!(h.get("user-agent").is_some_and(|ua| ua.starts_with("helix-webhook/")), "{h:?}");
        assert_eq!(h.get("x-signature").map(String::as_str), Some("s1"));
        let sent: serde_json::Value = serde_json::from_slice(&hit.body).expect("a json body");
        assert_eq!(sent, body);
    }
    cluster.stop().await;
}

#[actix_rt::test]
async fn unreachable_and_hanging_receivers_are_retried_and_slow_ones_succeed() {
    let server = Server::start().await;
    // A port bound, then closed: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let cluster = Cluster::start(local()).await;
    let refused = cluster.hook(&format!("http://127.0.0.1:{refused_port}/hook"), 2).await;
    let hang = cluster.hook(&server.url("/hang"), 2).await;
    let slow = cluster.hook(&server.url("/slow/300"), 2).await;
    let records = cluster.finished(&[refused, hang, slow]).await;

    assert_eq!((records[0].state, records[0].attempts), (TaskState::Dead, 2), "{:?}", records[0]);
    assert!(error_of(&records[0]).to_lowercase().contains("connect"), "{:?}", records[0]);
    assert_eq!((records[1].state, records[1].attempts), (TaskState::Dead, 2), "{:?}", records[1]);
    assert!(error_of(&records[1]).contains("timed out"), "{:?}", records[1]);
    assert_eq!(server.hits("/hang").len(), 2, "each attempt reached the server");
    assert_eq!((records[2].state, records[2].attempts), (TaskState::Done, 1), "{:?}", records[2]);
    assert_eq!(records[2].result.as_deref(), Some("HTTP 200 OK: slow but fine"));
    cluster.stop().await;
}

#[actix_rt::test]
async fn refused_destinations_and_malformed_envelopes_are_dead_at_once() {
    let server = Server::start().await;
    // The default rules: no allow-list.
    let cluster =
        Cluster::start(WebhookConfig::default().timeouts(Duration::from_millis(500), Duration::from_secs(2)))
            .await;
    let cases = [
        (server.url("/status/200"), "loopback"),
        (format!("http://localhost:{}/status/200", server.port), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{}/status/200", server.port), "loopback"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1/".to_owned(), "metadata host name"),
    ];
    let mut ids = Vec::new();
    for (url, _) in &cases {
        ids.push(cluster.hook(url, 3).await);
    }
    let malformed = cluster.enqueue(TaskSpec::new("not json").max_attempts(3)).await;
    ids.push(malformed);
    let records = cluster.finished(&ids).await;
    for ((url, rule), task) in cases.iter().zip(&records) {
        assert_eq!((task.state, task.attempts), (TaskState::Dead, 1), "{url}: {task:?}");
        assert!(error_of(task).contains("refused") && error_of(task).contains(rule), "{url}: {task:?}");
    }
    let bad = &records[cases.len()];
    assert_eq!((bad.state, bad.attempts), (TaskState::Dead, 1), "{bad:?}");
    assert!(error_of(bad).contains("not a webhook envelope"), "{bad:?}");
    assert_eq!(server.all_hits(), 0, "nothing reached the refused destination");
    cluster.stop().await;
}

#[actix_rt::test]
async fn redirects_are_followed_only_when_configured_and_each_hop_is_checked() {
    let server = Server::start().await;
    let cluster = Cluster::start(local().follow_redirects(2)).await;
    let followed = cluster.hook(&server.url("/redirect/307/to/status/200"), 3).await;
    let to_metadata = cluster.hook(&server.url("/redirect/308/to/metadata"), 3).await;
    let looping =
        cluster.hook(&server.url("/redirect/307/to/redirect/307/to/redirect/307/to/status/200"), 3).await;
    let records = cluster.finished(&[followed, to_metadata, looping]).await;

    assert_eq!((records[0].state, records[0].attempts), (TaskState::Done, 1), "{:?}", records[0]);
    assert_eq!(records[0].result.as_deref(), Some("HTTP 200 OK: status 200 body"));
    let hop = &server.hits("/status/200")[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&hop.body).ok(),
        Some(serde_json::json!({ "n": 1 })),
        "a 307 keeps the POST"
    );
    assert_eq!((records[1].state, records[1].attempts), (TaskState::Dead, 1), "{:?}", records[1]);
    assert!(
        error_of(&records[1]).contains("169.254.169.254") && error_of(&records[1]).contains("link-local"),
        "{:?}",
        records[1]
    );
    assert_eq!((records[2].state, records[2].attempts), (TaskState::Dead, 1), "{:?}", records[2]);
    assert!(error_of(&records[2]).contains("more than 2 redirects"), "{:?}", records[2]);
    cluster.stop().await;
}

#[actix_rt::test]
async fn redirects_stay_within_the_origin_and_keep_the_headers_only_there() {
    let server = Server::start().await;
    let elsewhere = Server::start().await;
    let cluster = Cluster::start(local().follow_redirects(3)).await;
    let signed = |path: &str| {
        let request = WebhookRequest::new(&server.url(path), &serde_json::json!({ "n": 1 }))
            .expect("request")
            .header("X-Signature", "secret-signature")
            .expect("header");
        TaskSpec::webhook_request(&request).expect("spec").max_attempts(3).timeout(Duration::from_secs(10))
    };
    let same = cluster.enqueue(signed("/redirect/307/to/status/201")).await;
    let other_port = format!("/redirect/307/to/port/{}/status/200", elsewhere.port);
    let cross = cluster.enqueue(signed(&other_port)).await;
    let found_port = format!("/redirect/302/to/port/{}/status/200", elsewhere.port);
    let cross_get = cluster.enqueue(signed(&found_port)).await;
    let multiple = cluster.enqueue(signed("/status/300")).await;
    let records = cluster.finished(&[same, cross, cross_get, multiple]).await;

    assert_eq!((records[0].state, records[0].attempts), (TaskState::Done, 1), "{:?}", records[0]);
    let hop = &server.hits("/status/201")[0];
    assert_eq!(hop.headers.get("x-signature").map(String::as_str), Some("secret-signature"), "same origin");
    for task in &records[1..3] {
        assert_eq!((task.state, task.attempts), (TaskState::Dead, 1), "permanent: {task:?}");
        let error = error_of(task);
        assert!(error.starts_with("webhook redirect refused"), "{error}");
        assert!(error.contains(&format!("another origin, http://127.0.0.1:{}", elsewhere.port)), "{error}");
    }
    assert_eq!(server.hits(&other_port).len(), 1, "one attempt, not retried");
    assert_eq!(elsewhere.all_hits(), 0, "nothing, and no signature, reached the other origin");
    assert_eq!((records[3].state, records[3].attempts), (TaskState::Dead, 1), "{:?}", records[3]);
    let error = error_of(&records[3]);
    assert!(error.starts_with("HTTP 300 Multiple Choices"), "{error}");
    assert!(error.contains("(not followed: no Location header)"), "following is on: {error}");
    cluster.stop().await;
}

#[actix_rt::test]
async fn bad_urls_are_refused_at_enqueue() {
    let client = Client::connect("memory://").await.expect("client");
    client.ensure_queue("hooks", "out", 4).await.expect("queue");
    let body = serde_json::json!({ "n": 1 });
    let refused = |url: &str| match TaskSpec::webhook(url, &body) {
        Err(ClientError::Webhook(e)) => e,
        other => panic!("{url}: expected a refusal, got {other:?}"),
    };
    assert_eq!(refused("ftp://example.com/hook"), WebhookError::Scheme("ftp".to_owned()));
    assert_eq!(refused("http://"), WebhookError::NoHost);
    assert_eq!(refused("https://:443/hook"), WebhookError::NoHost);
    assert_eq!(refused("https://user:secret@example.com/hook"), WebhookError::UserInfo);
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
    assert_eq!(refused(&long), WebhookError::TooLong(long.len()));
    assert!(matches!(refused("not a url"), WebhookError::NotAUrl { .. }));
    let messages = [refused("ftp://x/").to_string(), refused("https://u:p@x/").to_string()];
    assert!(messages[0].contains("scheme \"ftp\" is not http or https"), "{messages:?}");
    assert!(messages[1].contains("credentials"), "{messages:?}");
    let headers = WebhookRequest::new("https://example.com/", &body).expect("request");
    assert!(matches!(headers.header("Idempotency-Key", "mine"), Err(WebhookError::ReservedHeader(_))));

    // A valid one goes in, as a JSON envelope.
    let spec = TaskSpec::webhook("https://hooks.example.com/orders", &body).expect("valid");
    let id = client.enqueue("hooks", "out", spec).await.expect("enqueue").id;
    let stored = client.task(id).await.expect("task");
    let envelope = WebhookRequest::from_payload(&stored.payload).expect("an envelope");
    assert_eq!((envelope.url(), envelope.body()), ("https://hooks.example.com/orders", &body));
}
