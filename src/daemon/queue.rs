//! The job queue: a Redis Stream read through a consumer group (ARCHITECTURE.md "Contracts").
//!
//! Stream `audio:jobs`, group `audio-workers`, dead letters in `audio:jobs:dead`; every entry has
//! one field `job` holding the job JSON ([`crate::job`]). Delivery is at least once:
//!
//! - [`Queue::next`] first takes over an entry some consumer has held without a heartbeat for
//!   longer than the visibility timeout (XAUTOCLAIM: that worker crashed or hangs), else waits up
//!   to `block` for a new one (XREADGROUP `>`). [`Delivery::attempt`] is Redis' delivery count:
//!   1 on the first delivery, +1 on every reclaim.
//! - Both claims run inside Lua scripts that hand over an entry's `job` field only when it is at
//!   most `max_entry_bytes` (16 KiB, the job limit); a larger one stays in Redis, the worker gets
//!   its size and first bytes and dead-letters it as `QUEUE_INVALID_JOB`, never holding it whole.
//!   Scripts cannot block, so waiting for a new entry polls the script every `poll` (500 ms)
//!   within `block`.
//! - While a job runs, the worker calls [`Queue::heartbeat`] every [`QueueConfig::heartbeat_interval`]
//!   (a third of the visibility timeout): it resets the entry's idle time (XCLAIM … JUSTID, which
//!   does not count as a delivery), so no one steals a healthy job however long it takes.
//! - [`Queue::ack`] only after the result is durably written. It acknowledges and deletes the
//!   entry in one script, only while this consumer still holds it, so the stream holds exactly the jobs not yet finished and its length
//!   is a queue depth (for metrics and autoscaling).
//! - [`Queue::dead_letter`] moves an entry to the dead stream with its error and acknowledges it,
//!   atomically in one Lua script, and only while the entry is still pending: a repeated call (a
//!   retry after a lost reply) neither loses nor duplicates it.
//!
//! # Attempts policy (what the daemon does with a [`Delivery`])
//! - `delivery.attempt > max_attempts` ([`Queue::exhausted`]): an earlier worker died on it (OOM,
//!   crash) that many times. Dead-letter it without running it (`INTERNAL`, "gave up after N
//!   deliveries") and mark the job row failed: that is a poison job.
//! - The job fails with a permanent error (invalid job, bad signature, bad audio, forbidden key):
//!   dead-letter it now, whatever the attempt.
//! - It fails with a retryable error: dead-letter it when `attempt >= max_attempts` (that was the
//!   last attempt); otherwise leave it unacknowledged and stop heartbeating. It comes back
//!   through XAUTOCLAIM after the visibility timeout (that is the retry backoff), as attempt + 1.
//!
//! # Connections and failures
//! A [`ConnectionManager`], which reconnects by itself with exponential backoff (no command
//! blocks on the server, so a heartbeat or an ack never waits behind a read). Redis being away
//! is [`ErrorCode::Internal`] (retryable), the message saying which command failed; the caller
//! backs off and calls again. `ack`, `heartbeat`, `dead_letter` and the two steps of `next`
//! are retried a few times on connection errors (they are idempotent, and a lost ack costs a
//! whole re-run of the job); `depth` fails at once (it is polled anyway); `enqueue` is not
//! retried (a retried XADD could enqueue twice). If the group vanished (a Redis restarted without
//! persistence) it is recreated. An entry whose delivery never reached us (reply lost with the
//! connection, `next()` future dropped at shutdown) stays pending under our name and is
//! reclaimed after the visibility timeout: never lost. The scripts are sent with EVAL (the
//! crate's `script` feature, for EVALSHA, is not enabled; they are a few hundred bytes).
//! Messages never contain the Redis password.
//!
//! Redis Cluster is not supported: the scripts touch the job and dead streams together, which
//! would need both keys in one hash slot.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamPendingCountReply;
use redis::{RedisError, Value};

use crate::error::{Error, ErrorCode, Result};

/// Where and how to consume.
#[derive(Clone)]
pub struct QueueConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` (REDIS_URL); never printed.
    pub redis_url: String,
    /// PEM file of the CA that signed a `rediss://` server's certificate (REDIS_TLS_CA_FILE), for
    /// a private CA; it then replaces the system's roots. `None`: the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub stream: String,
    pub group: String,
    pub dead_stream: String,
    /// Unique per process (e.g. Fly machine id + pid): the consumer name inside the group.
    pub consumer: String,
    /// How long [`Queue::next`] waits for a new entry (zero means do not wait).
    pub block: Duration,
    /// An entry whose holder has not heartbeated for this long is given to another consumer.
    pub visibility_timeout: Duration,
    /// Deliveries before a job is given up (see the module documentation).
    pub max_attempts: u32,
    /// Response timeout of every non-blocking command.
    pub command_timeout: Duration,
    /// The dead stream is trimmed to about this many entries (XADD MAXLEN ~).
    pub dead_max_len: usize,
    /// A `job` field larger than this never leaves Redis: the claim script hands over its
    /// size and first bytes only, and the entry is dead-lettered as invalid.
    pub max_entry_bytes: usize,
    /// While waiting for a new entry (up to `block`), the claim script runs this often: it
    /// cannot block inside Redis, and a blocking XREADGROUP would hand over any entry whole.
    pub poll: Duration,
}

impl QueueConfig {
    /// The contract's names and production defaults: block 5 s, visibility 120 s (heartbeat
    /// every 40 s), 3 attempts, 5 s command timeout, 100 000 dead letters kept.
    pub fn new(redis_url: impl Into<String>, consumer: impl Into<String>) -> QueueConfig {
        QueueConfig {
            redis_url: redis_url.into(),
            tls_ca_file: None,
            stream: "audio:jobs".into(),
            group: "audio-workers".into(),
            dead_stream: "audio:jobs:dead".into(),
            consumer: consumer.into(),
            block: Duration::from_secs(5),
            visibility_timeout: Duration::from_secs(120),
            max_attempts: 3,
            command_timeout: Duration::from_secs(5),
            dead_max_len: 100_000,
            max_entry_bytes: crate::job::MAX_JOB_BYTES,
            poll: Duration::from_millis(500),
        }
    }

    /// How often a worker holding a job should call [`Queue::heartbeat`].
    pub fn heartbeat_interval(&self) -> Duration {
        (self.visibility_timeout / 3).max(Duration::from_millis(10))
    }
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("dead_stream", &self.dead_stream)
            .field("consumer", &self.consumer)
            .field("block", &self.block)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("command_timeout", &self.command_timeout)
            .field("dead_max_len", &self.dead_max_len)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("poll", &self.poll)
            .finish()
    }
}

/// One entry handed to this consumer.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream entry id (`1732350000000-0`), for heartbeat, ack and dead_letter.
    pub entry_id: String,
    /// The `job` field's bytes (empty when the entry has no such field: it then fails to parse
    /// as a job and is dead-lettered like any invalid job); only the first
    /// [`OVERSIZED_PREFIX`] bytes when the field is larger than `max_entry_bytes`.
    pub payload: Vec<u8>,
    /// The `job` field's size in Redis, in bytes: larger than `payload` for an oversized one.
    pub size: u64,
    /// Redis' delivery count: 1 on the first delivery, +1 for every reclaim.
    pub attempt: u32,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("entry_id", &self.entry_id)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("attempt", &self.attempt)
            .field("size", &self.size)
            .finish()
    }
}

impl Delivery {
    /// Whether the entry's `job` field was too large to be handed over whole.
    pub fn oversized(&self) -> bool {
        self.size > self.payload.len() as u64
    }
}

/// Bytes of an oversized `job` field handed over, for the dead letter (a hint for the operator).
pub const OVERSIZED_PREFIX: usize = 1024;

/// Queue sizes, for metrics and autoscaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Entries in the stream: jobs not yet finished (acked entries are deleted).
    pub length: u64,
    /// Entries delivered to some consumer and not yet acknowledged (jobs in flight).
    pub pending: u64,
    /// Entries nobody has taken yet (`length - pending`).
    pub waiting: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
}

/// What [`Queue::activity`] reads: is anything in the stream, and when was the last entry added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueActivity {
    /// Entries in the stream (waiting, undelivered or pending with any consumer).
    pub length: u64,
    /// Milliseconds, on Redis' clock, since the newest entry ever added to the stream was added
    /// (`u64::MAX` when none ever was).
    pub since_last_added_ms: u64,
}

/// A consumer in the group. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Queue {
    cfg: QueueConfig,
    conn: ConnectionManager,
    /// Where the next XAUTOCLAIM scan of the pending list resumes.
    cursor: Mutex<String>,
}

/// Returns 1 and resets the idle time when `id` is pending for `consumer`; 0 when it is not
/// pending at all (acked, dead-lettered); -1 when another consumer holds it now.
const HEARTBEAT_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"#;

/// The Lua both claim scripts start with: `job_of(entry, max, head)` returns the entry's `job`
/// field (whole when at most `max` bytes, else its first `head` bytes) and its full size.
macro_rules! job_of_entry_lua {
    () => {
        r#"
local function job_of(e, max, head)
  local job = ''
  if e[2] then
    for i = 1, #e[2], 2 do
      if e[2][i] == 'job' then job = e[2][i + 1] end
    end
  end
  local size = #job
  if size > tonumber(max) then job = string.sub(job, 1, tonumber(head)) end
  return job, size
end
"#
    };
}

/// Claims the next new entry (XREADGROUP `>`, COUNT 1, no BLOCK: scripts cannot block) and
/// hands over its `job` field only when it is at most ARGV[3] bytes, else its first ARGV[4]
/// bytes, so an oversized entry is never buffered whole by the worker. Returns
/// `{id, job, size}`, or `{'', '', 0}` when nothing is waiting.
const CLAIM_NEW_LUA: &str = concat!(
    job_of_entry_lua!(),
    r#"
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if not r or not r[1] or not r[1][2][1] then return {'', '', 0} end
local e = r[1][2][1]
local job, size = job_of(e, ARGV[3], ARGV[4])
return {e[1], job, size}
"#
);

/// XAUTOCLAIM of one entry idle longer than ARGV[3] ms from cursor ARGV[4] (which counts the
/// delivery, unlike JUSTID), with the same size rule as [`CLAIM_NEW_LUA`] (ARGV[5], ARGV[6]).
/// Returns `{next_cursor, id, job, size}`; `id` is '' when nothing was claimed.
const RECLAIM_LUA: &str = concat!(
    job_of_entry_lua!(),
    r#"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', 1)
local e = r[2][1]
if not e then return {r[1], '', '', 0} end
local job, size = job_of(e, ARGV[5], ARGV[6])
return {r[1], e[1], job, size}
"#
);

/// Puts a job we hold back at the end of the stream as a fresh entry and finishes the old one,
/// atomically. Returns 1 when done, 0 when the entry is not ours (any more).
const REQUEUE_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"#;

/// Moves a dead letter back onto the job stream (its `job` field, unchanged) and deletes it from
/// the dead stream, atomically. Returns the new entry id, or false when there is no such letter.
const REDRIVE_LUA: &str = r#"
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #e == 0 then return false end
local fields = e[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'job' then
    local id = redis.call('XADD', KEYS[1], '*', 'job', fields[i + 1])
    redis.call('XDEL', KEYS[2], ARGV[1])
    return id
  end
end
return false
"#;

/// Moves a pending entry to the dead stream and acknowledges + deletes it, all or nothing, only
/// while this consumer (ARGV[8]) holds it. Returns 1 when moved, 0 when the entry was not pending
/// (already acked or moved), -1 when another consumer holds it now.
const DEAD_LETTER_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[8] then return -1 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'job', ARGV[4], 'error_code', ARGV[5], 'message', ARGV[6],
  'attempts', tostring(p[1][4]), 'entry_id', ARGV[2], 'failed_at', ARGV[7],
  'consumer', p[1][2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"#;

/// Acknowledges and deletes an entry only while this consumer holds it (a superseded worker must
/// not finish the entry another worker is running). Returns 1 when done, 0 when it was not
/// pending (already finished), -1 when another consumer holds it now.
const ACK_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"#;

/// The stream's length, its last generated id and Redis' clock, for [`Queue::activity`].
const ACTIVITY_LUA: &str = r#"
local len = redis.call('XLEN', KEYS[1])
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local t = redis.call('TIME')
return {len, last, t[1], t[2]}
"#;

/// Longest error message stored in a dead letter.
const MAX_DEAD_MESSAGE: usize = 4096;
/// Retries of idempotent commands on connection errors, with these pauses.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

impl Queue {
    /// Connects (both connections) and creates the stream and group when missing.
    pub async fn connect(cfg: QueueConfig) -> Result<Queue> {
        if cfg.consumer.is_empty() || cfg.stream.is_empty() || cfg.group.is_empty() {
            return Err(Error::new(
                ErrorCode::ConfigMissing,
                "queue: stream, group and consumer names must not be empty",
            ));
        }
        let where_ = redact_url(&cfg.redis_url);
        let client = match &cfg.tls_ca_file {
            None => redis::Client::open(cfg.redis_url.as_str()),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::new(
                        ErrorCode::ConfigMissing,
                        format!("REDIS_TLS_CA_FILE {} cannot be read: {e}", path.display()),
                    )
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(cfg.redis_url.as_str(), certs)
            }
        }
        .map_err(|e| {
            Error::new(
                ErrorCode::ConfigMissing,
                format!("REDIS_URL {where_} is not usable: {e}"),
            )
        })?;
        // Each command waits for a reconnection in progress, so keep one short (about 0.1 + 0.2
        // + 0.4 s of backoff): while Redis is away, calls fail within a second or two and the
        // caller backs off; the next call starts a new reconnection.
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.command_timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let connect = |timeout: Duration| {
            let client = client.clone();
            let config = base.clone().set_response_timeout(Some(timeout));
            let where_ = where_.clone();
            async move {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| connect_error(&where_, &e))
            }
        };
        let conn = connect(cfg.command_timeout).await?;
        let queue = Queue {
            cfg,
            conn,
            cursor: Mutex::new("0-0".into()),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// XGROUP CREATE … 0 MKSTREAM; an existing group (BUSYGROUP) is fine. The group starts at
    /// `0`, so jobs enqueued before any worker ever ran are delivered too.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let res: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) if refused_credentials(&e) => {
                Err(connect_error(&redact_url(&self.cfg.redis_url), &e))
            }
            Err(e) => Err(internal("XGROUP CREATE", &e)),
        }
    }

    /// Appends a job (XADD stream * job JSON) and returns the entry id. Not validated here: the
    /// producer validates (`Job::parse`), and the consumer validates again.
    pub async fn enqueue(&self, job_json: &[u8]) -> Result<String> {
        let mut c = self.conn.clone();
        redis::cmd("XADD")
            .arg(&self.cfg.stream)
            .arg("*")
            .arg("job")
            .arg(job_json)
            .query_async(&mut c)
            .await
            .map_err(|e| internal("XADD", &e))
    }

    /// The next entry for this consumer: a reclaimed one (idle longer than the visibility
    /// timeout) first, else a new one, waiting up to `block`. `None` when nothing came.
    pub async fn next(&self) -> Result<Option<Delivery>> {
        if let Some(d) = self.with_group(|| self.reclaim()).await? {
            return Ok(Some(d));
        }
        self.with_group(|| self.read_new()).await
    }

    /// Runs one step of `next`. When Redis says the group does not exist (NOGROUP: Redis lost
    /// its data), recreates it and runs `op` again; on a connection error, runs it again after a
    /// pause. Both are safe: an entry whose reply was lost stays pending under our name and is
    /// reclaimed after the visibility timeout.
    async fn with_group<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, (&'static str, RedisError)>>,
    {
        let mut pauses = RETRY_PAUSES.iter();
        let mut recreated = false;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                // From a script the error may come wrapped; its text still names NOGROUP.
                Err((_, e)) if is_nogroup(&e) && !recreated => {
                    recreated = true;
                    self.ensure_group().await?;
                }
                Err((what, e)) if is_connection_error(&e) => match pauses.next() {
                    Some(p) => tokio::time::sleep(*p).await,
                    None => return Err(internal(what, &e)),
                },
                Err((what, e)) => return Err(internal(what, &e)),
            }
        }
    }

    async fn reclaim(&self) -> std::result::Result<Option<Delivery>, (&'static str, RedisError)> {
        let mut c = self.conn.clone();
        let min_idle = self.cfg.visibility_timeout.as_millis() as u64;
        // Each XAUTOCLAIM looks at up to 10 pending entries; a few calls cover a pending list
        // of any size a fleet of workers can produce, resuming where the last scan stopped.
        for _ in 0..16 {
            let start = self.cursor.lock().unwrap().clone();
            let (next, id, payload, size): (String, String, Vec<u8>, u64) = redis::cmd("EVAL")
                .arg(RECLAIM_LUA)
                .arg(1)
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(min_idle)
                .arg(&start)
                .arg(self.cfg.max_entry_bytes)
                .arg(OVERSIZED_PREFIX)
                .query_async(&mut c)
                .await
                .map_err(|e| ("XAUTOCLAIM", e))?;
            *self.cursor.lock().unwrap() = next.clone();
            if !id.is_empty() {
                let attempt = self
                    .delivery_count(&id)
                    .await
                    .map_err(|e| ("XPENDING", e))?;
                let Some(attempt) = attempt else {
                    continue; // acknowledged between the two commands
                };
                return Ok(Some(Delivery {
                    entry_id: id,
                    payload,
                    size,
                    attempt,
                }));
            }
            if next == "0-0" {
                break; // the whole pending list was scanned
            }
        }
        Ok(None)
    }

    /// The delivery count of a pending entry, None when it is not pending.
    async fn delivery_count(&self, id: &str) -> redis::RedisResult<Option<u32>> {
        let mut c = self.conn.clone();
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(reply
            .ids
            .first()
            .map(|p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX)))
    }

    /// A new entry, waiting up to `block` for one: the claim script every `poll` (it cannot
    /// block inside Redis; a blocking XREADGROUP would hand over an oversized entry whole).
    async fn read_new(&self) -> std::result::Result<Option<Delivery>, (&'static str, RedisError)> {
        let deadline = tokio::time::Instant::now() + self.cfg.block;
        loop {
            if let Some(d) = self.claim_new().await? {
                return Ok(Some(d));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(self.cfg.poll.min(deadline - now)).await;
        }
    }

    /// One run of [`CLAIM_NEW_LUA`].
    async fn claim_new(&self) -> std::result::Result<Option<Delivery>, (&'static str, RedisError)> {
        let mut c = self.conn.clone();
        let (id, payload, size): (String, Vec<u8>, u64) = redis::cmd("EVAL")
            .arg(CLAIM_NEW_LUA)
            .arg(1)
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(self.cfg.max_entry_bytes)
            .arg(OVERSIZED_PREFIX)
            .query_async(&mut c)
            .await
            .map_err(|e| ("XREADGROUP", e))?;
        Ok((!id.is_empty()).then_some(Delivery {
            entry_id: id,
            payload,
            size,
            attempt: 1,
        }))
    }

    /// Runs one of the scripts that act on an entry only while this consumer holds it
    /// (KEYS: the stream; ARGV: group, consumer, entry id, and the payload for a requeue).
    async fn eval_on_our_entry(
        &self,
        what: &'static str,
        lua: &'static str,
        entry_id: &str,
        payload: Option<&[u8]>,
    ) -> Result<i64> {
        self.retry(what, || {
            let mut c = self.conn.clone();
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(lua)
                .arg(1)
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.cfg.consumer)
                .arg(entry_id);
            if let Some(p) = payload {
                cmd.arg(p);
            }
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }

    /// Keeps the claim on an entry alive while its job runs: resets its idle time without
    /// counting a delivery. `Ok(true)` while the entry is ours; `Ok(false)` when it is not any
    /// more (acknowledged, dead-lettered, or reclaimed by another consumer because we stalled
    /// longer than the visibility timeout): the caller should then abandon the job without
    /// acknowledging it, the other consumer finishes it.
    pub async fn heartbeat(&self, entry_id: &str) -> Result<bool> {
        let held = self
            .eval_on_our_entry("heartbeat", HEARTBEAT_LUA, entry_id, None)
            .await?;
        Ok(held == 1)
    }

    /// Hands a job we hold back to the queue without finishing it (shutdown outlasted the grace
    /// period): it becomes a new entry, which any worker takes at once, and the interruption does
    /// not count as a failed attempt (a deploy must not push a long job towards the dead
    /// letters). `Ok(false)` when the entry is not ours any more.
    pub async fn requeue(&self, delivery: &Delivery) -> Result<bool> {
        let done = self
            .eval_on_our_entry(
                "requeue",
                REQUEUE_LUA,
                &delivery.entry_id,
                Some(delivery.payload.as_slice()),
            )
            .await?;
        Ok(done == 1)
    }

    /// Acknowledges and deletes the entry, atomically and only while this consumer holds it:
    /// call it only once the result is durably written. `Ok(true)` when it is finished (by this
    /// call, or already before: acknowledging an entry no longer pending is a no-op);
    /// `Ok(false)` when another consumer holds it now, which is then left alone.
    pub async fn ack(&self, entry_id: &str) -> Result<bool> {
        let done = self
            .eval_on_our_entry("ack", ACK_LUA, entry_id, None)
            .await?;
        Ok(done >= 0)
    }

    /// Moves the entry to the dead stream with fields `job` (the payload), `error_code`,
    /// `message`, `attempts` (delivery count), `entry_id`, `failed_at` (RFC 3339) and `consumer`,
    /// and acknowledges + deletes it, in one atomic script, only while this consumer holds it.
    /// `Ok(false)` when the entry was no longer pending (already acknowledged or moved, e.g. by a
    /// retried call) or another consumer holds it now: nothing is added.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        error_code: &str,
        message: &str,
    ) -> Result<bool> {
        let message = truncate(message, MAX_DEAD_MESSAGE);
        let failed_at = crate::job::format_rfc3339(SystemTime::now());
        let moved: i64 = self
            .retry("dead_letter", || {
                let mut c = self.conn.clone();
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(DEAD_LETTER_LUA)
                    .arg(2)
                    .arg(&self.cfg.stream)
                    .arg(&self.cfg.dead_stream)
                    .arg(&self.cfg.group)
                    .arg(&delivery.entry_id)
                    .arg(self.cfg.dead_max_len)
                    .arg(delivery.payload.as_slice())
                    .arg(error_code)
                    .arg(message)
                    .arg(&failed_at)
                    .arg(&self.cfg.consumer);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(moved == 1)
    }

    /// The delivery policy's view of `delivery` (its attempt against JOB_MAX_ATTEMPTS).
    pub fn attempts(&self, delivery: &Delivery) -> super::policy::Delivery {
        super::policy::Delivery {
            attempt: delivery.attempt,
            max_attempts: self.cfg.max_attempts,
            claim_lost: false,
        }
    }

    /// Whether this delivery has used up its attempts and must be dead-lettered unrun.
    pub fn exhausted(&self, delivery: &Delivery) -> bool {
        self.attempts(delivery).exhausted()
    }

    /// Whether this delivery is the last attempt: a retryable failure now is final.
    pub fn last_attempt(&self, delivery: &Delivery) -> bool {
        self.attempts(delivery).last_attempt()
    }

    /// Stream length, pending and dead counts (one round trip).
    pub async fn depth(&self) -> Result<QueueDepth> {
        let (length, pending, dead): (u64, Value, u64) = self
            .once("depth", || {
                let mut c = self.conn.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("XLEN")
                    .arg(&self.cfg.stream)
                    .cmd("XPENDING")
                    .arg(&self.cfg.stream)
                    .arg(&self.cfg.group)
                    .cmd("XLEN")
                    .arg(&self.cfg.dead_stream);
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        // XPENDING summary: [count, smallest id, greatest id, [[consumer, count], …]].
        let pending = match pending {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok(QueueDepth {
            length,
            pending,
            waiting: length.saturating_sub(pending),
            dead,
        })
    }

    /// Whether anything is in the stream and how long ago the last entry was added (one round
    /// trip, not retried), for `EXIT_WHEN_IDLE`.
    pub async fn activity(&self) -> Result<QueueActivity> {
        let (length, last_id, secs, micros): (u64, String, u64, u64) = self
            .once("activity", || {
                let mut c = self.conn.clone();
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(ACTIVITY_LUA).arg(1).arg(&self.cfg.stream);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        let now_ms = secs * 1000 + micros / 1000;
        let last_ms = last_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(QueueActivity {
            length,
            since_last_added_ms: if last_ms == 0 {
                u64::MAX
            } else {
                now_ms.saturating_sub(last_ms)
            },
        })
    }

    /// Puts a dead-lettered job back on the queue as a new entry (after its cause was fixed);
    /// `Ok(None)` when the dead stream has no entry `dead_id`. Not retried on connection errors
    /// (a retried call after a lost reply finds the letter gone and returns `None`).
    pub async fn redrive(&self, dead_id: &str) -> Result<Option<String>> {
        let mut c = self.conn.clone();
        redis::cmd("EVAL")
            .arg(REDRIVE_LUA)
            .arg(2)
            .arg(&self.cfg.stream)
            .arg(&self.cfg.dead_stream)
            .arg(dead_id)
            .query_async(&mut c)
            .await
            .map_err(|e| internal("redrive", &e))
    }

    /// Entries of the dead stream, oldest first, as field maps (for `check`, tests, operators).
    pub async fn dead_letters(
        &self,
        count: usize,
    ) -> Result<Vec<(String, std::collections::HashMap<String, String>)>> {
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.cfg.dead_stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(|e| internal("XRANGE", &e))?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e
                    .map
                    .keys()
                    .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                    .collect();
                (e.id, fields)
            })
            .collect())
    }

    /// Runs a command once (metrics: better a gap than a stale number late).
    async fn once<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        op().await.map_err(|e| internal(what, &e))
    }

    /// Runs an idempotent command, again after a pause when the connection failed.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_error(&e) => match pauses.next() {
                    Some(p) => tokio::time::sleep(*p).await,
                    None => return Err(internal(what, &e)),
                },
                Err(e) => return Err(internal(what, &e)),
            }
        }
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Redis answered and refused our credentials (a wrong password or user in REDIS_URL, or none
/// where the server requires one): the configuration's to fix, not an outage to wait out.
fn refused_credentials(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// A failed connection: CONFIG_MISSING naming REDIS_URL when Redis refused the credentials,
/// else an internal error that callers treat as Redis being away.
fn connect_error(where_: &str, e: &RedisError) -> Error {
    if refused_credentials(e) {
        return Error::new(
            ErrorCode::ConfigMissing,
            format!(
                "Redis at {where_} refused the credentials in REDIS_URL (wrong password or user)"
            ),
        );
    }
    internal(&format!("connect to {where_}"), e)
}

fn internal(what: &str, e: &RedisError) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("queue: redis {what} failed: {e}"),
    )
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One redaction for every URL variable: [`crate::error::redact_url`].
pub use crate::error::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://default:s3cret@fly-redis.upstash.io:6379"),
            "redis://***@fly-redis.upstash.io:6379"
        );
        assert_eq!(redact_url("rediss://:p@h/0"), "rediss://***@h/0");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        let cfg = QueueConfig::new("redis://u:topsecret@h:1", "c");
        assert!(!format!("{cfg:?}").contains("topsecret"));
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cfg = QueueConfig::new("redis://h", "worker-1");
        assert_eq!(cfg.stream, "audio:jobs");
        assert_eq!(cfg.group, "audio-workers");
        assert_eq!(cfg.dead_stream, "audio:jobs:dead");
        assert!(cfg.heartbeat_interval() * 2 < cfg.visibility_timeout);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("ab", 5), "ab");
        assert_eq!(truncate("日本語", 4), "日");
    }
}
