// Sign-in for servers that need an API key: the key is exchanged for a session cookie (HttpOnly, so no
// script of this page can read it) and the page shows only what the key may do.
import {api, setCsrfToken} from "./api.js";

const $ = (id) => document.getElementById(id);

const WHAT = {
  read: "search and browse",
  write: "search, browse and change labels",
  admin: "search, browse, change labels and read the metrics",
};

// What the server said of the caller: `uploadDir` is where images added over HTTP live (null unless
// the caller may write).
export const session = {uploadDir: null};

// Mark the body with what the caller may do (may-read, may-write, may-admin): CSS hides the rest.
function show(info) {
  for (const scope of ["read", "write", "admin"]) {
    document.body.classList.toggle(`may-${scope}`, info.may.includes(scope));
  }
  setCsrfToken(info.csrf_token);
  session.uploadDir = info.upload_dir || null;
  const signedIn = info.keys_required && info.signed_in;
  $("sign-in").hidden = !info.keys_required || info.signed_in;
  $("whoami").hidden = !signedIn;
  if (signedIn) {
    $("whoami-text").textContent = `Signed in with key ${info.name} (${info.scope}): you may ${WHAT[info.scope]}.`;
  }
  document.body.classList.toggle("signed-out", info.keys_required && !info.signed_in);
}

// Resolves once the page may load its data: at once when no key is needed or a session exists,
// otherwise after a successful sign-in.
export async function initSession() {
  let info;
  try {
    info = await api("/session");
  } catch (err) {
    info = {keys_required: false, signed_in: false, may: ["read", "write", "admin"], csrf_token: null};
  }
  show(info);
  document.addEventListener("lookalike:signed-out", () => {
    if (document.body.classList.contains("signed-out")) return;
    show({keys_required: true, signed_in: false, may: [], csrf_token: null});
    $("sign-in-error").textContent = "Your session ended: sign in again.";
    $("sign-in-error").hidden = false;
  });
  $("sign-out").addEventListener("click", async () => {
    await api("/session", {method: "DELETE"}).catch(() => null);
    window.location.reload();
  });
  return new Promise((resolve) => {
    let started = false;
    const start = () => { if (!started) { started = true; resolve(); } };
    $("sign-in-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("sign-in-error").hidden = true;
      try {
        const signed = await api("/session", {
          method: "POST",
          headers: {"Content-Type": "application/json"},
          body: JSON.stringify({key: $("sign-in-key").value.trim()}),
        });
        $("sign-in-key").value = "";
        show(signed);
        start();
      } catch (err) {
        $("sign-in-error").textContent = err.message;
        $("sign-in-error").hidden = false;
      }
    });
    if (!info.keys_required || info.signed_in) start();
  });
}
