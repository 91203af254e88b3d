// lookalike web page: search by an image, by a result, filter and browse by class.
// Talks only to this app's JSON API; every text from the server is set with textContent.
import {initActivity} from "./activity.js";
import {api, plural} from "./api.js";
import {QUERY_LABEL_MIN, card, fileName, labelElement, notableLabels} from "./cards.js";
import {initDuplicates, isDuplicatesHash, leaveDuplicates, openDuplicates} from "./duplicates.js";
import {decorate, initLabels, leaveLabel, openLabel} from "./labels.js";
import {initSession, session} from "./session.js";
import {attachSuggestions} from "./suggestions.js";

// The page's first title, as the template wrote it: shown again when the view is cleared.
let START_TITLE = "";
const EMPTY_TITLE = "The library is empty: index a folder with 'lookalike index PATH' first.";

const $ = (id) => document.getElementById(id);

const state = {
  filter: null,     // the chosen class or concept name, passed as class=<name>
  anyTop5: false,   // count an image as showing the class whenever it is among its top 5 predictions
  view: null,       // {kind: "upload", file} | {kind: "similar", id, item} | {kind: "browse", name, nextOffset}
                    // | {kind: "label", name, nextOffset}: a custom label's page (labels.js)
  seq: 0,           // number of the newest request; answers to older ones are dropped
  previewUrl: null, // object URL of the uploaded query image
  lastUpload: null, // the last uploaded file, searched again when Back returns to it
};

function classParams(query) {
  if (!state.filter) return query;
  query.append("class", state.filter);
  if (state.anyTop5) query.append("class_min_probability", "0");
  return query;
}

function withFilter(params) {
  const text = classParams(new URLSearchParams(params)).toString();
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
      $("results-title").textContent = EMPTY_TITLE;
    } else {
      if ($("results-title").textContent === EMPTY_TITLE) $("results-title").textContent = START_TITLE;
      suggestClasses();
    }
  } catch (err) {
    $("stats").textContent = "Library statistics are not available.";
    showError(err.message);
  }
}

// The filter box suggests what this library holds: its three most common classes.
async function suggestClasses() {
  try {
    const body = await api("/classes?limit=3");
    const names = (body.classes || []).map((c) => c.name);
    if (names.length) $("class-input").placeholder = `e.g. ${names.join(", ")}`;
  } catch (err) {
    // the generic placeholder stays
  }
}

// --- results -------------------------------------------------------------------------------

function renderResults(items, mode, append = false) {
  const grid = $("results");
  if (!append) grid.replaceChildren();
  const className = state.view && state.view.name;
  grid.append(...items.map((item) => removable(decorate(card(item, {mode, className,
    onChoose: (hit) => searchSimilar(hit.id, {item: hit})}), item, mode), item)));
}

// Images added over HTTP can be removed again by a key that may write (library files cannot).
function removable(node, item) {
  const button = node.querySelector(".card-remove");
  if (!session.uploadDir || !(item.path || "").startsWith(session.uploadDir)) return node;
  button.hidden = false;
  button.addEventListener("click", async () => {
    if (!window.confirm(`Remove ${fileName(item.path)} (#${item.id}) from the library?`)) return;
    try {
      await api(`/images/${encodeURIComponent(item.id)}`, {method: "DELETE"});
      node.remove();
      setStatus(`Removed image #${item.id} from the library.`);
    } catch (err) {
      showError(err.message);
    }
  });
  return node;
}

// --- adding photos to the library ------------------------------------------------------------

async function addToLibrary(file) {
  if (!file) return;
  clearError();
  setStatus(`Adding ${file.name || "the image"} to the library…`, true);
  const form = new FormData();
  form.append("image", file, file.name || "image");
  try {
    const added = await api("/images", {method: "POST", body: form});
    await searchSimilar(added.id, {item: added});
    setStatus(`Added ${fileName(added.path)} to the library as #${added.id}; its lookalikes are below.`);
  } catch (err) {
    setStatus("");
    showError(err.message);
  }
}

function initAdd() {
  const input = $("add-input");
  input.addEventListener("change", () => {
    const file = firstFile(input.files);
    input.value = "";
    addToLibrary(file);
  });
  const zone = $("add-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("active"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("active"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();  // a drop here adds the photo; anywhere else it searches
    zone.classList.remove("active");
    $("drop-overlay").hidden = true;
    const file = firstFile(event.dataTransfer && event.dataTransfer.files);
    if (file) addToLibrary(file);
  });
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
  if (state.filter) explainEmptyFilter(state.seq);
  return state.filter ? `No image is labelled ${state.filter}.` : "No lookalikes found.";
}

// A filter that matches nothing: say why, and offer the looser rule when it would find some.
async function explainEmptyFilter(seq) {
  const name = state.filter;
  if (state.anyTop5) return;
  try {
    const [strict, loose] = await Promise.all([
      classCount(name, {}),
      classCount(name, {class_min_probability: "0"}),
    ]);
    if (seq !== state.seq || name !== state.filter) return;
    if (loose > strict) {
      $("looser-text").textContent = `No image shows ${name} with enough confidence; ` +
        `${plural(loose, "image has", "images have")} it among its top 5 predictions below that.`;
      $("looser").hidden = false;
    }
  } catch (err) {
    // the plain summary stays
  }
}

async function classCount(name, params) {
  const query = new URLSearchParams({q: name, limit: "50", ...params});
  const body = await api(`/classes?${query}`);
  const lower = name.toLowerCase();
  const match = (body.classes || []).find((c) => c.name.toLowerCase() === lower);
  return match ? match.count : 0;
}

// --- searching -----------------------------------------------------------------------------

function begin(view, busyText) {
  leaveDuplicates();
  if (view.kind !== "label") leaveLabel();
  state.view = {...view, nextOffset: null};
  state.seq += 1;
  clearError();
  $("looser").hidden = true;
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
  if (err.code === "unknown_class") setFilter(null, {run: false});  // never keep a chip the server refused
  if (!append) $("results").replaceChildren();
}

// Show one page of results; "More" asks for the next one while the server says there is one.
function showPage(items, mode, append, nextOffset) {
  renderResults(items, mode, append);
  state.view.nextOffset = nextOffset ?? null;
  $("more-button").hidden = state.view.nextOffset === null;
  return $("results").children.length;
}

async function searchUpload(file, {push = true, offset = 0} = {}) {
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

async function searchSimilar(id, {item = null, push = true, offset = 0} = {}) {
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

async function browse(name, {offset = 0, push = true} = {}) {
  const append = offset > 0;
  const seq = append ? beginMore() : begin({kind: "browse", name}, "Loading…");
  if (!append) {
    if (push) setHash({browse: name});
    $("query").hidden = true;
    $("results-title").textContent = `Images labelled ${name}`;
  }
  const params = new URLSearchParams({offset: String(offset)});  // the server's page size
  params.append("class", name);
  if (state.anyTop5 && name === state.filter) params.append("class_min_probability", "0");
  try {
    const body = await api(`/images?${params}`);
    if (seq !== state.seq) return;
    const shown = showPage(body.images, "probability", append, body.next_offset);
    if (body.total === 0 && name === state.filter) explainEmptyFilter(seq);
    setStatus(body.total === 0 ? `No image is labelled ${name}.`
      : `Showing ${shown.toLocaleString()} of ${plural(body.total, "image", "images")} · click one to find its lookalikes`);
  } catch (err) {
    failed(seq, err, append);
  }
}

function more() {
  const view = state.view;
  if (!view || view.nextOffset === null) return;
  if (view.kind === "upload") searchUpload(view.file, {push: false, offset: view.nextOffset});
  else if (view.kind === "similar") searchSimilar(view.id, {item: view.item, push: false, offset: view.nextOffset});
  else if (view.kind === "browse") browse(view.name, {offset: view.nextOffset});
  else if (view.kind === "label") openLabel(view.name, {push: false, offset: view.nextOffset});
}

function rerun() {
  const view = state.view;
  if (!view) {
    if (state.filter) browse(state.filter);
    return;
  }
  if (view.kind === "upload") searchUpload(view.file, {push: false});
  else if (view.kind === "similar") searchSimilar(view.id, {item: view.item, push: false});
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
  else if (view && view.kind === "label") setHash({label: view.name});
  else setHash({});
}

function applyHash() {
  if (isDuplicatesHash(location.hash)) {
    openDuplicates({push: false});
    return;
  }
  leaveDuplicates();
  const params = new URLSearchParams(location.hash.slice(1));
  const browseName = params.get("browse");
  setFilter(browseName || params.get("class"), {run: false});
  const similar = params.get("similar");
  const labelName = params.get("label");
  if (labelName) openLabel(labelName, {push: false});
  else if (browseName) browse(browseName, {push: false});
  else if (similar && /^\d+$/.test(similar)) searchSimilar(Number(similar), {push: false});
  else if (state.lastUpload) searchUpload(state.lastUpload, {push: false});
}

// --- class filter with suggestions ---------------------------------------------------------

function setFilter(name, {run = true, anyTop5 = false} = {}) {
  const value = name && name.trim() ? name.trim() : null;
  state.filter = value;
  state.anyTop5 = Boolean(value) && anyTop5;
  $("filter-chip").hidden = !value;
  $("filter-name").textContent = value || "";
  $("filter-rule").textContent = state.anyTop5 ? " (anywhere in the top 5)" : "";
  $("browse-button").disabled = !value;
  $("looser").hidden = true;
  if (run) rerun();
}

// A typed name becomes a filter only when the server knows it: a class or concept name, an id.
async function chooseClass(text) {
  clearError();
  try {
    const body = await api(`/classes?${new URLSearchParams({q: text, limit: "20"})}`);
    const lower = text.toLowerCase();
    const found = (body.classes || []).find((c) => c.name.toLowerCase() === lower
      || String(c.class_id) === text || c.concept_id === text || (c.label && c.label.toLowerCase() === lower));
    if (found) {
      setFilter(found.name);
      return;
    }
    const close = (body.classes || []).slice(0, 3).map((c) => c.name);
    showError(`No class or concept is called "${text}".` + (close.length ? ` Did you mean ${close.join(", ")}?` : ""));
  } catch (err) {
    showError(err.message);
  }
}

function initFilter() {
  attachSuggestions($("class-input"), $("class-options"), {
    onChoose: (name) => chooseClass(name),
    onError: (err) => showError(err.message),
  });
  $("filter-clear").addEventListener("click", () => {
    const browsing = state.view && state.view.kind === "browse";
    setFilter(null, {run: !browsing});
    if (browsing) resetView();
  });
  $("browse-button").addEventListener("click", () => state.filter && browse(state.filter));
  $("more-button").addEventListener("click", more);
  $("looser-button").addEventListener("click", () => setFilter(state.filter, {anyTop5: true}));
}

// The page as it first opened (the filter stays).
function resetView() {
  state.view = null;
  state.seq += 1;
  leaveLabel();
  $("results").replaceChildren();
  $("more-button").hidden = true;
  $("query").hidden = true;
  $("results-title").textContent = START_TITLE;
  setStatus("");
  setHash({});
}

// What labels.js may do to the page.
const pageApi = {
  begin, beginMore, failed, setStatus, showError, clearError,
  isCurrent: (seq) => seq === state.seq,
  showPage: (items, mode, append, nextOffset) => showPage(items, mode, append, nextOffset),
  setHash,
  filter: () => state.filter,
  setFilter: (name, options = {}) => {
    setFilter(name, {...options, run: false});
    if (options.run !== false) resetView();
  },
  reset: resetView,
};

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

document.addEventListener("DOMContentLoaded", async () => {
  START_TITLE = $("results-title").textContent;
  await initSession();  // on a server that needs keys: once signed in
  initUpload();
  initAdd();
  initFilter();
  initLabels(pageApi);
  initDuplicates({showError, clearError, leaveSearch: () => {
    state.seq += 1;  // answers to a search still under way are dropped
    leaveLabel();
  }});
  window.addEventListener("popstate", applyHash);
  loadStats();
  applyHash();
  initActivity({onCountsChanged: loadStats});
});
