// The gateway's HTTP API from the browser: the signed-in key as a bearer token, errors carrying the API's message,
// and the live usage stream read with fetch() (EventSource cannot send an Authorization header).

const KEY_SLOT = "switchyard.console.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY_SLOT) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY_SLOT, value) : sessionStorage.removeItem(KEY_SLOT); },
  role: "",        // "admin" or "member", found at sign-in
  tenant: "",      // the key's tenant
};

export class ApiError extends Error {
  constructor(status, message, code = "", field = "") {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** The message an error body carries, whichever of the gateway's error shapes it has. */
export function errorFrom(status, body) {
  const error = body && typeof body === "object" ? body.error ?? body.detail ?? body.message : body;
  if (error && typeof error === "object") {
    const text = error.message || error.error || JSON.stringify(error);
    return new ApiError(status, text, error.code || "", error.field || "");
  }
  if (typeof error === "string" && error.trim()) return new ApiError(status, error.trim());
  return new ApiError(status, status ? `The gateway answered ${status}` : "The gateway cannot be reached");
}

const listeners = new Set();
/** Called with the error whenever the gateway refuses the key (401): the console signs out. */
export function onUnauthorized(fn) { listeners.add(fn); }

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

/**
 * Why a key cannot be one, or "": keys, JWTs and user tokens are printable ASCII, and a header can carry no
 * character past U+00FF at all (fetch refused it, and the console said the gateway could not be reached).
 */
export function keyProblem(key) {
  const odd = [...key].find((ch) => ch < "!" || ch > "~");
  if (odd === undefined) return "";
  const code = `U+${odd.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
  const shown = /[\p{L}\p{N}\p{P}\p{S}]/u.test(odd) ? `“${odd}” (${code})` : code;
  return `The key holds ${shown}, a character no key has: copy the key again, whole and as it was issued`;
}

// The reads of the page shown: all aborted when another page is shown (or on sign-out), so that a page left
// behind neither holds the browser's few connections nor draws into the next one. Writes run to their end: a
// key issued as the page was left still shows its secret once.
let pageRequests = new AbortController();
const isRead = (method, path) => method === "GET" || path === "/api/stats";

/** Another page is about to be shown: abort every read the page before it still waits on. */
export function newPage() {
  pageRequests.abort();
  pageRequests = new AbortController();
}

/**
 * One API call; resolves to the decoded JSON body, or throws an ApiError with the gateway's message. A read is
 * aborted with the page that made it, unless given a `signal` of its own.
 */
export async function api(method, path, body, { signal, withHeaders = false } = {}) {
  const problem = keyProblem(session.key);
  if (problem) throw new ApiError(0, problem);
  signal ??= isRead(method, path) ? pageRequests.signal : undefined;
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The gateway cannot be reached. Is it running?");
  }
  const text = await response.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
  if (!response.ok) {
    const err = errorFrom(response.status, data);
    if (response.status === 401) listeners.forEach((fn) => fn(err));
    throw err;
  }
  return withHeaders ? { data, headers: response.headers } : data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);
export const put = (path, body, opts) => api("PUT", path, body ?? {}, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);
export const enc = encodeURIComponent;

/**
 * One page of an admin list (`limit`, `after`, `q`): `{ items, hasMore, nextAfter, total }`, from the array the
 * gateway answers and its `X-Has-More`, `X-Next-After` and `X-Total-Count` headers.
 */
export async function getPage(path, { limit = 100, after = "", q = "" } = {}, opts = {}) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (after) params.set("after", after);
  if (q) params.set("q", q);
  const sep = path.includes("?") ? "&" : "?";
  const { data, headers } = await api("GET", `${path}${sep}${params}`, undefined, { ...opts, withHeaders: true });
  const next = headers.get("x-next-after");
  return {
    items: Array.isArray(data) ? data : [],
    hasMore: headers.get("x-has-more") === "true",
    nextAfter: next ? decodeURIComponent(next) : "",
    total: Number(headers.get("x-total-count") ?? (Array.isArray(data) ? data.length : 0)),
  };
}

/** Every item of an admin list, page after page (for the short lists a form offers whole: models, keys). */
export async function getAll(path, opts = {}) {
  const items = [];
  let after = "";
  for (;;) {
    const page = await getPage(path, { limit: 1000, after }, opts);
    items.push(...page.items);
    if (!page.hasMore || !page.nextAfter) return items;
    after = page.nextAfter;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow `GET /api/usage-stream`: `onEvent(snapshot)` for every `data:` event, `onState(state, error?)` with
 * "live", "reconnecting" or "error". Reconnects with backoff; stops on 401/403 or when `stop()` is called.
 */
export function usageStream(onEvent, onState) {
  let stopped = false;
  let controller = null;

  async function follow() {
    let delay = 1000;
    while (!stopped) {
      controller = new AbortController();
      try {
        const response = await fetch("/api/usage-stream", {
          headers: headers({ Accept: "text/event-stream" }), signal: controller.signal, cache: "no-store",
        });
        if (!response.ok) {
          const text = await response.text();
          let body = text;
          try { body = JSON.parse(text); } catch { /* keep the text */ }
          throw errorFrom(response.status, body);
        }
        onState("live");
        delay = 1000;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replaceAll("\r\n", "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = block.split("\n").filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5).trimStart()).join("\n");
            if (data) onEvent(JSON.parse(data));
          }
        }
      } catch (err) {
        if (stopped) return;
        if (err.status === 401 || err.status === 403) {
          onState("error", err);
          if (err.status === 401) listeners.forEach((fn) => fn(err));
          return;
        }
      }
      if (stopped) return;
      onState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  follow();
  return { stop() { stopped = true; controller?.abort(); } };
}
