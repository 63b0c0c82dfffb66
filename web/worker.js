// tinytune's Web Worker: owns the wasm module (web/pkg, built by scripts/build_web.sh) and its
// WebGPU device, so model loading, tokenization and training never block the page.
//
// Protocol (page -> worker): {id, cmd, ...args}; (worker -> page): {id, ok: true, result} or
// {id, ok: false, error}, plus events {event: "step", metrics} during training and
// {event: "token", tag, piece} during generation. {cmd: "stop"} needs no id and no reply.

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

/** A File/Blob as Uint8Array chunks (read as a stream: no single huge ArrayBuffer). */
async function chunks(value) {
  if (value instanceof Blob) {
    const out = [];
    const reader = value.stream().getReader();
    for (;;) {
      const { done, value: chunk } = await reader.read();
      if (done) break;
      out.push(chunk);
    }
    return out;
  }
  if (value instanceof ArrayBuffer) return [new Uint8Array(value)];
  if (ArrayBuffer.isView(value)) return [new Uint8Array(value.buffer, value.byteOffset, value.byteLength)];
  if (typeof value === "string") return [new TextEncoder().encode(value)];
  throw new Error("unsupported file value");
}

/** {name: File | ArrayBuffer | Uint8Array | string} -> Map name -> Uint8Array[] */
async function files(obj) {
  const m = new Map();
  for (const [name, value] of Object.entries(obj)) m.set(name, await chunks(value));
  return m;
}

const commands = {
  init: () => open(),
  info: () => tt.info(),
  loadModel: async ({ files: f, quant }) => tt.loadModel(await files(f), quant || "nf4"),
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
  loadAdapter: async ({ files: f }) => tt.loadAdapter(await files(f)),
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
