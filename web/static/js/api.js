// The JSON API client: one fetch per view (a trace's every span comes in one answer), errors as
// exceptions carrying the server's message, and aborting a request when the user navigates away.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let current = null; // the view's in-flight requests, aborted on navigation

export function newView() {
  if (current) current.abort();
  current = new AbortController();
  return current.signal;
}

const TOKEN_KEY = "tracehouse.writeToken";

/** The write token the user pasted (kept for this browser tab only). */
export function writeToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setWriteToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token is asked again next time */
  }
}

/** POST /api/<path> with a JSON body (and the write token, when one was given); errors as ApiError. */
export async function post(path, body) {
  const headers = { Accept: "application/json", "Content-Type": "application/json" };
  const token = writeToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(`/api/${path}`, { method: "POST", headers, body: JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "network", "the tracehouse web server cannot be reached");
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    /* not JSON: reported below */
  }
  if (!response.ok) {
    const error = answer && answer.error;
    throw new ApiError(response.status, error?.code || "http", error?.message || `HTTP ${response.status}`);
  }
  return answer;
}

/** GET /api/<path>?<params>; empty parameters are left out. */
export async function api(path, params = {}, signal = current?.signal) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const url = `/api/${path}${query.toString() ? `?${query}` : ""}`;
  let response;
  try {
    response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "the tracehouse web server cannot be reached");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON: reported below */
  }
  if (!response.ok) {
    const error = body && body.error;
    throw new ApiError(response.status, error?.code || "http", error?.message || `HTTP ${response.status}`);
  }
  return body;
}
