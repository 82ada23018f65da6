// Usage over time: every model's series in one `POST /api/stats` (no model named), and the few busiest models'
// own when charted by model; summed into time buckets per model or per endpoint and drawn by uPlot.

import { get, post, enc } from "./api.js";
import { h, fill, num, empty } from "./dom.js";

export const RANGES = [["hour", "Last hour"], ["day", "Last day"], ["month", "30 days"]];
export const TOP_SERIES = 6;      // models or endpoints charted by name; the rest summed into one series
const IN_FLIGHT = 2;              // requests for one chart open at once
const SPAN_S = { hour: 3600, day: 86400, month: 30 * 86400 };
const STEP_S = { hour: 60, day: 900, month: 86400 };
const RANGE_TEXT = { hour: "in the last hour", day: "in the last 24 hours", month: "in the last 30 days" };
const PALETTE = ["#1f6feb", "#e36209", "#1a7f37", "#8250df", "#cf222e", "#0598bc", "#bf8700"];
const OTHER_COLOR = "#6e7781";

const scope = (range, tenantId) => ({ since: Math.floor(Date.now() / 1000) - SPAN_S[range],
  ...(tenantId ? { tenant_id: tenantId } : {}) });

/** Every model's figures together (one tenant's with `tenantId`): all-time totals, the series since `range`. */
export function allStats(range, tenantId) {
  return post("/api/stats", scope(range, tenantId));
}

/** The models that have used tokens, most first (all time, from /api/token_counts; one tenant's with `tenantId`). */
export async function busiestModels(tenantId) {
  const counts = await get(`/api/token_counts${tenantId ? `?tenant_id=${enc(tenantId)}` : ""}`);
  const tokens = new Map();
  for (const row of counts.breakdown || []) tokens.set(row.model, (tokens.get(row.model) || 0) + (row.total_tokens || 0));
  return [...tokens].filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([m]) => m);
}

/** The first TOP_SERIES of `ranked` models' own figures, IN_FLIGHT requests at a time. */
export async function topModelStats(ranked, range, tenantId) {
  const models = ranked.slice(0, TOP_SERIES);
  const replies = new Array(models.length);
  let next = 0;
  let failed = false;
  async function worker() {
    while (!failed && next < models.length) {
      const i = next++;
      try {
        replies[i] = await post("/api/stats", { model: models[i], ...scope(range, tenantId) });
      } catch (err) {
        failed = true;                  // the others ask no more: the whole chart is asked for again later
        throw err;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, models.length) }, worker));
  return replies;
}

/**
 * Tokens per bucket over the range, zeros included (uPlot's columns): per endpoint from every model's series, or
 * per model from the busiest models' own; the TOP_SERIES largest by name, whatever else there is summed into one
 * "other" series, so the columns always add up to everything used.
 */
export function bucket({ all, top = [] }, range, groupBy) {
  const step = STEP_S[range];
  const now = Math.floor(Date.now() / 1000);
  const start = Math.floor((now - SPAN_S[range]) / step) * step;
  const count = Math.floor((now - start) / step) + 1;
  const x = Array.from({ length: count }, (_, i) => start + i * step);
  const column = () => new Array(count).fill(0);
  const sum = (values) => values.reduce((a, b) => a + b, 0);

  function add(groups, name, point) {
    let index = Math.floor((point.timestamp - start) / step);
    if (index < 0 && point.granularity === "day") index = 0;     // the day the range starts in
    if (index < 0 || index >= count || !point.total_tokens) return 0;
    if (!groups.has(name)) groups.set(name, column());
    groups.get(name)[index] += point.total_tokens;
    return point.total_tokens;
  }

  const endpoints = new Map();
  let total = 0;
  for (const point of all?.time_series || []) total += add(endpoints, point.endpoint || "cache", point);
  let named;
  if (groupBy === "model") {
    const models = new Map();
    for (const reply of top) for (const point of reply.time_series || []) add(models, reply.model, point);
    named = [...models];
  } else {
    named = [...endpoints].sort((a, b) => sum(b[1]) - sum(a[1]) || (a[0] < b[0] ? -1 : 1)).slice(0, TOP_SERIES);
  }
  const everything = column();
  for (const values of endpoints.values()) values.forEach((v, i) => { everything[i] += v; });
  const rest = everything.map((v, i) => Math.max(0, v - sum(named.map(([, values]) => values[i]))));
  const groups = sum(rest) ? [...named, [groupBy === "model" ? "other models" : "other endpoints", rest]] : named;
  return { x, names: groups.map(([name]) => name), columns: groups.map(([, values]) => values), total,
           other: sum(rest) > 0 };
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** A chart in `host`: `update(view, range, groupBy)` redraws it; an empty state when nothing is in range. */
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

  /** Redraw from `{all, top, models}`: every model's stats, the busiest models' own and how many have tokens. */
  function update(view, range, groupBy) {
    const data = bucket(view, range, groupBy);
    host.dataset.total = String(data.total);
    host.dataset.groups = data.names.join(",");
    const what = groupBy === "model" ? "model" : "endpoint";
    const named = data.names.length - (data.other ? 1 : 0);
    const more = groupBy === "model" && view.models > TOP_SERIES ? ` (${num(view.models - TOP_SERIES)} more with tokens)` : "";
    summary.textContent = data.total
      ? `${num(data.total)} tokens ${RANGE_TEXT[range]}, ${named} ${what}${named === 1 ? "" : "s"}` +
        (data.other ? `; “${data.names.at(-1)}” sums the rest${more}` : "")
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
      series: [{}, ...data.names.map((name, i) => {
        const color = data.other && i === data.names.length - 1 ? OTHER_COLOR : PALETTE[i % PALETTE.length];
        return { label: name, stroke: color, fill: `${color}1f`, width: 2, points: { show: false },
                 value: (u, v) => (v == null ? "–" : num(v)) };
      })],
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
