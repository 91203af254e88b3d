// What changes the library while the page is open: a running index job (a bar with rate and ETA) and
// the watcher ("N new photos indexed" as they arrive). The counts refresh without a reload.
import {api, plural} from "./api.js";

const POLL_BUSY_MS = 1000;  // while a job runs or the watcher has files waiting
const POLL_IDLE_MS = 5000;
const NEWS_MS = 8000;       // how long "N new photos indexed" stays

const $ = (id) => document.getElementById(id);

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "time left not known yet";
  if (seconds <= 0) return "finishing";
  if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s left`;
  if (seconds < 3600) return `about ${Math.round(seconds / 60)} min left`;
  return `about ${(seconds / 3600).toFixed(1)} h left`;
}

function jobText(job) {
  if (job.state === "queued" || !job.total) return `Indexing: looking for photos (${plural(job.found, "file", "files")} found)`;
  const rate = job.images_per_second ? ` · ${job.images_per_second.toFixed(1)} images/s` : "";
  return `Indexing: ${job.done.toLocaleString()} of ${plural(job.total, "file", "files")}${rate} · ${duration(job.eta_seconds)}`;
}

function watcherText(watcher) {
  const parts = [`Watching ${plural(watcher.roots.length, "folder", "folders")}`];
  if (watcher.waiting) parts.push(`${plural(watcher.waiting, "file", "files")} being written`);
  if (watcher.vanished.length) parts.push(`${plural(watcher.vanished.length, "folder", "folders")} missing (nothing removed)`);
  return parts.join(" · ");
}

function render({job, watcher}) {
  const box = $("activity");
  const bar = $("activity-bar");
  if (!job && !watcher) {
    box.hidden = true;
    return;
  }
  bar.hidden = !job;
  if (job) {
    bar.max = Math.max(job.total, 1);
    bar.value = Math.min(job.done, bar.max);
  }
  $("activity-text").textContent = job ? jobText(job) : watcherText(watcher);
  box.hidden = false;
}

let newsTimer = null;

function showNews(text) {
  const news = $("activity-news");
  news.textContent = text;
  news.hidden = false;
  clearTimeout(newsTimer);
  newsTimer = setTimeout(() => { news.hidden = true; }, NEWS_MS);
}

// Polls GET /activity while the page is visible: every second while something is under way, else every
// five. `onCountsChanged` runs when the number of images changed (the page refreshes its statistics).
export function initActivity({onCountsChanged}) {
  let lastImages = null;
  async function poll() {
    let busy = false;
    if (document.visibilityState === "visible") {
      try {
        const activity = await api("/activity");
        render(activity);
        if (lastImages !== null && activity.images !== lastImages) {
          const added = activity.images - lastImages;
          if (added > 0) showNews(`${plural(added, "new photo", "new photos")} indexed`);
          onCountsChanged();
        }
        lastImages = activity.images;
        busy = Boolean(activity.job) || Boolean(activity.watcher && activity.watcher.waiting);
      } catch (err) {
        $("activity").hidden = true;  // progress is a courtesy: errors are shown by what the user asked for
      }
    }
    setTimeout(poll, busy ? POLL_BUSY_MS : POLL_IDLE_MS);
  }
  poll();
}
