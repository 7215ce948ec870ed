// AE-OT web page: plain JS against the service's own API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const SEED_MAX = 2147483647; // the API's seed range is [0, 2^31 - 1]
const STRIP_PAD = 6; // pixels between interpolation frames (service/images.py STRIP_PAD)
const REFRESH_MS = 2000;
// The page's view of the server: which model, and which potential version the panels show.
const state = { model: null, version: null, classes: [], maxCount: 256 };

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") q.set(k, v);
  }
  return q.toString();
}

function fmt(x, digits = 4) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

// Scores span many scales (radians, diffusion distances near 1e-7): significant digits.
function sig(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toPrecision(digits);
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
}

function intIn(id, lo, hi, fallback) {
  const v = Math.round(Number($(id).value));
  const out = Number.isFinite(v) && $(id).value !== "" ? Math.min(Math.max(v, lo), hi) : fallback;
  $(id).value = out;
  return out;
}

// ---- status --------------------------------------------------------------------------------

function setBadge(kind, text) {
  $("ready").className = `badge ${kind}`;
  $("ready").textContent = text;
}

function trainingText(job) {
  // job.training: {epoch, epochs, phase, loss} after the first epoch, null before it.
  const t = job.training;
  const parts = [`training ${job.model || "the autoencoder"}`];
  if (!t) return parts.concat(job.status === "queued" ? ["queued"] : ["first epoch"]).join(" · ");
  parts.push(`epoch ${t.epoch}/${t.epochs}${t.phase === "decoder" ? " (decoder)" : ""}`);
  parts.push(`loss ${fmt(t.loss, 5)}`);
  return parts.join(" · ");
}

function fitText(job) {
  const acc = job.accuracy;
  const l1 = acc ? `L1 ${fmt(acc.l1, 3)} → ${fmt(job.target_l1, 3)}` : "first check pending";
  return `${l1} · ETA ${seconds(job.eta)}`;
}

// The badge tells what the server does now, from /models; "unreachable" when requests fail.
function badgeFor(model, jobs) {
  if (!model) {
    const train = jobs.find((j) => j.kind === "train" && (!j.model || j.model === state.model))
      || jobs.find((j) => j.kind === "train");
    return train ? ["waiting", trainingText(train)] : ["waiting", "no model yet"];
  }
  const job = model.job && ["queued", "running"].includes(model.job.status) ? model.job : null;
  if (job && job.kind === "train") return ["waiting", trainingText(job)];
  if (!model.ready) return ["waiting", job ? `fitting · ${fitText(job)}` : "waiting for a fit"];
  const acc = model.served_accuracy || model.accuracy;
  let text = `ready · v${model.served_version} · L1 ${fmt(acc && acc.l1, 3)}`;
  if (job) text += ` · refitting (${fitText(job)})`;
  return ["ready", text];
}

function addRow(body, values) {
  // data-label names the column of each cell for the narrow-screen layout (style.css).
  const heads = [...$("progress").querySelectorAll("thead th")].map((th) => th.textContent);
  const row = body.insertRow();
  values.forEach((v, k) => {
    const cell = row.insertCell();
    cell.textContent = v;
    cell.dataset.label = heads[k];
  });
  return row;
}

function renderTable(data) {
  const body = $("progress").querySelector("tbody");
  body.replaceChildren();
  for (const m of data.models) {
    const j = m.job || {};
    const served = m.served_accuracy || {};
    const jobAcc = j.accuracy || {};
    const row = addRow(body, [
      m.name, j.kind || "–", j.status || "–", j.iteration ?? "–", m.served_version ?? "–",
      fmt(served.l1), fmt(jobAcc.l1), fmt(jobAcc.noise_floor ?? served.noise_floor),
      jobAcc.empty_cells ?? served.empty_cells ?? "–", seconds(j.eta),
    ]);
    row.dataset.model = m.name;
  }
  for (const j of data.jobs.filter((x) => x.kind === "train")) {
    const epoch = j.training ? `${j.training.epoch}/${j.training.epochs}` : "–";
    addRow(body, [j.model || "(new model)", "train", j.status, epoch]);
  }
}

function updateModels(data) {
  const select = $("model");
  const names = data.models.map((m) => m.name);
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
  }
  if (!state.model || !names.includes(state.model)) state.model = data.default_model;
  if (state.model) select.value = state.model;
}

// The class selector: each label (the API's label=) with its name beside it when the bundle
// names its classes ("7 Sneaker").
function updateClasses(classes, names) {
  const shown = classes.map((c, k) => (names ? `${c} ${names[k]}` : String(c)));
  const same = shown.join() === state.classes.join();
  state.classes = shown;
  $("class-control").hidden = classes.length === 0;
  $("interp-class-control").hidden = classes.length === 0;
  if (same) return;
  const select = $("label");
  const options = classes.map((c, k) => new Option(shown[k], c));
  select.replaceChildren(new Option("any", ""), ...options);
}

let refreshing = false;

async function refreshModels() {
  // The timer must not start a second refresh while a slow one is still running.
  if (refreshing) return;
  refreshing = true;
  try {
    await refreshOnce();
  } catch (err) {
    // fetch rejects when the server is down or the connection drops.
    setBadge("down", "server unreachable");
    state.version = null; // redraw everything when it comes back
  } finally {
    refreshing = false;
  }
}

async function refreshOnce() {
  const r = await fetch("/models");
  if (!r.ok) {
    setBadge("down", r.status >= 500 ? "server unreachable" : `error ${r.status}`);
    return;
  }
  const data = await r.json();
  updateModels(data);
  renderTable(data);
  const model = data.models.find((m) => m.name === state.model);
  setBadge(...badgeFor(model, data.jobs));
  if (model && model.ready && model.served_version !== state.version) {
    state.version = model.served_version;
    updateClasses(model.classes || [], model.class_names);
    await Promise.all([showGallery(), showInterpolation(), showSingularities()]);
  }
}

// ---- panels --------------------------------------------------------------------------------

// Each panel shows the answer to its latest request: an older, slower answer must not
// overwrite a newer one (a new seed clicked while the first gallery is still loading).
const latest = { gallery: 0, strip: 0, singular: 0 };

function loadImage(img, src) {
  return new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    img.src = src;
  });
}

function sampleParams(format) {
  return {
    model: state.model, version: state.version, n: intIn("count", 1, state.maxCount, 36),
    seed: intIn("seed", 0, SEED_MAX, 0), extended: $("extended").checked,
    label: $("label").value, format,
  };
}

async function showGallery() {
  if (!state.model || state.version === null) return;
  const ticket = ++latest.gallery;
  const src = "/sample?" + query(sampleParams("png"));
  const tag = `${state.model}-v${state.version}-seed${$("seed").value}`;
  $("download-png").href = src;
  $("download-png").download = `${tag}.png`;
  $("download-npy").href = "/sample?" + query(sampleParams("npy"));
  $("download-npy").download = `${tag}.npy`;
  const img = new Image();
  img.alt = "samples";
  await loadImage(img, src);
  if (ticket !== latest.gallery) return;
  if (img.naturalWidth > 0) {
    // Small grids (few or tiny images) are shown up to twice their size, at most 480 px wide.
    const w = img.naturalWidth;
    img.style.width = `${Math.max(w, Math.min(2 * w, 480))}px`;
    $("gallery").replaceChildren(img);
  } else {
    const r = await fetch(src);
    const hint = document.createElement("p");
    hint.className = "hint error";
    hint.textContent = r.ok ? "the picture did not load" : (await r.json()).detail;
    $("gallery").replaceChildren(hint);
  }
}

function markCrossings(strip, img, data) {
  // The strip has frames of width tw separated by STRIP_PAD pixels; the server drew a red bar
  // in the gap of each crossing. These marks sit on the bars and name the crossing on hover.
  const n = data.t.length;
  const width = img.naturalWidth;
  const tile = (width - STRIP_PAD) / n - STRIP_PAD;
  for (const c of data.crossings) {
    const x = STRIP_PAD + (c.gap + 1) * (tile + STRIP_PAD) - STRIP_PAD;
    const mark = document.createElement("div");
    mark.className = "crossing";
    mark.title = `t=${fmt(c.t, 3)}: cells ${c.from_cell}→${c.to_cell}, score ${sig(c.angle)}`;
    mark.style.left = `${(x / width) * 100}%`;
    mark.style.width = `${(STRIP_PAD / width) * 100}%`;
    strip.appendChild(mark);
  }
}

function interpolationBody() {
  const body = { model: state.model, version: state.version, images: true,
                 steps: intIn("steps", 2, 64, 12) };
  if ($("interp-by-class").checked && $("label").value !== "") {
    return { ...body, label: Number($("label").value), seed: intIn("seed", 0, SEED_MAX, 0) };
  }
  return { ...body, start_index: intIn("from", 0, SEED_MAX, 0),
           end_index: intIn("to", 0, SEED_MAX, 1) };
}

async function showInterpolation() {
  if (!state.model || state.version === null) return;
  const ticket = ++latest.strip;
  const r = await fetch("/interpolate", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(interpolationBody()),
  });
  const data = await r.json();
  if (ticket !== latest.strip) return;
  if (!r.ok) {
    $("crossing-list").textContent = data.detail;
    return;
  }
  const strip = $("strip");
  const img = new Image();
  img.alt = "interpolation";
  await loadImage(img, "data:image/png;base64," + data.strip_png);
  if (ticket !== latest.strip) return;
  strip.replaceChildren(img);
  markCrossings(strip, img, data);
  $("crossing-list").textContent = data.crossings.length
    ? `${data.crossings.length} singular crossing(s), red bars: ` +
      data.crossings.map((c) => `t=${fmt(c.t, 3)} (score ${sig(c.angle)})`).join(", ")
    : "no singular crossing on this segment";
}

function pairFigure(p) {
  const fig = document.createElement("figure");
  fig.className = "pair";
  const img = new Image();
  img.alt = `cells ${p.i} and ${p.j}`;
  img.src = "data:image/png;base64," + p.pair_png;
  const cap = document.createElement("figcaption");
  cap.textContent = `${p.i} | ${p.j} · ${sig(p.angle)}`;
  fig.append(img, cap);
  return fig;
}

async function showSingularities() {
  if (!state.model || state.version === null) return;
  const ticket = ++latest.singular;
  const base = { model: state.model, version: state.version };
  const r = await fetch("/singularities?" + query({ ...base, limit: 8, images: true }));
  const s = await r.json();
  if (ticket !== latest.singular) return;
  if (!r.ok) {
    $("singular-stats").textContent = s.detail;
    return;
  }
  const q = s.angle_quantiles;
  const unit = ` ${s.unit}`; // rad, or what the frame's score is (diffusion distance)
  const clusters = s.clusters > 0 ? `, ${s.clusters} spectral clusters` : "";
  const p = document.createElement("p");
  p.innerHTML =
    `threshold <b id="threshold"></b>${unit} (rule ${s.rule}, ${s.frame} frame${clusters}); ` +
    `<b id="n-singular"></b> of ${s.n_pairs} adjacent pairs singular ` +
    `(${fmt(100 * s.singular_fraction, 1)} %). Scores: median ${sig(q.median)}, ` +
    `p90 ${sig(q.p90)}, max ${sig(q.max)}${unit}. The most singular pairs, decoded:`;
  $("singular-stats").replaceChildren(p);
  $("threshold").textContent = sig(s.threshold);
  $("n-singular").textContent = s.n_singular;
  $("singular-pairs").replaceChildren(...s.pairs.map(pairFigure));
  const picture = $("singular-picture");
  // The picture is the score histogram alone (limit 0): the pairs are the thumbnails above.
  await loadImage(picture, "/singularities?" + query({ ...base, limit: 0, format: "png" }));
  if (ticket === latest.singular) picture.hidden = picture.naturalWidth === 0;
}

// ---- controls ------------------------------------------------------------------------------

$("model").addEventListener("change", (e) => {
  state.model = e.target.value;
  state.version = null;
  refreshModels();
});
// Enter in any sample field submits the form: draw with the typed seed.
$("sample-form").addEventListener("submit", (e) => {
  e.preventDefault();
  showGallery();
});
$("resample").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * (SEED_MAX + 1));
  showGallery();
});
for (const id of ["extended", "label"]) $(id).addEventListener("change", showGallery);
$("interp-form").addEventListener("submit", (e) => {
  e.preventDefault();
  showInterpolation();
});

refreshModels();
setInterval(refreshModels, REFRESH_MS);
