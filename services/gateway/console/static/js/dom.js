// Small DOM and formatting helpers: elements built from data (never HTML strings), errors and empty states in place.

/** An element: h("td", {class: "num"}, "12"); attributes starting with "on" become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * Text that came from elsewhere (an upstream's error or version, a name), isolated: a bidirectional control in it
 * (U+202E reverses what follows) cannot reorder the console's own words around it.
 */
export function bdi(text) {
  return h("bdi", {}, text);
}

/** The API's error, in place: "403 Admin role required". */
export function errorBox(err, what = "") {
  const status = err && err.status ? String(err.status) : "";
  const message = (err && err.message) || String(err);
  return h("div", { class: "error", role: "alert" },
    status ? h("strong", {}, status) : null, what ? `${what}: ` : "", bdi(message));
}

export function showError(slot, err, what) {
  fill(slot, errorBox(err, what));
  slot.hidden = false;
}

export function clearError(slot) {
  slot.replaceChildren();
  slot.hidden = true;
}

/** An empty state: what is missing, and what to do next. */
export function empty(title, ...next) {
  return h("div", { class: "empty" }, h("strong", {}, title), ...next);
}

export function badge(text, tone = "") {
  return h("span", { class: `badge ${tone}`.trim() }, text);
}

const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
const cents = new Intl.NumberFormat("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const small = new Intl.NumberFormat("en", { maximumSignificantDigits: 2, maximumFractionDigits: 20 });

export function num(value) {
  const n = Number(value) || 0;
  return Math.abs(n) >= 1e6 ? compact.format(n) : integer.format(n);
}

/** "$1,234.50", and under a cent two significant digits written out ("$0.00000055", never "$5.5e-7"). */
export function usd(value) {
  const n = Number(value) || 0;
  if (n === 0) return "$0";
  return `$${(Math.abs(n) < 0.01 ? small : cents).format(n)}`;
}

export function rate(value) {
  const n = Number(value) || 0;
  return n >= 10 ? n.toFixed(0) : n.toFixed(1);
}

/** "12 s ago", "3 min ago", or a date for older instants. */
export function ago(iso) {
  if (!iso) return "never";
  const at = typeof iso === "number" ? iso * 1000 : Date.parse(iso);
  if (Number.isNaN(at)) return String(iso);
  const s = Math.round((Date.now() - at) / 1000);
  if (s < -5) return `in ${until(-s)}`;
  if (s < 5) return "just now";
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return new Date(at).toLocaleString();
}

function until(s) {
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s <= 48 * 3600) return `${Math.round(s / 3600)} h`;
  const days = Math.round(s / 86400);
  return `${days} day${days === 1 ? "" : "s"}`;          // "resets in 25 days", not "in 599 h"
}

export function when(iso) {
  if (!iso) return "";
  const at = Date.parse(iso);
  return Number.isNaN(at) ? String(iso) : new Date(at).toLocaleString();
}

export function time(iso) {
  const at = Date.parse(iso);
  return Number.isNaN(at) ? "" : new Date(at).toLocaleTimeString();
}

export function toast(text) {
  const box = document.getElementById("toasts");
  const item = h("div", { class: "toast" }, text);
  box.append(item);
  while (box.children.length > 3) box.firstChild.remove();
  setTimeout(() => item.remove(), 4000);
}

/** Run an action from a button: disabled while it runs, the error shown in `slot`. */
export async function busy(button, slot, action) {
  button.disabled = true;
  if (slot) clearError(slot);
  try {
    return await action();
  } catch (err) {
    if (slot) showError(slot, err);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

/** A segmented control of buttons with aria-pressed; calls `onPick(value)`. */
export function segmented(label, options, current, onPick) {
  const group = h("div", { class: "seg", role: "group", "aria-label": label });
  for (const [value, text] of options) {
    const button = h("button", { type: "button", "aria-pressed": String(value === current), dataset: { value } }, text);
    button.addEventListener("click", () => {
      for (const other of group.children) other.setAttribute("aria-pressed", String(other === button));
      onPick(value);
    });
    group.append(button);
  }
  return group;
}

/** A panel: header with a title and actions, then a body. */
export function panel(title, actions = [], ...body) {
  const head = h("header", {}, h("h2", {}, title), actions.length ? h("div", { class: "actions" }, ...actions) : null);
  return h("section", { class: "panel", "aria-label": title }, head, h("div", { class: "body" }, ...body));
}
