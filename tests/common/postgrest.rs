//! PostgREST, as far as the worker uses it, on a real PostgreSQL: the request shapes the worker
//! sends (PATCH by `session_id=eq.`, upserts with `on_conflict` and `Prefer: resolution=…`, GET with
//! `select`) executed the way PostgREST executes them, on the migrated tables. `tests/supabase.rs`
//! replays recorded bodies through it; [`PostgrestOnPostgres`] serves it live to a running worker.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::postgres::Postgres;

/// The query string as (name, value) pairs, decoded, in order.
pub fn query(r: &Request) -> Vec<(String, String)> {
    r.url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// One request the fake received, as PostgREST would see it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub prefer: Option<String>,
    /// `Range: 0-0` is how the postgrest crate asks for `limit(1)`.
    pub range: Option<String>,
    pub body: Value,
}

impl Received {
    pub fn of(r: &Request) -> Received {
        Received {
            method: r.method.to_string(),
            path: r.url.path().to_string(),
            query: query(r),
            prefer: r
                .headers
                .get("prefer")
                .map(|v| v.to_str().unwrap().to_string()),
            range: r
                .headers
                .get("range")
                .map(|v| v.to_str().unwrap().to_string()),
            body: if r.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&r.body).unwrap_or(Value::Null)
            },
        }
    }
}

/// Every request `server` received, in order.
pub async fn received(server: &MockServer) -> Vec<Received> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(Received::of)
        .collect()
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn migrations() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("supabase/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// A fresh cluster with a database migrated as on Supabase (shim first).
pub fn migrated() -> Postgres {
    let pg = Postgres::start();
    pg.create_database("app");
    pg.apply_file("app", &repo("supabase/tests/supabase_shim.sql"))
        .unwrap_or_else(|e| panic!("shim: {e}"));
    for file in migrations() {
        pg.apply_file("app", &file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    pg
}

pub fn column_list(body: &Value) -> String {
    let obj = body.as_object().expect("a JSON object body");
    obj.keys()
        .map(|k| {
            assert!(
                k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "odd column {k}"
            );
            format!("\"{k}\"")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Executes one received request on the real tables the way PostgREST does: the body's keys are
/// the columns, values come through `json_populate_recordset(null::table, body)`, an upsert is
/// `ON CONFLICT (on_conflict) DO UPDATE` (merge-duplicates) or `DO NOTHING` (ignore-duplicates),
/// a PATCH updates the rows of its `eq.` filter, a GET selects its `select` columns.
pub fn execute_like_postgrest(pg: &Postgres, r: &Received) -> Result<String, String> {
    let table = r.path.strip_prefix("/rest/v1/").expect("a table path");
    let param = |name: &str| {
        r.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let payload = match &r.body {
        Value::Array(_) => r.body.to_string(),
        body => Value::Array(vec![body.clone()]).to_string(),
    };
    // The body goes into the script (psql's stdin) as a dollar-quoted literal, not as a `-v`
    // argument: Linux caps one argument at 128 KiB, and a long recording's result is larger.
    let mut tag = String::from("body");
    while payload.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    let body = format!("${tag}${payload}${tag}$");
    match r.method.as_str() {
        "POST" => {
            let cols = column_list(&r.body);
            let target = param("on_conflict").expect("on_conflict");
            let prefer = r.prefer.clone().unwrap_or_default();
            let on_conflict = if prefer.contains("resolution=merge-duplicates") {
                let set = r
                    .body
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| format!("\"{k}\" = excluded.\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("on conflict ({target}) do update set {set}")
            } else if prefer.contains("resolution=ignore-duplicates") {
                format!("on conflict ({target}) do nothing")
            } else {
                String::new()
            };
            pg.psql(
                "app",
                &format!(
                    "set role service_role;\n\
                     insert into public.{table} ({cols}) select {cols} \
                     from json_populate_recordset(null::public.{table}, {body}::json) {on_conflict};"
                ),
                &[],
            )
        }
        "PATCH" => {
            let cols = column_list(&r.body);
            let filter = param("session_id").expect("a session_id filter");
            let id = filter.strip_prefix("eq.").expect("an eq. filter");
            pg.psql(
                "app",
                &format!(
                    "set role service_role;\n\
                     update public.{table} set ({cols}) = (select {cols} \
                     from json_populate_recordset(null::public.{table}, {body}::json) limit 1) \
                     where session_id = :'id';"
                ),
                &[("id", id)],
            )
        }
        "GET" => {
            let select = param("select").expect("select");
            let filter = param("session_id");
            let id = filter
                .as_deref()
                .map(|f| f.strip_prefix("eq.").expect("an eq. filter"));
            let condition = if id.is_some() {
                "where session_id = :'id'"
            } else {
                ""
            };
            // Range: first-last (inclusive row numbers), e.g. 0-0 for one row.
            let limit = match r.range.as_deref().and_then(|r| r.split_once('-')) {
                Some((first, last)) => {
                    let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
                    format!("offset {first} limit {}", last - first + 1)
                }
                None => String::new(),
            };
            pg.psql(
                "app",
                &format!(
                    "set role service_role;\n\
                     select coalesce(json_agg(t), '[]') from \
                     (select {select} from public.{table} {condition} {limit}) t;"
                ),
                &[("id", id.unwrap_or(""))],
            )
        }
        other => panic!("unexpected method {other}"),
    }
}

/// A live PostgREST fake backed by real tables: answers what PostgreSQL answers, checks the
/// service-role headers on every request, and can be told to fail (503) a share of requests.
pub struct PostgrestOnPostgres {
    pub server: MockServer,
    pub pg: Arc<Postgres>,
    faults: Arc<Mutex<Faults>>,
}

/// Injected failures: every `every_nth` request answers 503 (0: none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    pub every_nth: usize,
    seen: usize,
}

struct Responder {
    pg: Arc<Postgres>,
    key: String,
    faults: Arc<Mutex<Faults>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let header = |name: &str| {
            let all: Vec<_> = request.headers.get_all(name).iter().collect();
            (all.len() == 1).then(|| all[0].to_str().unwrap_or("").to_string())
        };
        // Legacy service_role JWTs come in both headers; new secret keys (sb_secret_…) are not
        // JWTs and come in apikey only, as Supabase's gateway wants them.
        let bearer = (!self.key.starts_with("sb_")).then(|| format!("Bearer {}", self.key));
        if header("apikey").as_deref() != Some(self.key.as_str())
            || header("authorization") != bearer
        {
            return error(401, "PGRST301", "JWT invalid or missing");
        }
        let r = Received::of(request);
        if r.method != "GET"
            && (header("content-type").as_deref() != Some("application/json") || r.body.is_null())
        {
            return error(400, "PGRST102", "a write needs a JSON body");
        }
        if !r.path.starts_with("/rest/v1/") {
            return error(404, "PGRST125", "unknown path");
        }
        {
            let mut f = self.faults.lock().unwrap();
            f.seen += 1;
            if f.every_nth > 0 && f.seen.is_multiple_of(f.every_nth) {
                return ResponseTemplate::new(503).set_body_string("upstream unavailable");
            }
        }
        match execute_like_postgrest(&self.pg, &r) {
            Ok(out) if r.method == "GET" => ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(if out.is_empty() {
                    "[]".to_string()
                } else {
                    out
                }),
            Ok(_) if r.method == "POST" => ResponseTemplate::new(201),
            Ok(_) => ResponseTemplate::new(204),
            Err(e) => error(400, "23514", e.trim()),
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"code": code, "message": message, "details": null, "hint": null}))
}

/// The cluster stops with the fake, in the test's own thread: the mock server's task drops its
/// mocks (and their `Arc<Postgres>`) only when it sees the shutdown, which the end of a test
/// binary can cut short, leaving the data directory behind.
impl Drop for PostgrestOnPostgres {
    fn drop(&mut self) {
        self.pg.shutdown();
    }
}

impl PostgrestOnPostgres {
    /// A migrated cluster and the fake in front of it, accepting `service_key`.
    pub async fn start(service_key: &str) -> PostgrestOnPostgres {
        PostgrestOnPostgres::start_with(service_key, true).await
    }

    /// Without `record`, requests are not kept (`received` and `progress_of` are unavailable):
    /// for long benchmarks, whose bodies would pile up in the test process.
    pub async fn start_with(service_key: &str, record: bool) -> PostgrestOnPostgres {
        let pg = Arc::new(tokio::task::spawn_blocking(migrated).await.unwrap());
        // Never wiremock's pooled `MockServer::start()`: a pooled server keeps its mocks (and
        // with them the responder's `Arc<Postgres>`) in a static pool after the test, so the
        // cluster was never dropped and its postmaster outlived the test process.
        let builder = MockServer::builder();
        let server = if record {
            builder.start().await
        } else {
            builder.disable_request_recording().start().await
        };
        let faults = Arc::new(Mutex::new(Faults::default()));
        Mock::given(any())
            .respond_with(Responder {
                pg: Arc::clone(&pg),
                key: service_key.to_string(),
                faults: Arc::clone(&faults),
            })
            .mount(&server)
            .await;
        PostgrestOnPostgres { server, pg, faults }
    }

    /// The SUPABASE_URL to give the worker.
    pub fn url(&self) -> String {
        self.server.uri()
    }

    pub fn fail_every(&self, nth: usize) {
        self.faults.lock().unwrap().every_nth = nth;
    }

    /// One SQL query's output, as the superuser.
    pub fn sql(&self, script: &str, vars: &[(&str, &str)]) -> String {
        self.pg.sql("app", script, vars)
    }

    /// The job row of a session as JSON (`Value::Null` when there is none).
    pub fn job_row(&self, session: &str) -> Value {
        let out = self.sql(
            "select row_to_json(j) from audio_processing_jobs j where session_id = :'id'",
            &[("id", session)],
        );
        if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out).unwrap()
        }
    }

    /// How many result rows a session has.
    pub fn result_count(&self, session: &str) -> usize {
        self.sql(
            "select count(*) from audio_analysis_results where session_id = :'id'",
            &[("id", session)],
        )
        .parse()
        .unwrap()
    }

    /// The progress PATCH bodies the worker sent for a session, in order.
    pub async fn progress_of(&self, session: &str) -> Vec<Value> {
        let filter = format!("eq.{session}");
        received(&self.server)
            .await
            .into_iter()
            .filter(|r| {
                r.method == "PATCH"
                    && r.query
                        .iter()
                        .any(|(k, v)| k == "session_id" && *v == filter)
            })
            .map(|r| r.body)
            .collect()
    }
}
