// lookalike web page: search by an image, by a result, filter and browse by class.
// Talks only to this app's JSON API; every text from the server is set with textContent.
import {api, plural} from "./api.js";
import {QUERY_LABEL_MIN, card, fileName, labelElement, notableLabels} from "./cards.js";
import {attachSuggestions} from "./suggestions.js";

const BROWSE_PAGE = 50;
const START_TITLE = "Pick or drop an image to find the photos that look like it.";

const $ = (id) => document.getElementById(id);

const state = {
  filter: null,     // the chosen class or concept name, passed as class=<name>
  view: null,       // {kind: "upload", file} | {kind: "similar", id, item} | {kind: "browse", name, nextOffset}
  seq: 0,           // number of the newest request; answers to older ones are dropped
  previewUrl: null, // object URL of the uploaded query image
  lastUpload: null, // the last uploaded file, searched again when Back returns to it
};

function withFilter(params) {
  const query = new URLSearchParams(params);
  if (state.filter) query.append("class", state.filter);
  const text = query.toString();
  return text ? `?${text}` : "";
}

// --- status, errors, statistics ------------------------------------------------------------

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text, busy = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("busy", busy);
  $("results").setAttribute("aria-busy", busy ? "true" : "false");
}

async function loadStats() {
  try {
    const stats = await api("/stats");
    const model = stats.model || {};
    const parts = [plural(stats.images, "image", "images") + " indexed",
                   plural(stats.vectors, "vector", "vectors") + " searchable"];
    $("stats").textContent = parts.join(" · ");
    $("stats").title = `Model: ${model.id || stats.model_id || "unknown"}`;
    if (model.note) {
      $("model-note").textContent = `Stand-in model: ${model.note}.`;
      $("model-note").hidden = false;
    }
    if (stats.images === 0) {
      $("results-title").textContent = "The library is empty: index a folder with 'lookalike index PATH' first.";
    }
  } catch (err) {
    $("stats").textContent = "Library statistics are not available.";
    showError(err.message);
  }
}

// --- results -------------------------------------------------------------------------------

function renderResults(items, mode, append = false) {
  const grid = $("results");
  if (!append) grid.replaceChildren();
  const className = state.view && state.view.name;
  grid.append(...items.map((item) => card(item, {mode, className, onChoose: (hit) => searchSimilar(hit.id, hit)})));
}

function showQuery(title, imageUrl, labels) {
  $("query-title").textContent = title;
  $("query-image").src = imageUrl || "";
  $("query-image").hidden = !imageUrl;
  $("query-labels").replaceChildren(...notableLabels(labels, QUERY_LABEL_MIN, 5).map((l) => labelElement(l, "li")));
  $("query").hidden = false;
}

function filterPhrase() {
  return state.filter ? `, only ${state.filter}` : "";
}

function searchSummary(count) {
  if (count > 0) return plural(count, "lookalike", "lookalikes") + " · click one to search by it";
  return state.filter ? `Nothing labelled ${state.filter} looks like this. Remove the filter to see all lookalikes.`
    : "No lookalikes found.";
}

// --- searching -----------------------------------------------------------------------------

function begin(view, busyText) {
  state.view = {...view, nextOffset: null};
  state.seq += 1;
  clearError();
  setStatus(busyText, true);
  $("more-button").hidden = true;
  return state.seq;
}

function beginMore() {
  state.seq += 1;
  clearError();
  setStatus("Loading more…", true);
  $("more-button").hidden = true;
  return state.seq;
}

function failed(seq, err, append) {
  if (seq !== state.seq) return;
  setStatus("");
  showError(err.message);
  if (!append) $("results").replaceChildren();
}

// Show one page of results; "More" asks for the next one while the server says there is one.
function showPage(items, mode, append, nextOffset) {
  renderResults(items, mode, append);
  state.view.nextOffset = nextOffset ?? null;
  $("more-button").hidden = state.view.nextOffset === null;
  return $("results").children.length;
}

async function searchUpload(file, push = true, offset = 0) {
  if (!file) return;
  const append = offset > 0;
  const name = file.name || "pasted image";
  const seq = append ? beginMore() : begin({kind: "upload", file}, "Searching…");
  if (!append) {
    if (state.lastUpload !== file) {
      if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
      state.previewUrl = URL.createObjectURL(file);
      state.lastUpload = file;
    }
    if (push) setHash({});
    $("results-title").textContent = `Lookalikes of ${name}${filterPhrase()}`;
    showQuery(`Your image: ${name}`, state.previewUrl, []);
  }
  const form = new FormData();
  form.append("image", file, file.name || "image");
  try {
    const body = await api(`/search${withFilter(append ? {offset} : {})}`, {method: "POST", body: form});
    if (seq !== state.seq) return;
    if (!append) showQuery(`Your image: ${name}`, state.previewUrl, body.query.labels);
    setStatus(searchSummary(showPage(body.results, "score", append, body.next_offset)));
  } catch (err) {
    failed(seq, err, append);
  }
}

async function searchSimilar(id, item = null, push = true, offset = 0) {
  const append = offset > 0;
  const seq = append ? beginMore() : begin({kind: "similar", id, item}, "Searching…");
  if (!append) {
    if (push) setHash({similar: id});
    $("results-title").textContent = `Lookalikes of image #${id}${filterPhrase()}`;
    window.scrollTo({top: 0, behavior: "smooth"});
  }
  try {
    const [body, record] = await Promise.all([
      api(`/images/${encodeURIComponent(id)}/similar${withFilter(append ? {offset} : {})}`),
      item || append ? Promise.resolve(item) : api(`/images/${encodeURIComponent(id)}`),
    ]);
    if (seq !== state.seq) return;
    if (!append) {
      state.view.item = record;
      showQuery(`Image #${id}: ${fileName(record.path)}`, record.thumbnail_url || record.file_url, body.query.labels);
    }
    setStatus(searchSummary(showPage(body.results, "score", append, body.next_offset)));
  } catch (err) {
    failed(seq, err, append);
  }
}

async function browse(name, offset = 0, push = true) {
  const append = offset > 0;
  const seq = append ? beginMore() : begin({kind: "browse", name}, "Loading…");
  if (!append) {
    if (push) setHash({browse: name});
    $("query").hidden = true;
    $("results-title").textContent = `Images labelled ${name}`;
  }
  const params = new URLSearchParams({class: name, offset: String(offset), limit: String(BROWSE_PAGE)});
  try {
    const body = await api(`/images?${params}`);
    if (seq !== state.seq) return;
    const shown = showPage(body.images, "probability", append, body.next_offset);
    setStatus(body.total === 0 ? `No image is labelled ${name}.`
      : `Showing ${shown.toLocaleString()} of ${plural(body.total, "image", "images")} · click one to find its lookalikes`);
  } catch (err) {
    failed(seq, err, append);
  }
}

function more() {
  const view = state.view;
  if (!view || view.nextOffset === null) return;
  if (view.kind === "upload") searchUpload(view.file, false, view.nextOffset);
  else if (view.kind === "similar") searchSimilar(view.id, view.item, false, view.nextOffset);
  else if (view.kind === "browse") browse(view.name, view.nextOffset);
}

function rerun() {
  const view = state.view;
  if (!view) {
    if (state.filter) browse(state.filter);
    return;
  }
  if (view.kind === "upload") searchUpload(view.file, false);
  else if (view.kind === "similar") searchSimilar(view.id, view.item, false);
  else if (view.kind === "browse" && state.filter) browse(state.filter);
  updateHash();
}

// --- the address bar keeps the view, so Back works and links can be shared -------------------

function setHash(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) query.set(key, String(value));
  if (state.filter && !params.browse) query.set("class", state.filter);
  const hash = query.toString();
  if (location.hash.slice(1) !== hash) history.pushState(null, "", hash ? `#${hash}` : location.pathname);
}

function updateHash() {
  const view = state.view;
  if (view && view.kind === "similar") setHash({similar: view.id});
  else if (view && view.kind === "browse") setHash({browse: view.name});
  else setHash({});
}

function applyHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const browseName = params.get("browse");
  setFilter(browseName || params.get("class"), false);
  const similar = params.get("similar");
  if (browseName) browse(browseName, 0, false);
  else if (similar && /^\d+$/.test(similar)) searchSimilar(Number(similar), null, false);
  else if (state.lastUpload) searchUpload(state.lastUpload, false);
}

// --- class filter with suggestions ---------------------------------------------------------

function setFilter(name, run = true) {
  const value = name && name.trim() ? name.trim() : null;
  state.filter = value;
  $("filter-chip").hidden = !value;
  $("filter-name").textContent = value || "";
  $("browse-button").disabled = !value;
  if (run) rerun();
}

function initFilter() {
  attachSuggestions($("class-input"), $("class-options"), {
    onChoose: (name) => setFilter(name),
    onError: (err) => showError(err.message),
  });
  $("filter-clear").addEventListener("click", () => {
    const browsing = state.view && state.view.kind === "browse";
    setFilter(null, !browsing);
    if (browsing) {
      state.view = null;
      $("results").replaceChildren();
      $("more-button").hidden = true;
      $("results-title").textContent = START_TITLE;
      setStatus("");
      setHash({});
    }
  });
  $("browse-button").addEventListener("click", () => state.filter && browse(state.filter));
  $("more-button").addEventListener("click", more);
}

// --- choosing, dropping and pasting an image ------------------------------------------------

function firstFile(list) {
  const files = Array.from(list || []);
  return files.find((f) => f.type.startsWith("image/")) || files[0] || null;
}

function initUpload() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    const file = firstFile(input.files);
    input.value = "";
    searchUpload(file);
  });
  const overlay = $("drop-overlay");
  const zone = $("drop-zone");
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer ? event.dataTransfer.types : []).includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
    zone.classList.add("active");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) { overlay.hidden = true; zone.classList.remove("active"); }
  });
  window.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    zone.classList.remove("active");
    const file = firstFile(event.dataTransfer && event.dataTransfer.files);
    if (file) searchUpload(file);
  });
  window.addEventListener("paste", (event) => {
    if (event.target === $("class-input")) return;
    const file = firstFile(event.clipboardData && event.clipboardData.files);
    if (file) searchUpload(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initUpload();
  initFilter();
  window.addEventListener("popstate", applyHash);
  loadStats();
  applyHash();
});
