// Limits and how much of each is used (`/api/v1/tenant-models/quotas`), and a period's usage
// (`/api/v1/tenant-models/usage`): a member's own page, and the same panels on an admin's tenant page,
// with the form that sets a tenant's limits or one of its models'.

import { get, getAll, put, enc } from "./api.js";
import { h, fill, num, usd, ago, when, empty, busy, segmented, panel, showError, toast, clearError } from "./dom.js";

const QUOTA_TEXT = {
  daily: "Tokens per day", monthly: "Tokens per month", requests: "Requests per month", budget: "Budget (USD)",
  rpm: "Requests per minute", tpm: "Tokens per minute", key_rpm: "Requests per minute, per key",
  key_tpm: "Tokens per minute, per key",
};

const query = (tenantId, extra = "") => (tenantId ? `?tenant_id=${enc(tenantId)}${extra ? `&${extra}` : ""}` : extra ? `?${extra}` : "");

/** The quotas panel: `reload()` asks again; `tenantId` for an admin looking at another tenant. */
export function quotasPanel(tenantId, noLimitsHint) {
  const errorSlot = h("div", { hidden: true });
  const content = h("div", {}, h("p", { class: "loading" }, "Loading limits…"));
  const section = panel("Limits and use", [], errorSlot, content);
  section.id = "quotas";

  async function reload() {
    try {
      const reply = await get(`/api/v1/tenant-models/quotas${query(tenantId)}`);
      clearError(errorSlot);
      if (!reply.quotas.length) {
        fill(content, empty("No limits set", noLimitsHint));
        return;
      }
      fill(content, h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Limit"), h("th", {}, "Model"), h("th", { class: "hide-narrow" }, "Used"),
          h("th", { class: "num" }, "Used / limit"), h("th", { class: "num hide-narrow" }, "Remaining"),
          h("th", { class: "hide-narrow" }, "Resets"))),
        h("tbody", {}, reply.quotas.map((q) => quotaRow(q)))),
        h("p", { class: "muted small" }, `Periods follow the tenant's time zone, ${reply.timezone}.`)));
    } catch (err) {
      fill(content);
      showError(errorSlot, err, "Limits");
    }
  }

  reload();
  return { section, reload };
}

function quotaRow(q) {
  const ratio = q.limit > 0 ? q.used / q.limit : 0;
  const tone = ratio >= 1 ? "bad" : ratio >= 0.8 ? "warn" : "";
  const money = q.quota_type === "budget";
  const show = (v) => (money ? usd(v) : num(v));
  const used = h("span");
  used.style.width = `${Math.min(100, ratio * 100).toFixed(1)}%`;   // the CSSOM: the policy allows no style attribute
  return h("tr", { dataset: { quota: q.quota_type, model: q.model_id || "" } },
    h("td", {}, QUOTA_TEXT[q.quota_type] || q.quota_type),
    h("td", {}, q.model_id || h("span", { class: "muted" }, "all models")),
    h("td", { class: "hide-narrow" }, h("div", { class: `bar ${tone}`, role: "meter", "aria-valuemin": 0, "aria-valuemax": q.limit,
      "aria-valuenow": q.used, "aria-label": `${QUOTA_TEXT[q.quota_type] || q.quota_type} used` },
    used)),
    h("td", { class: "num nowrap" }, `${show(q.used)} / ${show(q.limit)}`),
    h("td", { class: "num hide-narrow" }, show(q.remaining)),
    h("td", { class: "hide-narrow nowrap", title: when(q.reset_time) }, ago(q.reset_time)));
}

/** Usage in the current day, week or month, per model. */
export function periodPanel(tenantId) {
  let period = "day";
  const errorSlot = h("div", { hidden: true });
  const content = h("div", {}, h("p", { class: "loading" }, "Loading usage…"));
  const section = panel("Usage this period", [
    segmented("Period", [["day", "Today"], ["week", "This week"], ["month", "This month"]], period,
      (value) => { period = value; reload(); }),
  ], errorSlot, content);
  section.id = "period-usage";

  async function reload() {
    try {
      const reply = await get(`/api/v1/tenant-models/usage${query(tenantId, `period=${period}`)}`);
      clearError(errorSlot);
      const u = reply.usage;
      const head = h("p", { class: "muted small" }, `Since ${when(reply.period_start)} (${reply.timezone}); resets ${ago(reply.reset_time)}.`);
      if (!u.requests && !u.reserved_tokens) {
        fill(content, head, empty("No settled calls in this period yet", h("span", {}, "Calls appear here once the usage log has recorded them.")));
        return;
      }
      fill(content, head, h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Tokens in"),
          h("th", { class: "num" }, "Tokens out"), h("th", { class: "num" }, "Cost"))),
        h("tbody", {}, reply.models.map((m) => h("tr", { dataset: { model: m.model_id } }, h("td", {}, m.model_id),
          h("td", { class: "num" }, num(m.requests)), h("td", { class: "num" }, num(m.input_tokens)),
          h("td", { class: "num" }, num(m.output_tokens)), h("td", { class: "num" }, usd(m.cost_usd))))),
        h("tfoot", {}, h("tr", {}, h("th", {}, "Total"), h("th", { class: "num" }, num(u.requests)),
          h("th", { class: "num" }, num(u.input_tokens)), h("th", { class: "num" }, num(u.output_tokens)),
          h("th", { class: "num" }, usd(u.cost_usd)))))));
    } catch (err) {
      fill(content);
      showError(errorSlot, err, "Usage");
    }
  }

  reload();
  return { section, reload };
}

/** A member's page: its own tenant's limits and usage. */
export function render(main, { live, session }) {
  const quotas = quotasPanel("", h("span", {}, "Your tenant has no limits: an operator sets them."));
  const usage = periodPanel("");
  fill(main, h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Limits"),
    h("span", { class: "muted" }, `tenant ${session.tenant || "yours"}`)), quotas.section, usage.section);
  let timer = 0;
  const unsubscribe = live.subscribe((snapshot) => {
    if (!(snapshot.recorded || []).length) return;
    clearTimeout(timer);
    timer = setTimeout(() => { quotas.reload(); usage.reload(); }, 1500);
  });
  return () => { unsubscribe(); clearTimeout(timer); };
}

const LIMIT_FIELDS = [
  ["daily_tokens", "Tokens per day"], ["monthly_tokens", "Tokens per month"], ["monthly_requests", "Requests per month"],
  ["rpm", "Requests per minute"], ["tpm", "Tokens per minute"], ["key_rpm", "Requests / min per key"],
  ["key_tpm", "Tokens / min per key"], ["default_max_tokens", "Default max_tokens"],
];

export function limitsForm(base, tenantId, onSaved) {
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

  Promise.all([get(`${base}/limits`), getAll("/api/admin/models")]).then(([limits, models]) => {
    current = limits;
    for (const m of models) scope.append(h("option", { value: m.model_id }, `Model ${m.model_id}`));
    show();
  }, (err) => showError(errorSlot, err, "Limits"));
  return section;
}
