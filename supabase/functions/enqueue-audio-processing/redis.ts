// The smallest Redis client this function needs: RESP2 over Deno.connect / Deno.connectTls
// (AUTH, SELECT, then the caller's commands, pipelined on one short-lived connection), plus
// Upstash's REST form of the same commands. Hand-written so the function has no third-party
// imports to download at deploy or cold start. Error messages name host:port, never the password.

/** A RESP2 reply: simple/bulk string, integer, nil, or array. Error replies are thrown. */
export type Reply = string | number | null | Reply[];

/** The queue could not be reached, timed out, or refused a command (the caller answers 503). */
export class QueueError extends Error {
  override name = "QueueError";
}

export interface RedisTarget {
  tls: boolean;
  hostname: string;
  port: number;
  username?: string;
  password?: string;
  db: number;
}

/** `redis[s]://[[user]:password@]host[:port][/db]`, as the worker's REDIS_URL. */
export function parseRedisUrl(raw: string): RedisTarget {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new QueueError("REDIS_URL is not a URL");
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    throw new QueueError("REDIS_URL must start with redis:// or rediss://");
  }
  const db = url.pathname.replace(/^\//, "");
  if (!url.hostname || !/^\d*$/.test(db)) {
    throw new QueueError("REDIS_URL must look like redis://[user:password@]host[:port][/db]");
  }
  return {
    tls: url.protocol === "rediss:",
    hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"), // IPv6 literals come bracketed
    port: url.port ? Number(url.port) : 6379,
    username: url.username ? decodeURIComponent(url.username) : undefined,
    password: url.password ? decodeURIComponent(url.password) : undefined,
    db: db ? Number(db) : 0,
  };
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One command as a RESP array of bulk strings; lengths are UTF-8 bytes (keys may be Japanese). */
function encode(args: string[]): Uint8Array {
  const parts = [enc.encode(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = enc.encode(arg);
    parts.push(enc.encode(`$${bytes.length}\r\n`), bytes, enc.encode("\r\n"));
  }
  return concat(parts);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Reads RESP2 replies from a connection, buffering partial reads. */
class ReplyReader {
  #buf: Uint8Array = new Uint8Array(0);
  constructor(private conn: Deno.Conn) {}

  async #fill(): Promise<void> {
    const chunk = new Uint8Array(16 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) throw new QueueError("Redis closed the connection");
    this.#buf = concat([this.#buf, chunk.subarray(0, n)]);
  }

  async #line(): Promise<string> {
    let i: number;
    while ((i = this.#buf.findIndex((b, j) => b === 13 && this.#buf[j + 1] === 10)) < 0) {
      await this.#fill();
    }
    const line = dec.decode(this.#buf.subarray(0, i));
    this.#buf = this.#buf.subarray(i + 2);
    return line;
  }

  async read(): Promise<Reply> {
    const line = await this.#line();
    const rest = line.slice(1);
    switch (line[0]) {
      case "+":
        return rest;
      case "-":
        throw new QueueError(`Redis refused the command: ${rest}`);
      case ":":
        return Number(rest);
      case "$": {
        const n = Number(rest);
        if (n < 0) return null;
        while (this.#buf.length < n + 2) await this.#fill();
        const value = dec.decode(this.#buf.subarray(0, n));
        this.#buf = this.#buf.subarray(n + 2);
        return value;
      }
      case "*": {
        const n = Number(rest);
        if (n < 0) return null;
        const items: Reply[] = [];
        for (let k = 0; k < n; k++) items.push(await this.read());
        return items;
      }
      default:
        throw new QueueError("Redis sent something that is not RESP2");
    }
  }
}

/**
 * Connects, authenticates, selects the database, then runs `commands` (pipelined) and returns
 * their replies; the first error reply is thrown. Everything, connecting included, must finish
 * within `timeoutMs`.
 *
 * AUTH and SELECT are answered before the commands are sent: when Redis' default user needs no
 * password, a failed AUTH leaves the connection usable, and a pipelined XADD would still land
 * (in the wrong database, after a SELECT error) while we report failure.
 */
export async function redisCommands(
  redisUrl: string,
  commands: string[][],
  timeoutMs: number,
): Promise<Reply[]> {
  const t = parseRedisUrl(redisUrl);
  const where = `${t.hostname}:${t.port}`;
  const prelude: string[][] = [];
  if (t.password !== undefined) {
    prelude.push(t.username ? ["AUTH", t.username, t.password] : ["AUTH", t.password]);
  }
  if (t.db !== 0) prelude.push(["SELECT", String(t.db)]);

  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new QueueError(`Redis at ${where} did not answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  const connecting = t.tls
    ? Deno.connectTls({ hostname: t.hostname, port: t.port })
    : Deno.connect({ hostname: t.hostname, port: t.port });
  let conn: Deno.Conn | undefined;
  try {
    conn = await Promise.race([connecting, deadline]);
    const c = conn;
    const reader = new ReplyReader(c);
    const round = async (batch: string[][]) => {
      const bytes = concat(batch.map(encode));
      // write() may take only part of the buffer.
      for (let at = 0; at < bytes.length;) at += await c.write(bytes.subarray(at));
      const replies: Reply[] = [];
      for (let k = 0; k < batch.length; k++) replies.push(await reader.read());
      return replies;
    };
    const exchange = async () => {
      if (prelude.length) await round(prelude);
      return await round(commands);
    };
    return await Promise.race([exchange(), deadline]);
  } catch (e) {
    if (e instanceof QueueError) throw e;
    // Connection refused, reset, DNS, TLS: Deno's messages carry no credentials.
    throw new QueueError(`Redis at ${where} is unreachable: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
    if (conn) {
      try {
        conn.close();
      } catch { /* already closed */ }
    } else {
      // A connect that completes after the deadline must not leak its socket.
      connecting.then((c) => c.close(), () => {});
    }
  }
}

/**
 * One command through Upstash's REST API: the body is the command as a JSON array, the reply
 * `{result}` or `{error}`. For deployments whose Redis is only reachable over HTTPS.
 */
export async function upstashCommand(
  restUrl: string,
  token: string,
  command: string[],
  timeoutMs: number,
): Promise<Reply> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetch(restUrl, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(command),
      signal: abort.signal,
    });
    const text = await res.text();
    let body: { result?: Reply; error?: string } = {};
    try {
      body = JSON.parse(text);
    } catch { /* not JSON: reported by status below */ }
    if (!res.ok || typeof body !== "object" || body === null || body.error !== undefined) {
      const why = typeof body?.error === "string" ? `: ${body.error}` : "";
      throw new QueueError(`Upstash refused ${command[0]}: HTTP ${res.status}${why}`);
    }
    return body.result ?? null;
  } catch (e) {
    if (e instanceof QueueError) throw e;
    throw new QueueError(
      abort.signal.aborted
        ? `Upstash did not answer within ${timeoutMs} ms`
        : `Upstash is unreachable: ${(e as Error).message}`,
    );
  } finally {
    clearTimeout(timer);
  }
}
