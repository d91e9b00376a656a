// enqueue-audio-processing: a signed-in user asks for one of their recorded sessions to be
// processed. We check who they are (Supabase Auth), that the session and the audio key are theirs,
// mark the session's audio_processing_jobs row queued 0 %, and append the job to the Redis stream
// `audio:jobs` that the Rust workers consume (schemas/job.schema.json, src/contract/job.rs).
//
// The handler takes its configuration as an argument (not Deno.env) so tests can run it against
// fakes; index.ts binds it to the real environment. Secrets (keys, JWTs, the Redis password, the
// signing secret) are never logged or put in a response.

import { parseRedisUrl, QueueError, redisCommands, upstashCommand } from "./redis.ts";

/** Names from the contract (ARCHITECTURE.md "Contracts"). */
export const STREAM = "audio:jobs";
export const JOBS_TABLE = "audio_processing_jobs";
export const JOB_VERSION = 1;
export const DEFAULT_LANGUAGE = "ja";
export const QUEUED_MESSAGE = "処理待ちです...";

/** Patterns of schemas/job.schema.json. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;
/** session_id and user_id: Supabase row ids (the worker refuses anything else). */
export const UUID_PATTERN =
  /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
export const LANGUAGE_PATTERN = /^[a-z]{2}(-[A-Z]{2})?$/;
export const BUCKET_PATTERN = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/; // table/column names we put into PostgREST URLs
const MAX_BODY_BYTES = 16 * 1024;
const MAX_KEY_BYTES = 1024;
/** Bounds of the optional vocabulary (src/contract/job.rs MAX_KEYWORDS, MAX_KEYWORD_CHARS). */
export const MAX_KEYWORDS = 50;
export const MAX_KEYWORD_CHARS = 64;
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export interface Env {
  supabaseUrl?: string;
  /** Sent as `apikey` to Auth; the service key is used when it is absent. */
  anonKey?: string;
  /** Service-role key: reads the sessions table and writes the job row (bypasses RLS). */
  serviceKey?: string;
  /** BUCKET_NAME: the bucket the worker reads from (Tigris). */
  bucket?: string;
  sessionsTable: string;
  sessionsIdColumn: string;
  sessionsOwnerColumn: string;
  /** A key must start with `${audioKeyPrefix}${user_id}/`. */
  audioKeyPrefix: string;
  redisUrl?: string;
  upstashUrl?: string;
  upstashToken?: string;
  /** JOB_SIGNING_SECRET: when set, jobs carry an HMAC-SHA256 signature the worker verifies. */
  signingSecret?: string;
  /** GET here after enqueueing, so a stopped Fly machine starts. */
  wakeUrl?: string;
  allowedOrigin: string;
  queueTimeoutMs: number;
  httpTimeoutMs: number;
  wakeTimeoutMs: number;
  /** Seconds a client should wait before retrying a 503. */
  retryAfterS: number;
  /** Keeps a promise running after the response (Supabase's EdgeRuntime.waitUntil). */
  waitUntil?: (promise: Promise<unknown>) => void;
  log: (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;
}

/**
 * One key out of a Supabase key set, `{"default": "sb_secret_…", …}`: the `default` entry, else
 * the first; undefined when the set is absent, not JSON or empty.
 */
export function keyFromSet(json: string | undefined): string | undefined {
  if (!json) return undefined;
  let set: unknown;
  try {
    set = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!set || typeof set !== "object" || Array.isArray(set)) return undefined;
  const entries = set as Record<string, unknown>;
  const pick = (v: unknown) => typeof v === "string" && v.trim() ? v.trim() : undefined;
  return pick(entries["default"]) ?? Object.values(entries).map(pick).find((v) => v);
}

/**
 * Headers carrying an API key: a new key (`sb_…`) is not a JWT and goes in `apikey` only; a legacy
 * JWT key goes in `Authorization: Bearer` too.
 */
export function apiKeyHeaders(key: string): Record<string, string> {
  return key.startsWith("sb_") ? { apikey: key } : { apikey: key, authorization: `Bearer ${key}` };
}

/** The configuration from environment variables (README.md lists them). */
export function envFromDeno(
  get: (name: string) => string | undefined = (name) => Deno.env.get(name),
): Env {
  const val = (name: string) => {
    const v = get(name)?.trim();
    return v ? v : undefined;
  };
  const ms = (name: string, fallback: number) => {
    const n = Number(val(name));
    return Number.isFinite(n) && n > 0 ? n : fallback;
  };
  const runtime = globalThis as { EdgeRuntime?: { waitUntil?: (p: Promise<unknown>) => void } };
  const waitUntil = runtime.EdgeRuntime?.waitUntil;
  return {
    supabaseUrl: val("SUPABASE_URL"),
    // Supabase injects the new keys as JSON sets (SUPABASE_PUBLISHABLE_KEYS, SUPABASE_SECRET_KEYS,
    // `default` first) and, until they are retired, the legacy JWT keys; the worker's name for the
    // service key is accepted too.
    anonKey: keyFromSet(val("SUPABASE_PUBLISHABLE_KEYS")) ?? val("SUPABASE_ANON_KEY"),
    serviceKey: keyFromSet(val("SUPABASE_SECRET_KEYS")) ?? val("SUPABASE_SERVICE_ROLE_KEY") ??
      val("SUPABASE_SERVICE_KEY"),
    bucket: val("BUCKET_NAME"),
    sessionsTable: val("SESSIONS_TABLE") ?? "coaching_sessions",
    sessionsIdColumn: val("SESSIONS_ID_COLUMN") ?? "id",
    sessionsOwnerColumn: val("SESSIONS_OWNER_COLUMN") ?? "user_id",
    audioKeyPrefix: get("AUDIO_KEY_PREFIX") ?? "", // not trimmed: it is matched byte for byte
    redisUrl: val("REDIS_URL"),
    upstashUrl: val("UPSTASH_REDIS_REST_URL"),
    upstashToken: val("UPSTASH_REDIS_REST_TOKEN"),
    signingSecret: val("JOB_SIGNING_SECRET"),
    wakeUrl: val("WORKER_WAKE_URL"),
    allowedOrigin: val("CORS_ALLOW_ORIGIN") ?? "*",
    queueTimeoutMs: ms("QUEUE_TIMEOUT_MS", 3000),
    httpTimeoutMs: ms("SUPABASE_TIMEOUT_MS", 8000),
    wakeTimeoutMs: ms("WORKER_WAKE_TIMEOUT_MS", 2000),
    retryAfterS: 5,
    waitUntil: waitUntil ? (p) => waitUntil.call(runtime.EdgeRuntime, p) : undefined,
    log: (level, msg, fields) => {
      const line = JSON.stringify({ level, msg, fn: "enqueue-audio-processing", ...fields });
      if (level === "info") console.log(line);
      else console.error(line);
    },
  };
}

/** The job on the wire (schemas/job.schema.json), fields in the schema's order. */
export interface Job {
  version: number;
  job_id: string;
  session_id: string;
  user_id: string;
  audio: { bucket: string; key: string };
  language: string;
  enqueued_at: string;
  /** Names and terms for the transcriber; absent when there are none. */
  keywords?: string[];
  signature?: string;
}

/**
 * What the signature covers: src/contract/job.rs `canonical_string` (the eight fields, then each keyword
 * when there are any, so a job without keywords signs as it always did).
 */
export function canonicalString(job: Job): string {
  return [
    String(job.version),
    job.job_id,
    job.session_id,
    job.user_id,
    job.audio.bucket,
    job.audio.key,
    job.language,
    job.enqueued_at,
    ...(job.keywords ?? []),
  ].join("\n");
}

/**
 * Why a `keywords` value is not acceptable, or null: the worker's rule (src/contract/job.rs
 * `check_keywords`): an array of at most MAX_KEYWORDS distinct strings of 1 to MAX_KEYWORD_CHARS
 * characters, without leading or trailing space or any control character.
 */
export function keywordsProblem(keywords: unknown): string | null {
  if (!Array.isArray(keywords)) return "must be an array of strings";
  if (keywords.length > MAX_KEYWORDS) {
    return `has ${keywords.length} terms, at most ${MAX_KEYWORDS}`;
  }
  for (const [i, k] of keywords.entries()) {
    if (typeof k !== "string") return `[${i}] must be a string`;
    const n = [...k].length;
    if (n < 1 || n > MAX_KEYWORD_CHARS) {
      return `[${i}] must have 1 to ${MAX_KEYWORD_CHARS} characters`;
    }
    if (k.trim() !== k || CONTROL.test(k)) {
      return `[${i}] must have no leading or trailing space and no control characters`;
    }
    if (keywords.indexOf(k) !== i) return `[${i}] repeats ${JSON.stringify(k)}`;
  }
  return null;
}

/** Lowercase hex HMAC-SHA256 of the canonical string, keyed with the secret's UTF-8 bytes. */
export async function signJob(job: Job, secret: string): Promise<string> {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey(
    "raw",
    enc.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, enc.encode(canonicalString(job)));
  return Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Why an audio key is not acceptable, or null. The one key rule of the worker too (src/contract/job.rs
 * `key_problem`, src/daemon/storage.rs); both run the shared vectors of schemas/audio-key-vectors.json.
 */
export function keyProblem(key: string): string | null {
  if (key.length === 0) return "must not be empty";
  if (!key.isWellFormed()) return "must be valid Unicode";
  if (new TextEncoder().encode(key).length > MAX_KEY_BYTES) {
    return `must be at most ${MAX_KEY_BYTES} bytes`;
  }
  if (key.startsWith("/")) return "must be relative to the bucket, not start with '/'";
  if (key.includes("..")) return "must not contain '..'";
  if (key.includes("\\")) return "must not contain '\\'";
  // Rust's char::is_control: C0, DEL and C1 (newlines would also break the signed string).
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(key)) return "must not contain control characters";
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(key)) return "must be a key inside the bucket, not a URL";
  const segments = key.split("/");
  if (segments.some((s) => s === "")) {
    return "must not contain an empty segment ('//' or a trailing '/')";
  }
  if (segments.some((s) => s === ".")) return "must not contain a '.' segment";
  return null;
}

/** The folder every key of a user must lie in: `${AUDIO_KEY_PREFIX}${userId}/`. */
export function ownerFolder(prefix: string, userId: string): string {
  return `${prefix}${userId}/`;
}

/** The whole rule, as the worker applies it: a plain key inside the user's folder. */
export function ownedKeyProblem(key: string, prefix: string, userId: string): string | null {
  const problem = keyProblem(key);
  if (problem) return problem;
  if (!key.startsWith(ownerFolder(prefix, userId))) return "is not in the user's folder";
  return null;
}

/** A response decided somewhere below the handler. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const unavailable = (code: string, message: string) => new HttpError(503, code, message);

function corsHeaders(env: Env): Record<string, string> {
  return {
    "access-control-allow-origin": env.allowedOrigin,
    "access-control-allow-headers": "authorization, x-client-info, apikey, content-type",
    "access-control-allow-methods": "POST, OPTIONS",
    "access-control-max-age": "86400",
    ...(env.allowedOrigin === "*" ? {} : { vary: "Origin" }),
  };
}

function reply(env: Env, status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...corsHeaders(env), "content-type": "application/json; charset=utf-8", ...headers },
  });
}

function errorReply(env: Env, e: HttpError): Response {
  const headers: Record<string, string> = {};
  if (e.status === 503) headers["retry-after"] = String(env.retryAfterS);
  if (e.status === 405) headers["allow"] = "POST, OPTIONS";
  return reply(env, e.status, { error: { code: e.code, message: e.message }, ...e.extra }, headers);
}

export async function handler(req: Request, env: Env): Promise<Response> {
  if (req.method === "OPTIONS") {
    return new Response(null, { status: 204, headers: corsHeaders(env) });
  }
  try {
    if (req.method !== "POST") {
      throw new HttpError(405, "METHOD_NOT_ALLOWED", "use POST");
    }
    return await enqueue(req, env, checkConfig(env));
  } catch (e) {
    if (e instanceof HttpError) {
      if (e.status >= 500) env.log("error", "request failed", { code: e.code, error: e.message });
      return errorReply(env, e);
    }
    env.log("error", "unexpected failure", { error: String(e) });
    return errorReply(env, new HttpError(500, "INTERNAL", "internal error"));
  }
}

interface Config {
  supabaseUrl: string;
  serviceKey: string;
  anonKey: string;
  bucket: string;
  queue: { kind: "redis"; url: string } | { kind: "upstash"; url: string; token: string };
}

/** Refuses to run half-configured: the details go to the log, the caller sees CONFIG_MISSING. */
function checkConfig(env: Env): Config {
  const missing: string[] = [];
  if (!env.supabaseUrl?.match(/^https?:\/\//)) missing.push("SUPABASE_URL (http(s) URL)");
  if (!env.serviceKey) missing.push("SUPABASE_SECRET_KEYS or SUPABASE_SERVICE_ROLE_KEY");
  if (!env.bucket || !BUCKET_PATTERN.test(env.bucket)) missing.push("BUCKET_NAME (S3 bucket)");
  for (
    const [name, v] of [
      ["SESSIONS_TABLE", env.sessionsTable],
      ["SESSIONS_ID_COLUMN", env.sessionsIdColumn],
      ["SESSIONS_OWNER_COLUMN", env.sessionsOwnerColumn],
    ]
  ) {
    if (!IDENTIFIER.test(v)) missing.push(`${name} (an SQL identifier)`);
  }
  let queue: Config["queue"] | undefined;
  if (env.upstashUrl || env.upstashToken) {
    if (env.upstashUrl && env.upstashToken) {
      queue = { kind: "upstash", url: env.upstashUrl, token: env.upstashToken };
    } else missing.push("both UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN");
  } else if (env.redisUrl) {
    try {
      parseRedisUrl(env.redisUrl);
      queue = { kind: "redis", url: env.redisUrl };
    } catch (e) {
      missing.push((e as Error).message);
    }
  } else missing.push("REDIS_URL (or UPSTASH_REDIS_REST_URL and _TOKEN)");
  if (missing.length || !queue) {
    env.log("error", "configuration incomplete", { missing });
    throw new HttpError(500, "CONFIG_MISSING", "the function is not configured");
  }
  return {
    supabaseUrl: env.supabaseUrl!.replace(/\/+$/, ""),
    serviceKey: env.serviceKey!,
    anonKey: env.anonKey ?? env.serviceKey!,
    bucket: env.bucket!,
    queue,
  };
}

interface Body {
  session_id: string;
  audio_key: string;
  language: string;
  keywords: string[];
  force: boolean;
}

async function readBody(req: Request): Promise<Body> {
  const bad = (message: string) => new HttpError(400, "BAD_REQUEST", message);
  const text = await req.text();
  if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) {
    throw bad(`the body is larger than ${MAX_BODY_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw bad("the body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw bad(
      "the body must be a JSON object {session_id, audio_key, language?, keywords?, force?}",
    );
  }
  const obj = value as Record<string, unknown>;
  // Strict, like the worker: a misspelt field (or a user_id, which comes from the JWT) is an error.
  const unknown = Object.keys(obj).find((k) =>
    !["session_id", "audio_key", "language", "keywords", "force"].includes(k)
  );
  if (unknown !== undefined) throw bad(`unknown field ${JSON.stringify(unknown)}`);
  const { session_id, audio_key, language, keywords, force } = obj;
  if (typeof session_id !== "string" || !UUID_PATTERN.test(session_id)) {
    throw bad("session_id must be a UUID");
  }
  if (typeof audio_key !== "string") throw bad("audio_key must be a string");
  const problem = keyProblem(audio_key);
  if (problem) throw bad(`audio_key ${problem}`);
  if (language !== undefined && language !== null) {
    if (typeof language !== "string" || !LANGUAGE_PATTERN.test(language)) {
      throw bad('language must be an ISO 639-1 code like "ja" or "en-US"');
    }
  }
  if (keywords !== undefined && keywords !== null) {
    const problem = keywordsProblem(keywords);
    if (problem) throw bad(`keywords ${problem}`);
  }
  if (force !== undefined && typeof force !== "boolean") throw bad("force must be true or false");
  return {
    session_id,
    audio_key,
    language: (language as string | null | undefined) ?? DEFAULT_LANGUAGE,
    keywords: (keywords as string[] | null | undefined) ?? [],
    force: force === true,
  };
}

/** An error and its causes on one line ("fetch failed" alone says nothing); `url` → `shown`. */
function describe(e: unknown, url: string, shown: string): string {
  const parts: string[] = [];
  for (let c = e, depth = 0; c !== undefined && c !== null && depth < 4; depth++) {
    parts.push(String(c));
    c = (c as { cause?: unknown }).cause;
  }
  return parts.join(": ").replaceAll(url, shown);
}

/** A reply body for the log: short (an outage may answer with a whole HTML page). */
function brief(body: unknown): string {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/** fetch with a time limit; network failures and timeouts become 503 SUPABASE_UNAVAILABLE. */
async function call(
  env: Env,
  what: string,
  url: string,
  init: RequestInit,
): Promise<{ status: number; body: unknown }> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), env.httpTimeoutMs);
  try {
    const res = await fetch(url, { ...init, signal: abort.signal });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch { /* keep the text */ }
    if (res.status >= 500 || res.status === 429) {
      env.log("warn", `${what} failed`, { status: res.status, body: brief(body) });
      throw unavailable("SUPABASE_UNAVAILABLE", `Supabase could not answer (${what})`);
    }
    return { status: res.status, body };
  } catch (e) {
    if (e instanceof HttpError) throw e;
    env.log("warn", `${what} failed`, {
      // The URL holds no secret (keys travel in headers), but keep logs short.
      error: abort.signal.aborted
        ? `timeout after ${env.httpTimeoutMs} ms`
        : describe(e, url, new URL(url).origin),
    });
    throw unavailable("SUPABASE_UNAVAILABLE", `Supabase could not answer (${what})`);
  } finally {
    clearTimeout(timer);
  }
}

/** Headers for PostgREST with the service key (bypasses RLS; we did the owner checks). */
function serviceHeaders(cfg: Config, extra: Record<string, string> = {}) {
  return {
    ...apiKeyHeaders(cfg.serviceKey),
    accept: "application/json",
    ...extra,
  };
}

/** A PostgREST reply we did not expect: a schema or permission problem on our side. */
function unexpected(env: Env, what: string, r: { status: number; body: unknown }): HttpError {
  env.log("error", `${what}: unexpected reply`, { status: r.status, body: brief(r.body) });
  return new HttpError(500, "INTERNAL", `unexpected reply from Supabase (${what})`);
}

/** The caller's user id, from Supabase Auth (which checks the JWT's signature and expiry). */
async function authenticate(req: Request, env: Env, cfg: Config): Promise<string> {
  const m = req.headers.get("authorization")?.match(/^Bearer\s+(\S+)\s*$/i);
  if (!m) throw new HttpError(401, "UNAUTHORIZED", "missing Authorization: Bearer <token>");
  const r = await call(env, "auth", `${cfg.supabaseUrl}/auth/v1/user`, {
    method: "GET",
    headers: { apikey: cfg.anonKey, authorization: `Bearer ${m[1]}` },
  });
  if (r.status >= 400) {
    // Auth's reason (bad_jwt, expired, or "Invalid API key" when our anon key is wrong) helps;
    // the token itself is never logged.
    const b = (r.body ?? {}) as { error_code?: unknown; msg?: unknown; message?: unknown };
    env.log("info", "token refused", {
      status: r.status,
      reason: brief(b.error_code ?? b.msg ?? b.message ?? ""),
    });
    throw new HttpError(401, "UNAUTHORIZED", "the token is invalid or expired");
  }
  const id = (r.body as { id?: unknown } | null)?.id;
  if (r.status !== 200 || typeof id !== "string" || !UUID_PATTERN.test(id)) {
    // Not the body: a user object holds personal data (email, phone).
    throw unexpected(env, "auth", { status: r.status, body: "(no usable user id)" });
  }
  return id;
}

/** 404 unless the session exists, 403 unless the user owns it. */
async function checkSession(env: Env, cfg: Config, sessionId: string, userId: string) {
  const id = env.sessionsIdColumn, owner = env.sessionsOwnerColumn;
  const url = `${cfg.supabaseUrl}/rest/v1/${env.sessionsTable}?select=${id},${owner}` +
    `&${id}=eq.${encodeURIComponent(sessionId)}`;
  const r = await call(env, "session lookup", url, { headers: serviceHeaders(cfg) });
  const notFound = new HttpError(404, "NOT_FOUND", "no such session");
  // 22P02: the id is not a valid uuid for a uuid column, so there is no such session either.
  if (r.status === 400 && (r.body as { code?: string } | null)?.code === "22P02") throw notFound;
  if (r.status !== 200 || !Array.isArray(r.body)) throw unexpected(env, "session lookup", r);
  const row = r.body[0] as Record<string, unknown> | undefined;
  if (!row) throw notFound;
  if (row[owner] !== userId) {
    throw new HttpError(403, "FORBIDDEN", "the session belongs to another user");
  }
}

interface JobRow {
  job_id: string | null;
  status: string;
  stage: string;
  progress: number;
}

/** The session's current job row, if any. */
async function currentJob(env: Env, cfg: Config, sessionId: string): Promise<JobRow | undefined> {
  const url = `${cfg.supabaseUrl}/rest/v1/${JOBS_TABLE}?select=job_id,status,stage,progress` +
    `&session_id=eq.${encodeURIComponent(sessionId)}`;
  const r = await call(env, "job lookup", url, { headers: serviceHeaders(cfg) });
  if (r.status !== 200 || !Array.isArray(r.body)) throw unexpected(env, "job lookup", r);
  return r.body[0] as JobRow | undefined;
}

/**
 * Re-queue policy: `processing` is never re-queued (a worker holds it; if that worker died the
 * queue hands the entry to another one). `queued` and `completed` are re-queued only with
 * `force: true`: a double click must not pay for two transcriptions, a finished analysis is only
 * redone on purpose, and `force` also recovers a job Redis lost. `error` (or no row) is queued.
 */
function refuseRequeue(row: JobRow | undefined, force: boolean): HttpError | undefined {
  if (!row) return undefined;
  const job = { job_id: row.job_id, status: row.status, stage: row.stage, progress: row.progress };
  if (row.status === "processing") {
    return new HttpError(409, "JOB_IN_PROGRESS", "the session is being processed", { job });
  }
  if (row.status === "queued" && !force) {
    return new HttpError(409, "JOB_ALREADY_QUEUED", "the session is already queued", { job });
  }
  if (row.status === "completed" && !force) {
    return new HttpError(
      409,
      "JOB_ALREADY_COMPLETED",
      'the session was already processed; send "force": true to process it again',
      { job },
    );
  }
  return undefined;
}

async function enqueue(req: Request, env: Env, cfg: Config): Promise<Response> {
  const userId = await authenticate(req, env, cfg);
  const body = await readBody(req);

  // The key must lie under the user's own folder, or anyone could have anyone's audio analysed.
  if (ownedKeyProblem(body.audio_key, env.audioKeyPrefix, userId)) {
    throw new HttpError(403, "FORBIDDEN", "the audio key is not in your folder");
  }
  await checkSession(env, cfg, body.session_id, userId);
  const refused = refuseRequeue(await currentJob(env, cfg, body.session_id), body.force);
  if (refused) throw refused;

  const job: Job = {
    version: JOB_VERSION,
    job_id: crypto.randomUUID(),
    session_id: body.session_id,
    user_id: userId,
    audio: { bucket: cfg.bucket, key: body.audio_key },
    language: body.language,
    enqueued_at: new Date().toISOString(),
  };
  if (body.keywords.length > 0) job.keywords = body.keywords;
  if (env.signingSecret) job.signature = await signJob(job, env.signingSecret);
  const ids = { session_id: job.session_id, user_id: userId, job_id: job.job_id };

  // The row first: once the entry is in the stream a worker may start at once, and its progress
  // must not be overwritten by our "queued". A re-run starts clean (attempts, error, started_at).
  const upsert = await call(
    env,
    "job row upsert",
    `${cfg.supabaseUrl}/rest/v1/${JOBS_TABLE}?on_conflict=session_id`,
    {
      method: "POST",
      headers: serviceHeaders(cfg, {
        "content-type": "application/json",
        prefer: "resolution=merge-duplicates,return=minimal",
      }),
      body: JSON.stringify({
        session_id: job.session_id,
        user_id: userId,
        job_id: job.job_id,
        status: "queued",
        stage: "queued",
        progress: 0,
        message: QUEUED_MESSAGE,
        error_code: null,
        attempts: 0,
        audio_bucket: job.audio.bucket,
        audio_key: job.audio.key,
        started_at: null, // the table's trigger clears completed_at on "queued", not started_at
      }),
    },
  );
  if (upsert.status < 200 || upsert.status >= 300) throw unexpected(env, "job row upsert", upsert);

  let entryId: string;
  try {
    entryId = await xadd(cfg, JSON.stringify(job), env.queueTimeoutMs);
  } catch (e) {
    if (!(e instanceof QueueError)) throw e;
    env.log("error", "enqueue failed", { ...ids, error: e.message });
    await markQueueFailed(env, cfg, job);
    throw unavailable("QUEUE_UNAVAILABLE", "the processing queue is unavailable; try again");
  }
  env.log("info", "queued", { ...ids, entry_id: entryId });

  if (env.wakeUrl) {
    const woken = wakeWorker(env, env.wakeUrl);
    if (env.waitUntil) env.waitUntil(woken);
    else await woken; // outside Supabase's runtime: bounded by wakeTimeoutMs
  }
  return reply(env, 202, {
    job_id: job.job_id,
    session_id: job.session_id,
    status: "queued",
    entry_id: entryId,
  });
}

/** XADD audio:jobs * job <json>; returns the entry id. Not retried: a retry could add twice. */
async function xadd(cfg: Config, json: string, timeoutMs: number): Promise<string> {
  const command = ["XADD", STREAM, "*", "job", json];
  const id = cfg.queue.kind === "upstash"
    ? await upstashCommand(cfg.queue.url, cfg.queue.token, command, timeoutMs)
    : (await redisCommands(cfg.queue.url, [command], timeoutMs))[0];
  if (typeof id !== "string") throw new QueueError("XADD did not return an entry id");
  return id;
}

/**
 * The row says queued but nothing is in the stream: say so, so the browser does not wait forever
 * and a retry is allowed ("error" may be re-queued). Only our own job_id's row is touched, in case
 * a concurrent request has queued another. Best effort: a failure here is logged.
 */
async function markQueueFailed(env: Env, cfg: Config, job: Job): Promise<void> {
  const url = `${cfg.supabaseUrl}/rest/v1/${JOBS_TABLE}` +
    `?session_id=eq.${encodeURIComponent(job.session_id)}&job_id=eq.${job.job_id}`;
  try {
    const r = await call(env, "job row error", url, {
      method: "PATCH",
      headers: serviceHeaders(cfg, {
        "content-type": "application/json",
        prefer: "return=minimal",
      }),
      body: JSON.stringify({
        status: "error",
        stage: "error",
        progress: 0,
        message: "エラーが発生しました: 処理キューに接続できませんでした (QUEUE_UNAVAILABLE)",
        error_code: "QUEUE_UNAVAILABLE",
      }),
    });
    if (r.status >= 300) throw unexpected(env, "job row error", r);
  } catch (e) {
    env.log("error", "could not mark the job row failed", {
      session_id: job.session_id,
      job_id: job.job_id,
      error: (e as Error).message,
    });
  }
}

/** Fly's proxy starts a stopped machine when a request reaches it; the answer does not matter. */
async function wakeWorker(env: Env, url: string): Promise<void> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), env.wakeTimeoutMs);
  // A query string could hold a token: log the origin only.
  const target = URL.canParse(url) ? new URL(url).origin : "(not a URL)";
  try {
    const res = await fetch(url, { method: "GET", signal: abort.signal });
    await res.body?.cancel();
    env.log("info", "worker wake", { target, status: res.status });
  } catch (e) {
    env.log("warn", "worker wake failed", {
      target,
      // fetch's error quotes the whole URL; keep only its origin.
      error: abort.signal.aborted
        ? `no answer within ${env.wakeTimeoutMs} ms`
        : describe(e, url, target),
    });
  } finally {
    clearTimeout(timer);
  }
}
