// Hash routes (#/traces?..., #/trace/ID?span=..., #/charts?..., #/alerts?...): every view is a link that
// can be shared or reloaded.

export function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

export function hashFor(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  return `#/${path}${query.toString() ? `?${query}` : ""}`;
}

/** Navigate (a new view), or with replace only update the address (the view updates itself). */
export function go(path, params = {}, { replace = false } = {}) {
  const hash = hashFor(path, params);
  if (replace) history.replaceState(null, "", hash);
  else if (location.hash !== hash) location.hash = hash;
}
