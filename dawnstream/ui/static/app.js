// dawnstream ui: polls /api/state every second and renders it. Plain DOM, uPlot for the charts.
"use strict";
const charts = {};
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v)) ? "–" :
  Number(v).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
const ms = (v) => (v === null || v === undefined) ? "–" : (v < 10 ? num(v, 2) : num(v, 1)) + " ms";
const cell = (key, v, text) => `<td class="n" data-k="${esc(key)}" data-v="${v ?? ""}">${text ?? num(v)}</td>`;
const kpi = (key, label, v, text) => `<div class="kpi" data-k="${esc(key)}" data-v="${v ?? ""}"><b>${text ?? num(v)}</b><span>${esc(label)}</span></div>`;
const slug = (s) => String(s).replace(/[^A-Za-z0-9_-]/g, "_");

function table(head, rows) {
  return `<table><thead><tr>${head.map((h) => `<th${h.n ? ' class="n"' : ""}>${esc(h.t ?? h)}</th>`).join("")}</tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>`;
}

function explanationsPanel(stage, byPart) {
  const parts = Object.entries(byPart);
  if (parts.every(([, p]) => p.output === "summary")) {  // per-partition summaries: the merge job explains them
    const rows = parts.map(([p, s]) => `<tr data-part="${esc(p)}"><td>${esc(p)}</td>` + cell("rows_seen", s.rows_seen) +
      cell("outliers", s.outliers, num(s.outliers, 1)) + cell("seq", s.seq) + "</tr>");
    return `<div class="panel cap" data-cap="summaries" data-stage="${esc(stage)}"><h3>MacroBase: per-partition summaries ` +
      `<span class="tag">${esc(stage)}</span> <span class="muted">explained by the merge job</span></h3>` +
      table(["partition", {t: "rows explained", n: 1}, {t: "outliers (decayed)", n: 1}, {t: "summaries sent", n: 1}], rows) + "</div>";
  }
  return parts.map(([p, panel]) => {
    const rows = (panel.top || []).map((e, i) => `<tr data-rank="${i}"><td>${esc(Object.entries(e.attributes).map(([k, v]) => `${k}=${v}`).join(", "))}</td>` +
      cell("support", e.support, num(e.support, 3)) + cell("ratio", e.ratio, e.ratio === null ? "∞" : num(e.ratio, 1)) +
      cell("outlier_count", e.outlier_count, num(e.outlier_count)) + cell("total_count", e.total_count, num(e.total_count)) + "</tr>");
    return `<div class="panel cap" data-cap="explanations" data-stage="${esc(stage)}" data-partition="${esc(p)}">` +
      `<h3>MacroBase: top explanations <span class="tag">${esc(stage)} · partition ${esc(p)}</span></h3>` +
      `<div class="kpis">${kpi("rows_seen", "rows explained", panel.rows_seen)}${kpi("outliers", "outliers (decayed)", panel.outliers, num(panel.outliers, 1))}` +
      `${panel.sources !== undefined ? kpi("sources", "summaries merged", panel.sources) : ""}</div>` +
      (rows.length ? table(["explanation", {t: "support", n: 1}, {t: "risk ratio", n: 1}, {t: "outliers", n: 1}, {t: "rows", n: 1}], rows)
        : `<p class="muted">${panel.output === "summary" ? "this stage sends summaries to a merge job" : "no explanation emitted yet"}</p>`) + "</div>";
  }).join("");
}

function lfPanel(stage, byPart) {
  const [p, panel] = Object.entries(byPart).sort()[0];
  const lfs = panel.lfs_topology && panel.lfs_topology.length ? panel.lfs_topology : panel.lfs;
  const rows = lfs.map((r) => `<tr data-lf="${esc(r.lf)}"><td>${esc(r.lf)}</td>` + cell("coverage", r.coverage, num(r.coverage, 3)) +
    cell("overlaps", r.overlaps, num(r.overlaps, 3)) + cell("conflicts", r.conflicts, num(r.conflicts, 3)) +
    cell("learned_accuracy", r.learned_accuracy, num(r.learned_accuracy, 3)) + cell("emp_accuracy", r.emp_accuracy, num(r.emp_accuracy, 3)) +
    cell("errors", r.errors, num(r.errors)) + "</tr>");
  const totalRows = Object.values(byPart).reduce((a, x) => a + (x.rows || 0), 0);
  return `<div class="panel cap" data-cap="lf_table" data-stage="${esc(stage)}"><h3>Labeling functions and the label model <span class="tag">${esc(stage)}</span></h3>` +
    `<div class="kpis">${kpi("rows", "rows labelled", totalRows)}${kpi("model_block", "blocks folded into the label model", panel.model_block)}` +
    `${kpi("holding", "rows held for the model", Object.values(byPart).reduce((a, x) => a + (x.holding || 0), 0))}${kpi("refits", "refits (partition " + p + ")", panel.refits)}</div>` +
    table(["LF", {t: "coverage", n: 1}, {t: "overlaps", n: 1}, {t: "conflicts", n: 1}, {t: "learned acc.", n: 1}, {t: "gold acc.", n: 1}, {t: "errors", n: 1}], rows) + "</div>";
}

function servingPanel(stage, byPart) {
  return Object.entries(byPart).map(([p, s]) => {
    const models = Object.keys(s.batch || {});
    const rows = models.map((m) => `<tr data-model="${esc(m)}"><td>${esc(m)}</td>` + cell("version", s.versions?.[m], num(s.versions?.[m])) +
      cell("batch", s.batch?.[m], num(s.batch?.[m])) + cell("weight", s.weights?.[m], num(s.weights?.[m], 3)) +
      cell("error", (s.rmse ?? {})[m] ?? s.metrics?.[m]?.rmse ?? s.metrics?.[m]?.accuracy, num((s.rmse ?? {})[m] ?? s.metrics?.[m]?.rmse ?? s.metrics?.[m]?.accuracy, 3)) +
      cell("cache_hits", s.cache_hits?.[m], num(s.cache_hits?.[m])) + "</tr>");
    const c = s.counters || {};
    const late = s.latency_p99_ms !== undefined && s.latency_p99_ms > s.slo_ms;
    return `<div class="panel cap" data-cap="serving" data-stage="${esc(stage)}" data-partition="${esc(p)}"><h3>Serving <span class="tag">${esc(stage)} · partition ${esc(p)}</span></h3>` +
      `<div class="kpis">${kpi("latency_p50_ms", "p50 in stage", s.latency_p50_ms, ms(s.latency_p50_ms))}` +
      `<div class="kpi ${late ? "down" : "up"}" data-k="latency_p99_ms" data-v="${s.latency_p99_ms ?? ""}"><b>${ms(s.latency_p99_ms)}</b><span>p99 (SLO ${num(s.slo_ms)} ms)</span></div>` +
      `${kpi("requests", "requests", c.requests)}${kpi("defaults", "answered by default", c.defaults)}${kpi("stragglers", "stragglers", c.stragglers)}${kpi("feedback", "feedback", c.feedback)}</div>` +
      table(["model", {t: "version", n: 1}, {t: "AIMD batch", n: 1}, {t: "weight", n: 1}, {t: "rmse / acc.", n: 1}, {t: "cache hits", n: 1}], rows) + "</div>";
  }).join("");
}

function cascadePanel(stage, byPart) {
  return Object.entries(byPart).map(([p, panel]) => {
    const g = panel.gauges || {};
    const stages = ["difference", "specialized", "reference"].map((s) => kpi("frames_" + s, s, g["frames_" + s])).join("");
    const cams = Object.entries(panel.cameras || {}).map(([name, c]) => `<tr data-camera="${esc(name)}"><td>${esc(name)}</td><td>${esc(c.phase)}</td>` +
      cell("model_version", c.model_version, num(c.model_version)) + cell("live_agreement", c.live_agreement, num(c.live_agreement, 3)) +
      cell("alarms", c.alarms, num(c.alarms)) + `<td data-k="plan">${c.phase === "cascade" ? (c.proven ? "proven" : "probation") + (c.check_share ? ` · reference flips: ≥ ${num(100 * c.check_share, 0)}% checked` : "") : ""}</td>` +
      `<td>${esc(c.last_alarm ?? "")}</td></tr>`);
    return `<div class="panel cap" data-cap="cascade" data-stage="${esc(stage)}" data-partition="${esc(p)}"><h3>Video cascade <span class="tag">${esc(stage)} · partition ${esc(p)}</span></h3>` +
      `<div class="kpis">${stages}${kpi("reference_share", "reference share", g.reference_share, num(g.reference_share, 3))}` +
      `${kpi("live_fn_rate", "live FN estimate", g.live_fn_rate, num(g.live_fn_rate, 3))}${kpi("live_fp_rate", "live FP estimate", g.live_fp_rate, num(g.live_fp_rate, 3))}` +
      ["difference", "specialized", "reference"].map((s) => kpi("live_error_" + s, s + " live error", g["live_error_" + s], num(g["live_error_" + s], 3))).join("") +
      `${kpi("fn_bound", "FN bound (95%)", g.fn_bound, num(g.fn_bound, 3))}${kpi("fp_bound", "FP bound (95%)", g.fp_bound, num(g.fp_bound, 3))}` +
      `${kpi("alarms", "drift alarms", g.alarms)}</div>` +
      table(["camera", "phase", {t: "model", n: 1}, {t: "live agreement", n: 1}, {t: "alarms", n: 1}, "plan", "last alarm"], cams) + "</div>";
  }).join("");
}

const CAPS = {explanations: explanationsPanel, lf_table: lfPanel, serving: servingPanel, cascade: cascadePanel};

function jobCard(j) {
  const id = slug(j.topology);
  const workers = j.workers.map((w) => `<tr data-worker="${w.worker}"><td>${w.worker ?? "?"}</td><td class="${w.up ? "up" : "down"}">${esc(w.state)}</td>` +
    `<td class="mono">${esc(w.url)}</td>` + cell("assigned", w.assigned) + `<td>${esc(w.partitions.join(", "))}</td>` +
    cell("restarts", w.restarts) + cell("uptime_s", w.uptime_s, num(w.uptime_s, 0) + " s") + `<td class="down">${esc(w.error ?? "")}</td></tr>`);
  const parts = j.partitions.map((p) => `<tr data-partition="${p.partition}"><td>${p.partition}</td><td>${p.worker}</td>` + cell("lag", p.lag) + "</tr>");
  const stages = j.stages.map((s) => `<tr data-stage="${esc(s.stage)}"><td>${esc(s.stage)}</td>` + cell("rows_in", s.rows_in) + cell("rows_out", s.rows_out) +
    cell("seconds", s.seconds, num(s.seconds, 2)) + cell("dead", j.dead_by_stage[s.stage] ?? 0) + "</tr>");
  const caps = Object.entries(j.panels || {}).map(([stage, byPart]) => {
    const kind = Object.values(byPart)[0]?.kind;
    return CAPS[kind] ? CAPS[kind](stage, byPart) : "";
  }).join("");
  return `<section class="panel job" id="job-${id}" data-job="${esc(j.topology)}">` +
    `<h2>${esc(j.topology)} <span class="tag">${esc(j.guarantee ?? "?")}</span> <span class="muted">group ${esc(j.group)} · ${esc(j.input)} → ${esc(j.outputs.join(", "))}</span></h2>` +
    `<div class="kpis">${kpi("workers_up", "workers up of " + j.workers.length, j.workers_up)}${kpi("rows_in_per_s", "rows/s in", j.rows_in_per_s, num(j.rows_in_per_s, 0))}` +
    `${kpi("rows_out_per_s", "rows/s out", j.rows_out_per_s, num(j.rows_out_per_s, 0))}${kpi("rows_in_total", "rows in", j.rows_in_total)}` +
    `${kpi("rows_out_total", "rows out", j.rows_out_total)}${kpi("lag_total", "lag (messages)", j.lag_total)}` +
    `${kpi("batch_p50_ms", "batch p50", j.batch_p50_ms, ms(j.batch_p50_ms))}${kpi("batch_p99_ms", "batch p99", j.batch_p99_ms, ms(j.batch_p99_ms))}` +
    `${kpi("commit_p50_ms", "commit p50", j.commit_p50_ms, ms(j.commit_p50_ms))}${kpi("commit_p99_ms", "commit p99", j.commit_p99_ms, ms(j.commit_p99_ms))}` +
    `${kpi("dead_letters_total", "dead letters", j.dead_letters_total)}</div>` +
    `<div class="grid"><div><h3>rows/s</h3><div class="chart" id="chart-${id}"></div></div>` +
    `<div><h3>workers</h3>${table(["worker", "state", "endpoint", {t: "assigned", n: 1}, "partitions", {t: "restarts", n: 1}, {t: "uptime", n: 1}, "error"], workers)}` +
    `<h3>partitions</h3>${table(["partition", "worker", {t: "lag", n: 1}], parts)}</div></div>` +
    `<h3>stages</h3>${table(["stage", {t: "rows in", n: 1}, {t: "rows out", n: 1}, {t: "seconds", n: 1}, {t: "dead letters", n: 1}], stages)}` +
    caps + "</section>";
}

function drawChart(j) {
  const id = slug(j.topology);
  const el = document.getElementById("chart-" + id);
  if (!el || !window.uPlot) return;
  const h = j.history || [];
  const data = [h.map((p) => p[0]), h.map((p) => p[1]), h.map((p) => p[2])];
  const old = charts[id];
  if (old && old.root.isConnected) { old.setData(data); return; }
  charts[id] = new uPlot({width: Math.max(el.clientWidth, 320), height: 180,
    series: [{}, {label: "in", stroke: "#2563eb"}, {label: "out", stroke: "#16a34a"}], axes: [{}, {size: 60}]}, data, el);
}

function deadLetters(dl) {
  if (!dl.length) return '<p class="muted">No job is running, or the broker was not asked.</p>';
  return dl.map((d) => {
    const reasons = Object.entries(d.by_reason || {}).map(([r, n]) => `<tr data-reason="${esc(r)}"><td>${esc(r)}</td>` + cell("count", n) + "</tr>");
    const last = (d.last || []).map((m) => `<tr data-offset="${m.partition}:${m.offset}"><td>${m.partition}</td><td>${m.offset}</td><td>${esc(m.headers["dlq.stage"])}</td>` +
      `<td class="mono">${esc(m.headers["dlq.error"])}</td><td class="mono">${esc(m.headers["dlq.topic"])}/${esc(m.headers["dlq.partition"])}/${esc(m.headers["dlq.offset"])}</td>` +
      `<td class="mono">${esc(m.value_preview)}${m.headers["dlq.truncated"] ? " …" : ""}</td></tr>`);
    return `<div class="dlq" data-topic="${esc(d.topic)}" data-job="${esc(d.topology)}"><h3>${esc(d.topic)} <span class="muted">(${esc(d.topology)})</span></h3>` +
      `<div class="kpis">${kpi("messages", "dead letters in the topic", d.messages)}</div>` +
      (reasons.length ? table(["reason", {t: `count (newest ${num(d.counted)})`, n: 1}], reasons) : "") +
      (last.length ? `<h3>newest</h3>` + table(["partition", "offset", "stage", "dlq.error", "from (topic/partition/offset)", "value"], last) : '<p class="muted">none</p>') + "</div>";
  }).join("");
}

function registry(reg) {
  if (reg.error) return `<p class="down">${esc(reg.error)}</p>`;
  if (!reg.models.length) return `<p class="muted">No models in ${esc(reg.root)}.</p>`;
  return `<p class="muted mono">${esc(reg.root)}</p>` + reg.models.map((m) => {
    const rows = m.versions.map((v) => `<tr data-version="${v.version}"><td>${v.version}${v.version === m.promoted ? ' <span class="tag">promoted</span>' : ""}</td>` +
      `<td>${esc(v.format)}</td><td>${v.parent ?? ""}</td><td class="mono">${esc(JSON.stringify(v.metrics))}</td>` +
      `<td class="mono">${esc(v.training_data?.topic ?? "")}</td><td>${new Date(v.created_at * 1000).toISOString().slice(0, 19)}</td></tr>`);
    const served = m.served_by.map((s) => `${esc(s.topology)}/${esc(s.stage)}: v${s.version}`).join("; ") || "no running job";
    return `<div class="model" data-model="${esc(m.name)}"><h3>${esc(m.name)} <span class="muted">promoted v${m.promoted ?? "–"} · history ${esc((m.history || []).join(" → "))} · served by ${served}</span></h3>` +
      table(["version", "format", "parent", "metrics", "trained on", "created (UTC)"], rows) + "</div>";
  }).join("");
}

async function refresh() {
  try {
    const r = await fetch("/api/state", {cache: "no-store"});
    const s = await r.json();
    const b = s.broker || {};
    document.getElementById("status").textContent =
      `${s.jobs.length} job(s) · broker ${b.bootstrap ?? "not asked"} ${b.up === false ? "DOWN: " + b.error : b.up ? "up" : ""} · ` +
      `updated ${new Date(s.at * 1000).toLocaleTimeString()}`;
    const jobs = document.getElementById("jobs");
    jobs.innerHTML = s.jobs.length ? s.jobs.map(jobCard).join("") : '<p class="muted">No running job found. Start one (make demo) or give --target URL.</p>';
    for (const k of Object.keys(charts)) delete charts[k];
    s.jobs.forEach(drawChart);
    document.querySelector("#dead-letters .body").innerHTML = deadLetters(s.dead_letters || []);
    document.querySelector("#registry .body").innerHTML = registry(s.registry || {models: []});
    document.body.dataset.scrapes = s.scrapes;
  } catch (e) {
    document.getElementById("status").textContent = "dashboard server unreachable: " + e;
  }
}
refresh();
setInterval(refresh, 1000);
