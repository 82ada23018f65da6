// A tenant's keys (admin): listed, issued (the key shown once, with a copy button), revoked with a second click.

import { getAll, post, del, enc } from "./api.js";
import { h, fill, ago, when, badge, empty, busy, showError, clearError, toast, panel } from "./dom.js";

export function keysPanel(base, tenantId) {
  const errorSlot = h("div", { hidden: true });
  const content = h("div", {}, h("p", { class: "loading" }, "Loading keys…"));
  const name = h("input", { id: "key-name", name: "name", autocomplete: "off", placeholder: "ci pipeline" });
  const role = h("select", { id: "key-role", name: "role" }, h("option", { value: "member" }, "member"),
    h("option", { value: "admin" }, "admin"));
  const expires = h("input", { id: "key-expires", name: "expires_at", type: "datetime-local" });
  const issue = h("button", { type: "submit", class: "primary" }, "Issue key");
  const form = h("form", { class: "inline", id: "issue-key" }, h("label", { class: "field" }, "Name", name),
    h("label", { class: "field" }, "Role", role), h("label", { class: "field" }, "Expires (optional)", expires), issue);
  const section = panel("Keys", [], form, errorSlot, content);
  section.id = "keys";

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(issue, errorSlot, async () => {
      const body = { name: name.value.trim(), role: role.value };
      if (expires.value) body.expires_at = new Date(expires.value).toISOString();
      const reply = await post(`${base}/keys`, body);
      name.value = "";
      expires.value = "";
      await reload();
      showKeyOnce(reply.key, reply.key_id, tenantId, issue);
    });
  });

  async function reload() {
    try {
      const keys = await getAll(`${base}/keys`);
      clearError(errorSlot);
      if (!keys.length) {
        fill(content, empty("No keys", h("span", {}, "Issue one above; it is shown once, so copy it then.")));
        return;
      }
      keys.sort((a, b) => Number(a.revoked) - Number(b.revoked) || String(b.updated_at).localeCompare(String(a.updated_at)));
      fill(content, h("div", { class: "table-wrap" }, h("table", { id: "key-list" },
        h("thead", {}, h("tr", {}, h("th", {}, "Key id"), h("th", {}, "Name"), h("th", { class: "hide-narrow" }, "Role"),
          h("th", { class: "hide-narrow" }, "Expires"), h("th", {}, "State"), h("th", {}, ""))),
        h("tbody", {}, keys.map((k) => keyRow(k, errorSlot, reload))))));
    } catch (err) {
      fill(content);
      showError(errorSlot, err, "Keys");
    }
  }

  reload();
  return section;
}

function keyRow(k, errorSlot, reload) {
  let armed = 0;
  const revoke = h("button", { type: "button", class: "danger", dataset: { action: "revoke" } }, "Revoke");
  revoke.addEventListener("click", () => {
    if (!armed) {                       // a second click within 4 s revokes: no key is lost to a slip
      revoke.textContent = "Confirm revoke";
      armed = setTimeout(() => { armed = 0; revoke.textContent = "Revoke"; }, 4000);
      return;
    }
    clearTimeout(armed);
    busy(revoke, errorSlot, async () => {
      await del(`/api/admin/keys/${enc(k.key_id)}`);
      toast(`Key ${k.key_id} revoked`);
      await reload();
    });
  });
  const expired = k.expires_at && Date.parse(k.expires_at) <= Date.now();
  return h("tr", { dataset: { key: k.key_id, revoked: String(k.revoked) } },
    h("td", { class: "mono" }, k.key_id), h("td", {}, k.name || h("span", { class: "muted" }, "–")), h("td", { class: "hide-narrow" }, k.role),
    h("td", { class: "hide-narrow", title: when(k.expires_at) }, k.expires_at ? ago(k.expires_at) : "never"),
    h("td", {}, k.revoked ? badge("revoked", "bad") : expired ? badge("expired", "warn") : badge("active", "ok")),
    h("td", {}, k.revoked ? "" : revoke));
}

function showKeyOnce(secret, keyId, tenantId, returnFocus) {
  const field = h("input", { id: "new-key", readonly: true, value: secret, "aria-label": "The new key" });
  const copy = h("button", { type: "button", class: "primary", id: "copy-key" }, "Copy");
  const done = h("button", { type: "button", id: "key-done" }, "Done");
  const dialog = h("dialog", { "aria-labelledby": "new-key-title" }, h("div", { class: "body" },
    h("h2", { id: "new-key-title" }, `New key for ${tenantId}`),
    h("p", {}, "Copy it now: it is shown this once. The gateway keeps only its hash."),
    h("div", { class: "secret" }, field, copy),
    h("p", { class: "muted small" }, `Key id ${keyId}. Send it as Authorization: Bearer <key>.`),
    h("menu", {}, done)));
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
    } catch {
      field.select();
      document.execCommand("copy");
    }
    copy.textContent = "Copied";
    toast("Key copied to the clipboard");
  });
  const close = () => { dialog.close(); };
  done.addEventListener("click", close);
  dialog.addEventListener("close", () => { field.value = ""; dialog.remove(); returnFocus?.focus(); });
  document.body.append(dialog);
  dialog.showModal();
  field.select();
}
