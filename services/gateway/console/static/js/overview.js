// Overview: calls per second, tokens, errors and cost, moved live by the usage stream and settled from /api/stats
// (every model's together, one request); tokens over time per model or endpoint, the busiest by name and the rest
// summed; the calls just recorded.

import { h, fill, num, usd, rate, time, empty, badge, segmented, panel, showError, clearError } from "./dom.js";
import { RANGES, allStats, busiestModels, topModelStats, usageChart } from "./charts.js";

const RATE_WINDOW_S = 10;         // calls per second: calls that arrived in the last 10 s
const SETTLE_MS = 1200;           // figures are asked for again this long after the stream goes quiet...
const SETTLE_MAX_MS = 5000;       // ...and at least this often while it does not
const SETTLE_RETRIES = 5;         // asked again (a second apart) while the log is behind the stream
const FEED_ROWS = 25;
let markedFirstData = false;

const zero = () => ({ calls: 0, errors: 0, input: 0, output: 0 });

export function curlHint() {
  return [
    h("span", {}, "Send a call through the gateway and it shows here within a second:"),
    h("pre", {}, `curl ${location.origin}/v1/chat/completions \\\n  -H 'Authorization: Bearer <key>' -H 'Content-Type: application/json' \\\n` +
      `  -d '{"model": "llama3.2", "messages": [{"role": "user", "content": "Hello"}]}'`),
  ];
}

export function render(main, { live, session }) {
  const admin = session.role === "admin";
  let range = "hour";
  let groupBy = "model";
  let base = null;                 // settled totals from /api/stats
  let delta = zero();              // calls the stream showed since those totals were asked for
  let arrivals = [];               // arrival times (ms) of calls, for calls per second
  let loading = false;
  let again = false;
  let settleTimer = 0;
  let lastSettled = 0;
  let retries = 0;
  let gone = false;
  const seen = new Set();

  const kpi = (id, label, hint) => h("div", { class: "kpi", id: `kpi-${id}` },
    h("div", { class: "label" }, label), h("div", { class: "value", "aria-live": "off" }, "–"),
    h("div", { class: "hint" }, hint));
  const cards = {
    rate: kpi("rate", "Calls / s", `last ${RATE_WINDOW_S} s`),
    calls: kpi("calls", "Calls", "all time"),
    input: kpi("input", "Tokens in", "all time"),
    output: kpi("output", "Tokens out", "all time"),
    errors: kpi("errors", "Errors", "all time"),
    cost: kpi("cost", "Cost", "all time, USD"),
  };
  const errorSlot = h("div", { hidden: true });
  const chartHost = h("div", { id: "usage-chart" });
  const chart = usageChart(chartHost, curlHint);
  const rows = h("tbody");
  const feedEmpty = empty("No calls since you opened this page", ...curlHint());
  const feedTable = h("div", { class: "table-wrap", hidden: true }, h("table", { id: "feed" },
    h("thead", {}, h("tr", {}, h("th", {}, "Time"), admin ? h("th", {}, "Tenant") : null, h("th", {}, "Model"),
      h("th", { class: "hide-narrow" }, "Endpoint"), h("th", { class: "num" }, "In"), h("th", { class: "num" }, "Out"),
      h("th", {}, "Outcome"))),
    rows));

  fill(main,
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Overview"),
      h("span", { class: "muted" }, admin ? "every tenant" : `tenant ${session.tenant || "yours"}`)),
    errorSlot,
    h("div", { class: "kpis", role: "group", "aria-label": "Usage figures" }, Object.values(cards)),
    panel("Tokens over time", [
      segmented("Range", RANGES, range, (value) => { range = value; settle(); }),
      segmented("Group by", [["model", "By model"], ["endpoint", "By endpoint"]], groupBy,
        (value) => { groupBy = value; settle(); }),
    ], chartHost),
    panel("Recent calls", [h("span", { class: "muted small" }, "live from the usage stream")], feedTable, feedEmpty));

  function show(card, text) {
    const value = card.querySelector(".value");
    if (value.textContent !== text) {
      value.textContent = text;
      card.classList.remove("bump");
      void card.offsetWidth;            // restart the highlight
      card.classList.add("bump");
    }
  }

  function showFigures() {
    const now = Date.now();
    arrivals = arrivals.filter((t) => now - t < RATE_WINDOW_S * 1000);
    show(cards.rate, rate(arrivals.length / RATE_WINDOW_S));
    if (!base) return;
    show(cards.calls, num(base.calls + delta.calls));
    show(cards.input, num(base.input + delta.input));
    show(cards.output, num(base.output + delta.output));
    show(cards.errors, num(base.errors + delta.errors));
    show(cards.cost, usd(base.cost));
  }

  async function settle() {
    if (gone) return;
    if (loading) { again = true; return; }
    loading = true;
    lastSettled = Date.now();
    const before = { ...delta };
    const [asked, grouped] = [range, groupBy];
    try {
      const [all, ranked] = await Promise.all([allStats(asked), grouped === "model" ? busiestModels() : []]);
      if (gone) return;
      const fetched = { calls: all.calls || 0, errors: all.errors || 0, input: all.input_tokens || 0,
                        output: all.output_tokens || 0, cost: all.cost_usd || 0 };
      if (base && fetched.calls < base.calls + before.calls && retries < SETTLE_RETRIES) {
        retries += 1;                   // the usage log has not recorded every call the stream showed yet
        again = true;
        return;
      }
      retries = 0;
      base = fetched;
      for (const k of Object.keys(delta)) delta[k] -= before[k];   // what arrived meanwhile still counts
      showFigures();
      clearError(errorSlot);
      if (!markedFirstData) {
        markedFirstData = true;
        performance.mark("console:first-data");
      }
      const top = await topModelStats(ranked, asked);
      if (!gone) chart.update({ all, top, models: ranked.length }, asked, grouped);
    } catch (err) {
      if (!gone) showError(errorSlot, err, "Usage figures");
    } finally {
      loading = false;
      if (again && !gone) { again = false; schedule(); }
    }
  }

  function schedule() {
    clearTimeout(settleTimer);
    const overdue = Date.now() - lastSettled > SETTLE_MAX_MS;
    settleTimer = setTimeout(settle, overdue ? 0 : SETTLE_MS);
  }

  function onSnapshot(snapshot) {
    const fresh = (snapshot.recorded || []).filter((call) => !seen.has(call.request_id));
    if (!fresh.length) return;
    const now = Date.now();
    for (const call of fresh) {
      seen.add(call.request_id);
      arrivals.push(now);
      delta.calls += 1;
      delta.input += call.input_tokens || 0;
      delta.output += call.output_tokens || 0;
      if (call.outcome !== "ok") delta.errors += 1;
      rows.prepend(feedRow(call, admin));
    }
    while (rows.children.length > FEED_ROWS) rows.lastChild.remove();
    if (seen.size > 5000) seen.clear();
    feedTable.hidden = false;
    feedEmpty.hidden = true;
    showFigures();
    schedule();
  }

  const unsubscribe = live.subscribe(onSnapshot);
  const ticker = setInterval(showFigures, 1000);
  settle();
  return () => {
    gone = true;
    unsubscribe();
    clearInterval(ticker);
    clearTimeout(settleTimer);
  };
}

function feedRow(call, admin) {
  const outcome = call.cache_hit ? badge("cache hit", "ok")
    : badge(call.outcome, call.outcome === "ok" ? "ok" : call.outcome === "cancelled" ? "warn" : "bad");
  return h("tr", { class: "fresh", dataset: { tenant: call.tenant_id } },
    h("td", { class: "nowrap" }, time(call.occurred_at)), admin ? h("td", {}, call.tenant_id) : null,
    h("td", {}, call.model), h("td", { class: "hide-narrow" }, call.endpoint_id || "–"),
    h("td", { class: "num" }, num(call.input_tokens)), h("td", { class: "num" }, num(call.output_tokens)),
    h("td", {}, outcome, call.estimated ? h("span", { class: "muted small" }, " estimated") : null));
}
