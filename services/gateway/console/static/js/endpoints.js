// Endpoints (admin): status, breaker, last probe, latency, models served and loaded; reset a breaker, test an
// endpoint, refresh the registry, each through the admin API.

import { get, getAll, post, enc } from "./api.js";
import { h, fill, ago, when, badge, bdi, empty, busy, showError, clearError, toast, panel } from "./dom.js";

const POLL_MS = 5000;

const CIRCUIT_TONE = { closed: "ok", half_open: "warn", open: "bad" };
const CIRCUIT_TEXT = { closed: "closed", half_open: "half-open", open: "open" };

export function render(main) {
  let gone = false;
  let timer = 0;
  const errorSlot = h("div", { hidden: true });
  const refreshSlot = h("div", { class: "result", "aria-live": "polite" });
  const list = h("div", { class: "endpoints", id: "endpoint-list" }, h("p", { class: "loading" }, "Loading endpoints…"));
  const lastRefresh = h("span", { class: "muted small" });
  let shown = "";                  // what the cards show, to redraw only on a change
  const results = new Map();      // endpoint id -> the last test or reset result shown on its card
  const refreshButton = h("button", { type: "button", class: "primary", id: "refresh-registry" }, "Refresh registry");

  refreshButton.addEventListener("click", () => busy(refreshButton, refreshSlot, async () => {
    fill(refreshSlot, "Probing every endpoint…");
    const reply = await post("/api/admin/registry/refresh");
    fill(refreshSlot, `Probed ${reply.probed} endpoint${reply.probed === 1 ? "" : "s"}: ${reply.healthy} healthy` +
      (reply.discovered ? `, ${reply.discovered} model list${reply.discovered === 1 ? "" : "s"} changed` : "") + ".");
    await load();
  }));

  fill(main,
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Endpoints"), lastRefresh,
      h("div", { class: "actions" }, refreshButton)),
    refreshSlot, errorSlot, list);

  async function load() {
    clearTimeout(timer);
    try {
      const [status, endpoints, circuits] = await Promise.all([
        get("/api/admin/registry/status"), getAll("/api/admin/endpoints"),
        get("/api/admin/circuits").catch((err) => ({ error: err })),
      ]);
      if (gone) return;
      clearError(errorSlot);
      if (circuits.error) showError(errorSlot, circuits.error, "Breaker details");
      const registered = new Map(endpoints.map((e) => [e.endpoint_id, e]));
      const breakers = new Map((circuits.error ? [] : circuits).map((c) => [c.endpoint_id, c]));
      lastRefresh.textContent = status.last_refresh ? `last probe ${ago(status.last_refresh)}` : "";
      if (!status.endpoints.length) {
        shown = "";
        fill(list, empty("No endpoints registered",
          h("span", {}, "Register one with POST /api/admin/endpoints, a template (POST /api/admin/templates/{name}/apply) " +
            "or a switchyard.yaml given to `switchyard up --config`.")));
      } else if (JSON.stringify([status.endpoints, endpoints, circuits]) !== shown) {   // unchanged: leave the DOM be
        shown = JSON.stringify([status.endpoints, endpoints, circuits]);
        const focused = document.activeElement?.closest?.(".endpoint")?.dataset.endpoint;
        const focusedAction = document.activeElement?.dataset?.action;
        fill(list, status.endpoints.map((e) => card(e, registered.get(e.endpoint_id), breakers.get(e.endpoint_id))));
        if (focused && focusedAction) {
          list.querySelector(`[data-endpoint="${CSS.escape(focused)}"] [data-action="${focusedAction}"]`)?.focus();
        }
      }
    } catch (err) {
      if (!gone) showError(errorSlot, err, "Endpoints");
    }
    if (!gone) timer = setTimeout(load, POLL_MS);
  }

  function card(status, registered, breaker) {
    const id = status.endpoint_id;
    const probe = status.probe;
    const health = status.healthy === null ? badge("not probed yet") : status.healthy ? badge("healthy", "ok") : badge("failing", "bad");
    const circuit = status.circuit;
    const serving = registered?.serving_models || [];
    const loaded = new Set(probe?.loaded || []);
    const result = h("div", { class: "result", "aria-live": "polite" });
    if (results.has(id)) fill(result, results.get(id));
    const errorBox = h("div", { hidden: true });

    const test = h("button", { type: "button", dataset: { action: "test" } }, "Test endpoint");
    test.addEventListener("click", () => busy(test, errorBox, async () => {
      fill(result, "Testing…");
      const r = await post(`/api/admin/endpoints/${enc(id)}/test`);
      const text = r.success     // what the upstream said (its version, its error) isolated from our words
        ? [`Test passed in ${Math.round(r.latency_ms)} ms: ${r.models.length} model${r.models.length === 1 ? "" : "s"} advertised`,
          r.version ? [", version ", bdi(r.version)] : "", "."]
        : [`Test failed after ${Math.round(r.latency_ms)} ms: `, r.error ? bdi(r.error) : `status ${r.status}`, "."];
      results.set(id, h("span", { class: r.success ? "" : "error" }, text));
      fill(result, results.get(id));
    }));
    const reset = h("button", { type: "button", dataset: { action: "reset" }, class: circuit === "closed" ? "" : "primary" },
      "Reset breaker");
    reset.addEventListener("click", () => busy(reset, errorBox, async () => {
      const r = await post(`/api/admin/circuits/${enc(id)}/reset`);
      results.set(id, h("span", {}, `Breaker ${CIRCUIT_TEXT[r.state] || r.state} (was ${CIRCUIT_TEXT[r.previous] || r.previous || "closed"}).`));
      shown = "";
      toast(`Breaker of ${id} reset`);
      await load();
    }));

    const circuitDetail = [];
    if (status.circuit_reason) circuitDetail.push(status.circuit_reason.replaceAll("_", " "));
    if (status.circuit_since) circuitDetail.push(`since ${ago(status.circuit_since)}`);
    if (breaker?.retry_at && circuit !== "closed") circuitDetail.push(`retry ${ago(breaker.retry_at)}`);
    if (breaker?.consecutive_failures) circuitDetail.push(`${breaker.consecutive_failures} failures in a row`);

    return h("article", { class: "panel endpoint", dataset: { endpoint: id, circuit }, "aria-label": `Endpoint ${id}` },
      h("header", {}, h("h2", {}, id), h("div", { class: "actions" }, health,
        badge(`breaker ${CIRCUIT_TEXT[circuit] || circuit}`, CIRCUIT_TONE[circuit] || ""))),
      h("div", { class: "body" },
        h("dl", {},
          h("dt", {}, "URL"), h("dd", { class: "mono" }, status.base_url),
          h("dt", {}, "Provider"), h("dd", {}, status.provider_id),
          h("dt", {}, "Breaker"), h("dd", { class: "circuit" }, CIRCUIT_TEXT[circuit] || circuit,
            circuitDetail.length ? h("span", { class: "muted small" }, ` · ${circuitDetail.join(" · ")}`) : null),
          h("dt", {}, "Last probe"), h("dd", {}, probe
            ? [h("span", { title: when(probe.at) }, ago(probe.at)), probe.ok ? "" : probeError(probe)]
            : "not yet"),
          h("dt", {}, "Latency"), h("dd", {}, probe?.latency_ms != null ? `${Math.round(probe.latency_ms)} ms` : "–"),
          probe?.version ? [h("dt", {}, "Version"), h("dd", {}, bdi(probe.version))] : null,
          h("dt", {}, "Models"), h("dd", {}, serving.length
            ? h("div", { class: "chips" }, serving.map((m) => h("span", { class: loaded.has(m) ? "chip loaded" : "chip",
              title: loaded.has(m) ? "loaded" : "served, not loaded" }, m, loaded.has(m) ? " ●" : "")))
            : h("span", { class: "muted" }, "none advertised yet"))),
        result, errorBox),
      h("footer", {}, test, reset));
  }

  load();
  return () => { gone = true; clearTimeout(timer); };
}

function probeError(probe) {
  const text = probe.error || `status ${probe.status}`;
  const short = text.length > 140 ? `${text.slice(0, 140)}…` : text;
  return h("span", { class: "muted", title: text }, " · ", bdi(short));
}
