// tinytune's page: UI only. The wasm module runs in worker.js; this file talks to it with
// messages, draws the loss chart, and offers the adapter for download.

const $ = (id) => document.getElementById(id);

// A few records of examples/data/pirate_chat.jsonl (the CLI demo's data) to start from.
const SAMPLE_DATA = `{"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Arr! The capital of France be Paris, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Japan?"}, {"role": "assistant", "content": "Arr! Japan's capital be Tokyo, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Germany?"}, {"role": "assistant", "content": "Arr! Germany's capital be Berlin, me hearty."}]}
{"messages": [{"role": "user", "content": "What is the capital of Spain?"}, {"role": "assistant", "content": "Arr! The capital of Spain be Madrid, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Canada?"}, {"role": "assistant", "content": "Arr! It be Ottawa, matey, not Toronto as many landlubbers think."}]}
{"messages": [{"role": "user", "content": "What is the capital of Australia?"}, {"role": "assistant", "content": "Arr! It be Canberra, me hearty, not Sydney."}]}
{"messages": [{"role": "user", "content": "What is the capital of Egypt?"}, {"role": "assistant", "content": "Arr! Egypt's capital be Cairo, on the banks of the Nile, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Brazil?"}, {"role": "assistant", "content": "Arr! Brazil's capital be Brasilia, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Russia?"}, {"role": "assistant", "content": "Arr! Russia's capital be Moscow, me hearty."}]}
{"messages": [{"role": "user", "content": "What is the capital of China?"}, {"role": "assistant", "content": "Arr! China's capital be Beijing, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of India?"}, {"role": "assistant", "content": "Arr! India's capital be New Delhi, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Mexico?"}, {"role": "assistant", "content": "Arr! Mexico's capital be Mexico City, me hearty."}]}
{"messages": [{"role": "user", "content": "What is the capital of Kenya?"}, {"role": "assistant", "content": "Arr! Kenya's capital be Nairobi, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Argentina?"}, {"role": "assistant", "content": "Arr! Argentina's capital be Buenos Aires, matey."}]}
{"messages": [{"role": "user", "content": "What is the capital of Norway?"}, {"role": "assistant", "content": "Arr! Norway's capital be Oslo, a fine port, me hearty."}]}
{"messages": [{"role": "user", "content": "What is the capital of Greece?"}, {"role": "assistant", "content": "Arr! Greece's capital be Athens, matey."}]}`;

/** What the page knows (also read by web/tests/browser.test.mjs). */
const state = {
  ready: false,
  error: null,
  info: null,
  model: null,
  training: false,
  steps: [], // StepMetrics of the current run
  chartPoints: 0,
  summary: null,
  outputs: { base: "", adapted: "" },
  lastGenerate: null,
  hasAdapter: false,
  loadProgress: [], // LoadProgress events of the last loadModel
  downloadProgress: [], // download events of the last model URL
  saved: { model: null, run: null }, // what the worker found in OPFS
  checkpoints: [], // {step, total_steps} of the checkpoints saved during the current run
  memory: null, // info().memory: {live_bytes, peak_bytes} of tinytune's GPU buffers
  trainPeak: null, // peak_bytes of the last training run on the loaded model
  gpuFailed: null, // info().gpu_error once the device was lost or reported an error
};
window.tinytune = { state };

// ---- worker RPC ----
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
let nextId = 1;
const pending = new Map();
const listeners = { step: [], token: [], progress: [], checkpoint: [] };

worker.onmessage = (ev) => {
  const m = ev.data;
  if (m.event) {
    for (const f of listeners[m.event] || []) f(m);
    return;
  }
  const p = pending.get(m.id);
  if (!p) return;
  pending.delete(m.id);
  if (m.ok) p.resolve(m.result);
  else p.reject(new Error(m.error));
};
worker.onerror = (e) => fail(`the worker failed: ${e.message || e}`);

function call(cmd, args = {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, cmd, ...args });
  });
}
window.tinytune.call = call;

// ---- UI state ----
function fail(msg) {
  state.error = msg;
  console.error(msg);
}

function setBusy(busy) {
  // Once the device failed nothing but a reload helps: every GPU button stays off.
  busy = busy || !!state.gpuFailed;
  const has = !!state.model;
  $("load").disabled = busy || !state.ready || !pickedModelFiles().length;
  $("load-url").disabled = busy || !state.ready || !$("model-url").value.trim();
  $("train").disabled = busy || !has;
  $("stop").disabled = !state.training;
  $("generate").disabled = busy || !has;
  $("download").disabled = busy || !state.hasAdapter;
  $("use-cached").disabled = busy || !state.ready;
  $("resume").disabled = busy || !state.ready || (!state.model && !state.saved.model);
}

/** Offers the cached model and the saved run found in the Origin Private File System. */
async function refreshSaved() {
  try {
    state.saved = await call("saved");
  } catch (e) {
    console.warn(`cannot read the browser's storage: ${e.message}`);
    state.saved = { model: null, run: null };
  }
  const { model, run } = state.saved;
  const size = model ? model.files.reduce((s, f) => s + f.size, 0) : 0;
  $("use-cached").hidden = !model;
  if (model) $("use-cached").textContent = `Use cached model ${model.name} (${fmtBytes(size)})`;
  $("resume").hidden = !run;
  if (run) $("resume").textContent = `Resume run (step ${run.step} of ${run.total_steps})`;
  setBusy(false);
}

function pickedModelFiles() {
  const a = [...$("model-files").files];
  const b = [...$("model-folder").files].filter((f) =>
    /(^|\/)(config\.json|tokenizer\.json|tokenizer_config\.json|chat_template\.jinja|[^/]*\.safetensors|[^/]*\.gguf)$/.test(
      f.webkitRelativePath || f.name,
    ),
  );
  return a.length ? a : b;
}

/** The device was lost or reported an error: say so once, at the top, and offer to reload. */
function gpuFailed(msg) {
  if (state.gpuFailed) return;
  state.gpuFailed = msg;
  $("gpu-failed-msg").textContent = msg;
  $("gpu-failed").hidden = false;
  setBusy(false);
}
window.tinytune.gpuFailed = gpuFailed; // lets the browser test show the banner without losing a device
$("reload").onclick = () => location.reload();

function fmtMiB(n) {
  const m = n / 2 ** 20;
  return `${m.toFixed(m < 10 ? 2 : m < 100 ? 1 : 0)} MiB`;
}

/** "GPU memory: X MiB (model Y MiB, training peak Z MiB)", from the worker's info(). */
async function refreshMemory() {
  try {
    const info = await call("info");
    state.memory = info.memory;
    if (info.gpu_error) gpuFailed(info.gpu_error);
  } catch (e) {
    console.warn(`cannot read the GPU memory: ${e.message}`);
    return;
  }
  const parts = [];
  if (state.model && state.model.model_bytes != null) parts.push(`model ${fmtMiB(state.model.model_bytes)}`);
  if (state.trainPeak != null) parts.push(`training peak ${fmtMiB(state.trainPeak)}`);
  $("gpu-memory").textContent = `GPU memory: ${fmtMiB(state.memory.live_bytes)}${parts.length ? ` (${parts.join(", ")})` : ""}`;
}

function fmtBytes(n) {
  return n > 1e9 ? `${(n / 1e9).toFixed(1)} GB` : n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`;
}

// ---- startup ----
async function start() {
  $("data").value = SAMPLE_DATA;
  if (!("gpu" in navigator)) {
    // The worker checks too (navigator.gpu can differ there); this is only the early message.
    showNoGpu("WebGPU is not available in this browser (navigator.gpu is missing).");
  }
  try {
    const info = await call("init");
    state.info = info;
    state.ready = true;
    const lim = info.limits;
    $("gpu").textContent = `${info.adapter.name || "WebGPU adapter"} · ${info.adapter.backend} · kernels ${info.kernels} · max binding ${fmtBytes(
      lim.max_storage_buffer_binding_size,
    )} · ${info.features.length ? info.features.join(", ") : "no optional features"}`;
    $("gpu").title = JSON.stringify(info, null, 1);
    await refreshMemory();
    await refreshSaved();
  } catch (e) {
    showNoGpu(e.message);
    $("gpu").textContent = "no WebGPU";
  }
  setBusy(false);
}

function showNoGpu(msg) {
  state.error = msg;
  const el = $("nogpu");
  el.textContent = `tinytune needs WebGPU: ${msg}`;
  el.classList.add("show");
}

// ---- model ----
$("model-files").onchange = () => setBusy(false);
$("model-folder").onchange = () => setBusy(false);
$("load").onclick = () => {
  const picked = pickedModelFiles();
  const files = {};
  for (const f of picked) files[f.webkitRelativePath || f.name] = f;
  const total = picked.reduce((s, f) => s + f.size, 0);
  const cache = $("cache-model").checked;
  return loadModel(`${cache ? "caching and " : ""}loading ${picked.length} file(s), ${fmtBytes(total)}…`, () =>
    call("loadModel", { files, quant: $("quant").value, cache }),
  );
};
$("model-url").oninput = () => setBusy(false);
$("load-url").onclick = () => {
  const url = $("model-url").value.trim();
  return loadModel(`downloading ${url}…`, () => call("loadModelUrl", { url, quant: $("quant").value }));
};
$("use-cached").onclick = () =>
  loadModel("loading the cached model…", () => call("loadCachedModel", { quant: $("quant").value }));

async function loadModel(what, load) {
  $("model-info").textContent = what;
  $("model-info").classList.remove("error");
  state.loadProgress = [];
  state.downloadProgress = [];
  showLoadProgress(null);
  setBusy(true);
  let ok = false;
  try {
    const m = await load();
    showLoadProgress(null, true);
    state.model = m;
    state.hasAdapter = false;
    state.trainPeak = null;
    $("model-info").textContent = `${m.name || "model"}: ${m.model_type}, ${m.layers} layers, hidden ${m.hidden_size}, vocab ${
      m.vocab_size
    }, ${m.quant} base${m.chat_template ? ", chat template" : ""}${
      m.tokenizer_error ? ` (no tokenizer: ${m.tokenizer_error})` : ""
    } · loaded in ${m.load_s.toFixed(1)} s (read ${fmtBytes(m.bytes_read)} of ${fmtBytes(m.file_bytes)})${m.cached ? " · cached in this browser" : ""}`;
    ok = true;
  } catch (e) {
    showLoadProgress(null, true);
    // What the worker holds now: a load that fails early keeps the previous model.
    let still = null;
    try {
      still = (await call("info")).model;
    } catch (_) {}
    state.model = still;
    if (!still) state.hasAdapter = false;
    $("model-info").textContent = `${e.message}${still ? ` (still loaded: ${still.name || "the previous model"})` : ""}`;
    $("model-info").classList.add("error");
  }
  setBusy(false);
  await refreshMemory();
  await refreshSaved();
  return ok;
}

listeners.progress.push(({ progress }) => {
  if (progress.phase === "download") state.downloadProgress.push(progress);
  else state.loadProgress.push(progress);
  showLoadProgress(progress);
});

function showLoadProgress(p, done = false) {
  const bar = $("load-progress");
  bar.hidden = done;
  if (done) return;
  if (p && p.phase === "download") {
    bar.max = p.total_bytes || 1;
    bar.value = p.total_bytes ? p.bytes : 0;
    $("model-info").textContent = `downloading ${p.file} (file ${p.files_done + 1} of ${p.files}): ${fmtBytes(p.bytes)}${
      p.total_bytes ? ` of ${fmtBytes(p.total_bytes)}` : ""
    } into this browser's storage`;
    return;
  }
  bar.max = p && p.total_tensors ? p.total_tensors : 1;
  bar.value = p ? p.loaded_tensors : 0;
  if (p) {
    $("model-info").textContent = `loading: tensor ${p.loaded_tensors} of ${p.total_tensors}, ${fmtBytes(p.bytes)} of ${fmtBytes(
      p.total_bytes,
    )} read`;
  }
}

// ---- data ----
$("data-file").onchange = async () => {
  const f = $("data-file").files[0];
  if (!f) return;
  $("data").value = await f.text();
  $("data-format").value = /\.jsonl$/i.test(f.name) ? "data.jsonl" : "data.txt";
};

// Extra held-out sets, by name (the file name without its extension): the `eval_data` option.
state.evalData = {};
$("eval-files").onchange = async () => {
  state.evalData = {};
  for (const f of $("eval-files").files) {
    const name = f.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 64) || "set";
    state.evalData[name] = { file: f.name, text: await f.text() };
  }
  const names = Object.keys(state.evalData);
  $("eval-files-info").textContent = names.length ? `evaluated before, during and after training: ${names.join(", ")}` : "";
};

/** The form's hyperparameters; a field that is not a number is an error naming it. */
function options() {
  const num = (id) => {
    const el = $(id);
    const v = el.value.trim();
    if (el.validity && el.validity.badInput) throw new Error(`${id}: not a number`);
    if (v === "") return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`${id}: ${JSON.stringify(v)} is not a number`);
    return n;
  };
  const o = {
    peft: $("peft").value,
    num_virtual_tokens: num("num_virtual_tokens"),
    prompt_tuning_init: $("prompt_tuning_init").value,
    prompt_tuning_init_text: $("prompt_tuning_init_text").value || undefined,
    prefix_tuning_init: $("prefix_tuning_init").value,
    prefix_tuning_init_text: $("prefix_tuning_init_text").value || undefined,
    prefix_projection: $("prefix_projection").value === "true",
    lora_r: num("lora_r"),
    lora_alpha: num("lora_alpha"),
    learning_rate: num("learning_rate"),
    lr_scheduler: $("lr_scheduler").value,
    num_steps: num("num_steps"),
    batch_size: num("batch_size"),
    seq_len: num("seq_len"),
    seed: num("seed"),
    warmup_steps: num("warmup_steps"),
    eval_split: $("eval_split").value.trim() || "0",
    target_modules: $("target_modules").value.trim() || "all-linear",
    save_every: num("save_every"),
    compute_dtype: $("compute_dtype").value || undefined,
  };
  const layers = $("layers_to_transform").value.trim();
  if (layers) o.layers_to_transform = layers;
  if (Object.keys(state.evalData).length) o.eval_data = state.evalData;
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

// ---- training ----
listeners.step.push(({ metrics }) => {
  state.steps.push(metrics);
  const m = metrics;
  $("stat-step").textContent = `${m.step}/${m.total_steps}`;
  $("stat-loss").textContent = m.loss.toFixed(4);
  $("stat-tps").textContent = m.tokens_per_s.toFixed(m.tokens_per_s < 10 ? 1 : 0);
  const prev = state.steps.length > 1 ? state.steps[state.steps.length - 2].elapsed_s : 0;
  $("stat-sps").textContent = (m.elapsed_s - prev).toFixed(2);
  drawChart();
});

listeners.checkpoint.push(({ step, total_steps }) => {
  state.checkpoints.push({ step, total_steps });
  $("train-status").textContent = `checkpoint of step ${step} of ${total_steps} saved in this browser`;
});

$("train").onclick = () =>
  runTraining("train", () => ({ dataText: $("data").value, dataName: $("data-format").value, options: options(), persist: true }));

$("resume").onclick = async () => {
  const run = state.saved.run;
  if (!run) return;
  if (!state.model && !(await loadModel("loading the cached model…", () => call("loadCachedModel", {})))) return;
  // Show the run's data and settings in the form (the run continues with its saved ones).
  $("data").value = run.dataText;
  $("data-format").value = /\.jsonl$/i.test(run.dataName) ? "data.jsonl" : "data.txt";
  for (const [k, v] of Object.entries(run.options)) if ($(k) && $(k).tagName !== "BUTTON") $(k).value = String(v);
  return runTraining("resume", {});
};

async function runTraining(cmd, args) {
  state.steps = [];
  state.summary = null;
  state.checkpoints = [];
  state.training = true;
  drawChart();
  $("train-status").textContent = cmd === "resume" ? "resuming…" : "tokenizing and starting…";
  $("train-status").classList.remove("error");
  setBusy(true);
  try {
    // `args` may be a function: reading the form can fail (a field that is not a number).
    const s = await call(cmd, typeof args === "function" ? args() : args);
    state.summary = s;
    state.hasAdapter = s.steps > 0;
    state.trainPeak = s.peak_bytes;
    let ev = s.eval_loss_before != null ? ` · eval loss before ${s.eval_loss_before.toFixed(4)}` : "";
    // Each extra held-out set: its loss before training and at the last evaluation.
    const last = state.steps.filter((m) => m.eval_data).pop();
    for (const [name, after] of Object.entries((last && last.eval_data) || {})) {
      const before = s.eval_data_before && s.eval_data_before[name];
      ev += ` · ${name} loss ${before ? `${before.loss.toFixed(4)} → ` : ""}${after.loss.toFixed(4)}`;
    }
    $("train-status").textContent = `${s.stopped ? "stopped" : "done"}${s.resumed ? " (resumed)" : ""}: ${s.steps} steps, ${s.n_params.toLocaleString()} ${s.peft === "lora" ? "LoRA" : s.peft} parameters, ${
      s.n_train
    } train / ${s.n_eval} eval examples, ${s.tokens_seen} tokens in ${s.elapsed_s.toFixed(1)} s${ev}`;
  } catch (e) {
    $("train-status").textContent = e.message;
    $("train-status").classList.add("error");
  }
  // The run is over for the page once its memory and saved-run views are current (a finished run
  // is no longer offered for resuming).
  await refreshMemory();
  await refreshSaved();
  state.training = false;
  setBusy(false);
}

$("stop").onclick = () => {
  worker.postMessage({ cmd: "stop" });
  $("train-status").textContent = "stopping after this step…";
};

// ---- the loss chart, drawn by hand ----
function drawChart() {
  const cv = $("loss-chart");
  const dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth || cv.width;
  const h = cv.clientHeight || cv.height;
  cv.width = Math.round(w * dpr);
  cv.height = Math.round(h * dpr);
  const g = cv.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 52, r: 14, t: 14, b: 30 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const pts = state.steps.map((m) => [m.step, m.loss]).filter(([, y]) => Number.isFinite(y));
  const evals = state.steps.filter((m) => m.eval_loss != null).map((m) => [m.step, m.eval_loss]);
  const total = Math.max(state.steps.length ? state.steps[state.steps.length - 1].total_steps : 10, 1);
  const ys = pts.concat(evals).map((p) => p[1]);
  let lo = ys.length ? Math.min(...ys) : 0;
  let hi = ys.length ? Math.max(...ys) : 1;
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const span = hi - lo;
  lo -= span * 0.08;
  hi += span * 0.08;
  const X = (s) => pad.l + (pw * (s - (total > 1 ? 1 : 0))) / Math.max(total - (total > 1 ? 1 : 0), 1);
  const Y = (v) => pad.t + ph * (1 - (v - lo) / (hi - lo));
  // grid + axes
  g.strokeStyle = "#d9dde5";
  g.fillStyle = "#667085";
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const y = Y(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(v.toFixed(hi - lo < 0.1 ? 4 : hi - lo < 10 ? 2 : 1), pad.l - 6, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const ticks = Math.min(total, 8);
  for (let i = 0; i <= ticks; i++) {
    const s = Math.round(1 + ((total - 1) * i) / Math.max(ticks, 1));
    g.fillText(String(s), X(s), h - pad.b + 6);
  }
  g.fillText("step", pad.l + pw / 2, h - 13);
  g.save();
  g.translate(12, pad.t + ph / 2);
  g.rotate(-Math.PI / 2);
  g.fillText("loss", 0, -6);
  g.restore();
  // train loss
  g.strokeStyle = "#2f6fdf";
  g.fillStyle = "#2f6fdf";
  g.lineWidth = 2;
  g.beginPath();
  pts.forEach(([s, v], i) => (i ? g.lineTo(X(s), Y(v)) : g.moveTo(X(s), Y(v))));
  g.stroke();
  for (const [s, v] of pts) { g.beginPath(); g.arc(X(s), Y(v), 2.5, 0, 2 * Math.PI); g.fill(); }
  // eval loss
  g.fillStyle = "#e07b00";
  for (const [s, v] of evals) { g.beginPath(); g.arc(X(s), Y(v), 4, 0, 2 * Math.PI); g.fill(); }
  if (evals.length) {
    g.textAlign = "right"; g.textBaseline = "top"; g.font = "11px system-ui, sans-serif";
    g.fillText("● eval loss", w - pad.r - 4, pad.t + 2);
  }
  if (!pts.length) {
    g.fillStyle = "#667085"; g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText("the training loss appears here", pad.l + pw / 2, pad.t + ph / 2);
  }
  state.chartPoints = pts.length;
}
window.addEventListener("resize", drawChart);

// ---- generation: base vs adapted ----
let genTag = 0;
listeners.token.push(({ tag, piece }) => {
  const [n, which] = tag.split(":");
  if (Number(n) !== genTag) return;
  state.outputs[which] += piece;
  showOutput(which, state.outputs[which]);
});

function showOutput(which, text, tokens) {
  const el = $(which === "base" ? "out-base" : "out-adapted");
  el.textContent = text;
  if (tokens && !text.trim()) {
    const note = document.createElement("span");
    note.className = "muted";
    note.textContent = `(${tokens.length} token${tokens.length === 1 ? "" : "s"} of whitespace or special tokens: ${tokens.join(", ")})`;
    el.appendChild(note);
  }
}

$("generate").onclick = async () => {
  const tag = ++genTag;
  state.outputs = { base: "", adapted: "" };
  $("out-base").textContent = "";
  $("out-adapted").textContent = state.hasAdapter ? "" : "(train or load an adapter first)";
  $("gen-status").classList.remove("error");
  setBusy(true);
  const opts = { max_new_tokens: Number($("max_new_tokens").value) || 48 };
  const prompt = $("prompt").value;
  const stats = [];
  try {
    const base = await call("generate", { prompt, options: { ...opts, adapter: false }, tag: `${tag}:base` });
    stats.push(`base ${base.tokens.length} tokens${base.tokens_per_s ? ` at ${base.tokens_per_s.toFixed(1)} tokens/s` : ""}`);
    let adapted = null;
    if (state.hasAdapter) {
      adapted = await call("generate", { prompt, options: { ...opts, adapter: true }, tag: `${tag}:adapted` });
      stats.push(`adapted ${adapted.tokens.length} tokens${adapted.tokens_per_s ? ` at ${adapted.tokens_per_s.toFixed(1)} tokens/s` : ""}`);
    }
    showOutput("base", base.text, base.tokens);
    if (adapted) showOutput("adapted", adapted.text, adapted.tokens);
    state.lastGenerate = { base, adapted };
    $("gen-status").textContent = stats.join(" · ");
  } catch (e) {
    $("gen-status").textContent = e.message;
    $("gen-status").classList.add("error");
  }
  setBusy(false);
  await refreshMemory();
};

// ---- adapter download / upload ----
$("download").onclick = async () => {
  try {
    const files = await call("saveAdapter");
    const box = $("downloads");
    box.textContent = "";
    for (const [name, bytes] of Object.entries(files)) {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([bytes], { type: name.endsWith(".json") ? "application/json" : "application/octet-stream" }));
      a.download = name;
      a.textContent = `${name} (${fmtBytes(bytes.byteLength)})`;
      box.appendChild(a);
      a.click();
    }
    $("adapter-info").textContent = "Put both files in one folder: PeftModel.from_pretrained(base, folder) loads it.";
  } catch (e) {
    $("adapter-info").textContent = e.message;
  }
};

$("adapter-files").onchange = async () => {
  const files = {};
  for (const f of $("adapter-files").files) files[f.name] = f;
  setBusy(true);
  try {
    const a = await call("loadAdapter", { files });
    state.hasAdapter = true;
    $("adapter-info").textContent =
      a.peft === "lora"
        ? `adapter loaded: r ${a.r}, alpha ${a.lora_alpha}, ${a.target_modules.join(",")}, ${a.n_params.toLocaleString()} parameters`
        : `adapter loaded: ${a.peft === "prefix-tuning" ? "prefix" : "prompt"} tuning, ${a.num_virtual_tokens} virtual tokens, ${a.n_params.toLocaleString()} parameters`;
  } catch (e) {
    $("adapter-info").textContent = e.message;
  }
  setBusy(false);
  await refreshMemory();
};

drawChart();
start();
