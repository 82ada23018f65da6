// Tenants (admin): list and create; one tenant's usage chart, limits and their use, models and keys.

import { get, getAll, getPage, post, put, del, enc } from "./api.js";
import { h, fill, ago, when, badge, empty, busy, errorBox, showError, clearError, toast, panel, segmented } from "./dom.js";
import { RANGES, allStats, busiestModels, topModelStats, usageChart } from "./charts.js";
import { keysPanel } from "./keys.js";
import { quotasPanel, periodPanel, limitsForm } from "./limits.js";

// A tenant id as the registry allows it (libs/catalog/rules.py IDENTIFIER): one taken from the URL is checked
// against it, so that a crafted link (`#/tenants/demo%2Fmodels%2Fx`) cannot point this page's requests at
// another route of the admin API.
const TENANT_ID = /^[a-z0-9][a-z0-9_-]{1,49}$/;
const PAGE = 100;               // tenants asked for at once: the rest are found by the filter or "Show more"

export function render(main, context) {
  const tenantId = context.params[0];
  if (tenantId === undefined) return list(main);
  if (!TENANT_ID.test(tenantId) || context.params.length > 1) {
    fill(main, h("section", { class: "panel" }, h("div", { class: "body" },
      h("h1", { tabindex: "-1" }, "No such tenant"),
      h("p", {}, "A tenant id is 2 to 50 of a-z 0-9 _ -, starting with a letter or digit. ",
        h("a", { href: "#/tenants" }, "Go to the tenants"), "."))));
    return null;
  }
  return detail(main, context, tenantId);
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

  const filter = h("input", { id: "tenant-filter", type: "search", autocomplete: "off", placeholder: "Filter by id or name",
    "aria-label": "Filter tenants by id or name", disabled: true });
  fill(main, h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Tenants")),
    panel("New tenant", [], form, formError), errorSlot, panel("All tenants", [filter], table));

  // Pages of PAGE tenants from the gateway, searched there (`q`: the id or the name holds it, case aside), so that
  // ten thousand tenants are never all fetched: "Show more" asks for the page after the last row shown. Answers to
  // an earlier filter that arrive late are dropped (`asked`); `data-q` on the count says which filter is drawn.
  let asked = 0;
  let everyone = 0;                // tenants in all, as the last unfiltered page said
  let timer = 0;
  async function load(wanted, rows = [], after = "") {
    const mine = ++asked;
    try {
      const page = await getPage("/api/admin/tenants", { limit: PAGE, after, q: wanted });
      if (mine !== asked) return;
      if (!wanted) everyone = page.total;
      draw(wanted, [...rows, ...page.items], page);
    } catch (err) {
      if (err.name === "AbortError" || mine !== asked) return;
      fill(table);
      showError(errorSlot, err, "Tenants");
    }
  }
  function draw(wanted, rows, page) {
    clearError(errorSlot);
    filter.disabled = false;
    if (!rows.length) {
      fill(table, wanted
        ? empty(`No tenant matches “${wanted}”`, h("span", {}, "Clear the filter, or create it above."))
        : empty("No tenants yet", h("span", {}, "Create one above, then issue it a key.")));
      return;
    }
    const more = Math.max(page.total - rows.length, page.hasMore ? 1 : 0);
    fill(table, h("div", { class: "table-wrap" }, h("table", { id: "tenant-list" },
      h("thead", {}, h("tr", {}, h("th", {}, "Tenant"), h("th", {}, "Name"), h("th", {}, "Models"),
        h("th", { class: "hide-narrow" }, "Changed"))),
      h("tbody", {}, rows.map((t) => h("tr", { dataset: { tenant: t.tenant_id } },
        h("td", {}, h("a", { href: `#/tenants/${enc(t.tenant_id)}` }, t.tenant_id)),
        h("td", {}, t.display_name || h("span", { class: "muted" }, "–")),
        h("td", {}, t.all_models ? "every model" : "assigned only"),
        h("td", { class: "hide-narrow", title: when(t.updated_at) }, ago(t.updated_at))))))),
      h("p", { id: "tenant-count", class: "muted", dataset: { q: wanted } },
        `${rows.length.toLocaleString()} of ${page.total.toLocaleString()}`
        + (wanted ? ` matching (${everyone.toLocaleString()} tenants)` : " tenants"),
        page.hasMore && page.nextAfter ? h("button", { id: "tenant-more", type: "button",
          onclick: (event) => { event.currentTarget.disabled = true; load(wanted, rows, page.nextAfter); } },
        `Show ${Math.min(more, PAGE).toLocaleString()} more`) : null));
  }
  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => load(filter.value.trim()), 200);
  });
  load("");
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
  const limits = limitsForm(base, tenantId, () => quotas.reload());

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
      const asked = range;
      const [all, ranked] = await Promise.all([allStats(asked, tenantId), busiestModels(tenantId)]);
      const top = await topModelStats(ranked, asked, tenantId);
      if (gone) return;
      clearError(chartError);
      chart.update({ all, top, models: ranked.length }, asked, "model");
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
  }, (err) => {
    if (err.status !== 404 || gone) { showError(headError, err, `Tenant ${tenantId}`); return; }
    gone = true;                    // no such tenant: no forms to fill in for it, only the way back
    clearTimeout(timer);
    fill(main,
      h("div", { class: "page-head" }, h("a", { href: "#/tenants" }, "← Tenants"), h("h1", { tabindex: "-1" }, tenantId)),
      h("div", { id: "tenant-missing" }, errorBox(err, `Tenant ${tenantId}`)));
  });
  models.reload().then(() => drawChart());

  const unsubscribe = live.subscribe((snapshot) => {
    if (!(snapshot.recorded || []).some((call) => call.tenant_id === tenantId)) return;
    clearTimeout(timer);
    timer = setTimeout(() => drawChart(true), 1200);
  });
  return () => { gone = true; unsubscribe(); clearTimeout(timer); };
}

function modelsPanel(base, tenantId, subtitle) {
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
      const [rows, catalog] = await Promise.all([getAll(`${base}/models`), getAll("/api/admin/models")]);
      const assigned = rows.map((r) => r.model_id);
      clearError(errorSlot);
      const free = catalog.map((m) => m.model_id).filter((m) => !assigned.includes(m));
      fill(select, free.map((m) => h("option", { value: m }, m)));
      form.hidden = !free.length;
      if (!rows.length) {
        fill(content, empty("No models assigned", h("span", {}, free.length ? "Assign one below." : "Register a model first.")));
        return;
      }
      fill(content, h("div", { class: "table-wrap" }, h("table", { id: "assignments" },
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Default"), h("th", { class: "num hide-narrow" }, "Priority"),
          h("th", { class: "hide-narrow" }, "Price in / out per 1M"), h("th", {}, ""))),
        h("tbody", {}, rows.map((r) => {
          const remove = h("button", { type: "button", class: "danger" }, "Remove");
          remove.addEventListener("click", () => busy(remove, errorSlot, async () => {
            await del(`${base}/models/${enc(r.model_id)}`);
            toast(`${r.model_id} removed from ${tenantId}`);
            await reload();
          }));
          return h("tr", { dataset: { model: r.model_id } }, h("td", {}, r.model_id, r.enabled ? "" : badge("disabled", "warn")),
            h("td", {}, r.is_default ? badge("default", "ok") : ""), h("td", { class: "num hide-narrow" }, String(r.priority)),
            h("td", { class: "hide-narrow" }, r.input_price_per_1m == null && r.output_price_per_1m == null
              ? h("span", { class: "muted" }, "model's price") : `$${r.input_price_per_1m ?? "–"} / $${r.output_price_per_1m ?? "–"}`),
            h("td", {}, remove));
        })))));
    } catch (err) {
      showError(errorSlot, err, "Models");
    }
  }

  return { section, reload, setAllModels };
}
