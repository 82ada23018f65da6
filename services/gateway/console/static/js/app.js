// The console's shell: sign-in with a key (kept in this tab's sessionStorage only), the role it has, navigation
// between pages by the URL's hash, and one live usage stream shared by every page.

import { session, get, onUnauthorized, usageStream, newPage } from "./api.js";
import { h, fill, errorBox } from "./dom.js";
import * as overview from "./overview.js";

const PAGES = {
  overview: { title: "Overview", roles: ["admin", "member"], load: async () => overview },
  endpoints: { title: "Endpoints", roles: ["admin"], load: () => import("./endpoints.js") },
  tenants: { title: "Tenants", roles: ["admin"], load: () => import("./tenants.js") },
  limits: { title: "Limits", roles: ["member"], load: () => import("./limits.js") },
};

const main = document.getElementById("main");
const topbar = document.querySelector(".topbar");
const nav = document.getElementById("nav");
const liveBadge = document.getElementById("live");
let cleanup = null;
let navigation = 0;      // counts page changes: a page whose module arrives after a newer change is not drawn
let stream = null;
let signedIn = false;

/** The usage stream, shared: pages subscribe to its snapshots while they are shown. */
export const live = {
  subscribers: new Set(),
  state: "off",
  subscribe(fn) { this.subscribers.add(fn); return () => this.subscribers.delete(fn); },
};

function setLive(state, err) {
  live.state = state;
  liveBadge.dataset.state = state;
  liveBadge.querySelector(".label").textContent =
    { live: "live", reconnecting: "reconnecting…", error: "stream refused", off: "offline" }[state] || state;
  liveBadge.title = err ? `Live usage stream: ${err.message}` : "Live usage stream";
}

async function identify() {
  const me = await get("/api/auth/me");        // a key, a JWT or a user's token: its role and tenant
  session.role = me.role === "admin" ? "admin" : "member";
  session.tenant = me.tenant_id || "";
}

/** The page shown is left: its timers and subscriptions stopped (cleanup), its requests aborted. */
function leavePage() {
  navigation += 1;
  const done = cleanup;
  cleanup = null;
  done?.();
  newPage();
}

function signOut(message) {
  signedIn = false;
  stream?.stop();
  stream = null;
  leavePage();
  for (const dialog of document.querySelectorAll("dialog")) {    // the show-once key among them: gone with the key
    for (const field of dialog.querySelectorAll("input")) field.value = "";
    dialog.close();
    dialog.remove();
  }
  session.key = "";
  session.role = session.tenant = "";
  setLive("off");
  topbar.hidden = true;
  renderSignIn(message);
}

function renderSignIn(message) {
  const slot = h("div", { hidden: !message });
  if (message) fill(slot, errorBox(message));
  const input = h("input", {
    id: "key", name: "key", type: "password", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "sy_…", "aria-describedby": "key-help",
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "panel signin", "aria-labelledby": "signin-title" },
    h("div", { class: "body" },
      h("h1", { id: "signin-title", tabindex: "-1" }, h("img", { src: "/ui/icon.svg", alt: "", width: 28, height: 28 }),
        "Switchyard console"),
      h("label", { class: "field", for: "key" }, "API key"),
      input,
      h("p", { id: "key-help", class: "muted small" },
        "An admin key shows everything; a member key shows its own tenant's usage and limits. ",
        "The key stays in this browser tab only and is forgotten when you close it."),
      slot, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    slot.hidden = true;
    session.key = input.value.trim();
    try {
      await identify();
      start();
    } catch (err) {
      session.key = "";
      fill(slot, errorBox(err.status === 401 ? { status: 401, message: `${err.message}. Check the key and try again.` } : err));
      slot.hidden = false;
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  input.focus();
}

function renderNav() {
  fill(nav, Object.entries(PAGES).filter(([, page]) => page.roles.includes(session.role))
    .map(([name, page]) => h("li", {}, h("a", { href: `#/${name}`, dataset: { page: name } }, page.title))));
  fill(document.getElementById("identity"),
    `${session.role === "admin" ? "Admin" : "Member"}${session.tenant ? ` · tenant ${session.tenant}` : ""}`);
}

function start() {
  signedIn = true;
  topbar.hidden = false;
  renderNav();
  stream = usageStream((snapshot) => live.subscribers.forEach((fn) => fn(snapshot)), setLive);
  // replaceState fires no hashchange: the page is drawn once, by the call below (location.replace drew it twice)
  if (!location.hash || location.hash === "#" || location.hash === "#/") history.replaceState(null, "", "#/overview");
  route();
}

function decodedPart(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;                         // a malformed escape (`%E0%A4%A`) is read as it is written
  }
}

async function route() {
  if (!signedIn) return;
  const [name = "overview", ...params] = location.hash.replace(/^#\/?/, "").split("/").map(decodedPart);
  // own pages only: `#/constructor` found Object.prototype's, and the page broke
  const page = Object.hasOwn(PAGES, name) ? PAGES[name] : PAGES.overview;
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  leavePage();
  const mine = navigation;
  document.title = `${page.title} · Switchyard`;
  if (!page.roles.includes(session.role)) {
    fill(main, h("section", { class: "panel" }, h("div", { class: "body" },
      h("h1", { tabindex: "-1" }, page.title),
      h("p", {}, session.role === "member"
        ? `This page needs an admin key; you are signed in with a member key of tenant ${session.tenant || "(yours)"}. `
        : "This page is for member keys. ", h("a", { href: "#/overview" }, "Go to the overview"), "."))));
    main.querySelector("h1").focus();
    return;
  }
  try {
    const module = await page.load();
    if (mine !== navigation) return;          // another page was asked for while this one's module loaded
    cleanup = module.render(main, { live, params, session }) || null;
  } catch (err) {
    if (mine !== navigation) return;
    fill(main, errorBox(err, `Could not open ${page.title}`));
  }
  main.querySelector("h1")?.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => signOut());
onUnauthorized((err) => { if (signedIn) signOut({ status: 401, message: `${err.message}: signed out.` }); });

/** A key kept from earlier in this tab: signed in again, or the error with a retry (the key is kept unless refused). */
function resume() {
  identify().then(start, (err) => {
    if (err.status === 401) {
      signOut({ status: 401, message: `${err.message}: signed out.` });
      return;
    }
    const retry = h("button", { type: "button", class: "primary" }, "Try again");
    retry.addEventListener("click", resume);
    fill(main, h("section", { class: "panel signin" }, h("div", { class: "body" },
      h("h1", { tabindex: "-1" }, "Switchyard console"), errorBox(err), retry)));
    retry.focus();
  });
}

if (session.key) resume();
else renderSignIn();
