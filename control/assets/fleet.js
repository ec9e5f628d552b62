// Contrail fleet page: one EventSource on /v1/page/events carrying the whole state for the
// current page of drones; paging and search reopen the stream (the server does the work).
"use strict";
(function () {
  const PAGE = 50;
  let offset = 0, query = "", es = null, last = null;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const dur = (s) => s == null ? "—" : s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : s < 1 ? (s * 1e3).toFixed(1) + " ms" : s.toFixed(2) + " s";
  const age = (ms, now) => {
    if (!ms) return "—";
    let s = Math.max(0, (now - ms) / 1000);
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return (s / 60).toFixed(0) + " min";
    return (s / 3600).toFixed(1) + " h";
  };
  const num = (v, d) => v == null ? "—" : Number(v).toFixed(d ?? 0);

  function connect() {
    if (es) es.close();
    const qs = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if (query) qs.set("q", query);
    es = new EventSource("/v1/page/events?" + qs.toString());
    es.addEventListener("state", (ev) => {
      try { render(JSON.parse(ev.data)); } catch (e) { $("status").textContent = "bad update: " + e; }
    });
    es.onerror = () => { $("status").textContent = "disconnected, retrying…"; };
  }

  function rows(id, html) { document.querySelector("#" + id + " tbody").innerHTML = html; }

  function render(st) {
    last = st;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    $("status").textContent = `relay ${st.relay_id} · ${st.source === "redis" ? "fleet-wide (Redis)" : "this relay only"}` +
      (st.error ? ` · registry error: ${st.error}` : "") + ` · ${new Date(st.now_unix_ms).toLocaleTimeString()}`;
    rows("relays", st.relays.map((r) => `<tr data-relay="${esc(r.relay_id)}"><td>${esc(r.relay_id)}</td>` +
      `<td class="${r.draining ? "warn" : r.state === "ready" ? "ok" : ""}">${esc(r.state)}${r.draining ? " (draining)" : ""}</td>` +
      `<td>${r.sessions}</td><td>${r.max_sessions || "—"}</td><td>${num(r.cpu_percent, 1)}</td>` +
      `<td>${esc([r.region, r.zone].filter(Boolean).join("/") || "—")}</td><td>${esc(r.address)}</td>` +
      `<td>${esc(r.version)}</td><td>${age(r.updated_unix_ms, st.now_unix_ms)} ago</td></tr>`).join(""));
    $("sinks-relay").textContent = "(relay " + st.relay_id + ")";
    rows("sinks", st.sinks.map((s) => `<tr data-sink="${esc(s.name)}"><td>${esc(s.name)}</td><td>${s.required ? "yes" : "no"}</td>` +
      `<td class="${s.healthy ? "ok" : "bad"}">${s.healthy ? "healthy" : "failing"}</td>` +
      `<td>${s.queue_depth} / ${s.queue_capacity}</td><td>${s.frames_written}</td>` +
      `<td>${s.dropped_queue_full}</td><td>${s.dropped_write_failed}</td></tr>`).join(""));
    charts(st.latency);
    const d = st.drones;
    $("drone-total").textContent = `(${d.total}${d.q ? " matching" : ""})`;
    $("pageinfo").textContent = d.total ? `${d.offset + 1}–${Math.min(d.offset + d.limit, d.total)} of ${d.total}` : "none";
    rows("drones", d.drones.map((r) => {
      const l = r.local;
      const ident = l && l.identity ? Object.entries(l.identity).filter(([, v]) => v !== null && v !== "" && typeof v !== "object").map(([k, v]) => `${k}=${v}`).join(" ") : "";
      return `<tr data-agent="${esc(r.agent_id)}"><td>${esc(r.agent_id)}</td><td>${esc(r.relay_id)}</td><td>${esc(ident) || "—"}</td>` +
        `<td>${l ? age(l.connected_since_unix_ms, st.now_unix_ms) : "—"}</td><td>${num(r.frames_per_s, 1)}</td>` +
        `<td>${num(r.bytes_per_s, 0)}</td><td>${l && l.last_heartbeat_unix_ms ? age(l.last_heartbeat_unix_ms, st.now_unix_ms) + " ago" : "—"}</td>` +
        `<td>${l && l.ack_latency_us ? dur(l.ack_latency_us / 1e6) : "—"}</td><td>${l ? l.inflight : "—"}</td></tr>`;
    }).join(""));
    const cm = st.commands;
    $("commands-counts").textContent = cm.error ? "store unavailable: " + cm.error
      : `queued ${cm.queued} · delivered ${cm.delivered} · running ${cm.running}` + (cm.storage ? ` (${cm.storage})` : "");
    $("commands-counts").dataset.total = String(cm.queued + cm.delivered + cm.running);
    $("commands").className = cm.recent.length ? "" : "muted";
    $("commands").innerHTML = cm.recent.length
      ? "<table><tr><th>id</th><th>agent</th><th>type</th><th>status</th><th>age</th><th>relay</th></tr>" + cm.recent.map((c) =>
        `<tr data-command="${esc(c.id)}"><td>${esc(c.id)}</td><td>${esc(c.agent_id)}</td><td>${esc(c.type)}</td><td>${esc(c.status)}</td>` +
        `<td>${dur(c.age_ms / 1000)}</td><td>${esc(c.relay_id || "—")}</td></tr>`).join("") + "</table>"
      : "none";
  }

  function charts(lat) {
    const host = $("charts");
    lat.stages.forEach((s) => {
      const id = "chart-" + s.stage + (s.sink ? "-" + s.sink.replace(/[^a-zA-Z0-9_-]/g, "_") : "");
      let box = document.getElementById(id);
      if (!box) {
        box = document.createElement("div");
        box.className = "chart"; box.id = id;
        box.innerHTML = `<div class="title"></div><canvas width="300" height="110"></canvas><div class="q"></div>`;
        host.appendChild(box);
      }
      const w = s.last_1m;
      box.dataset.count = String(w.count);
      box.querySelector(".title").textContent = ({ frame_age: "frame age at ingest", commit: "receive → committed", ack: "receive → ack", sink_write: "receive → sink write: " + s.sink })[s.stage];
      box.querySelector(".q").textContent = w.count ? `n=${w.count} p50 ${dur(w.p50)} · p90 ${dur(w.p90)} · p99 ${dur(w.p99)} · max ${dur(w.max)}` : "no data in the last minute";
      draw(box.querySelector("canvas"), w.buckets, lat.buckets_le_seconds);
    });
  }

  function draw(cv, counts, bounds) {
    const g = cv.getContext("2d"), W = cv.width, H = cv.height, pad = 14;
    g.clearRect(0, 0, W, H);
    const max = Math.max(1, ...counts), n = counts.length, bw = (W - 4) / n;
    g.fillStyle = "#2f6fb3";
    counts.forEach((c, i) => {
      if (!c) return;
      const h = Math.max(2, (H - pad - 2) * c / max);
      g.fillRect(2 + i * bw + 1, H - pad - h, bw - 2, h);
    });
    g.fillStyle = "#7a8591"; g.font = "9px sans-serif";
    [[0, "50µs"], [4, "1ms"], [7, "10ms"], [10, "100ms"], [13, "1s"], [17, "30s"]].forEach(([i, t]) => g.fillText(t, 2 + i * bw, H - 3));
    g.strokeStyle = "#e3e6ea"; g.beginPath(); g.moveTo(0, H - pad); g.lineTo(W, H - pad); g.stroke();
  }

  let timer = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { query = e.target.value.trim(); offset = 0; connect(); }, 250);
  });
  $("prev").addEventListener("click", () => { if (offset > 0) { offset = Math.max(0, offset - PAGE); connect(); } });
  $("next").addEventListener("click", () => { if (last && offset + PAGE < last.drones.total) { offset += PAGE; connect(); } });
  connect();
})();
