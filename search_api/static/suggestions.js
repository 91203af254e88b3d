// Class and concept suggestions under a text box (the ARIA combobox pattern): typing asks the
// server, arrows or the pointer highlight, Enter or a click chooses, Escape closes. Enter chooses
// the highlighted suggestion, else the first one shown; with none shown, the typed text is passed
// on for the page to check.
import {api, plural} from "./api.js";

const LIMIT = 10;
const DELAY_MS = 120;

export function attachSuggestions(input, list, {onChoose, onError}) {
  let timer = 0;
  let seq = 0;        // number of the newest request; older answers are dropped
  let items = [];
  let active = -1;

  function close() {
    items = [];
    active = -1;
    list.hidden = true;
    list.replaceChildren();
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  function choose(name) {
    clearTimeout(timer);
    seq += 1;
    input.value = "";
    close();
    onChoose(name);
  }

  function option(item, index) {
    const li = document.createElement("li");
    li.id = `${list.id}-${index}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", "false");
    li.dataset.name = item.name;
    if (item.count === 0) li.classList.add("none");
    if (Array.isArray(item.names) && item.names.length) li.title = item.names.join(", ");
    const name = document.createElement("span");
    name.className = "option-name";
    name.textContent = item.name;
    li.append(name);
    if (item.kind === "concept" || item.kind === "label") {
      const kind = document.createElement("span");
      kind.className = item.kind === "label" ? "kind yours" : "kind";
      kind.textContent = item.kind === "label" ? "your label" : "concept";
      kind.title = item.kind === "label" ? "A label you taught" : "A group of related classes";
      li.append(kind);
    }
    if (typeof item.count === "number") {
      const count = document.createElement("span");
      count.className = "option-count";
      count.textContent = plural(item.count, "image", "images");
      li.append(count);
    }
    li.addEventListener("mousedown", (event) => event.preventDefault());  // keep the focus in the box
    li.addEventListener("mouseenter", () => highlight(index));  // what looks highlighted is what Enter takes
    li.addEventListener("click", () => choose(item.name));
    return li;
  }

  function render(found) {
    items = found;
    active = -1;
    list.replaceChildren(...found.map(option));
    if (!found.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No class or concept of this library matches.";
      list.append(li);
    }
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
  }

  function highlight(index) {
    const options = list.querySelectorAll("[role=option]");
    active = index;
    options.forEach((el, i) => el.setAttribute("aria-selected", i === active ? "true" : "false"));
    options[active].scrollIntoView({block: "nearest"});
    input.setAttribute("aria-activedescendant", options[active].id);
  }

  function move(step) {
    if (!items.length) return;
    highlight((active + step + items.length) % items.length);
  }

  async function fetchFor(text) {
    const mine = ++seq;
    try {
      const params = new URLSearchParams({q: text, limit: String(LIMIT)});
      const body = await api(`/classes?${params}`);
      if (mine !== seq || input.value.trim() !== text) return;
      render((body.classes || []).slice(0, LIMIT));
    } catch (err) {
      if (mine === seq) onError(err);
    }
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    const text = input.value.trim();
    if (!text) {
      seq += 1;
      close();
      return;
    }
    timer = setTimeout(() => fetchFor(text), DELAY_MS);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") { event.preventDefault(); move(1); }
    else if (event.key === "ArrowUp") { event.preventDefault(); move(-1); }
    else if (event.key === "Escape") { close(); }
    else if (event.key === "Enter") {
      event.preventDefault();
      const shown = list.hidden ? [] : items;
      if (shown[active]) choose(shown[active].name);
      else if (shown.length) choose(shown[0].name);
      else if (input.value.trim()) choose(input.value.trim());
    }
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
  return {close};
}
