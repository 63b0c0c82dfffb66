// tinytune's Web Worker: owns the wasm module (web/pkg, built by scripts/build_web.sh) and its
// WebGPU device, so model loading, tokenization and training never block the page.
//
// Protocol (page -> worker): {id, cmd, ...args}; (worker -> page): {id, ok: true, result} or
// {id, ok: false, error}, plus events {event: "progress", progress} while a model loads,
// {event: "step", metrics} during training and {event: "token", tag, piece} during generation. {cmd: "stop"} needs no id and no reply.

let tt = null;

async function open() {
  let mod;
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

const commands = {
  init: () => open(),
  info: () => tt.info(),
  loadModel: ({ files: f, quant }) =>
    tt.loadModel(files(f), quant || "nf4", (progress) => postMessage({ event: "progress", progress })),
  train: ({ dataText, dataName, options }) =>
    tt.train(dataText, dataName, JSON.stringify(options || {}), (m) =>
      postMessage({ event: "step", metrics: JSON.parse(m) }),
    ),
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
