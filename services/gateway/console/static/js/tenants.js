// Tenants (admin): list and create; one tenant's usage chart, limits and their use, models, and keys
// (issued once, with a copy button; revoked with a second click).

import { get, post, put, del, enc } from "./api.js";
import { h, fill, ago, when, badge, empty, busy, showError, clearError, toast, panel, segmented } from "./dom.js";
import { RANGES, loadStats, usageChart } from "./charts.js";
import { quotasPanel, periodPanel } from "./limits.js";

export function render(main, context) {
  return context.params[0] ? detail(main, context, context.params[0]) : list(main);
}

// --- the list -------------------------------------------------------------------------------------

function list(main) {
  const errorSlot = h("div", { hidden: true });
  const formError = h("div", { id: "create-tenant-error", hidden: true });
  const table = h("div", {}, h("p", { class: "loading" }, "Loading tenants…"));
  const id = h("input", { id: "tenant-id", name: "tenant_id", required: true, autocomplete: "off", placeholder: "acme" });
  const name = h("input", { id: "tenant-name", name: "display_name", autocomplete: "off", placeholder: "Acme Corp" });
  const all = h("input", { id: "tenant-all", type: "checkbox", name: "all_models", checked: true });
  const create = h("button", { type: "submit", class: "primary" }, "Create tenant");
  const form = h("form", { class: "inline", id: "create-tenant" },
    h("label", { class: "field" }, "Tenant id", id), h("label", { class: "field" }, "Display name", name),
    h("label", { class: "check" }, all, "May use every model"), create);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(create, formError, async () => {
      const reply = await post("/api/admin/tenants",
        { tenant_id: id.value.trim(), display_name: name.value.trim(), all_models: all.checked });
      toast(`Tenant ${reply.resource?.tenant_id || id.value} created`);
      location.hash = `#/tenants/${enc(id.value.trim())}`;
    });
  });

  fill(main, h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Tenants")),
    panel("New tenant", [], form, formError), errorSlot, panel("All tenants", [], table));

  get("/api/admin/tenants").then((tenants) => {
    if (!tenants.length) {
      fill(table, empty("No tenants yet", h("span", {}, "Create one above, then issue it a key.")));
      return;
    }
    fill(table, h("div", { class: "table-wrap" }, h("table", { id: "tenant-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "Tenant"), h("th", {}, "Name"), h("th", {}, "Models"),
        h("th", { class: "hide-narrow" }, "Changed"))),
      h("tbody", {}, tenants.map((t) => h("tr", { dataset: { tenant: t.tenant_id } },
        h("td", {}, h("a", { href: `#/tenants/${enc(t.tenant_id)}` }, t.tenant_id)),
        h("td", {}, t.display_name || h("span", { class: "muted" }, "–")),
        h("td", {}, t.all_models ? "every model" : "assigned only"),
        h("td", { class: "hide-narrow", title: when(t.updated_at) }, ago(t.updated_at))))))));
  }, (err) => { fill(table); showError(errorSlot, err, "Tenants"); });
  id.focus();
}

// --- one tenant -----------------------------------------------------------------------------------

function detail(main, { live }, tenantId) {
  const base = `/api/admin/tenants/${enc(tenantId)}`;
  let gone = false;
  let range = "hour";
  let timer = 0;
  const headError = h("div", { hidden: true });
  const subtitle = h("span", { class: "muted" });
  const chartHost = h("div", { id: "tenant-chart" });
  const chart = usageChart(chartHost, () => [h("span", {}, "Issue the tenant a key below and make a call with it.")]);
  const chartError = h("div", { hidden: true });
  const quotas = quotasPanel(tenantId, h("span", {}, "Set limits below: tokens per day or month, requests, rates, a budget."));
  const usage = periodPanel(tenantId);
  const models = modelsPanel(base, tenantId, subtitle);
  const keys = keysPanel(base, tenantId);
  const limits = limitsPanel(base, tenantId, () => quotas.reload());

  fill(main,
    h("div", { class: "page-head" }, h("a", { href: "#/tenants" }, "← Tenants"),
      h("h1", { tabindex: "-1" }, tenantId), subtitle),
    headError,
    panel("Usage", [segmented("Range", RANGES, range, (value) => { range = value; drawChart(); })], chartError, chartHost),
    quotas.section, usage.section,
    limits, models.section, keys);

  let shownTotal = 0;
  async function drawChart(expectMore = false, tries = 0) {
    try {
      const counts = await get("/api/token_counts");
      const names = new Set((counts.breakdown || []).map((row) => row.model));
      models.assigned().forEach((m) => names.add(m));
      const replies = await loadStats([...names].sort(), range, tenantId);
      if (gone) return;
      clearError(chartError);
      chart.update(replies, range, "model");
      const total = Number(chartHost.dataset.total || 0);
      if (expectMore && total <= shownTotal && tries < 4) {   // the usage log is behind the stream: ask again
        timer = setTimeout(() => drawChart(true, tries + 1), 1200);
        return;
      }
      shownTotal = total;
      if (expectMore) { quotas.reload(); usage.reload(); }
    } catch (err) {
      if (!gone) showError(chartError, err, "Usage chart");
    }
  }

  get(base).then((tenant) => {
    models.setAllModels(tenant.all_models);
    subtitle.textContent = tenant.display_name || "";
  }, (err) => showError(headError, err, `Tenant ${tenantId}`));
  models.reload().then(() => drawChart());

  const unsubscribe = live.subscribe((snapshot) => {
    if (!(snapshot.recorded || []).some((call) => call.tenant_id === tenantId)) return;
    clearTimeout(timer);
    timer = setTimeout(() => drawChart(true), 1200);
  });
  return () => { gone = true; unsubscribe(); clearTimeout(timer); };
}

function modelsPanel(base, tenantId, subtitle) {
  let assigned = [];
  let allModels = null;
  const errorSlot = h("div", { hidden: true });
  const access = h("p", { class: "small" });
  const toggle = h("button", { type: "button", id: "toggle-all-models" }, "…");
  const content = h("div");
  const select = h("select", { id: "assign-model", name: "model_id", required: true });
  const isDefault = h("input", { type: "checkbox", id: "assign-default" });
  const assign = h("button", { type: "submit" }, "Assign model");
  const form = h("form", { class: "inline", id: "assign-form" },
    h("label", { class: "field" }, "Model", select), h("label", { class: "check" }, isDefault, "Default model"), assign);
  const section = panel("Models", [toggle], access, errorSlot, content, form);
  section.id = "models";

  function setAllModels(value) {
    allModels = value;
    access.textContent = value ? "This tenant may use every model; assignments set its default, priority and prices."
      : "This tenant may use only the models assigned here.";
    toggle.textContent = value ? "Limit to assigned models" : "Allow every model";
  }

  toggle.addEventListener("click", () => busy(toggle, errorSlot, async () => {
    await put(base, { all_models: !allModels });
    setAllModels(!allModels);
    toast(allModels ? `${tenantId} may use every model` : `${tenantId} may use its assigned models only`);
  }));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(assign, errorSlot, async () => {
      await post(`${base}/models`, { model_id: select.value, is_default: isDefault.checked });
      toast(`${select.value} assigned to ${tenantId}`);
      isDefault.checked = false;
      await reload();
    });
  });

  async function reload() {
    try {
      const [rows, catalog] = await Promise.all([get(`${base}/models`), get("/api/admin/models")]);
      assigned = rows.map((r) => r.model_id);
      clearError(errorSlot);
      const free = catalog.map((m) => m.model_id).filter((m) => !assigned.includes(m));
      fill(select, free.map((m) => h("option", { value: m }, m)));
      form.hidden = !free.length;
      if (!rows.length) {
        fill(content, empty("No models assigned", h("span", {}, free.length ? "Assign one below." : "Register a model first.")));
        return;
      }
      fill(content, h("div", { class: "table-wrap" }, h("table", { id: "assignments" },
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Default"), h("th", { class: "num" }, "Priority"),
          h("th", { class: "hide-narrow" }, "Price in / out per 1M"), h("th", {}, ""))),
        h("tbody", {}, rows.map((r) => {
          const remove = h("button", { type: "button", class: "danger" }, "Remove");
          remove.addEventListener("click", () => busy(remove, errorSlot, async () => {
            await del(`${base}/models/${enc(r.model_id)}`);
            toast(`${r.model_id} removed from ${tenantId}`);
            await reload();
          }));
          return h("tr", { dataset: { model: r.model_id } }, h("td", {}, r.model_id, r.enabled ? "" : badge("disabled", "warn")),
            h("td", {}, r.is_default ? badge("default", "ok") : ""), h("td", { class: "num" }, String(r.priority)),
            h("td", { class: "hide-narrow" }, r.input_price_per_1m == null && r.output_price_per_1m == null
              ? h("span", { class: "muted" }, "model's price") : `$${r.input_price_per_1m ?? "–"} / $${r.output_price_per_1m ?? "–"}`),
            h("td", {}, remove));
        })))));
    } catch (err) {
      showError(errorSlot, err, "Models");
    }
  }

  return { section, reload, setAllModels, assigned: () => assigned };
}

function keysPanel(base, tenantId) {
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
      const keys = await get(`${base}/keys`);
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

const LIMIT_FIELDS = [
  ["daily_tokens", "Tokens per day"], ["monthly_tokens", "Tokens per month"], ["monthly_requests", "Requests per month"],
  ["rpm", "Requests per minute"], ["tpm", "Tokens per minute"], ["key_rpm", "Requests / min per key"],
  ["key_tpm", "Tokens / min per key"], ["default_max_tokens", "Default max_tokens"],
];

function limitsPanel(base, tenantId, onSaved) {
  let current = { limits: {}, models: {} };
  const errorSlot = h("div", { hidden: true });
  const scope = h("select", { id: "limit-scope", name: "scope" }, h("option", { value: "" }, "Whole tenant"));
  const inputs = Object.fromEntries(LIMIT_FIELDS.map(([field]) =>
    [field, h("input", { id: `limit-${field}`, name: field, type: "number", min: 0, step: 1, inputmode: "numeric", placeholder: "no limit" })]));
  inputs.budget_usd = h("input", { id: "limit-budget_usd", name: "budget_usd", type: "number", min: 0, step: "any", placeholder: "no budget" });
  const period = h("select", { id: "limit-budget_period", name: "budget_period" },
    ["month", "week", "day"].map((p) => h("option", { value: p }, p)));
  const timezone = h("input", { id: "limit-timezone", name: "timezone", autocomplete: "off", placeholder: "UTC" });
  const timezoneField = h("label", { class: "field" }, "Time zone (IANA)", timezone);
  const save = h("button", { type: "submit", class: "primary" }, "Save limits");
  const form = h("form", { id: "limits-form" },
    h("div", { class: "limits-form" },
      h("label", { class: "field" }, "Applies to", scope),
      LIMIT_FIELDS.map(([field, label]) => h("label", { class: "field" }, label, inputs[field])),
      h("label", { class: "field" }, "Budget (USD)", inputs.budget_usd), h("label", { class: "field" }, "Budget period", period),
      timezoneField, save),
    h("p", { class: "muted small" }, "Leave a field empty for no limit. Changes apply to the next call."));
  const section = panel("Set limits", [], errorSlot, form);
  section.id = "set-limits";

  function show() {
    const values = scope.value ? current.models[scope.value] || {} : current.limits;
    for (const [field, input] of Object.entries(inputs)) input.value = values[field] ?? "";
    period.value = values.budget_period || "month";
    timezone.value = values.timezone || "";
    timezoneField.hidden = Boolean(scope.value);
  }

  scope.addEventListener("change", show);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(save, errorSlot, async () => {
      const body = {};
      for (const [field, input] of Object.entries(inputs)) body[field] = input.value === "" ? null : Number(input.value);
      body.budget_period = period.value;
      if (!scope.value) body.timezone = timezone.value.trim() || null;
      const path = scope.value ? `${base}/models/${enc(scope.value)}/limits` : `${base}/limits`;
      const reply = await put(path, body);
      if (scope.value) current.models[scope.value] = reply.limits; else current.limits = reply.limits;
      toast(reply.changed ? `Limits of ${tenantId}${scope.value ? ` / ${scope.value}` : ""} saved` : "Nothing changed");
      onSaved();
    });
  });

  Promise.all([get(`${base}/limits`), get("/api/admin/models")]).then(([limits, models]) => {
    current = limits;
    for (const m of models) scope.append(h("option", { value: m.model_id }, `Model ${m.model_id}`));
    show();
  }, (err) => showError(errorSlot, err, "Limits"));
  return section;
}
