// genrobust page: plain JS over the public API (GET /openapi.json drives every form). No ML here.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  openapi: null, models: [], byName: {}, classes: [], detectors: [],
  image: null,                       // {pixels: Float32Array(784), caption, label (int or null)}
  gallery: { offset: 0, limit: 24, split: "test", total: 0, dataset: null, items: [] },
  apiKey: sessionStorage.getItem("genrobust-api-key"),
  sweepAttacks: [], openJob: null, jobsTimer: null, jobRows: {},
  studies: {},                       // job id -> Promise of its results.json (figures, and tables of older records)
};
const ACTIVE = new Set(["queued", "running"]);

// ------------------------------------------------------------------ small helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const pct = (x) => `${(100 * x).toFixed(1)} %`;
const className = (c) => (S.classes[c] !== undefined ? `${S.classes[c]} (${c})` : String(c));
const rows = (p) => Array.from({ length: 28 }, (_, i) => Array.from(p.subarray(i * 28, i * 28 + 28)));

// ------------------------------------------------------------------ API access
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(method, path, body, retried = false) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (S.apiKey) headers["X-API-Key"] = S.apiKey;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, `the service did not answer (${e.message})`);
  }
  if (r.status === 401 && !retried && await askKey()) return api(method, path, body, true);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new ApiError(r.status, (data && data.detail) || `${r.status} ${r.statusText}`);
  return { status: r.status, data };
}

// asks for the API key (on the first 401); resolves true when one was entered
function askKey() {
  const dlg = $("key-dialog");
  $("key-input").value = S.apiKey || "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      const key = $("key-input").value.trim();
      if (dlg.returnValue === "ok" && key) {
        S.apiKey = key;
        sessionStorage.setItem("genrobust-api-key", key);
        resolve(true);
      } else resolve(false);
    }, { once: true });
    dlg.showModal();
  });
}

// an API error shown next to the control that caused it (and on the form fields it names)
function showError(id, err, form) {
  const box = $(id);
  box.textContent = err instanceof ApiError && err.status
    ? `Error ${err.status}: ${err.message}` : String(err.message || err);
  box.hidden = false;
  if (form) {
    clearFields(form);
    for (const part of (err.message || "").split("; ")) {
      const m = part.match(/^([\w.]+): (.*)$/);
      if (!m) continue;
      const field = [...form.querySelectorAll("[data-path]")]
        .find((f) => m[1] === f.dataset.path || m[1].endsWith("." + f.dataset.path));
      if (field) {
        const wrap = field.closest(".field");
        wrap.classList.add("invalid");
        field.setAttribute("aria-invalid", "true");
        wrap.append(el("span", { class: "msg error", text: m[2] }));
      }
    }
  }
}
function clearFields(root) {
  root.querySelectorAll(".field.invalid").forEach(clearField);
}
function clearField(field) {
  field.classList.remove("invalid");
  field.querySelector(".msg")?.remove();
  field.querySelector("[aria-invalid]")?.removeAttribute("aria-invalid");
}
function clearError(id, form) {
  $(id).hidden = true;
  if (form) clearFields(form);
}

async function busy(button, fn) {
  button.disabled = true;
  try { return await fn(); } finally { button.disabled = false; }
}

// ------------------------------------------------------------------ forms from OpenAPI schemas
const schemas = () => S.openapi.components.schemas;
const deref = (s) => (s && s.$ref ? schemas()[s.$ref.split("/").pop()] : s);

function unwrap(schema) {  // {schema, nullable} without anyOf [X, null]
  const s = deref(schema);
  if (s && s.anyOf) {
    const other = s.anyOf.filter((a) => a.type !== "null");
    if (other.length === 1) {
      return { s: { ...deref(other[0]), ...s, anyOf: undefined }, nullable: other.length < s.anyOf.length };
    }
  }
  return { s, nullable: false };
}

function limits(s) {
  const out = [];
  if (s.minimum !== undefined) out.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) out.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) out.push(s.maximum > 1e15 ? "≤ 2⁶³ − 1" : `≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) out.push(`< ${s.exclusiveMaximum}`);
  if (s.default !== undefined && s.default !== null) out.push(`default ${JSON.stringify(s.default)}`);
  return out.join(", ");
}

// one labelled control per property; nested objects become fieldsets; paths like "config.latent_dim"
function renderFields(container, schema, { prefix, path = "", exclude = [] }) {
  const obj = deref(schema);
  for (const [name, prop] of Object.entries(obj.properties || {})) {
    if (exclude.includes(name)) continue;
    const p = path ? `${path}.${name}` : name;
    const id = `${prefix}-${p.replace(/\./g, "-")}`;
    const { s, nullable } = unwrap(prop);
    const title = prop.title || s.title || name;
    const desc = [prop.description || s.description, limits(s)].filter(Boolean).join(" — ");
    if (s.properties) {
      const fs = el("fieldset", {}, el("legend", { text: title }));
      if (desc) fs.append(el("p", { class: "muted", text: desc }));
      renderFields(fs, s, { prefix, path: p });
      container.append(fs);
      continue;
    }
    const hintId = `${id}-hint`;
    let input;
    const kind = s.enum || s.const !== undefined ? "enum" : s.type;
    if (kind === "enum") {
      input = el("select", { id });
      // a required choice without a default starts unchosen: the API's message says what is missing
      if (s.default === undefined && s.const === undefined) input.append(el("option", { value: "", text: "choose…" }));
      for (const v of s.enum || [s.const]) input.append(el("option", { value: v, text: v, selected: v === s.default }));
    } else if (kind === "boolean") {
      input = el("input", { type: "checkbox", id, checked: !!s.default });
    } else if (kind === "integer" || kind === "number") {
      input = el("input", { type: "number", id, step: kind === "integer" ? "1" : "any", inputmode: "decimal",
        value: s.default ?? "", placeholder: nullable ? "none" : null });
    } else if (kind === "array") {
      input = el("input", { type: "text", id, value: (s.default || []).join(", "), placeholder: "comma-separated" });
    } else if (kind === "object" || !kind) {
      input = el("textarea", { id, rows: 2, placeholder: "JSON object, e.g. {}" });
    } else {
      input = el("input", { type: "text", id, value: s.default ?? "",
        placeholder: nullable ? "none" : (s.examples || [])[0] });
    }
    Object.assign(input.dataset, { path: p, kind: kind || "object", nullable: String(nullable),
      itemType: s.items?.type || s.prefixItems?.[0]?.type || "" });
    if (desc) input.setAttribute("aria-describedby", hintId);
    input.addEventListener("input", () => clearField(input.closest(".field")));  // corrected: drop the complaint
    const hint = desc ? el("span", { class: "hint", id: hintId, text: desc }) : null;
    const field = kind === "boolean"
      ? el("div", { class: "field check" }, el("label", { for: id }, input, ` ${title}`), hint)
      : el("div", { class: "field" }, el("label", { for: id, text: title }), input, hint);
    container.append(field);
  }
}

// the values of a container's generated controls as a nested object; bad text is sent as-is so the API says why
function readFields(container) {
  const out = {};
  for (const input of container.querySelectorAll("[data-path]")) {
    const { path, kind, nullable, itemType } = input.dataset;
    let v;
    if (kind === "boolean") v = input.checked;
    else {
      const raw = input.value.trim();
      if (raw === "") {
        if (nullable === "true" || kind === "object") continue;
        if (kind !== "string" && kind !== "enum") continue;  // default applies
        v = raw;
      } else if (kind === "integer" || kind === "number") v = Number.isFinite(Number(raw)) ? Number(raw) : raw;
      else if (kind === "array") {
        const num = (t) => (itemType !== "string" && Number.isFinite(Number(t)) ? Number(t) : t);
        v = raw.split(",").map((t) => t.trim()).filter(Boolean).map(num);
      }
      else if (kind === "object") {
        try { v = JSON.parse(raw); } catch (e) { throw new Error(`${path}: not valid JSON (${e.message})`); }
      } else v = raw;
    }
    const keys = path.split(".");
    let o = out;
    for (const k of keys.slice(0, -1)) o = o[k] = o[k] || {};
    o[keys.at(-1)] = v;
  }
  return out;
}

// attacks: one variant per registered attack (OpenAPI components "<Name>Spec", tagged by "attack")
function attackVariants() {
  return Object.entries(schemas())
    .filter(([k, s]) => k.endsWith("Spec") && s.properties?.attack?.const)
    .map(([k, s]) => ({ name: s.properties.attack.const, description: s.properties.attack.description,
      params: s.properties.params, request: schemas()[k.replace(/Spec$/, "AttackRequest")] }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

// an attack chooser + its parameter form (+ extra request fields such as seed, eval_samples)
function attackForm(container, prefix, { extras = true } = {}) {
  const variants = attackVariants();
  const select = el("select", { id: `${prefix}-attack` });
  for (const v of variants) select.append(el("option", { value: v.name, text: v.name, selected: v.name === "fgsm" }));
  const about = el("p", { class: "muted", id: `${prefix}-attack-about` });
  select.setAttribute("aria-describedby", about.id);
  const params = el("fieldset", {}, el("legend", { text: "Parameters" }));
  const more = el("div");
  container.append(el("div", { class: "field" }, el("label", { for: select.id, text: "Attack" }), select, about),
    params, more);
  const draw = () => {
    const v = variants.find((x) => x.name === select.value);
    about.textContent = v.description;
    params.replaceChildren(el("legend", { text: `Parameters of ${v.name}` }));
    renderFields(params, v.params, { prefix: `${prefix}-p`, path: "params" });
    more.replaceChildren();
    const exclude = ["model", "images", "images_png", "labels", "attack", "params"];  // set by the page
    if (extras && v.request) renderFields(more, v.request, { prefix, exclude });
  };
  select.addEventListener("change", draw);
  draw();
  return { read: () => ({ attack: select.value, ...readFields(container) }) };
}

// ------------------------------------------------------------------ pixels and canvases
function paint(canvas, pixels, map = (v) => v) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const g = Math.max(0, Math.min(255, Math.round(255 * map(pixels[i]))));
    img.data.set([g, g, g, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

function pixelsOf(source, w = 28, h = 28) {  // an <img>/<canvas> drawn on black, scaled to 28 x 28, as gray in [0, 1]
  const c = el("canvas", { width: 28, height: 28 });
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 28, 28);
  ctx.drawImage(source, 0, 0, w, h, 0, 0, 28, 28);
  const d = ctx.getImageData(0, 0, 28, 28).data;
  const p = new Float32Array(784);
  for (let i = 0; i < 784; i++) p[i] = Math.round(0.299 * d[4 * i] + 0.587 * d[4 * i + 1] + 0.114 * d[4 * i + 2]) / 255;
  return p;
}

function setImage(pixels, caption, label = null) {
  S.image = { pixels, caption, label };
  for (const id of ["current", "compare-image"]) paint($(id), pixels);
  $("current-caption").textContent = caption;
  $("compare-caption").textContent = caption;
  $("classify-result").replaceChildren();
  $("attack-result").replaceChildren();
}

function needImage(errorId) {
  if (!S.image) { showError(errorId, new Error("Pick an image first (gallery, upload or drawing).")); return false; }
  return true;
}

// ------------------------------------------------------------------ models and datasets
async function loadModels() {
  const { data } = await api("GET", "/models");
  S.models = data;
  S.byName = Object.fromEntries(data.map((m) => [m.name, m]));
  const sel = $("model");
  sel.replaceChildren(...data.map((m) => el("option", { value: m.name, text: modelLabel(m),
    selected: m.name === "fmnist-gfz" })));
  const checks = (id, checked) => $(id).replaceChildren(...data.map((m) => el("label", {},
    el("input", { type: "checkbox", value: m.name, checked: checked.includes(m.name) }),
    ` ${m.name} (${m.structure})`)));
  checks("compare-models", ["fmnist-dfz", "fmnist-gfz"]);
  checks("sweep-models", ["fmnist-gfz"]);
}
const testAccuracy = (m) => (typeof m.test_accuracy === "object" ? m.test_accuracy?.accuracy : m.test_accuracy);
const modelLabel = (m) => `${m.name} — ${m.structure}, ${m.kind}`
  + (testAccuracy(m) != null ? `, test acc ${fmt(testAccuracy(m), 4)}` : "");
const currentModel = () => S.byName[$("model").value];
const modelDataset = (m) => (m && m.dataset && m.dataset.name) || "fashion-mnist";

async function onModelChange() {
  const m = currentModel();
  if (!m) return;
  $("model-info").textContent = `${m.factorisation || ""} · ` + (m.logits_have_density
    ? "logits are log p(x, y): detectors apply" : "discriminative logits: no detectors");
  $("classify-result").replaceChildren();
  $("attack-result").replaceChildren();
  if (modelDataset(m) !== S.gallery.dataset) {
    S.gallery.dataset = modelDataset(m);
    S.gallery.offset = 0;
    await loadGallery();
  }
}

async function loadGallery() {
  const g = S.gallery;
  g.split = $("gallery-split").value;
  clearError("gallery-error");
  try {
    const { data } = await api("GET", `/datasets/${g.dataset}/${g.split}?offset=${g.offset}&limit=${g.limit}`);
    S.classes = data.classes;
    g.total = data.total;
    g.items = data.items;
    $("gallery-range").textContent = `${data.offset}–${data.offset + data.items.length - 1} of ${data.total}`;
    $("gallery").replaceChildren(...data.items.map((it) => el("button", {
      type: "button", role: "listitem", "aria-pressed": "false", "data-index": it.index,
      "aria-label": `Image ${it.index}: ${it.class_name}`,
      onclick: (e) => pickGallery(e.currentTarget, it).catch((err) => showError("gallery-error", err)),
    }, el("img", { src: it.url, alt: "", width: 28, height: 28 }),
    el("span", { text: `${it.index} ${it.class_name}` }))));
  } catch (e) {
    g.items = [];
    showError("gallery-error", e);
  }
}

function loaded(img) {  // resolves once an <img> has its pixels
  if (img.complete && img.naturalWidth) return Promise.resolve(img);
  return new Promise((resolve, reject) => {
    img.addEventListener("load", () => resolve(img), { once: true });
    img.addEventListener("error", () => reject(new Error(`could not load ${img.src}`)), { once: true });
  });
}

async function pickGallery(button, it, note = "") {
  document.querySelectorAll("#gallery button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
  const img = await loaded(button.querySelector("img"));
  setImage(pixelsOf(img), `${S.gallery.split} image ${it.index}, true label ${className(it.label)}${note}`, it.label);
}

// a new user meets a chosen image (the gallery's first), so Compare and Jobs work before any pick
async function defaultImage() {
  const it = S.gallery.items[0];
  const button = it && $("gallery").querySelector(`button[data-index="${it.index}"]`);
  if (!button || S.image) return;  // no dataset: the gallery says why, and the tools ask for an image
  try { await pickGallery(button, it, " (default)"); } catch (e) { showError("gallery-error", e); }
}

// ------------------------------------------------------------------ upload and drawing
function onUpload(e) {
  clearError("upload-error");
  const file = e.target.files[0];
  if (!file) return;
  if (file.type && file.type !== "image/png") {
    showError("upload-error", new Error(`${file.name} is not a PNG (${file.type})`));
    return;
  }
  const img = new Image();
  img.onload = () => {
    setImage(pixelsOf(img, img.naturalWidth, img.naturalHeight), `uploaded ${file.name}`);
    URL.revokeObjectURL(img.src);
  };
  img.onerror = () => showError("upload-error", new Error(`${file.name} could not be decoded as an image`));
  img.src = URL.createObjectURL(file);
}

const drawn = new Float32Array(784);
function setupDrawing() {
  const c = $("draw");
  let last = null;
  const at = (e) => {  // pointer -> pixel coordinates
    const r = c.getBoundingClientRect();
    return [28 * (e.clientX - r.left) / r.width, 28 * (e.clientY - r.top) / r.height];
  };
  const dab = ([x, y]) => {
    const r = Number($("brush").value) * 0.75;
    for (let i = Math.floor(y - r - 1); i <= y + r + 1; i++) for (let j = Math.floor(x - r - 1); j <= x + r + 1; j++) {
      if (i < 0 || j < 0 || i > 27 || j > 27) continue;
      const d = Math.hypot(i + 0.5 - y, j + 0.5 - x);
      drawn[28 * i + j] = Math.max(drawn[28 * i + j], Math.min(1, Math.max(0, r + 0.5 - d)));
    }
  };
  const move = (e) => {
    if (!last) return;
    const p = at(e);
    const steps = Math.ceil(Math.hypot(p[0] - last[0], p[1] - last[1]) * 2) || 1;
    for (let s = 1; s <= steps; s++) {
      dab([last[0] + (p[0] - last[0]) * s / steps, last[1] + (p[1] - last[1]) * s / steps]);
    }
    last = p;
    paint(c, drawn);
  };
  c.addEventListener("pointerdown", (e) => {
    c.setPointerCapture(e.pointerId);
    last = at(e);
    dab(last);
    paint(c, drawn);
  });
  c.addEventListener("pointermove", move);
  c.addEventListener("pointerup", () => { last = null; });
  $("draw-clear").addEventListener("click", () => { drawn.fill(0); paint(c, drawn); });
  $("draw-use").addEventListener("click", () => setImage(Float32Array.from(drawn), "drawn image"));
  paint(c, drawn);
}

// ------------------------------------------------------------------ classify
function bars(probs, logJoint, { caption } = {}) {
  const top = probs.indexOf(Math.max(...probs));
  const box = el("div", { class: "bars", role: "img",
    "aria-label": `${caption || "p(y|x)"}: most likely ${className(top)} ${pct(probs[top])}` });
  probs.forEach((p, c) => box.append(el("div", {
    class: `bar${c === top ? " best" : ""}`, title: `log p(x, y=${c}) = ${fmt(logJoint[c], 2)}` },
    el("span", { text: S.classes[c] ?? c }),
    el("span", { class: "track" }, el("span", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
    el("span", { class: "pct", text: pct(p) }))));
  return box;
}

function logTable(logJoint, probs) {
  return el("details", {}, el("summary", { text: "log p(x, y_c) per class" }),
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "class" }), el("th", { class: "num", text: "log p(x, y_c)" }),
        el("th", { class: "num", text: "p(y_c | x)" }))),
      el("tbody", {}, logJoint.map((l, c) => el("tr", {}, el("td", { text: className(c) }),
        el("td", { class: "num", text: fmt(l, 2) }), el("td", { class: "num", text: fmt(probs[c], 4) }))))));
}

async function classify() {
  clearError("classify-error");
  if (!needImage("classify-error")) return;
  await busy($("classify"), async () => {
    try {
      const { data } = await api("POST", "/classify", { model: $("model").value, images: [rows(S.image.pixels)] });
      const pred = data.predictions[0], probs = data.probabilities[0];
      const label = S.image.label;
      const right = label === null ? "" : (pred === label ? " — correct" : ` — wrong (true ${className(label)})`);
      $("classify-result").replaceChildren(
        el("p", {}, "Predicted: ", el("strong", { id: "classify-pred", text: className(pred) }),
          ` (p = ${fmt(probs[pred])})${right}`),
        el("h3", { text: "p(y | x)" }), bars(probs, data.log_joint[0]), logTable(data.log_joint[0], probs));
    } catch (e) { showError("classify-error", e); }
  });
}

// ------------------------------------------------------------------ attack
async function runAttack(model, spec, image) {  // the /attack result, waiting for the job when it became one (202)
  const body = { model, ...spec, images: [rows(image.pixels)] };
  if (image.label !== null) body.labels = [image.label];
  const { status, data } = await api("POST", "/attack", body);
  if (status !== 202) return data;
  return waitJob(data.job_id, $("attack-progress"));
}

async function waitJob(id, box) {
  box.hidden = false;
  const bar = el("progress", { max: 1, value: 0, "aria-label": "Attack job progress" });
  const text = el("span", { text: "queued" });
  box.replaceChildren(el("p", {}, `Large attack: running as job ${id.slice(0, 8)} — `, text), bar);
  try {
    for (;;) {
      const { data: job } = await api("GET", `/jobs/${id}`);
      bar.value = job.progress;
      text.textContent = `${job.state}, ${Math.round(100 * job.progress)} %`;
      if (job.state === "succeeded") return job.result;
      if (!ACTIVE.has(job.state)) throw new ApiError(0, `job ${job.state}: ${job.error || "no result"}`);
      await new Promise((r) => setTimeout(r, 700));
    }
  } finally { box.hidden = true; }
}

async function detectAll(model, images) {  // {detector: response} for every detector; {error} when none applies
  if (S.byName[model]?.logits_have_density === false) {
    return { error: `${model} is discriminative (no density of x): detection does not apply` };
  }
  const out = {};
  for (const d of S.detectors) {
    try { out[d] = (await api("POST", "/detect", { model, detector: d, images })).data; } catch (e) {
      if (e.status === 422) return Object.keys(out).length ? out : { error: e.message };
      throw e;
    }
  }
  return out;
}

const outcome = (res) => (res.success[0] ? "Fooled"
  : (res.predictions_before[0] === res.labels[0] ? "Not fooled" : "Already misclassified"));
const reportLink = (job, text) => el("a", { href: `/jobs/${job.id}/report/report.html`, target: "_blank",
  rel: "noopener", text });

function perturbation(orig, adv) {
  const eta = adv.map((v, i) => v - orig[i]);
  const m = Math.max(...eta.map(Math.abs));
  const scale = m > 0 ? 0.5 / m : 1;
  return { eta, scale, max: m };
}

function figure(pixels, caption, map, alt) {
  const c = el("canvas", { width: 28, height: 28, class: "pixels", role: "img", "aria-label": alt || caption });
  paint(c, pixels, map);
  return el("figure", {}, c, el("figcaption", { text: caption }));
}

function detectorTable(det, labels = ["clean", "adversarial"]) {
  if (det.error) return el("p", { class: "muted", text: `Detectors: ${det.error}` });
  const head = el("tr", {}, el("th", { text: "detector" }), ...labels.map((l) => el("th", { text: l })));
  const body = Object.entries(det).map(([name, r]) => el("tr", {}, el("td", { text: name }),
    ...labels.map((_, i) => el("td", {},
    el("span", { class: r.is_adversarial[i] ? "verdict-yes" : "verdict-no",
      text: r.is_adversarial[i] ? "flagged" : "passes" }),
    el("span", { class: "muted", text: ` score ${fmt(r.scores[i], 2)} vs threshold ${fmt(r.thresholds[i], 2)}` })))));
  return el("table", { class: "detectors" },
    el("caption", { class: "muted", text: "Detectors (5 % false positives on clean images)" }),
    el("thead", {}, head), el("tbody", {}, body));
}

async function attack(e) {
  e.preventDefault();
  const form = $("attack-form");
  clearError("attack-error", form);
  if (!needImage("attack-error")) return;
  $("attack-result").replaceChildren();
  await busy($("attack-run"), async () => {
    try {
      const model = $("model").value, image = S.image, spec = S.attackForm.read();
      const res = await runAttack(model, spec, image);
      const adv = Float32Array.from(res.adversarial_images[0].flat());
      const { eta, scale, max } = perturbation(image.pixels, adv);
      const [{ data: cls }, det] = await Promise.all([
        api("POST", "/classify", { model, images: [rows(image.pixels), rows(adv)] }),
        detectAll(model, [rows(image.pixels), rows(adv)]),
      ]);
      const before = res.predictions_before[0], after = res.predictions_after[0];
      $("attack-result").replaceChildren(
        el("div", { class: "triptych" },
          figure(image.pixels, `original: ${className(before)}`),
          figure(adv, `adversarial: ${className(after)}`, undefined, "adversarial image"),
          figure(eta, `perturbation × ${fmt(scale, 1)} (gray = 0, max |η| = ${fmt(max)})`, (v) => 0.5 + v * scale,
            "perturbation")),
        el("p", {},
          el("strong", { id: "attack-outcome", class: res.success[0] ? "fooled" : "held", text: outcome(res) }),
        ` — prediction ${className(before)} → `, el("strong", { id: "attack-pred", text: className(after) }),
        ` · ‖η‖₂ = ${fmt(res.l2[0])} · ‖η‖∞ = ${fmt(res.linf[0])} · ${fmt(res.seconds, 2)} s`,
        res.queries ? ` · ${res.queries[0]} queries` : ""),
        el("div", { class: "columns" },
          el("div", {}, el("h3", { text: "p(y | x) before" }),
            bars(cls.probabilities[0], cls.log_joint[0], { caption: "before" })),
          el("div", {}, el("h3", { text: "p(y | x) after" }),
            bars(cls.probabilities[1], cls.log_joint[1], { caption: "after" }))),
        detectorTable(det));
    } catch (err) { showError("attack-error", err, form); }
  });
}

// ------------------------------------------------------------------ compare
async function compare(e) {
  e.preventDefault();
  const form = $("compare-form");
  clearError("compare-error", form);
  if (!needImage("compare-error")) return;
  const models = [...$("compare-models").querySelectorAll("input:checked")].map((i) => i.value);
  if (models.length < 2) { showError("compare-error", new Error("Choose at least two models.")); return; }
  const out = $("compare-result");
  out.replaceChildren();
  await busy($("compare-run"), async () => {
    const spec = S.compareForm.read(), image = S.image;
    for (const model of models) {
      const card = el("div", { class: "card", "data-model": model },
        el("h3", { text: `${model} (${S.byName[model]?.structure})` }), el("p", { class: "muted", text: "running…" }));
      out.append(card);
      try {
        const res = await runAttack(model, spec, image);
        const adv = Float32Array.from(res.adversarial_images[0].flat());
        const { eta, scale } = perturbation(image.pixels, adv);
        const det = await detectAll(model, [rows(adv)]);
        const flagged = det.error ? null : Object.entries(det).filter(([, r]) => r.is_adversarial[0]).map(([n]) => n);
        const before = res.predictions_before[0], after = res.predictions_after[0];
        card.replaceChildren(card.firstChild,
          el("p", {}, el("strong", { class: `outcome ${res.success[0] ? "fooled" : "held"}`, text: outcome(res) }),
            `: ${className(before)} → ${className(after)}`),
          el("div", { class: "triptych" }, figure(adv, "adversarial"),
            figure(eta, `η × ${fmt(scale, 1)}`, (v) => 0.5 + v * scale, "perturbation")),
          el("p", { text: `‖η‖₂ = ${fmt(res.l2[0])} · ‖η‖∞ = ${fmt(res.linf[0])}` }),
          el("p", { class: "detect-line" }, det.error ? el("span", { class: "muted", text: `Detectors: ${det.error}` })
            : (flagged.length ? el("span", { class: "verdict-yes", text: `Flagged by: ${flagged.join(", ")}` })
              : el("span", { class: "verdict-no", text: "No detector flags it" }))),
          det.error ? null : detectorTable(det, ["adversarial"]));
      } catch (err) {
        card.replaceChildren(card.firstChild);
        showError("compare-error", err, form);
      }
    }
  });
}

// ------------------------------------------------------------------ jobs
function reportTable(reports) {
  const cols = [["model", "model"], ["attack", "attack"], ["n", "n"], ["clean acc", "clean_accuracy"],
    ["adv. acc", "adversarial_accuracy"], ["success", "success_rate"], ["ρ", "robustness"],
    ["median ‖η‖₂", "median_l2"], ["median ‖η‖∞", "median_linf"], ["s / image", "seconds_per_image"]];
  const cell = (v, k) => (typeof v === "number" && !Number.isInteger(v) ? fmt(v, k === "seconds_per_image" ? 4 : 3)
    : (v ?? "–"));
  return el("div", { class: "table-wrap" }, el("table", { class: "reports" },
    el("thead", {}, el("tr", {}, cols.map(([h], i) => el("th", { class: i < 2 ? null : "num", text: h })))),
    el("tbody", {}, reports.map((r) => el("tr", {}, cols.map(([, k]) => el("td", {
      class: typeof r[k] === "number" ? "num" : "", text: cell(r[k], k) })))))));
}

// ------------------------------------------------------------------ a finished study on the page
const reportFile = (job, file) => `/jobs/${job.id}/report/${file.split("/").map(encodeURIComponent).join("/")}`;
const studyResults = (job) => {  // results.json, fetched once per job (it lists the figures)
  S.studies[job.id] ??= api("GET", reportFile(job, "results.json")).then((r) => r.data)
    .catch((e) => { delete S.studies[job.id]; throw e; });
  return S.studies[job.id];
};

function studyAnswer(a) {
  return el("section", { class: "answer", "aria-label": "The study's answer" },
    el("h4", { text: "The answer" }),
    el("p", {}, el("strong", { text: "Question. " }), a.question),
    el("p", {}, el("strong", { text: `Answer (${a.strength}). ` }), el("span", { class: "study-answer", text: a.answer })),
    a.differences || a.limits ? el("details", {}, el("summary", { text: "Where this differs from the study; limits" }),
      a.differences ? el("p", {}, el("strong", { text: "Differences. " }), a.differences) : null,
      a.limits ? el("p", {}, el("strong", { text: "Limits. " }), a.limits) : null) : null);
}

function grid(columns, rows, caption) {  // a table of strings, as the report writes it
  return el("div", { class: "table-wrap" }, el("table", { class: "study" },
    caption ? el("caption", { text: caption }) : null,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", text: c })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v) => el("td", { text: v ?? "–" })))))));
}

function studyTable(t) {
  return el("section", { class: "study-table" }, grid(t.columns, t.rows, t.title),
    t.comparisons?.length ? grid(t.comparison_columns, t.comparisons, "Paired comparisons") : null,
    t.verdict ? el("p", { class: "verdict" }, el("strong", { text: "Verdict. " }), t.verdict) : null);
}

function studyFigures(res) {  // numbered as in the report: curves, one example per model, then the ROC curves
  const figs = res.figures || [];
  const upper = (s) => s[0].toUpperCase() + s.slice(1);
  return [...figs.filter((f) => f.question).map((f) => [upper(f.question), f.file]),
    ...Object.entries(res.examples || {}).map(([m, ex]) => [`${m}, one test image under every attack`, ex.file]),
    ...figs.filter((f) => f.model).map((f) => [`ROC, ${f.model} — ${f.attack}`, f.file])]
    .map(([caption, file], i) => ({ caption: `Figure ${i + 1}: ${caption}`, file }));
}

function studyView(job) {  // the answer, tables and figures of a succeeded study, and its files
  const r = job.result;
  const answer = el("div"), tables = el("div"), figures = el("div", { class: "figures" });
  const draw = (a, tabs) => {
    if (a) answer.replaceChildren(studyAnswer(a));
    if (tabs) tables.replaceChildren(el("h4", { text: "Tables" }), ...Object.values(tabs).map(studyTable));
  };
  draw(r.answer, r.tables);
  figures.append(el("p", { class: "muted", text: "loading the figures…" }));
  studyResults(job).then((res) => {
    if (!r.answer || !r.tables) draw(r.answer || res.answer, r.tables || res.tables);  // records of older studies
    const list = studyFigures(res);
    figures.replaceChildren(el("h4", { text: "Figures" }), ...(list.length ? list.map((f) => el("figure", {},
      el("img", { src: reportFile(job, f.file), alt: f.caption }), el("figcaption", { text: f.caption })))
      : [el("p", { class: "muted", text: "The study made no figures." })]));
  }, (e) => figures.replaceChildren(el("p", { class: "muted", text: `Figures: ${e.message}` })));
  const download = (file) => el("a", { href: reportFile(job, file), download: file, text: file });
  return [el("p", {}, reportLink(job, "Open the study's report.html"), ` (${fmt(r.seconds, 0)} s) · download `,
    download("report.md"), " · ", download("results.json")), answer, tables, figures];
}

function jobDetail(job) {
  const box = $("job-detail");
  const head = el("h3", { text: `Job ${job.id.slice(0, 8)} (${job.kind}): ${job.state}` });
  const parts = [head];
  if (job.error) parts.push(el("p", { class: "error", text: job.error }));
  if (job.state === "succeeded" && job.result) {
    if (job.kind === "sweep") parts.push(reportTable(job.result.reports));
    else if (job.kind === "study") parts.push(...studyView(job));
    else if (job.kind === "attack") parts.push(reportTable([job.result.summary]));
    else parts.push(el("pre", { text: JSON.stringify(job.result, null, 1).slice(0, 2000) }));
  }
  parts.push(el("details", {}, el("summary", { text: "request" }),
    el("pre", { text: JSON.stringify(job.request, null, 1).slice(0, 3000) })));
  box.replaceChildren(...parts);
}

function jobRow(job) {  // rows are updated in place, so focus survives the polling
  let r = S.jobRows[job.id];
  if (!r) {
    r = { tr: el("tr", { "data-job": job.id }), state: el("td"), pct: el("span", { class: "pct" }), actions: el("td"),
      bar: el("progress", { max: 1, "aria-label": `progress of job ${job.id.slice(0, 8)}` }), last: null };
    r.tr.append(el("td", {}, el("code", { text: job.id.slice(0, 8) })), el("td", { text: job.kind }), r.state,
      el("td", {}, r.bar, r.pct), el("td", { text: new Date(job.created_at).toLocaleTimeString() }), r.actions);
    S.jobRows[job.id] = r;
  }
  r.bar.value = job.progress;
  r.pct.textContent = ` ${Math.round(100 * job.progress)} %`;
  if (r.last !== job.state) {
    r.last = job.state;
    r.state.replaceChildren(el("span", { class: `state-${job.state}`, text: job.state }));
    const details = () => { S.openJob = job.id; S.openJobState = null; refreshJobs(); };
    const acts = [el("button", { type: "button", class: "small", text: "Details", onclick: details })];
    if (ACTIVE.has(job.state)) {
      acts.push(el("button", { type: "button", class: "small", text: "Cancel", onclick: () => cancelJob(job.id) }));
    }
    if (job.kind === "study" && job.state === "succeeded") acts.push(reportLink(job, "report"));
    r.actions.replaceChildren(...acts);
    if (S.openJob === job.id) S.openJobState = null;
  }
  return r.tr;
}

async function refreshJobs() {
  clearTimeout(S.jobsTimer);
  try {
    const { data } = await api("GET", "/jobs?limit=20");
    $("jobs-error").hidden = true;
    $("jobs-table").tBodies[0].replaceChildren(...data.map(jobRow));
    const open = data.find((j) => j.id === S.openJob);
    if (open && S.openJobState !== `${open.state}:${open.progress}`) {  // re-drawn only when it changed
      S.openJobState = `${open.state}:${open.progress}`;
      jobDetail(open);
    }
    const active = data.some((j) => ACTIVE.has(j.state));
    if (active || !$("jobs").hidden) S.jobsTimer = setTimeout(refreshJobs, active ? 1000 : 4000);
  } catch (e) {
    showError("jobs-error", e);
    S.jobsTimer = setTimeout(refreshJobs, 5000);
  }
}

async function cancelJob(id) {
  clearError("jobs-error");
  try { await api("DELETE", `/jobs/${id}`); } catch (e) { showError("jobs-error", e); }
  refreshJobs();
}

async function submitJob(e, path, name, build) {  // the form, error box and button are <name>-form, -error, -run
  e.preventDefault();
  const form = $(`${name}-form`), errorId = `${name}-error`;
  clearError(errorId, form);
  await busy($(`${name}-run`), async () => {
    try {
      const { data } = await api("POST", path, build());
      S.openJob = data.job_id;
      S.openJobState = null;
      refreshJobs();
      $("job-detail").scrollIntoView({ block: "nearest" });
    } catch (err) { showError(errorId, err, form); }
  });
}

function sweepBody() {
  const models = [...$("sweep-models").querySelectorAll("input:checked")].map((i) => i.value);
  const attacks = S.sweepAttacks.length ? S.sweepAttacks : [S.sweepAttackForm.read()];
  return { models, attacks, ...readFields($("sweep-fields")) };
}

function addSweepAttack() {
  const spec = S.sweepAttackForm.read();
  S.sweepAttacks.push(spec);
  const remove = () => { S.sweepAttacks.splice(S.sweepAttacks.indexOf(spec), 1); li.remove(); };
  const li = el("li", {}, `${spec.attack} ${JSON.stringify(spec.params)}`,
    el("button", { type: "button", "aria-label": `remove ${spec.attack}`, text: "×", onclick: remove }));
  $("sweep-attacks").append(li);
}

// ------------------------------------------------------------------ tabs, health, start
function selectTab(tab, focus = false) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", `#${tab.getAttribute("aria-controls")}`);
  if (tab.id === "tab-jobs") refreshJobs();
}

function setupTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => selectTab(t));
    t.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length], true);
    });
  });
  const start = tabs.find((t) => `#${t.getAttribute("aria-controls")}` === location.hash);
  if (start) selectTab(start);
}

async function health() {
  try {
    const { data } = await api("GET", "/health");
    $("health").textContent = `${data.mode} mode · worker ${data.worker} · ${data.models} models`;
  } catch (e) {
    $("health").textContent = `service: ${e.message}`;
  }
}

async function main() {
  setupTabs();
  setupDrawing();
  for (const b of document.querySelectorAll("[data-source]")) b.addEventListener("click", () => {
    for (const o of document.querySelectorAll("[data-source]")) {
      o.setAttribute("aria-pressed", String(o === b));
      $(`src-${o.dataset.source}`).hidden = o !== b;
    }
  });
  $("key-button").addEventListener("click", () => askKey());
  health();
  try {
    S.openapi = (await api("GET", "/openapi.json")).data;
    S.detectors = deref(schemas().DetectRequest).properties.detector.enum;
    await loadModels();
  } catch (e) { showError("model-error", e); return; }
  S.attackForm = attackForm($("attack-fields"), "atk");
  S.compareForm = attackForm($("compare-fields"), "cmp");
  S.sweepAttackForm = attackForm($("sweep-attack-fields"), "swa", { extras: false });
  renderFields($("sweep-fields"), schemas().SweepRequest, { prefix: "sweep", exclude: ["models", "attacks"] });
  renderFields($("train-fields"), schemas().TrainRequest, { prefix: "train" });
  $("model").addEventListener("change", onModelChange);
  $("gallery-split").addEventListener("change", () => { S.gallery.offset = 0; loadGallery(); });
  const page = (step) => {
    const g = S.gallery, next = g.offset + step * g.limit;
    if (next >= 0 && next < g.total) { g.offset = next; loadGallery(); }
  };
  $("gallery-prev").addEventListener("click", () => page(-1));
  $("gallery-next").addEventListener("click", () => page(1));
  $("upload").addEventListener("change", onUpload);
  $("classify").addEventListener("click", classify);
  $("attack-form").addEventListener("submit", attack);
  $("compare-form").addEventListener("submit", compare);
  $("sweep-add").addEventListener("click", addSweepAttack);
  $("sweep-form").addEventListener("submit", (e) => submitJob(e, "/jobs/sweep", "sweep", sweepBody));
  $("train-form").addEventListener("submit",
    (e) => submitJob(e, "/jobs/train", "train", () => readFields($("train-fields"))));
  await onModelChange();
  await defaultImage();
  refreshJobs();
  document.body.dataset.ready = "true";  // for tests: everything is wired
}

main();
