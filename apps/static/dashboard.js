// PipeEdge dashboard: polls /dashboard/state.json once a second and redraws every pipeline.
// No framework and no build step; every value goes into the page as text (textContent).
"use strict";

const POLL_MS = 1000;
const CHART_MIN_S = 30, CHART_MAX_S = 300;  // the chart spans the history it has, within these
let token = readToken();

function readToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("pipeedge-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // keep it out of the address bar
  }
  return sessionStorage.getItem("pipeedge-token");
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number(v).toFixed(digits === undefined ? 1 : digits);
}

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], {hour12: false});
}

function bar(cls, share) {
  const b = el("div", "bar " + cls);
  const fill = el("div");
  fill.style.width = Math.max(0, Math.min(1, share || 0)) * 100 + "%";
  b.appendChild(fill);
  return b;
}

function kv(pairs) {
  const dl = el("dl", "kv");
  for (const [k, v, cls] of pairs) {
    dl.appendChild(el("dt", null, k));
    dl.appendChild(el("dd", cls, v));
  }
  return dl;
}

function stageCard(s) {
  const state = s.state === "up" ? "up" : (s.state === "DOWN" ? "down" : "empty");
  const card = el("div", "stage " + state + (s.bottleneck ? " bottleneck" : ""));
  card.dataset.stage = s.name;
  card.dataset.state = s.state;
  const head = el("div", "head");
  head.appendChild(el("span", "name", s.name));
  head.appendChild(el("span", "badge", s.state === "up" ? "up" : s.state.toLowerCase()));
  card.appendChild(head);
  card.appendChild(el("div", "muted", s.address));
  card.appendChild(el("div", "flag", s.bottleneck ? "bottleneck (" + s.bottleneck + ")" : ""));
  const rows = [["layers", s.layers]];
  if (s.state === "up") {
    rows.push(["backend", s.backend + (s.device ? " · " + s.device : "")],
              ["weights", s.weights_dtype + " · " + bytes(s.parameter_bytes)],
              ["sends", s.encoding],
              ["items/s", fmt(s.items_per_s), "rate"],
              ["ms/item", fmt(s.ms_per_item, 2)],
              ["items", String(s.items), "items"],
              ["errors", String(s.errors)],
              ["queue in/out", s.queue_in + " / " + s.queue_out, "queue"],
              ["busy", s.busy === null ? "–" : Math.round(s.busy * 100) + "%", "busy"]);
  } else {
    rows.push(["backend", s.backend || "–"]);
  }
  card.appendChild(kv(rows));
  if (s.state === "up") card.appendChild(bar("busy", s.busy));
  return card;
}

function linkBox(s) {
  const box = el("div", "link");
  box.appendChild(el("div", null, s.encoding && s.encoding !== "-" ? s.encoding : ""));
  box.appendChild(el("div", "arrow", "→"));
  box.appendChild(el("div", null, s.link_mbps ? fmt(s.link_mbps, 1) + " Mbit/s" : ""));
  box.appendChild(el("div", null, s.mb_out_per_s ? fmt(s.mb_out_per_s, 2) + " MB/s sent" : ""));
  return box;
}

function drawChart(canvas, history, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = {l: 40, r: 8, t: 8, b: 18};
  const first = history.length ? history[0][0] : now;
  const span = Math.min(CHART_MAX_S, Math.max(CHART_MIN_S, Math.ceil((now - first) / 10) * 10));
  const pts = history.filter(p => now - p[0] <= span);
  const top = Math.max(1, ...pts.map(p => p[1])) * 1.15;
  g.strokeStyle = "#e3e7ed"; g.fillStyle = "#6b7585"; g.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = pad.t + (h - pad.t - pad.b) * i / 2;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(fmt(top * (1 - i / 2), top < 10 ? 1 : 0), 2, y + 4);
  }
  g.fillText("-" + span + " s", pad.l, h - 4);
  g.fillText("now", w - pad.r - 22, h - 4);
  const x = t => pad.l + (w - pad.l - pad.r) * (1 - (now - t) / span);
  const y = v => pad.t + (h - pad.t - pad.b) * (1 - v / top);
  if (!pts.length) return;
  g.strokeStyle = "#2b6cd3"; g.lineWidth = 2;
  g.beginPath();
  pts.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
  g.stroke();
}

function pipelineSection(p, now) {
  const sec = el("section", "pipeline");
  sec.dataset.model = p.model || "";
  const h2 = el("h2");
  h2.appendChild(el("span", null, p.model || "(no pipeline)"));
  if (p.version !== undefined) h2.appendChild(el("span", "muted", "epoch " + p.version));
  h2.appendChild(el("span", "rate", fmt(p.items_per_s) + " items/s"));
  if (p.microbatch) h2.appendChild(el("span", "muted", "microbatch " + p.microbatch));
  sec.appendChild(h2);
  if (p.problem) sec.appendChild(el("div", "problem", p.problem));
  if (p.down && p.down.length) sec.appendChild(el("div", "problem", "down: " + p.down.join(", ")));
  const chain = el("div", "chain");
  p.stages.forEach((s, i) => {
    if (i) chain.appendChild(linkBox(p.stages[i - 1]));
    chain.appendChild(stageCard(s));
  });
  sec.appendChild(chain);
  const lower = el("div", "lower");
  const chart = el("div", "chart");
  chart.appendChild(el("h3", null, "pipeline throughput (items/s out of the last stage)"));
  const canvas = el("canvas");
  chart.appendChild(canvas);
  lower.appendChild(chart);
  const evbox = el("div");
  evbox.style.flex = "1 1 320px";
  evbox.appendChild(el("h3", null, "events"));
  const list = el("ul", "events");
  const events = (p.events || []).slice().reverse();
  if (!events.length) list.appendChild(el("li", "muted", "none yet"));
  for (const e of events) list.appendChild(el("li", e.kind, clock(e.t) + "  " + e.text));
  evbox.appendChild(list);
  lower.appendChild(evbox);
  sec.appendChild(lower);
  return [sec, () => drawChart(canvas, p.history || [], now)];
}

function render(state) {
  const main = document.getElementById("pipelines");
  const draws = [];
  const sections = state.pipelines.map(p => {
    const [sec, draw] = pipelineSection(p, state.time);
    draws.push(draw);
    return sec;
  });
  main.replaceChildren(...sections);
  draws.forEach(d => d());
  document.getElementById("updated").textContent = "updated " + clock(state.time);
}

function setConn(text, cls) {
  const c = document.getElementById("conn");
  c.textContent = text;
  c.className = "conn " + cls;
}

async function poll() {
  try {
    const headers = token ? {Authorization: "Bearer " + token} : {};
    const r = await fetch("/dashboard/state.json", {headers, cache: "no-store"});
    if (r.status === 401) {
      document.getElementById("login").hidden = false;
      document.getElementById("login-error").textContent = token ? "wrong token" : "";
      setConn("token needed", "lost");
      return;  // polling resumes when a token is entered
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    document.getElementById("login").hidden = true;
    render(await r.json());
    setConn("live", "live");
  } catch (err) {
    setConn("no answer (" + err.message + ")", "lost");
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("login").addEventListener("submit", ev => {
  ev.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("pipeedge-token", token);
  poll();
});

poll();
