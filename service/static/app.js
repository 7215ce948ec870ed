// AE-OT web page: plain JS against the service's own API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let currentModel = null;
let servedVersion = null;

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) q.set(k, v);
  return q.toString();
}

function fmt(x, digits = 4) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

let refreshing = false;

async function refreshModels() {
  // The 2 s timer must not start a second refresh while a slow one is still running.
  if (refreshing) return;
  refreshing = true;
  try {
    await refreshModelsOnce();
  } finally {
    refreshing = false;
  }
}

async function refreshModelsOnce() {
  const r = await fetch("/models");
  if (!r.ok) return;
  const data = await r.json();
  const select = $("model");
  const names = data.models.map((m) => m.name);
  if (select.options.length !== names.length) {
    select.innerHTML = "";
    for (const n of names) select.add(new Option(n, n));
  }
  if (!currentModel && data.default_model) currentModel = data.default_model;
  if (currentModel) select.value = currentModel;
  const body = $("progress").querySelector("tbody");
  body.innerHTML = "";
  for (const m of data.models) {
    const j = m.job || {};
    const acc = j.accuracy || m.accuracy || {};
    const row = body.insertRow();
    row.dataset.model = m.name;
    for (const v of [m.name, j.status || "–", j.iteration ?? "–", fmt(acc.l1), fmt(acc.noise_floor),
                     acc.empty_cells ?? "–", j.eta != null ? `${Math.round(j.eta)} s` : "–",
                     m.served_version ?? "–"]) {
      row.insertCell().textContent = v;
    }
  }
  for (const j of data.jobs.filter((x) => x.kind === "train")) {
    const row = body.insertRow();
    row.insertCell().textContent = "(training default model)";
    row.insertCell().textContent = j.status;
  }
  const model = data.models.find((m) => m.name === currentModel);
  const ready = model && model.ready;
  $("ready").textContent = ready ? `ready · v${model.served_version}` : "fitting…";
  $("ready").className = "badge " + (ready ? "ready" : "waiting");
  if (ready && model.served_version !== servedVersion) {
    servedVersion = model.served_version;
    await Promise.all([showGallery(), showInterpolation(), showSingularities()]);
  }
}

// Each panel shows the answer to its latest request: an older, slower answer must not
// overwrite a newer one (a new seed clicked while the first gallery is still loading).
const latest = { gallery: 0, strip: 0 };

async function showGallery() {
  if (!currentModel) return;
  const ticket = ++latest.gallery;
  const src = "/sample?" + query({
    model: currentModel, n: 36, seed: $("seed").value || 0, format: "png",
    extended: $("extended").checked,
  });
  const img = new Image();
  img.alt = "samples";
  await new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; img.src = src; });
  if (ticket === latest.gallery) $("gallery").replaceChildren(img);
}

async function showInterpolation() {
  if (!currentModel) return;
  const ticket = ++latest.strip;
  const body = {
    model: currentModel, start_index: Number($("from").value), end_index: Number($("to").value),
    steps: Number($("steps").value), images: true,
  };
  const r = await fetch("/interpolate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await r.json();
  if (ticket !== latest.strip) return;
  if (!r.ok) { $("crossing-list").textContent = data.detail; return; }
  const strip = $("strip");
  const img = new Image();
  img.alt = "interpolation";
  await new Promise((resolve) => {
    img.onload = resolve; img.onerror = resolve;
    img.src = "data:image/png;base64," + data.strip_png;
  });
  if (ticket !== latest.strip) return;
  strip.replaceChildren(img);
  const n = data.t.length;
  for (const c of data.crossings) {
    // Frames sit at t_k = k / (n - 1); a crossing at t lies between frames, at (t * (n - 1) + .5) / n.
    const mark = document.createElement("div");
    mark.className = "crossing";
    mark.title = `t=${fmt(c.t, 3)} cells ${c.from_cell}→${c.to_cell}, angle ${fmt(c.angle, 3)} rad`;
    mark.style.left = `${((c.t * (n - 1) + 0.5) / n) * 100}%`;
    strip.appendChild(mark);
  }
  $("crossing-list").textContent = data.crossings.length
    ? `${data.crossings.length} singular crossing(s): ` +
      data.crossings.map((c) => `t=${fmt(c.t, 3)} (${fmt(c.angle, 3)} rad)`).join(", ")
    : "no singular crossing on this segment";
}

async function showSingularities() {
  if (!currentModel) return;
  const r = await fetch("/singularities?" + query({ model: currentModel, limit: 5 }));
  const s = await r.json();
  if (!r.ok) { $("singular-stats").textContent = s.detail; return; }
  const q = s.angle_quantiles;
  const rows = s.pairs.map((p) => `<tr><td>${p.i}</td><td>${p.j}</td><td>${fmt(p.angle)}</td></tr>`);
  $("singular-stats").innerHTML =
    `<p>threshold <b id="threshold">${fmt(s.threshold)}</b> rad (rule ${s.rule}, ${s.frame} frame); ` +
    `<b id="n-singular">${s.n_singular}</b> of ${s.n_pairs} adjacent pairs singular ` +
    `(${fmt(100 * s.singular_fraction, 1)} %). Angles: median ${fmt(q.median)}, ` +
    `p90 ${fmt(q.p90)}, max ${fmt(q.max)} rad.</p>` +
    `<table><thead><tr><th>cell i</th><th>cell j</th><th>angle (rad)</th></tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>`;
}

$("model").addEventListener("change", (e) => {
  currentModel = e.target.value; servedVersion = null; refreshModels();
});
$("resample").addEventListener("click", () => {
  $("seed").value = Number($("seed").value || 0) + 1; showGallery();
});
$("extended").addEventListener("change", showGallery);
$("interp-go").addEventListener("click", showInterpolation);

refreshModels();
setInterval(refreshModels, 2000);
