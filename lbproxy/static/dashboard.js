// lbproxy's admin dashboard: polls /api/charts?since=T and /status every 2 s and draws with uPlot.
"use strict";
(function () {
  const POLL_MS = 2000;
  const PHASES = [["start", "starting", "--start"], ["busy", "busy", "--busy"], ["idle", "idle", "--idle"],
                  ["stopping", "draining / stopping", "--stopping"]];
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const state = { cols: null, window: 3600, charts: {}, status: null, polls: 0, errors: 0 };

  // -- formatting ------------------------------------------------------------------------------
  function money(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (v === 0) return "$0.00";
    if (Math.abs(v) >= 100) return "$" + v.toFixed(0);
    if (Math.abs(v) >= 1) return "$" + v.toFixed(2);
    return "$" + v.toFixed(4);
  }
  function pct(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(v < 0.1 ? 1 : 0) + "%"; }
  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  }
  function clock(unix) { return new Date(unix * 1000).toLocaleTimeString([], { hour12: false }); }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // -- charts ------------------------------------------------------------------------------------
  const zeroBased = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
  function line(label, color, extra) { return Object.assign({ label, stroke: color, width: 2, spanGaps: false }, extra); }
  function bars(label, color) {
    return { label, stroke: color, fill: color + "99", width: 1, paths: uPlot.paths.bars({ size: [0.7, 12] }) };
  }
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  function numberTicks(u, splits) {
    // As many decimals as the tick step needs: $0.0005 steps must not all read "0".
    const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 1;
    let digits = 0;
    while (digits < 6 && Math.abs(step * 10 ** digits - Math.round(step * 10 ** digits)) > 1e-6) digits++;
    return splits.map((v) => v.toFixed(digits));
  }
  function timeTicks(u, splits) {
    const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
    return splits.map((v) => {
      const d = new Date(v * 1000), hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
      return span >= 600 ? hm : hm + ":" + String(d.getSeconds()).padStart(2, "0");
    });
  }
  const fixed = (digits) => (u, v) => (v === null || v === undefined ? "–" : v.toFixed(digits));
  const CHARTS = {
    requests: { series: [line("2xx", "#2f9e62"), line("3xx", "#3461d1"), line("4xx", "#e8a33d"), line("5xx", "#d9534f")],
                cols: ["req_2xx", "req_3xx", "req_4xx", "req_5xx"], unit: "req/s" },
    queue: { series: [line("queued", "#3461d1"), line("in flight", "#8a94a6", { dash: [4, 3] }),
                      line("wait p50 (s)", "#2f9e62", { scale: "s" }), line("wait p99 (s)", "#d9534f", { scale: "s" })],
             cols: ["queued", "in_flight", "wait_p50", "wait_p99"], unit: "requests", right: "seconds" },
    workers: { series: [line("starting", "#e8a33d"), line("ready", "#2f9e62", { fill: "#2f9e6222" }),
                        line("unhealthy", "#d9534f"), line("draining", "#8a94a6"), line("stopping", "#4d5563")],
               cols: ["starting", "ready", "unhealthy", "draining", "stopping"], unit: "workers" },
    cold_starts: { series: [bars("cold starts", "#e8a33d")], cols: ["cold_starts"], unit: "starts" },
    cost: { series: [line("rate ($/h)", "#3461d1", { fill: "#3461d122", value: fixed(4) })],
            cols: ["cost_rate"], unit: "$/h" },
    spend: { series: PHASES.map(([p, label, color]) => line(label, css(color), { value: fixed(4) }))
               .concat([line("total", "#18202c", { width: 2.5, value: fixed(4) })]),
             cols: ["spent_start", "spent_busy", "spent_idle", "spent_stopping", "spent"], unit: "$", windowed: true },
  };

  function makeChart(name) {
    const spec = CHARTS[name];
    const box = document.getElementById("chart-" + name);
    const axes = [{ stroke: "#6b7684", grid: { stroke: "#eef1f5" }, values: timeTicks, space: 70, incrs: TIME_STEPS },
                  { stroke: "#6b7684", grid: { stroke: "#eef1f5" }, size: 60, label: spec.unit, labelSize: 18,
                    values: numberTicks }];
    const scales = { x: { time: true }, y: { range: zeroBased } };
    if (spec.right) {
      axes.push({ scale: "s", side: 1, stroke: "#6b7684", grid: { show: false }, size: 50, label: spec.right,
                  labelSize: 18, values: numberTicks });
      scales.s = { range: zeroBased };
    }
    const opts = { width: Math.max(300, box.clientWidth), height: 210, series: [{}].concat(spec.series), axes, scales,
                   cursor: { drag: { x: false, y: false } }, legend: { live: false } };
    const u = new uPlot(opts, [[]].concat(spec.cols.map(() => [])), box);
    state.charts[name] = u;
  }

  function windowed(values) {
    // Cumulative counters shown from the window's start: what was spent within the last hour.
    let base = null;
    return values.map((v) => {
      if (v === null) return null;
      if (base === null) base = v;
      return v - base;
    });
  }

  function drawCharts() {
    const cols = state.cols;
    for (const [name, spec] of Object.entries(CHARTS)) {
      const u = state.charts[name];
      const series = spec.cols.map((c) => (spec.windowed ? windowed(cols[c]) : cols[c]));
      u.setData([cols.t].concat(series));
    }
  }

  function merge(data) {
    if (state.cols === null) { state.cols = data; return; }
    for (const key of Object.keys(state.cols)) state.cols[key].push(...(data[key] || []));
    const cut = Date.now() / 1000 - state.window;
    let drop = 0;
    while (drop < state.cols.t.length && state.cols.t[drop] < cut) drop++;
    if (drop) for (const key of Object.keys(state.cols)) state.cols[key].splice(0, drop);
  }

  function windowSpend() {
    const cols = state.cols;
    if (!cols || cols.t.length < 2) return null;
    const out = { seconds: cols.t[cols.t.length - 1] - cols.t[0] };
    for (const key of ["spent", "spent_start", "spent_busy", "spent_idle", "spent_stopping"]) {
      const v = cols[key].filter((x) => x !== null);
      out[key] = v.length ? v[v.length - 1] - v[0] : 0;
    }
    return out;
  }

  // -- panels ------------------------------------------------------------------------------------
  function cards(s) {
    const c = s.cost, box = document.getElementById("cards"), w = windowSpend();
    const priced = c.priced;
    const amount = (v) => (priced ? money(v) : Math.round(v) + " worker-s");
    const ready = s.workers.filter((x) => x.state === "ready").length;
    const hour = w === null ? null : w.spent;
    const items = [
      ["Spent, last hour", hour === null ? "–" : amount(hour),
       w === null ? "collecting…" : (w.seconds < 3500 ? "over the last " + duration(w.seconds) : "60 min window")],
      ["Cost rate now", priced ? money(c.rate_dollars_per_hour) + "/h" : "unpriced",
       c.max_per_hour ? "limit " + money(c.max_per_hour) + "/h" : "no spend limit"],
      ["Total", priced ? money(c.total_dollars) : Math.round(c.total_seconds) + " worker-s",
       "since " + new Date(c.since * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short", hour12: false })],
      ["Efficiency", pct(c.efficiency), "ideal " + (priced ? money(c.ideal_dollars) : Math.round(c.ideal_seconds) + " s") + " / actual"],
      ["Spent idle", pct(c.idle_share), "of the total"],
      ["Spent starting", pct(c.start_share), c.cold_starts + " cold start" + (c.cold_starts === 1 ? "" : "s")],
      ["Workers ready", ready + " / " + s.workers.length, "active " + s.scaling.active + " · max " + s.scaling.max],
      ["Queue", String(s.queue.length), "oldest " + s.queue.oldest_wait_seconds.toFixed(1) + " s"],
    ];
    box.replaceChildren(...items.map(([label, value, sub]) => {
      const card = el("div", { class: "card" });
      card.append(el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub));
      return card;
    }));
    const spend = document.getElementById("spend-caption");
    spend.textContent = priced ? "Spent in the window, by phase ($)" : "Billed in the window, by phase (worker-seconds)";
    document.getElementById("rate-caption").textContent = priced ? "Cost rate ($/h)" : "Cost rate ($/h: no price set)";
  }

  function moneyBar(s) {
    const w = windowSpend();
    const byPhase = {};
    let scope;
    if (w !== null && w.spent > 0) {
      for (const [p] of PHASES) byPhase[p] = w["spent_" + p];
      scope = "last " + (w.seconds < 3500 ? duration(w.seconds) : "hour");
    } else {
      for (const [p] of PHASES) byPhase[p] = s.cost.priced ? s.cost.by_phase[p].dollars : s.cost.by_phase[p].seconds;
      scope = "since " + new Date(s.cost.since * 1000).toLocaleString([], { hour12: false });
    }
    const total = Object.values(byPhase).reduce((a, b) => a + b, 0);
    document.getElementById("money-scope").textContent = scope + (s.cost.priced ? "" : " · in worker-seconds (no price set)");
    const bar = document.getElementById("money-bar"), legend = document.getElementById("money-legend");
    bar.replaceChildren(...PHASES.filter(([p]) => total > 0 && byPhase[p] > 0).map(([p, label, color]) => {
      const part = el("div", { title: label });
      part.style.width = (100 * byPhase[p] / total) + "%";
      part.style.background = css(color);
      return part;
    }));
    legend.replaceChildren(...PHASES.map(([p, label, color]) => {
      const item = el("span");
      const dot = el("i");
      dot.style.background = css(color);
      const amount = s.cost.priced ? money(byPhase[p]) : Math.round(byPhase[p]) + " s";
      item.append(dot, label + " " + amount + " (" + (total > 0 ? pct(byPhase[p] / total) : "–") + ")");
      return item;
    }));
  }

  function rows(tbodySelector, items, cells, empty, span) {
    const body = document.querySelector(tbodySelector + " tbody");
    if (!items.length) {
      const tr = el("tr");
      tr.append(el("td", { class: "empty", colspan: String(span) }, empty));
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...items.map((item) => {
      const tr = el("tr");
      for (const [value, cls] of cells(item)) {
        const td = el("td", cls ? { class: cls } : {});
        if (value instanceof Node) td.append(value); else td.textContent = value;
        tr.append(td);
      }
      return tr;
    }));
  }

  function tables(s) {
    rows("#workers", s.workers, (w) => [
      [w.id], [el("span", { class: "state " + w.state }, w.state)], [w.billing_phase || "–"], [w.tier || "–"],
      [w.category || "–"], [String(w.in_flight), "num"], [String(w.served), "num"], [duration(w.age_seconds), "num"],
      [String(w.billed_seconds), "num"], [s.cost.priced ? money(w.cost_dollars) : "–", "num"], [w.reason || ""],
    ], "no workers: the next request starts one", 11);
    const decisions = s.last_decisions.slice().reverse();
    rows("#decisions", decisions, (d) => {
      const parts = [];
      if (d.start) parts.push("start " + d.start);
      if (d.drain.length) parts.push("drain " + d.drain.join(", "));
      if (d.stop.length) parts.push("replace " + d.stop.join(", "));
      if (!parts.length) parts.push("hold (" + d.desired + " wanted)");
      return [[clock(d.at)], [parts.join("; ")], [d.reason]];
    }, "no scaling decision yet", 3);
    rows("#failures", s.start_failures.slice().reverse(), (f) => [[clock(f.at)], [f.reason]], "none", 2);
    const notices = document.getElementById("notices");
    notices.replaceChildren(...(s.notices.length ? s.notices.map((n) => el("li", {}, n)) : [el("li", { class: "none" }, "none")]));
  }

  function header(s) {
    document.title = "lbproxy · " + s.endpoint;
    document.getElementById("endpoint").textContent = s.endpoint;
    const facts = document.getElementById("facts");
    const fact = (k, v) => { const span = el("span"); span.append(k + " ", el("b", {}, v), "   "); return span; };
    facts.replaceChildren(fact("backend", s.backend.type), fact("scaling", s.scaling.strategy),
                          fact("up", duration(s.uptime_seconds)), fact("version", s.version),
                          fact("scales", s.leading ? "yes (leader)" : "no"));
    const banner = document.getElementById("capped");
    banner.hidden = !s.cost.capped;
    banner.textContent = s.cost.capped ? "Scaling capped — " + s.cost.capped : "";
  }

  // -- polling -----------------------------------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  async function poll() {
    const live = document.getElementById("live");
    try {
      const since = state.cols && state.cols.t.length ? "?since=" + state.cols.t[state.cols.t.length - 1] : "";
      const [charts, status] = await Promise.all([getJSON("/api/charts" + since), getJSON("/status")]);
      state.window = charts.window;
      merge(charts.data);
      state.status = status;
      drawCharts();
      header(status);
      cards(status);
      moneyBar(status);
      tables(status);
      state.polls++;
      live.textContent = "live · " + clock(Date.now() / 1000);
      live.className = "live ok";
    } catch (err) {
      state.errors++;
      live.textContent = "disconnected";
      live.className = "live down";
    }
    setTimeout(poll, POLL_MS);
  }

  function resize() {
    for (const [name, u] of Object.entries(state.charts)) {
      const box = document.getElementById("chart-" + name);
      u.setSize({ width: Math.max(300, box.clientWidth), height: 210 });
    }
  }

  for (const name of Object.keys(CHARTS)) makeChart(name);
  window.addEventListener("resize", resize);
  // For tests and curious people: the charts' data as drawn, and how many polls succeeded.
  window.lbproxyDashboard = {
    state,
    series: (name) => (state.cols ? state.cols[name] || [] : []),
    drawn: (chart) => state.charts[chart].data,
  };
  poll();
})();
