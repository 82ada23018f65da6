// Usage over time: `POST /api/stats` per model, summed into time buckets per model or per endpoint, drawn by uPlot.

import { post } from "./api.js";
import { h, fill, num, empty } from "./dom.js";

export const RANGES = [["hour", "Last hour"], ["day", "Last day"], ["month", "30 days"]];
const SPAN_S = { hour: 3600, day: 86400, month: 30 * 86400 };
const STEP_S = { hour: 60, day: 900, month: 86400 };
const RANGE_TEXT = { hour: "in the last hour", day: "in the last 24 hours", month: "in the last 30 days" };
const PALETTE = ["#1f6feb", "#e36209", "#1a7f37", "#8250df", "#cf222e", "#0598bc", "#bf8700", "#6e7781"];

/** Every model's stats since the start of `range` (one tenant's with `tenantId`), asked for in parallel. */
export async function loadStats(models, range, tenantId) {
  const since = Math.floor(Date.now() / 1000) - SPAN_S[range];
  const body = (model) => (tenantId ? { model, since, tenant_id: tenantId } : { model, since });
  return Promise.all(models.map((model) => post("/api/stats", body(model))));
}

/** All-time totals over the models' stats. */
export function totals(replies) {
  const sum = { calls: 0, errors: 0, input: 0, output: 0, cost: 0 };
  for (const r of replies) {
    sum.calls += r.calls || 0;
    sum.errors += r.errors || 0;
    sum.input += r.input_tokens || 0;
    sum.output += r.output_tokens || 0;
    sum.cost += r.cost_usd || 0;
  }
  return sum;
}

/** Tokens per bucket and group (model or endpoint) over the range, zeros included: uPlot's columns. */
export function bucket(replies, range, groupBy) {
  const step = STEP_S[range];
  const now = Math.floor(Date.now() / 1000);
  const start = Math.floor((now - SPAN_S[range]) / step) * step;
  const count = Math.floor((now - start) / step) + 1;
  const x = Array.from({ length: count }, (_, i) => start + i * step);
  const groups = new Map();
  let total = 0;
  for (const reply of replies) {
    for (const point of reply.time_series || []) {
      let index = Math.floor((point.timestamp - start) / step);
      if (index < 0 && point.granularity === "day") index = 0;     // the day the range starts in
      if (index < 0 || index >= count || !point.total_tokens) continue;
      const name = groupBy === "model" ? reply.model : point.endpoint || "cache";
      if (!groups.has(name)) groups.set(name, new Array(count).fill(0));
      groups.get(name)[index] += point.total_tokens;
      total += point.total_tokens;
    }
  }
  const names = [...groups.keys()].sort();
  return { x, names, columns: names.map((n) => groups.get(n)), total };
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** A chart in `host`: `update(replies, range, groupBy)` redraws it; an empty state when nothing is in range. */
export function usageChart(host, emptyHint) {
  const summary = h("p", { class: "chart-summary", "aria-live": "polite" });
  const canvas = h("div", { class: "chart", role: "img" });
  const placeholder = h("div");
  fill(host, summary, canvas, placeholder);
  let plot = null;
  let shape = "";

  new ResizeObserver(() => {
    if (plot && canvas.clientWidth) plot.setSize({ width: canvas.clientWidth, height: 260 });
  }).observe(canvas);

  function update(replies, range, groupBy) {
    const data = bucket(replies, range, groupBy);
    host.dataset.total = String(data.total);
    host.dataset.groups = data.names.join(",");
    const what = groupBy === "model" ? "model" : "endpoint";
    summary.textContent = data.total
      ? `${num(data.total)} tokens ${RANGE_TEXT[range]}, ${data.names.length} ${what}${data.names.length === 1 ? "" : "s"}`
      : "";
    canvas.setAttribute("aria-label", `Tokens per ${what} ${RANGE_TEXT[range]}: ${data.names
      .map((n, i) => `${n} ${num(data.columns[i].reduce((a, b) => a + b, 0))}`).join(", ") || "none"}`);
    if (!data.total) {
      plot?.destroy();
      plot = null;
      shape = "";
      canvas.hidden = true;
      fill(placeholder, empty(`No tokens ${RANGE_TEXT[range]}`, ...emptyHint()));
      return;
    }
    canvas.hidden = false;
    placeholder.replaceChildren();
    const nextShape = `${range}|${groupBy}|${data.names.join("\u0000")}`;
    const columns = [data.x, ...data.columns];
    if (plot && shape === nextShape) {
      plot.setData(columns);
      return;
    }
    plot?.destroy();
    shape = nextShape;
    const muted = cssVar("--muted");
    const grid = { stroke: cssVar("--line"), width: 1 };
    plot = new window.uPlot({
      width: canvas.clientWidth || 600,
      height: 260,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
      series: [{}, ...data.names.map((name, i) => ({
        label: name, stroke: PALETTE[i % PALETTE.length], fill: `${PALETTE[i % PALETTE.length]}1f`, width: 2,
        points: { show: false }, value: (u, v) => (v == null ? "–" : num(v)),
      }))],
      axes: [
        { stroke: muted, grid, ticks: grid },
        { stroke: muted, grid, ticks: grid, size: 56, values: (u, splits) => splits.map((v) => num(v)) },
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    }, columns, canvas);
  }

  return { update };
}
