// Custom labels on the page: select results (or a browsed class) and teach a label from them; a label's
// page lists its images best first, and one click on a borderline one confirms or rejects it (the label is
// relearned at once). Every text from the server is set with textContent.
import {api, plural} from "./api.js";
import {percent} from "./cards.js";

const $ = (id) => document.getElementById(id);
const SCORING_POLL_MS = 1000;
const SCORING_POLL_MAX = 120;

let page = null;             // what page.js lends: begin, beginMore, isCurrent, showPage, failed, ...
const selected = new Map();  // image id -> item, kept while the views change
let current = null;          // the label whose page is open: its JSON from the server

export const LABEL_PREFIX = "label:";

function json(method, body) {
  return {method, headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
}

function labelPath(name) {
  return `/labels/${encodeURIComponent(name)}`;
}

// --- selecting images ------------------------------------------------------------------------

function updateSelectionBar() {
  const count = selected.size;
  $("selection-bar").hidden = count === 0;
  $("selection-count").textContent = `${plural(count, "image", "images")} selected`;
  for (const box of document.querySelectorAll("#results .card-check")) {
    box.checked = selected.has(Number(box.closest(".card").dataset.id));
  }
}

function toggle(item, on) {
  if (on) selected.set(item.id, item);
  else selected.delete(item.id);
  updateSelectionBar();
}

export function clearSelection() {
  selected.clear();
  updateSelectionBar();
}

// Called for every result card the page shows: a checkbox to select it, and on a label's page the
// borderline mark and the buttons that make it an example.
export function decorate(node, item, mode) {
  const box = node.querySelector(".card-check");
  box.checked = selected.has(item.id);
  box.addEventListener("change", () => toggle(item, box.checked));
  if (mode === "label") markMember(node, item);
  return node;
}

function selectAllShown() {
  for (const node of document.querySelectorAll("#results .card")) {
    const item = node.__item;
    if (item) selected.set(item.id, item);
  }
  updateSelectionBar();
}

async function teach(event) {
  event.preventDefault();
  const name = $("teach-name").value.trim();
  if (!name || selected.size === 0) return;
  page.clearError();
  $("teach-button").disabled = true;
  try {
    const label = await api("/labels", json("POST", {name, positive_ids: Array.from(selected.keys())}));
    $("teach-name").value = "";
    clearSelection();
    refreshLabels();
    openLabel(label.name);
  } catch (err) {
    page.showError(err.message);
  } finally {
    $("teach-button").disabled = false;
  }
}

// --- the labels of this library -------------------------------------------------------------------

export async function refreshLabels() {
  try {
    const body = await api("/labels");
    const labels = body.labels || [];
    $("labels-bar").hidden = labels.length === 0;
    $("label-list").replaceChildren(...labels.map((label) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "label-chip";
      button.dataset.name = label.name;
      button.textContent = label.name;
      const count = document.createElement("span");
      count.className = "label-count";
      count.textContent = label.state === "stale" ? "relearn" : label.count.toLocaleString();
      button.append(count);
      button.title = `Open the label ${label.name}`;
      button.addEventListener("click", () => openLabel(label.name));
      li.append(button);
      return li;
    }));
  } catch (err) {
    // the bar stays as it was
  }
}

// --- a label's page ------------------------------------------------------------------------------

function facts(label, total) {
  const parts = [plural(label.count, "image has it", "images have it"),
                 `threshold ${percent(label.threshold)}`,
                 `${plural(label.positive_ids.length, "example", "examples")}` +
                 (label.negative_ids.length ? `, ${label.negative_ids.length} rejected` : "")];
  if (label.quality) parts.push(`estimated ranking quality ${percent(label.quality.auc)}`);
  if (label.state === "scoring") parts.push("scoring the library…");
  if (label.state === "empty") parts.push("no example is left: add some");
  if (total > label.count) parts.push(`${plural(total - label.count, "near miss", "near misses")} below`);
  return parts.join(" · ");
}

function showHeader(label, total) {
  current = label;
  $("label-view").hidden = false;
  $("label-title").textContent = label.name;
  $("label-facts").textContent = facts(label, total);
}

function markMember(node, item) {
  node.classList.toggle("member", item.member);
  node.classList.toggle("borderline", item.borderline);
  node.classList.toggle("example", item.example === "positive");
  const badge = node.querySelector(".card-badge");
  const text = item.example === "positive" ? "Example" : item.borderline ? "Borderline: is it?"
    : item.member ? "" : "Below the threshold";
  badge.textContent = text;
  badge.hidden = !text;
  const judge = node.querySelector(".card-judge");
  judge.hidden = item.example === "positive";
  judge.querySelector(".confirm").addEventListener("click", () => judgeImage(item, true));
  judge.querySelector(".reject").addEventListener("click", () => judgeImage(item, false));
}

export async function openLabel(name, {push = true, offset = 0, poll = 0} = {}) {
  const append = offset > 0;
  const seq = append ? page.beginMore() : page.begin({kind: "label", name}, "Loading the label…");
  if (!append) {
    if (push) page.setHash({label: name});
    $("query").hidden = true;
    $("results-title").textContent = `Images of your label ${name}, best first`;
  }
  try {
    const body = await api(`${labelPath(name)}/members?offset=${offset}`);
    if (!page.isCurrent(seq)) return;
    showHeader(body.label, body.total);
    page.showPage(body.members, "label", append, body.next_offset);
    const borderline = body.members.filter((m) => m.borderline && m.example !== "positive").length;
    page.setStatus(body.total === 0 ? "No image has a score for this label yet."
      : `${plural(body.label.count, "image has", "images have")} the label` +
        (borderline ? ` · ${plural(borderline, "borderline image", "borderline images")}: is it one? Yes or No ` +
          "teaches the label" : ""));
    if (body.label.state === "scoring" && poll < SCORING_POLL_MAX) {
      setTimeout(() => page.isCurrent(seq) && openLabel(name, {push: false, poll: poll + 1}), SCORING_POLL_MS);
    }
  } catch (err) {
    page.failed(seq, err, append);
  }
}

async function judgeImage(item, positive) {
  if (!current) return;
  const name = current.name;
  page.clearError();
  page.setStatus(positive ? "Adding it to the label and learning again…" : "Leaving it out and learning again…",
                 true);
  try {
    await api(labelPath(name), json("PATCH", positive ? {add_positive_ids: [item.id]} : {add_negative_ids: [item.id]}));
    refreshLabels();
    openLabel(name, {push: false});
  } catch (err) {
    page.setStatus("");
    page.showError(err.message);
  }
}

async function deleteLabel() {
  if (!current || !window.confirm(`Delete the label ${current.name}? Its images stay.`)) return;
  try {
    await api(labelPath(current.name), {method: "DELETE"});
    if (page.filter() === LABEL_PREFIX + current.name) page.setFilter(null, {run: false});
    current = null;
    $("label-view").hidden = true;
    refreshLabels();
    page.reset();
  } catch (err) {
    page.showError(err.message);
  }
}

export function leaveLabel() {
  current = null;
  $("label-view").hidden = true;
}

export function initLabels(pageApi) {
  page = pageApi;
  $("teach-form").addEventListener("submit", teach);
  $("select-all").addEventListener("click", selectAllShown);
  $("selection-clear").addEventListener("click", clearSelection);
  $("label-filter").addEventListener("click", () => current && page.setFilter(LABEL_PREFIX + current.name));
  $("label-delete").addEventListener("click", deleteLabel);
  updateSelectionBar();
  refreshLabels();
}
