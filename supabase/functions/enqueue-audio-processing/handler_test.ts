// Tests of enqueue-audio-processing against a fake Supabase (Auth + PostgREST, served on a free
// loopback port, checking every method, path, header and body it receives, the job row against
// the real migration's columns and check constraints) and a REAL redis-server (REDIS_URL). The
// jobs it enqueues are read back from the stream and handed to the Rust worker's own validator
// (`$AUDIO_WORKER_BIN validate-job -`), so producer and consumer are checked against each other.
//
// Run by scripts/test-edge-function.sh, which starts redis-server and sets REDIS_URL and
// AUDIO_WORKER_BIN. Only Deno built-ins and node:assert: nothing is downloaded.

import assert from "node:assert/strict";
import {
  apiKeyHeaders,
  canonicalString,
  type Env,
  envFromDeno,
  handler,
  type Job,
  keyFromSet,
  keyProblem,
  ownedKeyProblem,
  signJob,
  STREAM,
} from "./handler.ts";
import { parseRedisUrl, redisCommands, type Reply } from "./redis.ts";

const REDIS_URL = Deno.env.get("REDIS_URL") ?? "";
if (!REDIS_URL) {
  throw new Error("REDIS_URL must point at a real redis-server (scripts/test-edge-function.sh)");
}
const WORKER_BIN = Deno.env.get("AUDIO_WORKER_BIN");

const USER_A = "6f1c2b9e-3a4d-4e5f-8a7b-1c2d3e4f5a6b";
const USER_B = "0d9e8f7a-6b5c-4d3e-9f2a-1b0c9d8e7f6a";
const SESSION_A = "3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f";
const SESSION_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const SESSION_NONE = "11111111-2222-4333-8444-555555555555";
const JWT_A = "eyJhbGciOiJIUzI1NiJ9.dXNlci1h.c2lnLWE";
const JWT_B = "eyJhbGciOiJIUzI1NiJ9.dXNlci1i.c2lnLWI";
const ANON = "anon-key-for-tests";
const SERVICE = "service-role-key-for-tests";
const SECRET = "job-signing-secret-for-tests";
const UPSTASH_TOKEN = "upstash-token-for-tests";
const BUCKET = "recordings";
const PREFIX = "audio/";
// Non-ASCII and a space: RESP lengths must be UTF-8 bytes, and the signature must agree with Rust.
const KEY_A = `${PREFIX}${USER_A}/${SESSION_A}/録音 1.webm`;
const SECRETS = [JWT_A, JWT_B, ANON, SERVICE, SECRET, UPSTASH_TOKEN];
const redisPassword = parseRedisUrl(REDIS_URL).password;
if (redisPassword) SECRETS.push(redisPassword);

const enc = new TextEncoder();
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// ---------------------------------------------------------------------------------------------
// The migration: the fake PostgREST accepts exactly its columns and enforces its checks.
// ---------------------------------------------------------------------------------------------
interface Column {
  type: string;
  required: boolean; // NOT NULL without a default
}

async function readJobsTable() {
  const dir = new URL("../../migrations/", import.meta.url);
  let sql = "";
  for await (const f of Deno.readDir(dir)) {
    const text = await Deno.readTextFile(new URL(f.name, dir));
    if (text.includes("create table if not exists public.audio_processing_jobs")) sql = text;
  }
  assert.ok(sql, "no migration creates audio_processing_jobs");
  const block = sql.split("create table if not exists public.audio_processing_jobs (")[1]
    .split("\n);")[0];
  const columns = new Map<string, Column>();
  for (
    const m of block.matchAll(/^ {4}([a-z_]+)\s+(uuid|text|smallint|integer|timestamptz)(.*)$/gm)
  ) {
    const [, name, type, rest] = m;
    const notNull = /not null|primary key/.test(rest);
    columns.set(name, { type, required: notNull && !/default/.test(rest) });
  }
  const list = (re: RegExp) => [...block.match(re)![1].matchAll(/'([a-z]+)'/g)].map((m) => m[1]);
  return {
    columns,
    statuses: list(/check \(status in \(([^)]*)\)\)/),
    stages: list(/check \(stage in \(([^)]*)\)\)/),
  };
}
const TABLE = await readJobsTable();

/** The row's violations of the migration's types and constraints (empty when it would insert). */
function rowProblems(row: Record<string, unknown>): string[] {
  const p: string[] = [];
  for (const [name, col] of TABLE.columns) {
    const v = row[name];
    if (v === undefined || v === null) {
      if (col.required) p.push(`${name} is null`);
      continue;
    }
    const ok = col.type === "uuid"
      ? typeof v === "string" && UUID.test(v)
      : col.type === "smallint" || col.type === "integer"
      ? Number.isInteger(v)
      : typeof v === "string";
    if (!ok) p.push(`${name} = ${JSON.stringify(v)} is not ${col.type}`);
  }
  const status = row.status ?? "queued", stage = row.stage ?? "queued";
  if (!TABLE.statuses.includes(status as string)) p.push(`status check: ${status}`);
  if (!TABLE.stages.includes(stage as string)) p.push(`stage check: ${stage}`);
  const expected = stage === "queued" || stage === "completed" || stage === "error"
    ? stage
    : "processing";
  if (status !== expected) p.push(`status_matches_stage: ${status} at ${stage}`);
  const progress = (row.progress ?? 0) as number;
  if (progress < 0 || progress > 100) p.push(`progress check: ${progress}`);
  if (((row.attempts ?? 0) as number) < 0) p.push("attempts check");
  if (status === "error" && (row.error_code ?? null) === null) p.push("error_has_code");
  return p;
}

// ---------------------------------------------------------------------------------------------
// Fake Supabase: Auth's /auth/v1/user and the PostgREST calls the function makes, nothing else.
// ---------------------------------------------------------------------------------------------
class FakeSupabase {
  sessions = new Map([[SESSION_A, USER_A], [SESSION_B, USER_B]]);
  jobs = new Map<string, Record<string, unknown>>();
  requests: string[] = [];
  /** Contract violations seen; every test asserts there are none. */
  problems: string[] = [];
  /** Set to make Auth fail like an outage. */
  authStatus = 200;
  #server: Deno.HttpServer<Deno.NetAddr>;
  url: string;

  constructor() {
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) => this.#handle(req),
    );
    this.url = `http://127.0.0.1:${this.#server.addr.port}`;
  }

  close() {
    return this.#server.shutdown();
  }

  #problem(what: string, status = 400) {
    this.problems.push(what);
    return Response.json({ code: "TEST", message: what }, { status });
  }

  async #handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    this.requests.push(`${req.method} ${url.pathname}`);
    if (url.pathname === "/auth/v1/user") return this.#auth(req, url);
    if (req.headers.get("apikey") !== SERVICE) return this.#problem("PostgREST without apikey");
    if (req.headers.get("authorization") !== `Bearer ${SERVICE}`) {
      return this.#problem("PostgREST without the service key's bearer");
    }
    const params = [...url.searchParams.keys()].sort().join(",");
    if (req.method === "GET" && url.pathname === "/rest/v1/coaching_sessions") {
      if (params !== "id,select" || url.searchParams.get("select") !== "id,user_id") {
        return this.#problem(`session lookup query ${url.search}`);
      }
      const id = url.searchParams.get("id")!.replace(/^eq\./, "");
      if (!UUID.test(id)) {
        // What PostgreSQL says when a uuid column is compared with something else.
        return Response.json({
          code: "22P02",
          details: null,
          hint: null,
          message: `invalid input syntax for type uuid: "${id}"`,
        }, { status: 400 });
      }
      const owner = this.sessions.get(id);
      return Response.json(owner ? [{ id, user_id: owner }] : []);
    }
    if (url.pathname !== "/rest/v1/audio_processing_jobs") {
      return this.#problem(`unexpected ${req.method} ${url.pathname}`, 404);
    }
    if (req.method === "GET") {
      const select = url.searchParams.get("select") ?? "";
      const unknown = select.split(",").filter((c) => !TABLE.columns.has(c));
      if (params !== "select,session_id" || unknown.length) {
        return this.#problem(`job lookup query ${url.search}`);
      }
      const row = this.jobs.get(url.searchParams.get("session_id")!.replace(/^eq\./, ""));
      const pick = row
        ? [Object.fromEntries(select.split(",").map((c) => [c, row[c] ?? null]))]
        : [];
      return Response.json(pick);
    }
    if (req.headers.get("content-type") !== "application/json") {
      return this.#problem("write without content-type application/json");
    }
    const body = await req.json();
    const unknown = Object.keys(body).filter((c) => !TABLE.columns.has(c));
    if (unknown.length) {
      // PostgREST's answer to a column the table does not have.
      return this.#problem(`PGRST204: no column ${unknown.join(", ")}`);
    }
    if (req.method === "POST") {
      if (url.search !== "?on_conflict=session_id") return this.#problem(`upsert ${url.search}`);
      if (req.headers.get("prefer") !== "resolution=merge-duplicates,return=minimal") {
        return this.#problem(`upsert Prefer ${req.headers.get("prefer")}`);
      }
      const old = this.jobs.get(body.session_id);
      const row = { ...(old ?? { status: "queued", stage: "queued", progress: 0, attempts: 0 }) };
      Object.assign(row, body);
      if (row.status === "queued") row.completed_at = null; // the table's trigger
      const p = rowProblems(row);
      if (p.length) return this.#problem(`23514 upsert: ${p.join("; ")}`);
      this.jobs.set(body.session_id, row);
      return new Response(null, { status: 201 });
    }
    if (req.method === "PATCH") {
      if (params !== "job_id,session_id") return this.#problem(`patch ${url.search}`);
      if (req.headers.get("prefer") !== "return=minimal") return this.#problem("patch Prefer");
      const sid = url.searchParams.get("session_id")!.replace(/^eq\./, "");
      const jid = url.searchParams.get("job_id")!.replace(/^eq\./, "");
      const old = this.jobs.get(sid);
      if (old && old.job_id === jid) {
        const row = { ...old, ...body };
        const p = rowProblems(row);
        if (p.length) return this.#problem(`23514 patch: ${p.join("; ")}`);
        this.jobs.set(sid, row);
      }
      return new Response(null, { status: 204 });
    }
    return this.#problem(`unexpected ${req.method} ${url.pathname}`, 405);
  }

  #auth(req: Request, url: URL): Response {
    if (req.method !== "GET" || url.search) return this.#problem("auth: GET without query");
    if (req.headers.get("apikey") !== ANON) return this.#problem("auth without the anon apikey");
    if (this.authStatus !== 200) return new Response("upstream down", { status: this.authStatus });
    const token = req.headers.get("authorization")?.replace(/^Bearer /, "");
    const id = token === JWT_A ? USER_A : token === JWT_B ? USER_B : undefined;
    if (!id) {
      // GoTrue's answer to a token it cannot verify.
      return Response.json({
        code: 403,
        error_code: "bad_jwt",
        msg: "invalid JWT: unable to parse or verify signature",
      }, { status: 403 });
    }
    return Response.json({ id, aud: "authenticated", role: "authenticated" });
  }
}

/** A stand-in for the Fly app's /health: counts wake-ups. */
class FakeWorker {
  hits = 0;
  #server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    if (new URL(req.url).pathname === "/health" && req.method === "GET") this.hits++;
    return new Response("ok");
  });
  url = `http://127.0.0.1:${this.#server.addr.port}/health`;
  close() {
    return this.#server.shutdown();
  }
}

/** A loopback port nothing listens on. */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
interface World {
  supabase: FakeSupabase;
  worker: FakeWorker;
  env: Env;
  logs: string[];
}

function testEnv(supabaseUrl: string, logs: string[]): Env {
  return {
    supabaseUrl,
    anonKey: ANON,
    serviceKey: SERVICE,
    bucket: BUCKET,
    sessionsTable: "coaching_sessions",
    sessionsIdColumn: "id",
    sessionsOwnerColumn: "user_id",
    audioKeyPrefix: PREFIX,
    redisUrl: REDIS_URL,
    signingSecret: SECRET,
    allowedOrigin: "*",
    queueTimeoutMs: 3000,
    httpTimeoutMs: 3000,
    wakeTimeoutMs: 2000,
    retryAfterS: 5,
    log: (level, msg, fields) => logs.push(JSON.stringify({ level, msg, ...fields })),
  };
}

/** Runs `fn` with fresh fakes and an empty stream; checks the fakes saw no contract violation
 * and that no secret reached a log line. */
async function withWorld(fn: (w: World) => Promise<void>) {
  const supabase = new FakeSupabase();
  const worker = new FakeWorker();
  const logs: string[] = [];
  const env = testEnv(supabase.url, logs);
  await redisCommands(REDIS_URL, [["DEL", STREAM]], 2000);
  try {
    await fn({ supabase, worker, env, logs });
    assert.deepEqual(supabase.problems, [], "the fake Supabase saw contract violations");
    assertNoSecrets(logs.join("\n"));
  } finally {
    await supabase.close();
    await worker.close();
  }
}

function assertNoSecrets(text: string) {
  for (const s of SECRETS) assert.ok(!text.includes(s), `a secret leaked: ${text}`);
}

function post(env: Env, body: unknown, token: string | null = JWT_A): Promise<Response> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  return handler(
    new Request("http://localhost/functions/v1/enqueue-audio-processing", {
      method: "POST",
      headers,
      body: typeof body === "string" ? body : JSON.stringify(body),
    }),
    env,
  );
}

async function expectError(res: Response, status: number, code: string) {
  const body = await res.json();
  assert.equal(res.status, status, JSON.stringify(body));
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.equal(typeof body.error.message, "string");
  assertNoSecrets(JSON.stringify(body));
  return body;
}

/** The stream's entries as {id, fields}. */
async function entries(url = REDIS_URL): Promise<{ id: string; fields: Record<string, string> }[]> {
  const [reply] = await redisCommands(url, [["XRANGE", STREAM, "-", "+"]], 2000);
  return (reply as Reply[]).map((e) => {
    const [id, flat] = e as [string, string[]];
    const fields: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) fields[flat[i]] = flat[i + 1];
    return { id, fields };
  });
}

/** `$AUDIO_WORKER_BIN validate-job -` with the job on stdin. */
async function validateJob(json: string, secret: string | null = SECRET) {
  assert.ok(WORKER_BIN, "AUDIO_WORKER_BIN must name the Rust worker (target/debug/audio-worker)");
  const env: Record<string, string> = {};
  if (secret !== null) env.JOB_SIGNING_SECRET = secret;
  const child = new Deno.Command(WORKER_BIN, {
    args: ["validate-job", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    clearEnv: true, // only the secret we mean, whatever the caller's environment holds
    env,
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(enc.encode(json));
  await writer.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function hmacHex(secret: string, text: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    enc.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(text)));
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------
Deno.test("happy path: 202, the job row, the stream entry, a signature the worker accepts", async () => {
  await withWorld(async ({ supabase, worker, env }) => {
    env.wakeUrl = worker.url;
    const before = Date.now();
    const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A });
    // Outside Supabase's runtime (no waitUntil) the wake-up is done before the answer.
    assert.equal(worker.hits, 1, "the worker was woken");
    const body = await res.json();
    assert.equal(res.status, 202, JSON.stringify(body));
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
    assert.deepEqual(Object.keys(body).sort(), ["entry_id", "job_id", "session_id", "status"]);
    assert.equal(body.session_id, SESSION_A);
    assert.equal(body.status, "queued");
    assert.match(body.job_id, UUID_V4);
    assert.match(body.entry_id, /^\d+-\d+$/);

    // Exactly the calls the contract describes, in order.
    assert.deepEqual(supabase.requests, [
      "GET /auth/v1/user",
      "GET /rest/v1/coaching_sessions",
      "GET /rest/v1/audio_processing_jobs",
      "POST /rest/v1/audio_processing_jobs",
    ]);
    assert.deepEqual(supabase.jobs.get(SESSION_A), {
      session_id: SESSION_A,
      user_id: USER_A,
      job_id: body.job_id,
      status: "queued",
      stage: "queued",
      progress: 0,
      message: "処理待ちです...",
      error_code: null,
      attempts: 0,
      audio_bucket: BUCKET,
      audio_key: KEY_A,
      started_at: null,
      completed_at: null,
    });

    // One entry, one field `job`, the JSON of schemas/job.schema.json in the schema's order.
    const [entry, ...more] = await entries();
    assert.equal(more.length, 0);
    assert.equal(entry.id, body.entry_id);
    assert.deepEqual(Object.keys(entry.fields), ["job"]);
    const job = JSON.parse(entry.fields.job);
    assert.deepEqual(Object.keys(job), [
      "version",
      "job_id",
      "session_id",
      "user_id",
      "audio",
      "language",
      "enqueued_at",
      "signature",
    ]);
    assert.deepEqual({ ...job, enqueued_at: undefined, signature: undefined }, {
      version: 1,
      job_id: body.job_id,
      session_id: SESSION_A,
      user_id: USER_A,
      audio: { bucket: BUCKET, key: KEY_A },
      language: "ja",
      enqueued_at: undefined,
      signature: undefined,
    });
    assert.match(job.enqueued_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    const at = Date.parse(job.enqueued_at);
    assert.ok(at >= before - 1 && at <= Date.now() + 1, job.enqueued_at);
    // Signature recomputed here from the contract's canonical string, independently.
    const canonical = [1, body.job_id, SESSION_A, USER_A, BUCKET, KEY_A, "ja", job.enqueued_at]
      .join("\n");
    assert.equal(job.signature, await hmacHex(SECRET, canonical));

    // The Rust worker accepts exactly this entry, and rejects it once it is tampered with.
    const ok = await validateJob(entry.fields.job);
    assert.equal(ok.code, 0, `validate-job refused the job: ${ok.stderr}`);
    assert.match(ok.stdout, /^ok\b/);
    const tampered = JSON.stringify({ ...job, audio: { bucket: BUCKET, key: `${KEY_A}x` } });
    const bad = await validateJob(tampered);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stderr, /^error\[QUEUE_BAD_SIGNATURE\]: /);
    const wrongSecret = await validateJob(entry.fields.job, "another-secret");
    assert.equal(wrongSecret.code, 1);
    assert.match(wrongSecret.stderr, /^error\[QUEUE_BAD_SIGNATURE\]: /);
  });
});

Deno.test("language defaults to ja, a region is kept, no secret means no signature", async () => {
  await withWorld(async ({ env }) => {
    env.signingSecret = undefined;
    const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A, language: "en-US" });
    assert.equal(res.status, 202, await res.text());
    const [entry] = await entries();
    const job = JSON.parse(entry.fields.job);
    assert.equal(job.language, "en-US");
    assert.equal("signature" in job, false);
    // The worker without a secret accepts an unsigned job; with one, it refuses it.
    const ok = await validateJob(entry.fields.job, null);
    assert.equal(ok.code, 0, ok.stderr);
    const refused = await validateJob(entry.fields.job);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^error\[QUEUE_BAD_SIGNATURE\]: /);
  });
});

Deno.test("keywords reach the job, are signed, and the worker accepts them", async () => {
  await withWorld(async ({ env }) => {
    const keywords = ["山田太郎", "Acme株式会社", "x".repeat(64)];
    const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A, keywords });
    assert.equal(res.status, 202, await res.text());
    const [entry] = await entries();
    const job = JSON.parse(entry.fields.job);
    assert.deepEqual(job.keywords, keywords);
    const canonical = [
      1,
      job.job_id,
      SESSION_A,
      USER_A,
      BUCKET,
      KEY_A,
      "ja",
      job.enqueued_at,
      ...keywords,
    ].join("\n");
    assert.equal(job.signature, await hmacHex(SECRET, canonical));
    const ok = await validateJob(entry.fields.job);
    assert.equal(ok.code, 0, `validate-job refused the job: ${ok.stderr}`);
    // Keywords are covered by the signature: changing one is caught by the worker.
    const tampered = JSON.stringify({ ...job, keywords: ["Evil Corp"] });
    const bad = await validateJob(tampered);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error\[QUEUE_BAD_SIGNATURE\]: /);
  });
});

Deno.test("OPTIONS answers the CORS preflight; other methods get 405", async () => {
  await withWorld(async ({ supabase, env }) => {
    env.allowedOrigin = "https://app.example";
    const pre = await handler(new Request("http://localhost/", { method: "OPTIONS" }), env);
    assert.equal(pre.status, 204);
    assert.equal(await pre.text(), "");
    assert.equal(pre.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(pre.headers.get("access-control-allow-headers")!, /authorization/);
    assert.match(pre.headers.get("access-control-allow-headers")!, /content-type/);
    assert.equal(pre.headers.get("access-control-allow-methods"), "POST, OPTIONS");
    for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
      const res = await handler(new Request("http://localhost/", { method }), env);
      await expectError(res, 405, "METHOD_NOT_ALLOWED");
      assert.equal(res.headers.get("allow"), "POST, OPTIONS");
      assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
    }
    assert.deepEqual(supabase.requests, []);
  });
});

Deno.test("401 without a bearer token or with one Auth refuses", async () => {
  await withWorld(async ({ supabase, env }) => {
    const body = { session_id: SESSION_A, audio_key: KEY_A };
    await expectError(await post(env, body, null), 401, "UNAUTHORIZED");
    const basic = await handler(
      new Request("http://localhost/", {
        method: "POST",
        headers: { authorization: "Basic dXNlcjpwdw==" },
        body: JSON.stringify(body),
      }),
      env,
    );
    await expectError(basic, 401, "UNAUTHORIZED");
    assert.deepEqual(supabase.requests, [], "no token, no call to Auth");
    await expectError(await post(env, body, "eyJ.forged.token"), 401, "UNAUTHORIZED");
    assert.deepEqual(supabase.requests, ["GET /auth/v1/user"]);
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("403 for another user's session or a key outside the user's folder", async () => {
  await withWorld(async ({ supabase, env }) => {
    // B's session, with a key in A's folder.
    await expectError(
      await post(env, { session_id: SESSION_B, audio_key: KEY_A }),
      403,
      "FORBIDDEN",
    );
    // A's session, with B's recording, or a key without the prefix, or a look-alike folder.
    for (
      const key of [
        `${PREFIX}${USER_B}/${SESSION_A}/a.webm`,
        `${USER_A}/${SESSION_A}/a.webm`,
        `${PREFIX}${USER_A}x/a.webm`,
        `${PREFIX}${USER_A}`,
      ]
    ) {
      await expectError(
        await post(env, { session_id: SESSION_A, audio_key: key }),
        403,
        "FORBIDDEN",
      );
    }
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("404 for an unknown session", async () => {
  await withWorld(async ({ supabase, env }) => {
    for (const session_id of [SESSION_NONE]) {
      const key = `${PREFIX}${USER_A}/x/a.webm`;
      await expectError(await post(env, { session_id, audio_key: key }), 404, "NOT_FOUND");
    }
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("400 for bodies the job schema would refuse", async () => {
  await withWorld(async ({ supabase, env }) => {
    const good = { session_id: SESSION_A, audio_key: KEY_A };
    const dir = `${PREFIX}${USER_A}/`;
    const bad: unknown[] = [
      "",
      "{not json",
      "[]",
      "null",
      '"a string"',
      {},
      { audio_key: KEY_A },
      { session_id: SESSION_A },
      { ...good, session_id: "has space" },
      { ...good, session_id: "not-a-uuid_42" },
      { ...good, session_id: "x".repeat(129) },
      { ...good, session_id: 42 },
      { ...good, audio_key: 7 },
      { ...good, audio_key: "" },
      { ...good, audio_key: `/${dir}a.webm` },
      { ...good, audio_key: `${dir}../${USER_B}/a.webm` },
      { ...good, audio_key: `${dir}a\\b.webm` },
      { ...good, audio_key: `${dir}a\nb.webm` },
      { ...good, audio_key: `${dir}a\u0085b.webm` },
      { ...good, audio_key: `s3://${dir}a.webm` },
      { ...good, audio_key: `${dir}\ud800.webm` },
      { ...good, audio_key: dir + "é".repeat(600) }, // 1,200 bytes
      { ...good, language: "JA" },
      { ...good, language: "ja-jp" },
      { ...good, language: "jpn" },
      { ...good, language: 1 },
      { ...good, force: "yes" },
      { ...good, keywords: "Acme" },
      { ...good, keywords: [1] },
      { ...good, keywords: [""] },
      { ...good, keywords: [" Acme"] },
      { ...good, keywords: ["a\nb"] },
      { ...good, keywords: ["x".repeat(65)] },
      { ...good, keywords: ["Acme", "Acme"] },
      { ...good, keywords: Array.from({ length: 51 }, (_, i) => `k${i}`) },
      { ...good, user_id: USER_B },
      JSON.stringify({ ...good, pad: "x".repeat(17 * 1024) }),
    ];
    for (const body of bad) {
      const res = await post(env, body);
      const got = await res.json();
      assert.equal(res.status, 400, `${JSON.stringify(body).slice(0, 80)}: ${JSON.stringify(got)}`);
      assert.equal(got.error.code, "BAD_REQUEST");
    }
    // Only Auth was asked (once per request); nothing was written or queued.
    assert.ok(supabase.requests.every((r) => r === "GET /auth/v1/user"));
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("409 re-queue policy: processing never, queued/completed only with force", async () => {
  await withWorld(async ({ supabase, env }) => {
    const row = (status: string, stage: string, progress: number) => ({
      session_id: SESSION_A,
      user_id: USER_A,
      job_id: "previous-job",
      status,
      stage,
      progress,
      message: "…",
      error_code: status === "error" ? "WHISPER_FAILED" : null,
      attempts: 2,
    });
    const body = { session_id: SESSION_A, audio_key: KEY_A };

    supabase.jobs.set(SESSION_A, row("processing", "transcribing", 45));
    for (const force of [false, true]) {
      const got = await expectError(await post(env, { ...body, force }), 409, "JOB_IN_PROGRESS");
      assert.deepEqual(got.job, {
        job_id: "previous-job",
        status: "processing",
        stage: "transcribing",
        progress: 45,
      });
    }
    supabase.jobs.set(SESSION_A, row("queued", "queued", 0));
    await expectError(await post(env, body), 409, "JOB_ALREADY_QUEUED");
    supabase.jobs.set(SESSION_A, row("completed", "completed", 100));
    await expectError(await post(env, body), 409, "JOB_ALREADY_COMPLETED");
    assert.equal((await entries()).length, 0);
    assert.equal(supabase.jobs.get(SESSION_A)!.job_id, "previous-job");

    // force re-runs a completed session from a clean row.
    let res = await post(env, { ...body, force: true });
    const first = await res.json();
    assert.equal(res.status, 202, JSON.stringify(first));
    let now = supabase.jobs.get(SESSION_A)!;
    assert.equal(now.job_id, first.job_id);
    assert.equal(now.status, "queued");
    assert.equal(now.attempts, 0);
    assert.equal(now.error_code, null);

    // A failed job may be queued again without force.
    supabase.jobs.set(SESSION_A, row("error", "error", 0));
    res = await post(env, body);
    const second = await res.json();
    assert.equal(res.status, 202, JSON.stringify(second));
    now = supabase.jobs.get(SESSION_A)!;
    assert.deepEqual([now.status, now.error_code, now.job_id], ["queued", null, second.job_id]);
    assert.deepEqual((await entries()).map((e) => e.id), [first.entry_id, second.entry_id]);
  });
});

Deno.test("503 when Redis is unreachable: Retry-After, the row says so, a retry succeeds", async () => {
  await withWorld(async ({ supabase, worker, env, logs }) => {
    env.wakeUrl = worker.url;
    env.redisUrl = `redis://127.0.0.1:${closedPort()}`;
    const body = { session_id: SESSION_A, audio_key: KEY_A };
    const res = await post(env, body);
    await expectError(res, 503, "QUEUE_UNAVAILABLE");
    assert.equal(res.headers.get("retry-after"), "5");
    const row = supabase.jobs.get(SESSION_A)!;
    assert.equal(row.status, "error");
    assert.equal(row.error_code, "QUEUE_UNAVAILABLE");
    assert.match(row.message as string, /^エラーが発生しました: .*\(QUEUE_UNAVAILABLE\)$/);
    assert.equal(worker.hits, 0, "nothing to wake the worker for");
    assert.ok(logs.some((l) => l.includes("unreachable")), logs.join("\n"));

    env.redisUrl = REDIS_URL;
    const retry = await post(env, body);
    assert.equal(retry.status, 202, await retry.text());
    assert.equal(supabase.jobs.get(SESSION_A)!.status, "queued");
    assert.equal((await entries()).length, 1);
  });
});

Deno.test("503 when Redis accepts but does not answer in time", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) held.push(conn);
    } catch { /* closed */ }
  })();
  try {
    await withWorld(async ({ env }) => {
      env.redisUrl = `redis://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
      env.queueTimeoutMs = 300;
      const start = performance.now();
      const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A });
      await expectError(res, 503, "QUEUE_UNAVAILABLE");
      const took = performance.now() - start;
      assert.ok(took >= 300 && took < 2000, `took ${took} ms`);
    });
  } finally {
    listener.close();
    await accepting;
    for (const c of held) c.close();
  }
});

Deno.test("REDIS_URL user, password and database are used; a wrong password is 503", async () => {
  const admin = parseRedisUrl(REDIS_URL);
  const host = `${admin.hostname}:${admin.port}`;
  const user = "edge-fn-test";
  const password = "p@ss:w/rd #1";
  SECRETS.push(password);
  await redisCommands(REDIS_URL, [[
    "ACL",
    "SETUSER",
    user,
    "reset",
    "on",
    `>${password}`,
    "~*",
    "&*",
    "+@all",
  ]], 2000);
  const url = `redis://${user}:${encodeURIComponent(password)}@${host}/3`;
  try {
    await redisCommands(url, [["DEL", STREAM]], 2000);
    await withWorld(async ({ env }) => {
      env.redisUrl = url;
      const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A });
      const body = await res.json();
      assert.equal(res.status, 202, JSON.stringify(body));
      assert.deepEqual((await entries(url)).map((e) => e.id), [body.entry_id]);
      assert.equal((await entries()).length, 0, "database 3, not the default one");

      env.redisUrl = `redis://${user}:wrong@${host}/3`;
      const refused = await post(env, { session_id: SESSION_A, audio_key: KEY_A, force: true });
      await expectError(refused, 503, "QUEUE_UNAVAILABLE");
      assert.equal((await entries(url)).length, 1);
    });
  } finally {
    await redisCommands(url, [["DEL", STREAM]], 2000);
    await redisCommands(REDIS_URL, [["ACL", "DELUSER", user]], 2000);
  }
});

Deno.test("a refused AUTH or SELECT stops the client before XADD is sent", async () => {
  // A fake Redis that refuses AUTH and records what it receives; the client must wait for that
  // answer instead of pipelining XADD behind it (a nopass default user would run the XADD).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const conn = await listener.accept();
    let got = "";
    const buf = new Uint8Array(4096);
    for (let n; (n = await conn.read(buf)) !== null;) {
      if (!got) await conn.write(enc.encode("-WRONGPASS invalid username-password pair\r\n"));
      got += new TextDecoder().decode(buf.subarray(0, n));
    }
    conn.close();
    return got;
  })();
  const url = `redis://u:p@127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
  await assert.rejects(
    redisCommands(url, [["XADD", STREAM, "*", "job", "{}"]], 2000),
    /WRONGPASS/,
  );
  const received = await serving;
  listener.close();
  assert.match(received, /AUTH/);
  assert.doesNotMatch(received, /XADD/);

  // The real Redis: a database that does not exist must not send the job to database 0.
  await redisCommands(REDIS_URL, [["DEL", STREAM]], 2000);
  const admin = parseRedisUrl(REDIS_URL);
  const auth = admin.password ? `:${encodeURIComponent(admin.password)}@` : "";
  await assert.rejects(
    redisCommands(
      `redis://${auth}${admin.hostname}:${admin.port}/999`,
      [["XADD", STREAM, "*", "job", "{}"]],
      2000,
    ),
    /DB index is out of range/,
  );
  assert.equal((await entries()).length, 0);
});

Deno.test("Upstash REST mode: the same XADD as a JSON array, and its failures are 503", async () => {
  const seen: unknown[] = [];
  // A tiny Upstash: checks the token and wire format, then runs the command on the real Redis.
  const upstash = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (req) => {
      if (req.headers.get("authorization") !== `Bearer ${UPSTASH_TOKEN}`) {
        return Response.json({ error: "Unauthorized" }, { status: 401 });
      }
      const command = await req.json();
      seen.push(command);
      if (req.method !== "POST" || new URL(req.url).pathname !== "/") {
        return Response.json({ error: "test: POST / expected" }, { status: 400 });
      }
      if (!Array.isArray(command) || !command.every((a) => typeof a === "string")) {
        return Response.json({ error: "ERR command must be an array of strings" }, { status: 400 });
      }
      try {
        const [result] = await redisCommands(REDIS_URL, [command], 2000);
        return Response.json({ result });
      } catch (e) {
        return Response.json({ error: (e as Error).message }, { status: 400 });
      }
    },
  );
  try {
    await withWorld(async ({ env }) => {
      env.redisUrl = undefined;
      env.upstashUrl = `http://127.0.0.1:${upstash.addr.port}`;
      env.upstashToken = UPSTASH_TOKEN;
      const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A });
      const body = await res.json();
      assert.equal(res.status, 202, JSON.stringify(body));
      const [entry] = await entries();
      assert.equal(entry.id, body.entry_id);
      assert.deepEqual(seen, [["XADD", "audio:jobs", "*", "job", entry.fields.job]]);
      const ok = await validateJob(entry.fields.job);
      assert.equal(ok.code, 0, ok.stderr);

      const again = { session_id: SESSION_A, audio_key: KEY_A, force: true };
      env.upstashToken = "wrong-token";
      await expectError(await post(env, again), 503, "QUEUE_UNAVAILABLE");
      env.upstashToken = UPSTASH_TOKEN;
      env.upstashUrl = `http://127.0.0.1:${closedPort()}`;
      await expectError(await post(env, again), 503, "QUEUE_UNAVAILABLE");
      // Only one of the two Upstash settings is a configuration error, not a silent fallback.
      env.upstashToken = undefined;
      env.redisUrl = REDIS_URL;
      await expectError(await post(env, again), 500, "CONFIG_MISSING");
      assert.equal((await entries()).length, 1);
    });
  } finally {
    await upstash.shutdown();
  }
});

Deno.test("Supabase outages are 503; missing configuration is 500 CONFIG_MISSING", async () => {
  await withWorld(async ({ supabase, env, logs }) => {
    const body = { session_id: SESSION_A, audio_key: KEY_A };
    supabase.authStatus = 502;
    const res = await post(env, body);
    await expectError(res, 503, "SUPABASE_UNAVAILABLE");
    assert.equal(res.headers.get("retry-after"), "5");
    supabase.authStatus = 200;

    env.supabaseUrl = `http://127.0.0.1:${closedPort()}`;
    await expectError(await post(env, body), 503, "SUPABASE_UNAVAILABLE");

    const broken: Partial<Env>[] = [
      { bucket: undefined },
      { bucket: "Bad_Bucket" },
      { serviceKey: undefined },
      { redisUrl: "http://not-redis" },
      { sessionsTable: "x;drop" },
    ];
    for (const change of broken) {
      const cfg = { ...env, supabaseUrl: supabase.url, ...change };
      await expectError(await post(cfg, body), 500, "CONFIG_MISSING");
    }
    assert.ok(logs.some((l) => l.includes("BUCKET_NAME")), "the log names what is missing");
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("a worker that cannot be woken does not fail the request", async () => {
  await withWorld(async ({ env, logs }) => {
    env.wakeUrl = `http://127.0.0.1:${closedPort()}/health?token=${SECRET}`;
    const res = await post(env, { session_id: SESSION_A, audio_key: KEY_A });
    assert.equal(res.status, 202, await res.text());
    const failed = logs.find((l) => l.includes("worker wake failed")) ?? "";
    assert.match(failed, /Connection refused/, logs.join("\n"));
    // With Supabase's waitUntil the wake is handed over, not awaited.
    let handed: Promise<unknown> | undefined;
    env.waitUntil = (p) => handed = p;
    env.wakeUrl = `http://127.0.0.1:${closedPort()}/health`;
    const again = await post(env, { session_id: SESSION_A, audio_key: KEY_A, force: true });
    assert.equal(again.status, 202, await again.text());
    assert.ok(handed);
    await handed;
  });
});

Deno.test("index.ts serves the handler with the configuration from the environment", async () => {
  await withWorld(async ({ supabase }) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-env",
        decodeURIComponent(new URL("./index.ts", import.meta.url).pathname),
      ],
      env: {
        DENO_SERVE_ADDRESS: "tcp:127.0.0.1:0",
        SUPABASE_URL: supabase.url,
        SUPABASE_ANON_KEY: ANON,
        SUPABASE_SERVICE_ROLE_KEY: SERVICE,
        BUCKET_NAME: BUCKET,
        AUDIO_KEY_PREFIX: PREFIX,
        REDIS_URL,
        JOB_SIGNING_SECRET: SECRET,
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const dec = new TextDecoder();
    let output = "";
    const stderr = child.stderr.getReader();
    let base = "";
    while (!base) {
      const { value, done } = await stderr.read();
      assert.ok(!done, `index.ts exited: ${output}`);
      output += dec.decode(value);
      base = output.match(/Listening on (http:\/\/127\.0\.0\.1:\d+)\//)?.[1] ?? "";
    }
    try {
      const res = await fetch(`${base}/`, {
        method: "POST",
        headers: { authorization: `Bearer ${JWT_A}`, "content-type": "application/json" },
        body: JSON.stringify({ session_id: SESSION_A, audio_key: KEY_A }),
      });
      const body = await res.json();
      assert.equal(res.status, 202, JSON.stringify(body));
      const [entry] = await entries();
      const job = JSON.parse(entry.fields.job);
      assert.equal(job.audio.bucket, BUCKET);
      assert.match(job.signature, /^[0-9a-f]{64}$/);
      assert.equal((await validateJob(entry.fields.job)).code, 0);
    } finally {
      child.kill("SIGTERM");
      const rest = await child.stdout.text();
      for (;;) {
        const { value, done } = await stderr.read();
        if (done) break;
        output += dec.decode(value);
      }
      await child.status;
      // The real logger (console) must not print secrets either.
      assertNoSecrets(output + rest);
      assert.match(rest, /"msg":"queued"/);
    }
  });
});

Deno.test("the signature matches a vector computed outside this code", async () => {
  // src/contract/job.rs's known canonical string; the HMAC was computed with Python's hmac module.
  const job: Job = {
    version: 1,
    job_id: "0b4e7c2a-5f0e-4c1d-9a57-2f7d2c6b1e11",
    session_id: "3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f",
    user_id: "5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
    audio: { bucket: "recordings", key: "user_42/3f1c/recording.webm" },
    language: "ja",
    enqueued_at: "2026-11-23T09:59:30.123Z",
  };
  assert.equal(
    canonicalString(job),
    "1\n0b4e7c2a-5f0e-4c1d-9a57-2f7d2c6b1e11\n3f1c9d2e-8b7a-4c6d-9e0f-1a2b3c4d5e6f\n" +
      "5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d\nrecordings\nuser_42/3f1c/recording.webm\nja\n" +
      "2026-11-23T09:59:30.123Z",
  );
  assert.equal(
    await signJob(job, "test-secret"),
    "b9a9cb80bff7fab71bf0dd1d72035d0c948f9195cfd53e02316da5e1b3ba07c7",
  );
});

Deno.test("the new JSON key sets come first, the legacy keys are the fallback", () => {
  const legacy: Record<string, string> = {
    SUPABASE_URL: "https://p.supabase.co",
    SUPABASE_ANON_KEY: "eyJ.anon.jwt",
    SUPABASE_SERVICE_ROLE_KEY: "eyJ.service.jwt",
    BUCKET_NAME: "recordings",
  };
  let env = envFromDeno((n) => legacy[n]);
  assert.equal(env.serviceKey, "eyJ.service.jwt");
  assert.equal(env.anonKey, "eyJ.anon.jwt");
  const both: Record<string, string> = {
    ...legacy,
    SUPABASE_SECRET_KEYS: JSON.stringify({ other: "sb_secret_other", default: "sb_secret_def" }),
    SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: "sb_publishable_def" }),
  };
  env = envFromDeno((n) => both[n]);
  assert.equal(env.serviceKey, "sb_secret_def");
  assert.equal(env.anonKey, "sb_publishable_def");
  // No `default`: the first key; unusable sets fall back to the legacy names.
  assert.equal(keyFromSet(JSON.stringify({ k1: "sb_secret_1" })), "sb_secret_1");
  for (const bad of ["not json", "[]", "{}", '{"default": 7}', '"sb_secret_x"']) {
    assert.equal(keyFromSet(bad), undefined, bad);
    env = envFromDeno((n) => ({ ...legacy, SUPABASE_SECRET_KEYS: bad })[n]);
    assert.equal(env.serviceKey, "eyJ.service.jwt", bad);
  }
  // A new key is not a JWT: apikey only. A legacy JWT goes in Authorization too.
  assert.deepEqual(apiKeyHeaders("sb_secret_def"), { apikey: "sb_secret_def" });
  assert.deepEqual(apiKeyHeaders("eyJ.service.jwt"), {
    apikey: "eyJ.service.jwt",
    authorization: "Bearer eyJ.service.jwt",
  });
});

Deno.test("the key rule agrees with the worker's on the shared vectors", async () => {
  const file = new URL("../../../schemas/audio-key-vectors.json", import.meta.url);
  const vectors = JSON.parse(await Deno.readTextFile(file)) as {
    prefix: string;
    user_id: string;
    cases: { key: string; ok: boolean; why: string }[];
  };
  assert.ok(vectors.cases.length >= 20);
  for (const c of vectors.cases) {
    const problem = ownedKeyProblem(c.key, vectors.prefix, vectors.user_id);
    assert.equal(problem === null, c.ok, `${JSON.stringify(c.key)} (${c.why}): ${problem}`);
  }
});

Deno.test("a key with a '.' or empty segment is 400 before anything is written", async () => {
  await withWorld(async ({ supabase, env }) => {
    for (const key of [`${PREFIX}${USER_A}/./a.webm`, `${PREFIX}${USER_A}//a.webm`]) {
      await expectError(
        await post(env, { session_id: SESSION_A, audio_key: key }),
        400,
        "BAD_REQUEST",
      );
    }
    assert.equal(supabase.jobs.size, 0);
    assert.equal((await entries()).length, 0);
  });
});

Deno.test("key rules, REDIS_URL parsing and environment defaults", () => {
  assert.equal(keyProblem("u/s/a.webm"), null);
  assert.equal(keyProblem("u/s/録音 (1).m4a"), null);
  assert.equal(keyProblem("u/s/a:b.webm"), null, "a colon after a slash is not a scheme");
  for (const k of ["", "/a", "a/../b", "a\\b", "a\tb", "https://x/y", "s3:a", "a\u007f"]) {
    assert.ok(keyProblem(k), k);
  }
  assert.deepEqual(parseRedisUrl("rediss://u%40x:p%3Aw@[::1]:6380/2"), {
    tls: true,
    hostname: "::1",
    port: 6380,
    username: "u@x",
    password: "p:w",
    db: 2,
  });
  assert.deepEqual(parseRedisUrl("redis://:pw@cache.internal"), {
    tls: false,
    hostname: "cache.internal",
    port: 6379,
    username: undefined,
    password: "pw",
    db: 0,
  });
  for (const bad of ["http://x", "redis://x/db1", "not a url"]) {
    assert.throws(() => parseRedisUrl(bad), /REDIS_URL/);
  }
  const vars: Record<string, string> = {
    SUPABASE_URL: "https://p.supabase.co",
    SUPABASE_SERVICE_KEY: "svc",
    BUCKET_NAME: " recordings ",
  };
  const env = envFromDeno((n) => vars[n]);
  assert.equal(env.serviceKey, "svc");
  assert.equal(env.bucket, "recordings");
  assert.equal(env.sessionsTable, "coaching_sessions");
  assert.equal(env.sessionsOwnerColumn, "user_id");
  assert.equal(env.audioKeyPrefix, "");
  assert.equal(env.queueTimeoutMs, 3000);
  assert.equal(env.wakeTimeoutMs, 2000);
  assert.equal(env.signingSecret, undefined);
  assert.equal(
    envFromDeno((n) => ({ ...vars, SUPABASE_SERVICE_ROLE_KEY: "role" })[n]).serviceKey,
    "role",
  );
});
