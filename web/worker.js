// tinytune's Web Worker: owns the wasm module (web/pkg, built by scripts/build_web.sh) and its
// WebGPU device, so model loading, tokenization and training never block the page.
//
// Protocol (page -> worker): {id, cmd, ...args}; (worker -> page): {id, ok: true, result} or
// {id, ok: false, error}, plus events {event: "progress", progress} while a model loads,
// {event: "step", metrics} during training and {event: "token", tag, piece} during generation. {cmd: "stop"} needs no id and no reply.

let tt = null;
let mod = null; // the wasm module (its static functions, e.g. Tinytune.modelUrlFiles)

async function open() {
  try {
    mod = await import("./pkg/tinytune_wasm.js");
  } catch (e) {
    throw new Error(
      `cannot load web/pkg/tinytune_wasm.js (${e.message}): build it with bash scripts/build_web.sh`,
    );
  }
  await mod.default();
  tt = await mod.Tinytune.create();
  const info = tt.info();
  // wgpu's web backend leaves the adapter's name empty: add what the browser tells about it.
  try {
    const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    const i = (a && a.info) || {};
    info.adapter.vendor = i.vendor || "";
    info.adapter.architecture = i.architecture || "";
    info.adapter.description = i.description || "";
    if (!info.adapter.name) info.adapter.name = [i.vendor, i.architecture].filter(Boolean).join(" ");
  } catch (_) {}
  return info;
}

/** A picked value as what loadModel / loadAdapter take: a File / Blob stays one (the module reads
 * it range by range with FileReaderSync: never whole in memory), bytes become a Uint8Array. */
function fileValue(value) {
  if (value instanceof Blob) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === "string") return new TextEncoder().encode(value);
  throw new Error("unsupported file value");
}

/** {name: File | Blob | ArrayBuffer | Uint8Array | string} -> Map name -> File | Blob | Uint8Array */
function files(obj) {
  const m = new Map();
  for (const [name, value] of Object.entries(obj)) m.set(name, fileValue(value));
  return m;
}

// ---- Origin Private File System: the cached model and the last run ----
// tinytune/model/: the picked model files (flat) + model.json {keys, files: [{name, size}], quant}.
// tinytune/run/: run.json {model, dataName, options, step, total_steps, checkpoint}, data (the
// training text), ck-<step>/ (the checkpoint files of train's onCheckpoint). run.json is written
// after a checkpoint's files, so it always names a complete one.

async function opfsDir(path, create = true) {
  let d = await navigator.storage.getDirectory();
  for (const p of path.split("/")) d = await d.getDirectoryHandle(p, { create });
  return d;
}

async function opfsTry(path) {
  try {
    return await opfsDir(path, false);
  } catch (_) {
    return null;
  }
}

async function writeFile(dir, name, data) {
  const h = await dir.getFileHandle(name, { create: true });
  const w = await h.createWritable();
  if (data instanceof Blob) await data.stream().pipeTo(w); // closes w
  else {
    await w.write(data);
    await w.close();
  }
}

async function readJson(dir, name) {
  try {
    return JSON.parse(await (await (await dir.getFileHandle(name)).getFile()).text());
  } catch (_) {
    return null;
  }
}

async function removeEntry(dir, name) {
  try {
    await dir.removeEntry(name, { recursive: true });
  } catch (_) {}
}

const baseName = (k) => k.split(/[\\/]/).pop();

/** The cached model's description, if all of its files are there with their sizes. */
async function cachedModel() {
  const d = await opfsTry("tinytune/model");
  const m = d && (await readJson(d, "model.json"));
  if (!m) return null;
  for (const f of m.files) {
    try {
      if ((await (await d.getFileHandle(f.name)).getFile()).size !== f.size) return null;
    } catch (_) {
      return null;
    }
  }
  return m;
}

/** Copies picked files into OPFS (streamed) and returns them as OPFS Files, under the same keys. */
async function cacheModel(picked, quant) {
  const d = await newCacheDir();
  const keys = Object.keys(picked);
  const files = [];
  for (const k of keys) {
    const v = fileValue(picked[k]);
    await writeFile(d, baseName(k), v);
    files.push({ name: baseName(k), size: v instanceof Blob ? v.size : v.byteLength });
  }
  return finishCache(d, { keys, files, quant, name: modelName(keys) });
}

/** An empty tinytune/model/ (the previous cached model removed). */
async function newCacheDir() {
  await removeEntry(await opfsDir("tinytune"), "model");
  return opfsDir("tinytune/model");
}

/** Writes the cached model's model.json (after its files) and returns the files as OPFS Files. */
async function finishCache(d, m) {
  await writeFile(d, "model.json", JSON.stringify(m));
  return openCached(m);
}

/** Downloads a model URL's files into OPFS (streamed, with progress) as the cached model and
 * returns them as OPFS Files: they are then read tensor by tensor like picked files. */
async function downloadModel(url, quant) {
  // The file list comes from the module (Tinytune.modelUrlFiles), as tt.loadModel(url) uses it.
  const list = await mod.Tinytune.modelUrlFiles(url);
  const d = await newCacheDir();
  const files = [];
  let done = 0;
  for (const f of list) {
    const r = await fetch(f.url).catch((e) => {
      throw new Error(`${f.url}: ${e.message}`);
    });
    if (!r.ok) throw new Error(`${f.url}: HTTP ${r.status} ${r.statusText}`);
    const total = Number(r.headers.get("content-length")) || 0;
    let bytes = 0;
    const count = new TransformStream({
      transform(chunk, ctl) {
        bytes += chunk.byteLength;
        postMessage({ event: "progress", progress: { phase: "download", file: f.name, files_done: done, files: list.length, bytes, total_bytes: total } });
        ctl.enqueue(chunk);
      },
    });
    const w = await (await d.getFileHandle(f.name, { create: true })).createWritable();
    await r.body.pipeThrough(count).pipeTo(w);
    files.push({ name: f.name, size: bytes });
    done += 1;
  }
  const keys = list.map((f) => f.name);
  const name = /\.gguf$/i.test(keys[0]) ? keys[0] : baseName(url.replace(/\/(resolve\/[^/]+\/?)?$/, "")) || modelName(keys);
  return finishCache(d, { keys, files, quant, name, url });
}

async function openCached(m) {
  const d = await opfsDir("tinytune/model");
  const out = {};
  for (const k of m.keys) out[k] = await (await d.getFileHandle(baseName(k))).getFile();
  return out;
}

function modelName(keys) {
  const g = keys.find((k) => /\.gguf$/i.test(k));
  if (g) return baseName(g);
  const withDir = keys.find((k) => /[\\/]/.test(k));
  if (withDir) return baseName(withDir.replace(/[\\/][^\\/]*$/, ""));
  return `Hugging Face model (${keys.length} files)`;
}

/** Loads model files; `cached`: they are the OPFS copy, removed if they do not load. */
async function loadModel(f, quant, cached) {
  let info;
  try {
    info = await tt.loadModel(files(f), quant || "nf4", (progress) => postMessage({ event: "progress", progress }));
  } catch (e) {
    // A model that does not load is not offered again after a reload.
    if (cached) await removeEntry(await opfsDir("tinytune"), "model");
    throw e;
  }
  info.cached = !!cached;
  return info;
}

/** The saved run, if it has a checkpoint and has steps left. */
async function savedRun() {
  const d = await opfsTry("tinytune/run");
  const r = d && (await readJson(d, "run.json"));
  return r && r.checkpoint && r.step < r.total_steps ? r : null;
}

/** Writes checkpoints in order while training runs; train() waits for the last one. */
function checkpointWriter(run) {
  let queue = Promise.resolve();
  let failure = null;
  const onCheckpoint = (ck) => {
    queue = queue.then(async () => {
      try {
        const d = await opfsDir("tinytune/run");
        const name = `ck-${ck.step}`;
        await removeEntry(d, name);
        const ckDir = await d.getDirectoryHandle(name, { create: true });
        for (const [f, bytes] of Object.entries(ck.files)) await writeFile(ckDir, f, bytes);
        const prev = run.checkpoint;
        Object.assign(run, { step: ck.step, total_steps: ck.total_steps, checkpoint: name });
        await writeFile(d, "run.json", JSON.stringify(run));
        if (prev && prev !== name) await removeEntry(d, prev);
        postMessage({ event: "checkpoint", step: ck.step, total_steps: ck.total_steps });
      } catch (e) {
        failure = failure || e;
      }
    });
  };
  const done = async () => {
    await queue;
    if (failure) throw new Error(`saving a checkpoint failed: ${failure.message || failure}`);
  };
  return { onCheckpoint, done };
}

const onStep = (m) => postMessage({ event: "step", metrics: JSON.parse(m) });

async function train({ dataText, dataName, options, persist }) {
  const opts = JSON.stringify(options || {});
  if (!persist) return tt.train(dataText, dataName, opts, onStep);
  const root = await opfsDir("tinytune");
  await removeEntry(root, "run");
  const d = await opfsDir("tinytune/run");
  const model = tt.info().model;
  const run = { model: model && model.name, dataName, options: options || {}, step: 0, total_steps: null, checkpoint: null };
  await writeFile(d, "data", dataText);
  await writeFile(d, "run.json", JSON.stringify(run));
  const w = checkpointWriter(run);
  const summary = await tt.train(dataText, dataName, opts, onStep, w.onCheckpoint);
  await w.done();
  return summary;
}

async function resume() {
  const run = await savedRun();
  if (!run) throw new Error("there is no saved run to resume");
  const d = await opfsDir("tinytune/run");
  const dataText = await (await (await d.getFileHandle("data")).getFile()).text();
  const ck = {};
  for await (const [name, h] of (await d.getDirectoryHandle(run.checkpoint)).entries()) {
    if (h.kind === "file") ck[name] = await h.getFile();
  }
  const w = checkpointWriter(run);
  const summary = await tt.train(dataText, run.dataName, JSON.stringify(run.options), onStep, w.onCheckpoint, files(ck));
  await w.done();
  return summary;
}

const commands = {
  init: () => open(),
  info: () => tt.info(),
  loadModel: async ({ files: f, quant, cache }) => loadModel(cache ? await cacheModel(f, quant) : f, quant, cache),
  loadModelUrl: async ({ url, quant }) => loadModel(await downloadModel(url, quant), quant, true),
  loadCachedModel: async ({ quant }) => {
    const m = await cachedModel();
    if (!m) throw new Error("no cached model (or its files are incomplete): pick the files again");
    const info = await loadModel(await openCached(m), quant || m.quant, false);
    return { ...info, cached: true };
  },
  saved: async () => {
    if (!navigator.storage || !navigator.storage.getDirectory) return { model: null, run: null };
    const [model, run] = await Promise.all([cachedModel(), savedRun()]);
    let data = null;
    if (run) data = await (await (await (await opfsDir("tinytune/run")).getFileHandle("data")).getFile()).text();
    return { model, run: run && { ...run, dataText: data } };
  },
  train,
  resume,
  generate: ({ prompt, options, tag }) =>
    tt.generate(prompt, JSON.stringify(options || {}), (piece) =>
      postMessage({ event: "token", tag, piece }),
    ),
  saveAdapter: async () => {
    const out = await tt.saveAdapter();
    const buffers = Object.values(out).map((a) => a.buffer);
    return { result: out, transfer: buffers };
  },
  loadAdapter: ({ files: f }) => tt.loadAdapter(files(f)),
};

onmessage = async (ev) => {
  const { id, cmd, ...args } = ev.data;
  if (cmd === "stop") {
    if (tt) tt.stop();
    return;
  }
  try {
    if (cmd !== "init" && !tt) throw new Error("WebGPU is not open");
    const fn = commands[cmd];
    if (!fn) throw new Error(`unknown command ${cmd}`);
    let result = await fn(args);
    let transfer = [];
    if (result && result.transfer) ({ result, transfer } = result);
    postMessage({ id, ok: true, result }, transfer);
  } catch (e) {
    postMessage({ id, ok: false, error: e && e.message ? e.message : String(e) });
  }
};
