// The JSON API of this app, and the wording shared by the page's modules.

// The page names its API base (it may be served under a URL prefix, behind a proxy).
const API = document.querySelector('meta[name="lookalike-api"]')?.content || "/api/v1";

// `code` is the problem's machine-readable code (e.g. unknown_class), when the server sent one.
export class ApiError extends Error {
  constructor(message, code = null) {
    super(message);
    this.code = code;
  }
}

export function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function plural(n, one, many) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

// The CSRF token of the signed-in session (session.js): sent with every request that is not a GET,
// as the server asks of changes made with the session cookie.
let csrfToken = null;

export function setCsrfToken(token) {
  csrfToken = token || null;
}

// The parsed JSON answer; on an error an ApiError whose message is the problem's `detail`.
// A 401 (no session, or one that ended) also tells the page to show its sign-in box again.
export async function api(path, options = {}) {
  let response;
  const method = (options.method || "GET").toUpperCase();
  const headers = new Headers(options.headers || {});
  if (csrfToken && method !== "GET" && method !== "HEAD") headers.set("X-CSRF-Token", csrfToken);
  try {
    response = await fetch(API + path, {...options, headers, credentials: "same-origin"});
  } catch (err) {
    throw new ApiError("Could not reach the server. Check your connection and try again.");
  }
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (response.status === 401 && !path.startsWith("/session")) {
    document.dispatchEvent(new CustomEvent("lookalike:signed-out"));
  }
  if (!response.ok) {
    const detail = body && (body.detail || body.title);
    throw new ApiError(detail ? capitalise(detail) : `The server answered ${response.status} ${response.statusText}.`,
                       (body && body.code) || null);
  }
  return body;
}
