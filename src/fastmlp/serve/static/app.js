// fastmlp's page: everything it shows comes from the JSON API (/api/...), live through
// server-sent events (/api/events). Charts: plotly.js, served by the server itself.
"use strict";
const $ = (s) => document.querySelector(s);
const CFG = { displayModeBar: false, responsive: true };
const M = { t: 30, r: 10, b: 36, l: 50 };

function showError(msg) {
  const e = $("#error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(path, opts) {
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    showError("the server does not answer: " + e.message);
    throw e;
  }
  const body = await r.json().catch(() => ({ error: "the server sent no JSON (" + r.status + ")" }));
  if (!r.ok) {
    showError(body.error || "error " + r.status);
    throw new Error(body.error);
  }
  showError("");
  return body;
}

// -- Train ----------------------------------------------------------------------------------
function settings() {
  const out = {};
  for (const el of $("#settings").elements) {
    const v = el.value.trim();
    if (!el.name || v === "") continue;
    if (el.type === "number") out[el.name] = Number(v);
    else if (el.name === "learning_rate") out[el.name] = Number(v);
    else if (el.name === "batchnorm") out[el.name] = v === "true";
    else out[el.name] = v;
  }
  return out;
}

let replace = false;  // after Reset (confirmed), the next Start may replace the work dir's checkpoint
$("#start").onclick = () => api("/api/train/start", {
  method: "POST", headers: { "Content-Type": "application/json" },
  body: JSON.stringify(Object.assign(settings(), replace ? { overwrite: true } : {})),
}).then((s) => { replace = false; drawState(s); }, () => {});
$("#pause").onclick = () => api("/api/train/pause", { method: "POST" }).then(drawState, () => {});
$("#reset").onclick = () => {
  if (!confirm("Reset: forget this run? The next Start replaces its checkpoint.")) return;
  api("/api/train/reset", { method: "POST" }).then((s) => { replace = true; drawState(s); }, () => {});
};

function drawState(s) {
  const status = s.config
    ? `step ${s.step.toLocaleString()} / ${s.max_steps.toLocaleString()} · ${s.running ? "training" : "paused"} · ` +
      `${Math.round(s.steps_per_s).toLocaleString()} steps/s` +
      (s.dev.length ? ` · dev ${s.dev[s.dev.length - 1][1].toFixed(4)}` : "")
    : "no run: choose settings and press Start";
  $("#status").textContent = status;
  if (s.error) showError(s.error);
  $("#start").textContent = s.config && !s.running && s.step > 0 && s.step < s.max_steps ? "Continue" : "Start";
  const traces = [{ x: s.loss.steps, y: s.loss.values, mode: "lines", name: "train (minibatch, mean)",
                    line: { width: 1.5 } }];
  if (s.dev.length) traces.push({ x: s.dev.map((p) => p[0]), y: s.dev.map((p) => Math.log10(p[1])),
                                  mode: "markers+lines", name: "dev", marker: { size: 7, color: "#c0392b" } });
  if (s.uniform_loss) traces.push({ x: [0, Math.max(s.max_steps, 1)], y: [Math.log10(s.uniform_loss),
    Math.log10(s.uniform_loss)], mode: "lines", name: "uniform guess", line: { dash: "dot", color: "#888" } });
  Plotly.react("loss", traces, { margin: M, title: { text: "log10 loss", font: { size: 14 } },
    xaxis: { title: { text: "step" } }, legend: { x: 1, xanchor: "right", y: 1 } }, CFG);
}

// -- Inside -----------------------------------------------------------------------------------
function drawInside(d) {
  if (!d) return;
  if (d.act) {
    const e = d.act.edges, centers = e.slice(0, -1).map((v, i) => (v + e[i + 1]) / 2);
    Plotly.react("act", [{ x: centers, y: d.act.counts, type: "bar", marker: { color: "#2e86c1" } }],
      { margin: M, bargap: 0, title: { text: d.act.layers > 1
        ? `layer 1/${d.act.layers} tanh, step ${d.step.toLocaleString()}: ` +
          `${(100 * d.act.saturation).toFixed(1)}% saturated, ${d.act.dead} dead`
        : `tanh outputs at step ${d.step.toLocaleString()}: ` +
          `saturation ${(100 * d.act.saturation).toFixed(1)}%, ${d.act.dead} dead`, font: { size: 13 } },
        xaxis: { title: { text: "tanh output" }, range: [-1, 1] } }, CFG);
  }
  const u = d.update_data, traces = [];
  for (const [k, ys] of Object.entries(u.log10)) {
    if (k === "C" || k.startsWith("W")) traces.push({ x: u.steps, y: ys, mode: "lines", name: k });
  }
  if (u.steps.length) traces.push({ x: [u.steps[0], u.steps[u.steps.length - 1]], y: [-3, -3], mode: "lines",
                                    name: "guide 1e-3", line: { dash: "dash", color: "#000", width: 1 } });
  Plotly.react("ratio", traces, { margin: M, title: { text: "update:data (log10)", font: { size: 13 } },
    xaxis: { title: { text: "step" } } }, CFG);
  const vocab = d.embedding.symbols;
  const w = d.watched.map((c, i) => ({ x: vocab, y: c.probs, type: "bar", name: `${c.context} → ${c.next}`,
    xaxis: "x", yaxis: "y", marker: { color: vocab.map((s) => (s === c.next ? "#c0392b" : "#7f8c8d")) },
    visible: i === 0 ? true : "legendonly" }));
  Plotly.react("watched", w, { margin: M, barmode: "group", title: { text: "next character (true one in red)",
    font: { size: 13 } }, yaxis: { range: [0, 1] }, legend: { font: { size: 11 } } }, CFG);
  const em = d.embedding;
  Plotly.react("embedding", [{ x: em.x, y: em.y, text: em.symbols, mode: "markers+text", textposition: "middle center",
    marker: { size: 22, color: em.vowel.map((v) => (v ? "rgba(192,57,43,.45)" : "rgba(46,134,193,.35)")) } }],
    { margin: M, title: { text: "embedding (vowels red)", font: { size: 13 } }, showlegend: false }, CFG);
}

// -- Sample -----------------------------------------------------------------------------------
let samples = [];
$("#sampling").onsubmit = (ev) => {
  ev.preventDefault();
  const q = new URLSearchParams();
  for (const el of $("#sampling").elements) if (el.name) q.set(el.name, el.value.trim());
  api("/api/sample?" + q).then((r) => {
    samples = r.samples;
    const ol = $("#names");
    ol.innerHTML = "";
    samples.forEach((s, i) => {
      const li = document.createElement("li");
      li.textContent = s.name + (s.cut ? " …" : s.new ? "" : " (in train)");
      li.className = s.new ? "new" : "seen";
      li.onclick = () => showSteps(i);
      ol.appendChild(li);
    });
    $("#steps").innerHTML = "";
  }, () => {});
};

function showSteps(i) {
  document.querySelectorAll("#names li").forEach((li, j) => li.classList.toggle("sel", i === j));
  const box = $("#steps"), vocab = window.vocab || [];
  box.innerHTML = "";
  const s = samples[i], generated = s.steps.length - (s.cut ? 0 : 1);  // letters drawn (the last step may be '.')
  let sofar = s.name.slice(0, s.name.length - generated);
  s.steps.forEach((st) => {
    const div = document.createElement("div");
    div.className = "chart";
    box.appendChild(div);
    Plotly.newPlot(div, [{ x: vocab, y: st.probs, type: "bar",
      marker: { color: vocab.map((s) => (s === st.char ? "#c0392b" : "#95a5a6")) } }],
      { margin: { t: 26, r: 4, b: 20, l: 30 }, title: { text: `after '${sofar}': ${st.char}`, font: { size: 12 } },
        yaxis: { range: [0, 1] } }, CFG);
    if (st.char !== ".") sofar += st.char;
  });
}

// -- live -------------------------------------------------------------------------------------
function connect() {
  const es = new EventSource("/api/events");
  es.onmessage = (m) => {
    const d = JSON.parse(m.data);
    if (d.error) { showError(d.error); return; }
    if (d.state.vocab) window.vocab = d.state.vocab;
    drawState(d.state);
    drawInside(d.inside);
  };
  es.onerror = () => { $("#status").textContent = "reconnecting…"; };
}
api("/api/state").then(drawState, () => {});
connect();
