// Result cards and label chips; every text from the server is set with textContent.

// Labels worth showing: the top one always, the others only when the model gives them some weight.
export const QUERY_LABEL_MIN = 0.01;
const CARD_LABEL_MIN = 0.05;

export function percent(probability) {
  const value = probability * 100;
  if (value >= 10) return `${Math.round(value)}%`;
  return value >= 0.1 ? `${value.toFixed(1)}%` : "<0.1%";
}

export function notableLabels(labels, minimum, most) {
  return (labels || []).filter((label, index) => index === 0 || label.probability >= minimum).slice(0, most);
}

export function labelElement(label, tag) {
  const el = document.createElement(tag);
  el.className = "label";
  el.append(label.name + " ");
  const p = document.createElement("span");
  p.className = "probability";
  p.textContent = percent(label.probability);
  el.append(p);
  return el;
}

export function fileName(path) {
  return (path || "").split(/[\\/]/).pop();
}

// The WebP thumbnail, else the original (browsers show no TIFF and not every HEIC or AVIF),
// else the "no-preview" class on `node` (which says so) instead of a broken image.
export function showPreview(img, node, item) {
  const sources = [item.thumbnail_url, item.file_url].filter(Boolean);
  let tried = 0;
  img.addEventListener("error", () => {
    if (tried < sources.length) img.src = sources[tried++];
    else node.classList.add("no-preview");
  });
  img.src = sources[tried++];
  img.alt = fileName(item.path || (item.paths || [])[0]);
}

// A card for a search hit (mode "score") or a browsed image (mode "probability" of `className`).
export function card(item, {mode, className, onChoose}) {
  const node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  node.__item = item;
  showPreview(node.querySelector("img"), node, item);
  const score = node.querySelector(".score");
  if (mode === "score") {
    score.textContent = Number(item.score).toFixed(3);
    score.title = "Similarity (cosine, 1 = identical)";
  } else if (mode === "label") {
    score.textContent = percent(item.score);
    score.title = "Score for this label (the threshold decides who has it)";
  } else if (typeof item.probability === "number") {
    score.textContent = percent(item.probability);
    score.title = `Probability of ${item.matched_class ? item.matched_class.name : className}`;
  }
  node.querySelector(".card-id").textContent = `#${item.id}`;
  const labels = node.querySelector(".card-labels");
  for (const label of notableLabels(item.labels, CARD_LABEL_MIN, 2)) labels.append(labelElement(label, "span"));
  for (const custom of item.custom_labels || []) {
    const chip = document.createElement("span");
    chip.className = "label custom";
    chip.textContent = custom.name;
    chip.title = `Your label ${custom.name} (score ${percent(custom.score)})`;
    labels.append(chip);
  }
  const path = node.querySelector(".card-path");
  path.textContent = fileName(item.path);
  path.title = item.path || "";
  node.querySelector(".card-open").href = item.file_url;
  node.querySelector(".card-search").addEventListener("click", () => onChoose(item));
  return node;
}
