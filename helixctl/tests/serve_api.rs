//! The HTTP API of `helixctl serve`, in-process: a whole node (coordinator, worker, API) on
//! the in-memory store, bound to 127.0.0.1:0, driven over real HTTP.

use std::time::{Duration, Instant};

use helixctl::serve::config::ServeConfig;
use helixctl::serve::{Running, start};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

/// A node on a fresh in-memory store, with `extra` TOML appended to a base that serves
/// `d/q` (4 partitions).
async fn node(http: &str) -> Running {
    let text = format!(
        "database_url = \"memory://\"\n[http]\nbind = \"127.0.0.1:0\"\n{http}\n\
         [[queues]]\ndomain = \"d\"\nname = \"q\"\npartitions = 4\n"
    );
    let config = ServeConfig::from_toml(&text).expect("parses").validate("memory://").expect("validates");
    start(&config).await.expect("the node starts")
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn of(node: &Running) -> Self {
        Self { base: format!("http://{}", node.local_addr()), http: reqwest::Client::new() }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{path}: the answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, value)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(serde_json::to_vec(body).expect("json"))).await
    }

    async fn pending(&self) -> Vec<Value> {
        let (status, page) = self.get("/v1/queues/d/q/jobs?state=pending").await;
        assert_eq!(status, 200, "{page}");
        page["jobs"].as_array().expect("jobs").clone()
    }
}

fn job(delay_ms: u64) -> Value {
    json!({ "domain": "d", "queue": "q", "url": "https://hooks.example.com/x", "body": { "order": 42 }, "delay_ms": delay_ms })
}

#[track_caller]
fn assert_error(answer: &(u16, Value), status: u16, code: &str, mentions: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
    let message = answer.1["message"].as_str().expect("a message");
    assert!(message.contains(mentions), "{message:?} does not mention {mentions:?}");
}

#[actix_rt::test]
async fn creating_a_job_needs_the_right_token_and_creates_nothing_without_it() {
    let node = node(&format!("token = \"{TOKEN}\"")).await;
    let api = Api::of(&node);

    assert_error(&api.post("/v1/jobs", None, &job(3_600_000)).await, 401, "unauthorized", "Authorization");
    assert_error(
        &api.post("/v1/jobs", Some("wrong-token"), &job(3_600_000)).await,
        401,
        "unauthorized",
        "wrong",
    );
    assert_error(
        &api.post("/v1/jobs/1/cancel", Some("wrong-token"), &json!({})).await,
        401,
        "unauthorized",
        "wrong",
    );
    assert!(api.pending().await.is_empty(), "a refused request created nothing");

    let (status, created) = api.post("/v1/jobs", Some(TOKEN), &job(3_600_000)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"], true);
    let id = created["id"].as_u64().expect("an id");
    let pending = api.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["id"], id);
    assert_eq!(pending[0]["url"], "https://hooks.example.com/x");
    assert_eq!(pending[0]["body"], json!({ "order": 42 }));
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn without_a_token_the_api_is_read_only() {
    let node = node("").await;
    let api = Api::of(&node);
    assert_error(&api.post("/v1/jobs", Some("anything"), &job(0)).await, 401, "unauthorized", "read-only");
    assert_eq!(api.get("/v1/queues").await.0, 200);
    assert!(api.pending().await.is_empty());
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let node = node(&format!("token = \"{TOKEN}\"\nmax_body_bytes = 2048")).await;
    let api = Api::of(&node);
    let mut big = job(0);
    big["body"] = json!({ "padding": "x".repeat(4096) });
    assert_error(&api.post("/v1/jobs", Some(TOKEN), &big).await, 413, "payload_too_large", "2048");
    assert!(api.pending().await.is_empty());
    // Just under the limit passes.
    assert_eq!(api.post("/v1/jobs", Some(TOKEN), &job(3_600_000)).await.0, 201);
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn bad_input_is_a_400_that_names_the_field() {
    let node = node(&format!("token = \"{TOKEN}\"")).await;
    let api = Api::of(&node);
    let post = |body: Value| {
        let api = &api;
        async move { api.post("/v1/jobs", Some(TOKEN), &body).await }
    };
    assert_error(&post(json!({ "queue": "q", "url": "https://a.example/" })).await, 400, "invalid", "domain");
    assert_error(
        &post(json!({ "domain": "d", "queue": "q", "url": "ftp://a.example/" })).await,
        400,
        "invalid",
        "url",
    );
    let mut both = job(10);
    both["run_at"] = json!("2030-01-01T00:00:00Z");
    assert_error(&post(both).await, 400, "invalid", "run_at");
    let mut bad_time = job(0);
    bad_time.as_object_mut().expect("object").remove("delay_ms");
    bad_time["run_at"] = json!("tomorrow");
    assert_error(&post(bad_time).await, 400, "invalid", "");
    let mut unknown = job(0);
    unknown["colour"] = json!("red");
    assert_error(&post(unknown).await, 400, "invalid", "colour");
    let mut zero = job(0);
    zero["max_attempts"] = json!(0);
    assert_error(&post(zero).await, 400, "invalid", "attempts");
    assert_error(
        &api.send(reqwest::Method::POST, "/v1/jobs", Some(TOKEN), Some(b"{not json".to_vec())).await,
        400,
        "invalid",
        "",
    );
    assert_error(&api.get("/v1/jobs/abc").await, 400, "invalid", "id");
    assert_error(&api.get("/v1/queues/d/q/jobs?limit=0").await, 400, "invalid", "limit");
    assert_error(&api.get("/v1/queues/d/q/jobs?state=sleeping").await, 400, "invalid", "state");
    assert_error(&api.get("/v1/events?limit=0").await, 400, "invalid", "limit");
    assert!(api.pending().await.is_empty());
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn unknown_things_are_404s() {
    let node = node(&format!("token = \"{TOKEN}\"")).await;
    let api = Api::of(&node);
    let mut elsewhere = job(0);
    elsewhere["queue"] = json!("nope");
    assert_error(&api.post("/v1/jobs", Some(TOKEN), &elsewhere).await, 404, "not_found", "d/nope");
    assert_error(&api.get("/v1/jobs/987654").await, 404, "not_found", "987654");
    assert_error(
        &api.post("/v1/jobs/987654/cancel", Some(TOKEN), &json!({})).await,
        404,
        "not_found",
        "987654",
    );
    assert_error(
        &api.post("/v1/jobs/987654/retry", Some(TOKEN), &json!({})).await,
        404,
        "not_found",
        "987654",
    );
    assert_error(&api.get("/v1/queues/d/nope/jobs").await, 404, "not_found", "d/nope");
    assert_error(&api.get("/v1/nothing-here").await, 404, "not_found", "/v1");
    assert_error(&api.get("/nothing-here").await, 404, "not_found", "/v1");
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn jobs_are_read_listed_deduplicated_cancelled_and_retried() {
    let node = node(&format!("token = \"{TOKEN}\"")).await;
    let api = Api::of(&node);

    let mut first = job(3_600_000);
    first["dedup_key"] = json!("order-42");
    first["priority"] = json!(-3);
    let (status, created) = api.post("/v1/jobs", Some(TOKEN), &first).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().expect("id");
    let (status, again) = api.post("/v1/jobs", Some(TOKEN), &first).await;
    assert_eq!((status, &again["created"], &again["id"]), (200, &json!(false), &json!(id)), "{again}");

    let (status, got) = api.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (got["state"].as_str(), got["domain"].as_str(), got["queue"].as_str()),
        (Some("PENDING"), Some("d"), Some("q"))
    );
    assert_eq!((got["priority"].as_i64(), got["dedup_key"].as_str()), (Some(-3), Some("order-42")));

    // Pages: two more jobs, read one at a time.
    for _ in 0..2 {
        assert_eq!(api.post("/v1/jobs", Some(TOKEN), &job(3_600_000)).await.0, 201);
    }
    let (_, page) = api.get("/v1/queues/d/q/jobs?limit=2").await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2));
    let next = page["next_after"].as_u64().expect("a next page");
    let (_, rest) = api.get(&format!("/v1/queues/d/q/jobs?limit=2&after={next}")).await;
    assert_eq!(rest["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next_after"], Value::Null);

    let (status, cancelled) = api.post(&format!("/v1/jobs/{id}/cancel"), Some(TOKEN), &json!({})).await;
    assert_eq!((status, cancelled["outcome"].as_str()), (200, Some("cancelled")), "{cancelled}");
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).await.1["state"], "CANCELLED");
    let (status, twice) = api.post(&format!("/v1/jobs/{id}/cancel"), Some(TOKEN), &json!({})).await;
    assert_eq!(
        (status, twice["outcome"].as_str(), twice["state"].as_str()),
        (200, Some("already_finished"), Some("CANCELLED"))
    );
    assert_error(
        &api.post(&format!("/v1/jobs/{id}/retry"), Some(TOKEN), &json!({})).await,
        409,
        "conflict",
        "dead",
    );

    // A delivery to a refused destination (loopback is refused by default) with one attempt
    // dies at once; a retry makes it pending again.
    let dead = json!({ "domain": "d", "queue": "q", "url": "http://127.0.0.1:9/", "max_attempts": 1 });
    let (status, created) = api.post("/v1/jobs", Some(TOKEN), &dead).await;
    assert_eq!(status, 201, "{created}");
    let dead_id = created["id"].as_u64().expect("id");
    let start = Instant::now();
    loop {
        let (_, got) = api.get(&format!("/v1/jobs/{dead_id}")).await;
        if got["state"] == "DEAD" {
            assert!(got["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{got}");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the job never died: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, retried) = api.post(&format!("/v1/jobs/{dead_id}/retry"), Some(TOKEN), &json!({})).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!((retried["id"].as_u64(), retried["attempts"].as_u64()), (Some(dead_id), Some(0)));
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn health_readiness_queues_cluster_and_events() {
    let node = node("").await;
    let api = Api::of(&node);
    assert_eq!(api.get("/healthz").await, (200, json!({ "status": "ok" })));
    assert_eq!(api.get("/readyz").await, (200, json!({ "status": "ready" })));

    let (status, queues) = api.get("/v1/queues").await;
    assert_eq!(status, 200);
    assert_eq!(queues["queues"][0]["domain"], "d");
    assert_eq!(queues["queues"][0]["partitions"], 4);

    // This node is elected and owns the four partitions within a few reconcile ticks.
    let worker = node.worker().id().to_string();
    let start = Instant::now();
    let view = loop {
        let (status, view) = api.get("/v1/cluster").await;
        assert_eq!(status, 200, "{view}");
        let leads = view["leader"]["holder"].is_string() && view["leader"]["expired"] == false;
        if leads && view["queues"][0]["owners"][&worker] == 4 {
            break view;
        }
        assert!(start.elapsed() < DEADLINE, "the cluster never settled: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(view["leader"]["term"].as_u64().is_some_and(|t| t >= 1), "{view}");
    assert_eq!(view["workers"][0]["id"], worker.as_str());
    assert_eq!(view["workers"][0]["live"], true);
    assert_eq!(view["queues"][0]["unowned"], 0);
    assert_eq!(view["queues"][0]["assignments"].as_array().map(Vec::len), Some(4));

    let (status, events) = api.get("/v1/events?limit=1000").await;
    assert_eq!(status, 200, "{events}");
    let kinds: Vec<String> =
        events["events"].as_array().expect("events").iter().map(|e| e["kind"].to_string()).collect();
    assert!(!kinds.is_empty(), "an election and grants were recorded");
    let (_, first) = api.get("/v1/events?limit=1").await;
    assert_eq!(first["events"].as_array().map(Vec::len), Some(1));
    assert!(first["next_after"].is_u64());
    node.shutdown().await.expect("stops");
}

#[actix_rt::test]
async fn schedules_are_created_fire_and_are_paused_resumed_and_deleted() {
    let node = node(&format!("token = \"{TOKEN}\"")).await;
    let api = Api::of(&node);
    let path = "/v1/queues/d/q/schedules";
    let every = json!({ "name": "probe", "every": "1s", "url": "https://hooks.example.com/probe", "body": { "p": 1 } });

    assert_error(&api.post(path, None, &every).await, 401, "unauthorized", "Authorization");
    let (status, created) = api.post(path, Some(TOKEN), &every).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["every_ms"].as_u64(), created["url"].as_str()),
        (Some(1000), Some("https://hooks.example.com/probe"))
    );
    assert_error(&api.post(path, Some(TOKEN), &every).await, 409, "conflict", "");
    let mut both = every.clone();
    both["name"] = json!("both");
    both["cron"] = json!("* * * * *");
    assert_error(&api.post(path, Some(TOKEN), &both).await, 400, "invalid", "cron");
    let mut zone = every.clone();
    zone["name"] = json!("zone");
    zone.as_object_mut().expect("object").remove("every");
    zone["cron"] = json!("0 7 * * *");
    zone["time_zone"] = json!("Mars/Olympus");
    assert_error(&api.post(path, Some(TOKEN), &zone).await, 400, "invalid", "");
    assert_error(
        &api.post("/v1/queues/d/nope/schedules", Some(TOKEN), &every).await,
        404,
        "not_found",
        "d/nope",
    );

    // The leader (this node) turns its slots into jobs.
    let start = Instant::now();
    loop {
        let (_, got) = api.get(&format!("{path}/probe")).await;
        if got["last_task_id"].is_u64() {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the schedule never fired: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, paused) = api.post(&format!("{path}/probe/pause"), Some(TOKEN), &json!({})).await;
    assert_eq!((status, &paused["paused"]), (200, &json!(true)), "{paused}");
    let (status, resumed) = api.post(&format!("{path}/probe/resume"), Some(TOKEN), &json!({})).await;
    assert_eq!((status, &resumed["paused"]), (200, &json!(false)), "{resumed}");
    let (status, listed) = api.get(path).await;
    assert_eq!((status, listed["schedules"].as_array().map(Vec::len)), (200, Some(1)), "{listed}");

    let delete = |token: Option<&'static str>| {
        api.send(reqwest::Method::DELETE, "/v1/queues/d/q/schedules/probe", token, None)
    };
    assert_error(&delete(None).await, 401, "unauthorized", "Authorization");
    assert_eq!(delete(Some(TOKEN)).await, (200, json!({ "deleted": "probe" })));
    assert_error(&delete(Some(TOKEN)).await, 404, "not_found", "probe");
    assert_error(&api.get(&format!("{path}/probe")).await, 404, "not_found", "probe");
    node.shutdown().await.expect("stops");
}
