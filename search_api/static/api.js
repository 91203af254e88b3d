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

// The parsed JSON answer; on an error an ApiError whose message is the problem's `detail`.
export async function api(path, options) {
  let response;
  try {
    response = await fetch(API + path, options);
  } catch (err) {
    throw new ApiError("Could not reach the server. Check your connection and try again.");
  }
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = body && (body.detail || body.title);
    throw new ApiError(detail ? capitalise(detail) : `The server answered ${response.status} ${response.statusText}.`,
                       (body && body.code) || null);
  }
  return body;
}
