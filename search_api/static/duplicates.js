// The Duplicates view: groups of identical files and of near-duplicates (as `lookalike duplicates` finds
// them), each copy side by side with its dimensions, file size and format. The copy suggested for keeping
// is marked and the others are ticked for removal; the person changes the ticks and exports the chosen
// removals as JSON or CSV. Nothing here deletes a file: the person does, from the exported list.
// Every text from the server is set with textContent.
import {api, plural} from "./api.js";
import {fileName, showPreview} from "./cards.js";

const $ = (id) => document.getElementById(id);
const HASH = "#duplicates";
const PAGE_SIZE = 20;
const EXPORT_NAME = "lookalike-removals";
// One row per file to remove; the CSV's columns and the JSON's fields, in this order.
const COLUMNS = ["path", "id", "kind", "group", "width", "height", "format", "size", "modified", "suggested"];
const KIND_TITLES = {exact: "Identical files", near: "Near-duplicates"};

let page = null;  // what page.js lends: showError, clearError, leaveSearch
const view = {
  open: false,
  threshold: null,     // of the groups shown (the server's default until the person sets one)
  nextOffset: null,
  seq: 0,              // number of the newest request; answers to older ones are dropped
  copies: new Map(),   // key -> copy shown (a file of identical files, an image of near-duplicates)
  chosen: new Set(),   // keys of the copies ticked for removal (each copy is shown once: a key is unique)
  totals: null,        // {exact, near} groups in the library
};

// --- what a copy is --------------------------------------------------------------------------

// A group from the API as copies side by side: identical files one per path, near-duplicates one per image.
function copiesOf(group, number) {
  if (group.kind === "exact") {
    return group.files.map((file) => ({
      key: `exact:${group.image_id}:${file.path}`, kind: "exact", group: number, id: group.image_id,
      paths: [file.path], width: group.width, height: group.height, format: group.format, size: group.size,
      modified: file.modified, suggested: file.suggested,
      thumbnail_url: group.thumbnail_url, file_url: group.file_url,
    }));
  }
  return group.images.map((image) => ({
    key: `near:${image.id}`, kind: "near", group: number, id: image.id, paths: image.paths,
    width: image.width, height: image.height, format: image.format, size: image.size,
    modified: image.modified, suggested: image.suggested, score: image.score, link: image.link,
    thumbnail_url: image.thumbnail_url, file_url: image.file_url,
  }));
}

export function fileSize(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = -1;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value >= 100 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

// --- showing groups ----------------------------------------------------------------------------

function copyElement(copy) {
  const node = $("duplicate-copy-template").content.firstElementChild.cloneNode(true);
  node.dataset.key = copy.key;
  node.dataset.id = copy.id;
  node.classList.toggle("keep", copy.suggested === "keep");
  showPreview(node.querySelector("img"), node, copy);
  node.querySelector(".dup-badge").textContent = copy.suggested === "keep" ? "Suggested keep" : "";
  node.querySelector(".dup-dims").textContent = `${copy.width} × ${copy.height}`;
  node.querySelector(".dup-size").textContent = fileSize(copy.size);
  node.querySelector(".dup-format").textContent = copy.format;
  const path = node.querySelector(".dup-path");
  path.textContent = fileName(copy.paths[0]) + (copy.paths.length > 1 ? ` (+${copy.paths.length - 1})` : "");
  path.title = copy.paths.join("\n");
  node.querySelector(".dup-modified").textContent = `modified ${copy.modified.slice(0, 10)}`;
  const similarity = node.querySelector(".dup-similarity");
  similarity.textContent = copy.kind === "near" ? `similarity ${copy.link.toFixed(3)}` : "";
  similarity.title = "Cosine similarity to its closest copy in the group (1 = identical)";
  node.querySelector(".dup-open").href = copy.file_url;
  const box = node.querySelector(".dup-check");
  box.checked = view.chosen.has(copy.key);
  box.setAttribute("aria-label", `Remove ${copy.paths[0]}`);
  box.addEventListener("change", () => choose(copy, box.checked));
  node.classList.toggle("chosen", box.checked);
  return node;
}

function groupElement(group, number) {
  const node = $("duplicate-group-template").content.firstElementChild.cloneNode(true);
  node.dataset.group = number;
  node.dataset.kind = group.kind;
  const copies = copiesOf(group, number);
  const count = plural(copies.length, group.kind === "exact" ? "file" : "image",
                       group.kind === "exact" ? "files" : "images");
  node.querySelector(".dup-group-title").textContent = `${number}. ${KIND_TITLES[group.kind]} · ${count}`;
  for (const copy of copies) {
    view.copies.set(copy.key, copy);
    if (copy.suggested === "remove") view.chosen.add(copy.key);
  }
  node.querySelector(".dup-copies").append(...copies.map(copyElement));
  updateGroup(node);
  return node;
}

// A group all of whose copies are ticked would leave nothing: say so.
function updateGroup(node) {
  const boxes = Array.from(node.querySelectorAll(".dup-check"));
  node.querySelector(".dup-warning").hidden = !boxes.every((b) => b.checked);
}

function choose(copy, on) {
  if (on) view.chosen.add(copy.key);
  else view.chosen.delete(copy.key);
  const node = document.querySelector(`#duplicate-groups .dup-copy[data-key="${CSS.escape(copy.key)}"]`);
  if (node) {
    node.classList.toggle("chosen", on);
    updateGroup(node.closest(".dup-group"));
  }
  updateChosen();
}

function removals() {
  const rows = new Map();  // by path: a file chosen twice (in a group of each kind) is listed once
  for (const key of view.chosen) {
    const copy = view.copies.get(key);
    if (!copy) continue;
    for (const path of copy.paths) {
      if (!rows.has(path)) {
        rows.set(path, {path, id: copy.id, kind: copy.kind, group: copy.group, width: copy.width,
                        height: copy.height, format: copy.format, size: copy.size, modified: copy.modified,
                        suggested: copy.suggested});
      }
    }
  }
  return Array.from(rows.values());
}

function updateChosen() {
  const rows = removals();
  const bytes = rows.reduce((sum, row) => sum + row.size, 0);
  $("duplicates-chosen").textContent = `${plural(rows.length, "file", "files")} chosen for removal` +
    (rows.length ? ` (${fileSize(bytes)})` : "");
  $("export-json").disabled = rows.length === 0;
  $("export-csv").disabled = rows.length === 0;
}

function summary() {
  const {exact, near} = view.totals;
  if (exact + near === 0) return `No duplicates at similarity ≥ ${view.threshold}.`;
  const shown = document.querySelectorAll("#duplicate-groups .dup-group").length;
  return `${plural(exact, "group", "groups")} of identical files · ${plural(near, "group", "groups")} of ` +
    `near-duplicates at similarity ≥ ${view.threshold} · showing ${shown.toLocaleString()}`;
}

async function load({offset = 0} = {}) {
  const seq = ++view.seq;
  page.clearError();
  $("duplicates-more").hidden = true;
  $("duplicates-summary").textContent = offset ? "Loading more groups…" : "Finding duplicates…";
  $("duplicate-groups").setAttribute("aria-busy", "true");
  const params = new URLSearchParams({offset: String(offset), limit: String(PAGE_SIZE)});
  if (view.threshold !== null) params.set("threshold", String(view.threshold));
  try {
    const body = await api(`/duplicates?${params}`);
    if (seq !== view.seq) return;
    view.threshold = body.threshold;
    view.totals = {exact: body.exact_total, near: body.near_total};
    $("duplicates-threshold").value = String(body.threshold);
    if (!offset) {  // groups found anew start from the suggestions; the export lists only copies shown
      $("duplicate-groups").replaceChildren();
      view.copies.clear();
      view.chosen.clear();
    }
    $("duplicate-groups").append(...body.groups.map((g, i) => groupElement(g, body.offset + i + 1)));
    view.nextOffset = body.next_offset;
    $("duplicates-more").hidden = body.next_offset === null;
    $("duplicates-summary").textContent = summary();
    updateChosen();
  } catch (err) {
    if (seq !== view.seq) return;
    $("duplicates-summary").textContent = "";
    page.showError(err.message);
  } finally {
    if (seq === view.seq) $("duplicate-groups").setAttribute("aria-busy", "false");
  }
}

// --- exporting the chosen removals ---------------------------------------------------------------

function csvField(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function removalsCsv(rows) {
  const lines = [COLUMNS.join(","), ...rows.map((row) => COLUMNS.map((c) => csvField(row[c])).join(","))];
  return lines.join("\r\n") + "\r\n";
}

export function removalsJson(rows) {
  const ordered = rows.map((row) => Object.fromEntries(COLUMNS.map((c) => [c, row[c]])));
  return JSON.stringify({threshold: view.threshold, removals: ordered}, null, 2) + "\n";
}

function download(text, type, extension) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${EXPORT_NAME}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 0);
}

// --- entering and leaving the view -----------------------------------------------------------------

export function openDuplicates({push = true} = {}) {
  page.leaveSearch();
  if (push && location.hash !== HASH) history.pushState(null, "", HASH);
  document.body.classList.add("duplicates-mode");
  $("duplicates-view").hidden = false;
  $("duplicates-link").setAttribute("aria-current", "page");
  if (!view.open) {
    view.open = true;
    load();
  }
}

export function leaveDuplicates() {
  if (!view.open) return;
  view.open = false;
  view.seq += 1;
  document.body.classList.remove("duplicates-mode");
  $("duplicates-view").hidden = true;
  $("duplicates-link").removeAttribute("aria-current");
}

export function isDuplicatesHash(hash) {
  return hash === HASH;
}

export function initDuplicates(pageApi) {
  page = pageApi;
  $("duplicates-link").addEventListener("click", (event) => {
    event.preventDefault();
    openDuplicates();
  });
  $("duplicates-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Number($("duplicates-threshold").value);
    if (!Number.isFinite(value)) return;
    view.threshold = value;
    load();
  });
  $("duplicates-more").addEventListener("click", () => view.nextOffset !== null && load({offset: view.nextOffset}));
  $("export-json").addEventListener("click", () => download(removalsJson(removals()), "application/json", "json"));
  $("export-csv").addEventListener("click", () => download(removalsCsv(removals()), "text/csv", "csv"));
}
