// Browser test of tinytune's web app (web/index.html + main.js + worker.js + web/pkg): Debian's
// Chromium, headless, WebGPU on SwiftShader (CPU), driven with playwright-core (no browser
// download). Run: bash scripts/build_web.sh && node web/tests/browser.test.mjs
//
// 1. Through the page's own controls: pick the tiny Llama fixture's files (a sharded HF folder),
//    load it (NF4), train 6 steps on a small chat dataset, check that the loss falls and the chart
//    has the points, generate with the base model and with the adapter, download the adapter and
//    check it is a PEFT LoRA adapter, load it back; a screenshot goes to web/tests/artifacts/.
//    When a native `tinytune` binary is there (target/{debug,release}), it trains the same run on
//    the Vulkan adapter and the losses must agree within 1e-4.
// 0. The generated TypeScript declarations declare the API web/API.md documents (dts.test.mjs).
// 1b. Reload mid-run: the model cached in OPFS and the newest checkpoint survive; resuming gives
//    the uninterrupted run's losses and adapter exactly.
// 1c. examples/web-embed (the README's snippet for web developers) trains 5 steps on the main
//    thread; the loss must fall.
// 1e. Prompt- and prefix-tuning adapters trained by the native `tinytune` (8 virtual tokens):
//    the module's loadAdapter + generate (greedy, max_new_tokens 3, fewer than the virtual
//    tokens) gives the same text and as many tokens as `tinytune generate --adapter`.
// 2. WebGPU missing (an insecure origin has no navigator.gpu) and WebGPU without an adapter
//    (Chromium without --enable-unsafe-webgpu): the page says so.
//
// Env: CHROMIUM (default /usr/bin/chromium), TINYTUNE_BROWSER_TIMEOUT_S (default 600).

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { checkDts } from "./dts.test.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(here, "..");
const root = path.resolve(web, "..");
const artifacts = path.join(here, "artifacts");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(process.env.TINYTUNE_BROWSER_TIMEOUT_S || 600) * 1000;
const modelDir = path.join(root, "tests/fixtures/model/llama_hf");

// Four chat records and a batch of four: every step sees the same examples, so the loss falls.
const DATA = [
  ["What is the capital of France?", "Arr! The capital of France be Paris, matey."],
  ["What is the capital of Japan?", "Arr! Japan's capital be Tokyo, matey."],
  ["How many legs does a spider have?", "Arr! A spider has eight legs, me hearty."],
  ["What color is the sky?", "Arr! The sky be blue on a fair day, matey."],
]
  .map(([q, a]) => JSON.stringify({ messages: [{ role: "user", content: q }, { role: "assistant", content: a }] }))
  .join("\n");
const OPTIONS = { lora_r: 8, lora_alpha: 16, learning_rate: "1e-2", num_steps: 6, batch_size: 4, seq_len: 64, seed: 42 };

const log = (...a) => console.log("[browser-test]", ...a);

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

if (!fs.existsSync(path.join(web, "pkg/tinytune_wasm.js"))) {
  console.error("web/pkg is missing: run bash scripts/build_web.sh first");
  process.exit(1);
}
if (!fs.existsSync(chromiumPath)) {
  console.error(`${chromiumPath} is missing: apt-get install chromium (or set CHROMIUM)`);
  process.exit(1);
}
fs.mkdirSync(artifacts, { recursive: true });

// ---- a static server for web/ ----
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".ts": "text/plain", ".png": "image/png" };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  // The app at /; the embedding example and what it imports at their repository paths.
  const fromRoot = /^\/(examples|web|tests\/fixtures)\//.test(url.pathname);
  const top = fromRoot ? root : web;
  let p = path.normalize(path.join(top, decodeURIComponent(url.pathname)));
  if (!p.startsWith(top)) return res.writeHead(403).end();
  if (fs.existsSync(p) && fs.statSync(p).isDirectory()) p = path.join(p, "index.html");
  fs.readFile(p, (e, body) => {
    if (e) return res.writeHead(404).end("not found");
    res.writeHead(200, { "content-type": TYPES[path.extname(p)] || "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;
const base = `http://127.0.0.1:${port}/`;

async function launch(args) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tinytune-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: chromiumPath,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
    // No background traffic: the machine's network is closed.
    args: ["--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", ...args],
  });
  return { ctx, dir };
}

async function close({ ctx, dir }) {
  await ctx.close();
  fs.rmSync(dir, { recursive: true, force: true });
}

function watch(page, tag) {
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning" || process.env.TINYTUNE_BROWSER_VERBOSE) log(`${tag} console.${m.type()}:`, m.text());
  });
  page.on("pageerror", (e) => log(`${tag} page error:`, e.message));
  page.on("worker", (w) => log(`${tag} worker started: ${w.url()}`));
}

/** Parses a safetensors file's header. */
function safetensorsHeader(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
}

/** The newest native `tinytune` binary (scripts/test.sh's cargo test leaves a fresh debug one). */
function nativeBin() {
  return ["target/release/tinytune", "target/debug/tinytune"]
    .map((b) => path.join(root, b))
    .filter((b) => fs.existsSync(b))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
}
const nativeEnv = { ...process.env, WGPU_BACKEND: process.env.WGPU_BACKEND || "vulkan", XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || "/tmp" };

/** The native CLI on the same run, if a binary is there: its per-step losses. */
function nativeLosses(options = OPTIONS) {
  const bin = nativeBin();
  if (!bin) return null;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tinytune-native-"));
  fs.writeFileSync(path.join(tmp, "data.jsonl"), DATA + "\n");
  const args = ["train", "--model", modelDir, "--data", path.join(tmp, "data.jsonl"), "--output-dir", path.join(tmp, "out"), "--log-steps"];
  for (const [k, v] of Object.entries(options)) {
    const flag = `--${k.replaceAll("_", "-")}`;
    if (v === true) args.push(flag);
    else if (v !== false) args.push(flag, String(v));
  }
  const r = spawnSync(bin, args, { encoding: "utf8", env: nativeEnv });
  // A binary that exists must run the same options (rebuild a stale one: cargo build -p tinytune-cli).
  check(r.status === 0, `native ${path.relative(root, bin)} ${args.slice(7).join(" ")} failed (${r.status}):\n${r.stderr}`);
  if (r.status !== 0) return null;
  const lines = fs.readFileSync(path.join(tmp, "out/metrics.jsonl"), "utf8").trim().split("\n");
  fs.rmSync(tmp, { recursive: true, force: true });
  return { bin, losses: lines.map((l) => JSON.parse(l).loss) };
}

const started = Date.now();
// TINYTUNE_BROWSER_ONLY=train,resume,embed,virtual,errors,nogpu runs only those parts (default: all).
const only = (process.env.TINYTUNE_BROWSER_ONLY || "").split(",").filter(Boolean);
const want = (part) => !only.length || only.includes(part);
let uninterrupted = null; // test 1's per-step losses
let failed = false;
let passed = 0;
let failures = 0;

// ---- 0. the TypeScript declarations declare the documented API ----
try {
  log(`d.ts: Tinytune declares ${checkDts().join(", ")}, as web/API.md documents`);
  passed++;
} catch (e) {
  failures++;
  failed = true;
  console.error("[browser-test] FAILED (d.ts):", e.message);
}

// ---- 1. train in the page ----
if (want("train")) {
  const b = await launch(["--enable-unsafe-webgpu"]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "train");
    page.setDefaultTimeout(timeoutMs);
    await page.goto(base);
    await page.waitForFunction(() => window.tinytune && (window.tinytune.state.ready || window.tinytune.state.error));
    const st0 = await page.evaluate(() => window.tinytune.state);
    check(st0.ready, `WebGPU did not open: ${st0.error}`);
    log(`WebGPU: ${st0.info.adapter.name} (${st0.info.adapter.backend}), features [${st0.info.features}], ` +
      `${st0.info.limits.max_compute_invocations_per_workgroup} invocations/workgroup`);

    // Model: the page's file picker, all files of the (sharded) HF folder.
    const files = fs.readdirSync(modelDir).map((f) => path.join(modelDir, f));
    await page.setInputFiles("#model-files", files);
    await page.click("#load");
    await page.waitForFunction(() => window.tinytune.state.model || document.querySelector("#model-info.error"));
    const model = await page.evaluate(() => window.tinytune.state.model);
    check(model, `loadModel failed: ${await page.textContent("#model-info")}`);
    log(`model: ${await page.textContent("#model-info")}`);
    // The picked Files were read tensor by tensor (FileReaderSync in the worker), with progress.
    const prog = await page.evaluate(() => window.tinytune.state.loadProgress);
    const last = prog[prog.length - 1];
    check(prog.length >= 2 && last.loaded_tensors === last.total_tensors && last.total_tensors > 0, `load progress: ${JSON.stringify(last)}`);
    check(prog.every((p, i) => i === 0 || (p.loaded_tensors >= prog[i - 1].loaded_tensors && p.bytes >= prog[i - 1].bytes)), "progress only grows");
    const fileBytes = files.reduce((s, f) => s + fs.statSync(f).size, 0);
    assert.equal(model.file_bytes, fileBytes);
    check(model.bytes_read <= fileBytes && last.bytes <= fileBytes, `read ${model.bytes_read} bytes of ${fileBytes}: some twice`);
    check(await page.isHidden("#load-progress"), "the progress bar is hidden after loading");
    log(`load progress: ${prog.length} events, ${last.total_tensors} tensors, ${model.bytes_read} of ${fileBytes} bytes read`);
    // The kernel variant the device runs, as info() and the page's header name it.
    const kernels = await page.evaluate(() => window.tinytune.state.info.kernels);
    check(/^(cpu|gpu)( \(.*\))?, compute (f32|f16)$/.test(kernels) && (await page.textContent("#gpu")).includes(`kernels ${kernels}`), `kernels: ${kernels}`);
    log(`kernels: ${kernels}`);
    // GPU memory: the model's bytes are what is alive after loading, and the page shows them.
    check(Number.isInteger(model.model_bytes) && model.model_bytes > 0, `model_bytes: ${model.model_bytes}`);
    await page.waitForFunction(() => /\(model /.test(document.querySelector("#gpu-memory").textContent));
    const memLoaded = await page.evaluate(() => window.tinytune.state.memory);
    assert.equal(memLoaded.live_bytes, model.model_bytes, "only the model is alive after loading");
    const mib = (n) => Number((n / 2 ** 20).toFixed(n / 2 ** 20 < 10 ? 2 : 1));
    const memText0 = await page.textContent("#gpu-memory");
    check(memText0 === `GPU memory: ${mib(model.model_bytes).toFixed(2)} MiB (model ${mib(model.model_bytes).toFixed(2)} MiB)`, `after loading: ${memText0}`);

    // Data and hyperparameters through the form.
    await page.fill("#data", DATA);
    await page.selectOption("#data-format", "data.jsonl");
    for (const [k, v] of Object.entries(OPTIONS)) await page.fill(`#${k}`, String(v));
    const t0 = Date.now();
    await page.click("#train");
    await page.waitForFunction(() => window.tinytune.state.summary || document.querySelector("#train-status.error"));
    const st = await page.evaluate(() => window.tinytune.state);
    check(st.summary, `training failed: ${await page.textContent("#train-status")}`);
    const losses = st.steps.map((m) => m.loss);
    const stepTimes = st.steps.map((m, i) => m.elapsed_s - (i ? st.steps[i - 1].elapsed_s : 0));
    log(`trained ${st.summary.steps} steps in ${((Date.now() - t0) / 1000).toFixed(1)} s (page), losses ${losses.map((l) => l.toFixed(4)).join(" ")}`);
    log(`step times (s): ${stepTimes.map((t) => t.toFixed(2)).join(" ")}; tokens/s ${st.steps.map((m) => m.tokens_per_s.toFixed(0)).join(" ")}`);
    assert.equal(st.summary.steps, 6);
    assert.equal(losses.length, 6);
    check(losses.every(Number.isFinite), `non-finite loss: ${losses}`);
    check(losses[5] < losses[0] - 0.05, `the loss did not fall: ${losses}`);
    assert.equal(st.chartPoints, 6, "the chart shows every step");
    check((await page.textContent("#stat-step")).trim() === "6/6", "the step counter shows 6/6");
    // The run's peak: the model plus activations, adapter, gradients and optimizer state.
    const peak = st.summary.peak_bytes;
    check(Number.isInteger(peak) && peak > model.model_bytes, `training peak ${peak} vs model ${model.model_bytes} bytes`);
    await page.waitForFunction(() => /training peak/.test(document.querySelector("#gpu-memory").textContent));
    const memTrained = await page.evaluate(() => window.tinytune.state.memory);
    check(memTrained.live_bytes > model.model_bytes && memTrained.live_bytes < peak && memTrained.peak_bytes === peak,
      `after training (the adapter stays, the activations are freed): ${JSON.stringify(memTrained)}, peak ${peak}`);
    const memText = await page.textContent("#gpu-memory");
    const mm = /^GPU memory: ([\d.]+) MiB \(model ([\d.]+) MiB, training peak ([\d.]+) MiB\)$/.exec(memText);
    check(mm && Number(mm[2]) === mib(model.model_bytes) && Number(mm[3]) === mib(peak), `the page shows: ${memText}`);
    log(`GPU memory: model ${model.model_bytes} B, training peak ${peak} B, after training ${memTrained.live_bytes} B; page: "${memText}"`);

    // The device-lost callback is installed and nothing went wrong on the device.
    const health = await page.evaluate(() => window.tinytune.call("info"));
    check(health.device_lost === false && health.gpu_error === null, `device health: ${health.device_lost}, ${health.gpu_error}`);
    check(await page.isHidden("#gpu-failed"), "no GPU failure is shown");

    // Generation: base and adapted, a few tokens each.
    await page.fill("#max_new_tokens", "8");
    await page.click("#generate");
    await page.waitForFunction(() => window.tinytune.state.lastGenerate || document.querySelector("#gen-status.error"));
    const gen = await page.evaluate(() => window.tinytune.state.lastGenerate);
    check(gen, `generate failed: ${await page.textContent("#gen-status")}`);
    check(gen.base.tokens.length > 0 && gen.adapted.tokens.length > 0, "both generations produce tokens");
    check(gen.adapted.adapter === true && gen.base.adapter === false, "base runs without, adapted with the adapter");
    log(`generate: base ${JSON.stringify(gen.base.text)} (${gen.base.tokens}), adapted ${JSON.stringify(gen.adapted.text)} (${gen.adapted.tokens}); ${await page.textContent("#gen-status")}`);

    // Download: both files, a PEFT LoRA adapter.
    const got = new Map();
    const downloads = new Promise((resolve) => {
      page.on("download", async (d) => {
        const p = path.join(artifacts, d.suggestedFilename());
        await d.saveAs(p);
        got.set(d.suggestedFilename(), p);
        if (got.size === 2) resolve();
      });
    });
    await page.click("#download");
    await downloads;
    fs.copyFileSync(got.get("adapter_model.safetensors"), path.join(artifacts, "uninterrupted_adapter_model.safetensors"));
    uninterrupted = losses;
    const cfg = JSON.parse(fs.readFileSync(got.get("adapter_config.json"), "utf8"));
    assert.equal(cfg.peft_type, "LORA");
    assert.equal(cfg.r, 8);
    const header = safetensorsHeader(fs.readFileSync(got.get("adapter_model.safetensors")));
    const names = Object.keys(header).filter((k) => k !== "__metadata__");
    check(names.some((n) => /\.lora_A\.weight$/.test(n)) && names.some((n) => /\.lora_B\.weight$/.test(n)), `no lora_A/lora_B tensors: ${names}`);
    assert.equal(names.length, 2 * 7 * model.layers, "A and B for 7 projections in every layer");
    check(names.every((n) => n.startsWith("base_model.model.model.layers.")), `PEFT names: ${names[0]}`);
    log(`adapter: ${names.length} tensors, e.g. ${names[0]} ${JSON.stringify(header[names[0]].shape)}`);

    // Load it back through the page.
    await page.setInputFiles("#adapter-files", [got.get("adapter_config.json"), got.get("adapter_model.safetensors")]);
    await page.waitForFunction(() => /adapter loaded|error|no /i.test(document.querySelector("#adapter-info").textContent));
    const ai = await page.textContent("#adapter-info");
    check(/adapter loaded: r 8/.test(ai), `loadAdapter: ${ai}`);

    await page.screenshot({ path: path.join(artifacts, "trained.png"), fullPage: true });
    fs.writeFileSync(path.join(artifacts, "browser_metrics.json"), JSON.stringify(st.steps, null, 1));
    log(`screenshot: ${path.relative(root, path.join(artifacts, "trained.png"))}`);

    // Stop: a long run ends after the step in progress, keeping the adapter trained so far.
    await page.fill("#num_steps", "200");
    await page.click("#train");
    await page.waitForFunction(() => window.tinytune.state.steps.length >= 2);
    await page.click("#stop");
    // The run is over for the page (buttons back on) once its memory and saved-run views are current.
    await page.waitForFunction(() => (window.tinytune.state.summary && !window.tinytune.state.training) || document.querySelector("#train-status.error"));
    const stopped = await page.evaluate(() => window.tinytune.state.summary);
    check(stopped && stopped.stopped && stopped.steps >= 2 && stopped.steps < 200, `stop: ${JSON.stringify(stopped)}`);
    check(/^stopped: /.test(await page.textContent("#train-status")), "the page says it stopped");
    check(!(await page.isDisabled("#download")), "the stopped run's adapter can be downloaded");
    log(`stop: the run ended after ${stopped.steps} of 200 steps`);

    // Prompt and prefix tuning through the form's peft selector: 3 steps each, then generation
    // with the trained virtual tokens, and the native CLI's losses on the same run.
    const variants = [
      { peft: "prompt-tuning" },
      { peft: "prefix-tuning" },
      { peft: "prefix-tuning", prefix_tuning_init: "text", prefix_tuning_init_text: "Arr" },
      { peft: "prefix-tuning", prefix_projection: true },
    ];
    for (const variant of variants) {
      const peft = variant.peft;
      const PT = { ...OPTIONS, ...variant, num_virtual_tokens: 4, num_steps: 3 };
      await page.selectOption("#peft", peft);
      await page.fill("#num_virtual_tokens", "4");
      await page.fill("#num_steps", "3");
      await page.selectOption("#prefix_tuning_init", variant.prefix_tuning_init || "random");
      await page.fill("#prefix_tuning_init_text", variant.prefix_tuning_init_text || "");
      await page.selectOption("#prefix_projection", String(!!variant.prefix_projection));
      await page.click("#train");
      await page.waitForFunction(() => (window.tinytune.state.summary && !window.tinytune.state.training) || document.querySelector("#train-status.error"));
      const pt = await page.evaluate(() => window.tinytune.state);
      check(pt.summary && pt.summary.peft === peft && pt.summary.steps === 3, `${peft}: ${await page.textContent("#train-status")}`);
      // Prompt tuning: 4 embeddings of the hidden size; prefix tuning: 4 key and value rows per layer.
      if (peft === "prompt-tuning") assert.equal(pt.summary.n_params, 4 * model.hidden_size);
      else if (!variant.prefix_projection) check(pt.summary.n_params > 0 && pt.summary.n_params % (4 * 2 * model.layers) === 0, `prefix parameters: ${pt.summary.n_params}`);
      const ptLosses = pt.steps.map((m) => m.loss);
      check(ptLosses[2] < ptLosses[0], `${peft}: the loss did not fall: ${ptLosses}`);
      await page.evaluate(() => (window.tinytune.state.lastGenerate = null));
      await page.click("#generate");
      await page.waitForFunction(() => window.tinytune.state.lastGenerate || document.querySelector("#gen-status.error"));
      const ptGen = await page.evaluate(() => window.tinytune.state.lastGenerate);
      check(ptGen && ptGen.adapted && ptGen.adapted.adapter, `${peft} generate: ${await page.textContent("#gen-status")}`);
      const tag = `${peft}${variant.prefix_tuning_init ? " (text init)" : ""}${variant.prefix_projection ? " (projection)" : ""}`;
      log(`${tag}: losses ${ptLosses.map((l) => l.toFixed(4)).join(" ")}; adapted ${JSON.stringify(ptGen.adapted.text)}`);
      const ptNative = nativeLosses(PT);
      if (ptNative) {
        const d = Math.max(...ptLosses.map((l, i) => Math.abs(l - ptNative.losses[i])));
        log(`${tag} native: ${ptNative.losses.map((l) => l.toFixed(4)).join(" ")}; max diff ${d.toExponential(2)}`);
        check(d <= 1e-4, `${peft}: browser and native losses differ: ${ptLosses} vs ${ptNative.losses}`);
      }
    }

    // The same run natively.
    const native = nativeLosses();
    if (native) {
      const diffs = losses.map((l, i) => Math.abs(l - native.losses[i]));
      log(`native (${path.relative(root, native.bin)}): ${native.losses.map((l) => l.toFixed(4)).join(" ")}; max |browser - native| = ${Math.max(...diffs).toExponential(2)}`);
      assert.equal(native.losses.length, losses.length);
      check(Math.max(...diffs) <= 1e-4, `browser and native losses differ: ${losses} vs ${native.losses}`);
    } else if (process.env.TINYTUNE_REQUIRE_GPU === "1") {
      throw new Error("TINYTUNE_REQUIRE_GPU=1 (the test command) needs the native tinytune binary for the comparison: cargo build -p tinytune-cli");
    } else {
      log("no native tinytune binary (target/debug or target/release): skipped the native comparison");
    }
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (train):", e);
  } finally {
    await close(b);
  }
}

// ---- 1b. reload mid-run: the cached model and the last checkpoint survive; resume finishes ----
if (want("resume")) {
  const b = await launch(["--enable-unsafe-webgpu"]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "resume");
    page.setDefaultTimeout(timeoutMs);
    await page.goto(base);
    await page.waitForFunction(() => window.tinytune && (window.tinytune.state.ready || window.tinytune.state.error));
    check(await page.isHidden("#use-cached") && await page.isHidden("#resume"), "a fresh profile offers nothing to reopen");
    await page.setInputFiles("#model-files", fs.readdirSync(modelDir).map((f) => path.join(modelDir, f)));
    check(await page.isChecked("#cache-model"), "caching the model is the default");
    await page.click("#load");
    await page.waitForFunction(() => window.tinytune.state.model || document.querySelector("#model-info.error"));
    check(await page.evaluate(() => window.tinytune.state.model), `loadModel: ${await page.textContent("#model-info")}`);
    await page.fill("#data", DATA);
    await page.selectOption("#data-format", "data.jsonl");
    for (const [k, v] of Object.entries({ ...OPTIONS, save_every: 1 })) await page.fill(`#${k}`, String(v));
    await page.click("#train");
    // Reload as soon as the third step's checkpoint is saved (the run is in step 4 or later).
    await page.waitForFunction(() => window.tinytune.state.checkpoints.length >= 3 || document.querySelector("#train-status.error"));
    const before = await page.evaluate(() => window.tinytune.state.steps.map((m) => m.loss));
    await page.reload();
    await page.waitForFunction(() => window.tinytune && (window.tinytune.state.ready || window.tinytune.state.error));
    await page.waitForFunction(() => !document.querySelector("#resume").hidden);
    check(!(await page.isHidden("#use-cached")), "the cached model is offered after the reload");
    const offer = await page.textContent("#resume");
    const m = /^Resume run \(step (\d+) of 6\)$/.exec(offer);
    check(m && Number(m[1]) >= 3 && Number(m[1]) < 6, `resume offer: ${offer}`);
    const k = Number(m[1]);
    log(`reloaded after ${before.length} steps; offered: "${offer}"; cached: "${await page.textContent("#use-cached")}"`);
    // Resume loads the cached model (no files picked) and continues from step k.
    await page.click("#resume");
    await page.waitForFunction(() => (window.tinytune.state.summary && !window.tinytune.state.training) || document.querySelector("#train-status.error") || document.querySelector("#model-info.error"));
    const st = await page.evaluate(() => window.tinytune.state);
    check(st.summary, `resume failed: ${await page.textContent("#train-status")} / ${await page.textContent("#model-info")}`);
    check(st.model.cached, "the model came from the browser's cache");
    check(st.summary.resumed && st.summary.steps === 6 && !st.summary.stopped, `summary: ${JSON.stringify(st.summary)}`);
    assert.deepEqual(st.steps.map((m) => m.step), Array.from({ length: 6 - k }, (_, i) => k + 1 + i));
    const resumed = st.steps.map((m) => m.loss);
    const reference = uninterrupted || (nativeLosses() || {}).losses;
    check(reference, "no uninterrupted run to compare with");
    const diffs = resumed.map((l, i) => Math.abs(l - reference[k + i]));
    log(`resumed steps ${k + 1}..6: ${resumed.map((l) => l.toFixed(4)).join(" ")}; uninterrupted: ${reference.slice(k).map((l) => l.toFixed(4)).join(" ")}; max diff ${Math.max(...diffs).toExponential(2)}`);
    check(Math.max(...diffs) === 0 || (!uninterrupted && Math.max(...diffs) <= 1e-4), `resumed losses differ: ${resumed} vs ${reference.slice(k)}`);
    check(await page.isHidden("#resume"), "a finished run is not offered again");
    // The final adapter is the uninterrupted run's, byte for byte.
    const ref = path.join(artifacts, "uninterrupted_adapter_model.safetensors");
    if (fs.existsSync(ref)) {
      const dl = path.join(artifacts, "resumed_adapter_model.safetensors");
      const got = new Promise((resolve) => page.on("download", async (d) => {
        if (d.suggestedFilename() === "adapter_model.safetensors") { await d.saveAs(dl); resolve(); }
      }));
      await page.click("#download");
      await got;
      check(fs.readFileSync(dl).equals(fs.readFileSync(ref)), "the resumed run's adapter differs from the uninterrupted run's");
      log("resumed adapter == uninterrupted adapter (bytes)");
    }
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (reload and resume):", e);
  } finally {
    await close(b);
  }
}

// ---- 1c. the embedding example (examples/web-embed: the module on the main thread) ----
if (want("embed")) {
  const b = await launch(["--enable-unsafe-webgpu"]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "embed");
    page.setDefaultTimeout(timeoutMs);
    await page.goto(`${base}examples/web-embed/`);
    await page.waitForFunction(() => window.result && (window.result.done || window.result.error));
    const r = await page.evaluate(() => window.result);
    check(!r.error, `the example failed: ${r.error}`);
    assert.equal(r.losses.length, 5);
    check(r.losses.every(Number.isFinite) && r.losses[4] < r.losses[0] - 0.05, `the example's loss did not fall: ${r.losses}`);
    const text = await page.textContent("#log");
    check(/adapter_model\.safetensors: \d+ bytes/.test(text), `no adapter saved: ${text}`);
    log(`embed example: losses ${r.losses.map((l) => l.toFixed(4)).join(" ")}`);
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (embedding example):", e);
  } finally {
    await close(b);
  }
}

// ---- 1e. prompt- and prefix-tuning adapters generate in the page as `tinytune generate` ----
if (want("virtual")) {
  const bin = nativeBin();
  if (!bin && process.env.TINYTUNE_REQUIRE_GPU === "1") {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (virtual): TINYTUNE_REQUIRE_GPU=1 (the test command) needs the native tinytune binary: cargo build -p tinytune-cli");
  } else if (!bin) {
    log("virtual tokens: no native tinytune binary (cargo build -p tinytune-cli): skipped");
  } else {
    const b = await launch(["--enable-unsafe-webgpu"]);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tinytune-virtual-"));
    try {
      const page = await b.ctx.newPage();
      watch(page, "virtual");
      page.setDefaultTimeout(timeoutMs);
      // Any page of the origin: the module runs on its main thread.
      await page.goto(`${base}tests/fixtures/model/llama_hf/config.json`);
      const loaded = await page.evaluate(async (url) => {
        const mod = await import("/web/pkg/tinytune_wasm.js");
        await mod.default();
        window.tt = await mod.Tinytune.create();
        return window.tt.loadModel(url, "nf4");
      }, `${base}tests/fixtures/model/llama_hf/`);
      check(loaded.layers === 2 && loaded.chat_template, `the fixture model: ${JSON.stringify(loaded)}`);
      fs.writeFileSync(path.join(tmp, "data.jsonl"), DATA + "\n");
      const run = (args) => {
        const r = spawnSync(bin, args, { encoding: "utf8", env: nativeEnv });
        check(r.status === 0, `native tinytune ${args.join(" ")} failed (${r.status}):\n${r.stderr}`);
        return r;
      };
      const VIRTUAL = 8;
      const K = 3; // fewer new tokens than virtual tokens
      for (const [peft, prompt, raw] of [["prompt-tuning", "What is the capital of France?", false], ["prefix-tuning", "the sky be", true]]) {
        const out = path.join(tmp, peft);
        run(["train", "--model", modelDir, "--data", path.join(tmp, "data.jsonl"), "--output-dir", out, "--log-steps",
          "--peft", peft, "--num-virtual-tokens", String(VIRTUAL), "--num-steps", "2", "--batch-size", "4", "--seq-len", "64",
          "--learning-rate", "1e-2", "--seed", "7"]);
        const gen = ["generate", "--model", modelDir, "--adapter", out, "--prompt", prompt, "--max-new-tokens", String(K)];
        const cli = run(raw ? [...gen, "--raw"] : gen);
        const m = /^(\d+) tokens, stopped by/m.exec(cli.stderr);
        check(m, `tinytune generate's token count: ${cli.stderr}`);
        const cliTokens = Number(m[1]);
        const files = {};
        for (const f of ["adapter_config.json", "adapter_model.safetensors"]) files[f] = [...fs.readFileSync(path.join(out, f))];
        const r = await page.evaluate(async ({ files, prompt, opts }) => {
          const picked = {};
          for (const [name, bytes] of Object.entries(files)) picked[name] = new Uint8Array(bytes);
          try {
            const info = await window.tt.loadAdapter(picked);
            const g = await window.tt.generate(prompt, JSON.stringify(opts));
            return { info, text: g.text, tokens: g.tokens, stop: g.stop, adapter: g.adapter };
          } catch (e) {
            return { error: e.message };
          }
        }, { files, prompt, opts: { max_new_tokens: K, raw } });
        check(!r.error, `${peft}: the page's generate failed: ${r.error}`);
        if (r.error) continue;
        assert.equal(r.info.peft, peft);
        assert.equal(r.info.num_virtual_tokens, VIRTUAL);
        check(r.adapter, `${peft}: generated without the adapter`);
        // The CLI ends its output with a newline unless the text already does.
        const pageOut = r.text.endsWith("\n") ? r.text : r.text + "\n";
        check(cliTokens === K && r.tokens.length === cliTokens, `${peft}: the page generated ${r.tokens.length} tokens (${r.stop}), tinytune generate ${cliTokens}, asked ${K}`);
        check(pageOut === cli.stdout, `${peft}: the page's ${JSON.stringify(r.text)} vs tinytune generate's ${JSON.stringify(cli.stdout)}`);
        log(`${peft} (${VIRTUAL} virtual tokens): page and CLI generate ${r.tokens.length} tokens ${JSON.stringify(r.text)}`);
      }
      passed++;
    } catch (e) {
      failures++;
      failed = true;
      console.error("[browser-test] FAILED (virtual tokens):", e);
    } finally {
      await close(b);
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
}

// ---- 1d. failures: each shows one message naming what is wrong, and the page stays usable ----
if (want("errors")) {
  const b = await launch(["--enable-unsafe-webgpu"]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "errors");
    page.setDefaultTimeout(timeoutMs);
    await page.goto(base);
    await page.waitForFunction(() => window.tinytune && (window.tinytune.state.ready || window.tinytune.state.error));
    check(await page.evaluate(() => window.tinytune.state.ready), "WebGPU did not open");
    // Keep a copy in OPFS (the default): a model that fails to load must not be offered again.
    const gguf = fs.readFileSync(path.join(root, "tests/fixtures/model/llama.gguf"));

    /** Picks `files` ({name, buffer} or paths), clicks Load; the model info line and whether it is an error. */
    const load = async (files) => {
      await page.evaluate(() => (window.tinytune.state.model = null));
      await page.setInputFiles("#model-files", files);
      await page.click("#load");
      await page.waitForFunction(() => !document.querySelector("#load").disabled || document.querySelector("#model-info.error"));
      await page.waitForFunction(() => window.tinytune.state.model || document.querySelector("#model-info.error"));
      return { text: await page.textContent("#model-info"), error: await page.isVisible("#model-info.error") };
    };
    /** One message: the error names `what`, says it once, and does not repeat a sentence. */
    const oneMessage = (text, what, tag) => {
      check(text.includes(what), `${tag}: the message does not name ${what}: ${text}`);
      const parts = text.split(/(?<=[.;]) +|: /).map((p) => p.trim()).filter((p) => p.length > 8);
      const dup = parts.find((p, i) => parts.indexOf(p) !== i);
      check(!dup, `${tag}: the message repeats "${dup}": ${text}`);
      log(`${tag}: "${text}"`);
    };

    // (a) a corrupt model: garbage bytes named model.gguf, and a GGUF cut in the middle of its tensor data.
    const garbage = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24));
    let r = await load([{ name: "model.gguf", mimeType: "application/octet-stream", buffer: garbage }]);
    check(r.error, `garbage model.gguf loaded: ${r.text}`);
    oneMessage(r.text, "model.gguf", "garbage model.gguf");
    r = await load([{ name: "truncated.gguf", mimeType: "application/octet-stream", buffer: gguf.subarray(0, Math.floor(gguf.length * 0.7)) }]);
    check(r.error, `a truncated GGUF loaded: ${r.text}`);
    oneMessage(r.text, "truncated.gguf", "truncated GGUF");
    check(await page.isDisabled("#train"), "Train is disabled while no model is loaded");
    check(await page.isHidden("#use-cached"), "a model that failed to load is not offered from the cache");
    // The page still works: the good model loads.
    r = await load([path.join(root, "tests/fixtures/model/llama.gguf")]);
    check(!r.error && (await page.evaluate(() => window.tinytune.state.model)), `the good model after the failures: ${r.text}`);

    /** Trains with `options` on `data` (named `name`); the status line and whether it is an error. */
    const train = async (data, name, options) => {
      await page.fill("#data", data);
      await page.selectOption("#data-format", name);
      for (const [k, v] of Object.entries(options)) await page.fill(`#${k}`, String(v));
      await page.evaluate(() => (window.tinytune.state.summary = null));
      await page.click("#train");
      await page.waitForFunction(() => (window.tinytune.state.summary || document.querySelector("#train-status.error")) && !window.tinytune.state.training);
      return { text: await page.textContent("#train-status"), error: await page.isVisible("#train-status.error"), summary: await page.evaluate(() => window.tinytune.state.summary) };
    };
    const GOOD = { ...OPTIONS, num_steps: 2 };

    // (b) a malformed line in the data.
    const lines = DATA.split("\n");
    const bad = [lines[0], lines[1], '{"messages": [{"role": "user", "content": "unterminated}', lines[3]].join("\n");
    r = await train(bad, "data.jsonl", GOOD);
    check(r.error, `a malformed line trained: ${r.text}`);
    oneMessage(r.text, "data.jsonl:3: ", "malformed line");

    // (b2) an extra held-out set picked in the page (eval_data): its loss before -> after.
    await page.setInputFiles("#eval-files", { name: "general.jsonl", mimeType: "application/json", buffer: Buffer.from(DATA) });
    await page.waitForFunction(() => Object.keys(window.tinytune.state.evalData).length === 1);
    r = await train(DATA, "data.jsonl", GOOD);
    check(!r.error && r.summary && r.summary.eval_data_before && r.summary.eval_data_before.general, `eval_data: ${r.text}`);
    check(/general loss \d+\.\d+ → \d+\.\d+/.test(r.text), `the status shows the held-out set's losses: ${r.text}`);
    log(`extra held-out set: "${r.text}"`);
    await page.setInputFiles("#eval-files", []);
    await page.waitForFunction(() => Object.keys(window.tinytune.state.evalData).length === 0);

    // (c) options that cannot be: a batch too large for one storage binding, and invalid values.
    const limits = await page.evaluate(() => window.tinytune.state.info.limits);
    r = await train(DATA, "data.jsonl", { ...GOOD, batch_size: 65536, seq_len: 65536 });
    check(r.error, `a batch of 4096 x 4096 trained: ${r.text}`);
    oneMessage(r.text, "smaller batch_size or seq_len", "too large a batch");
    check(/device allows at most \d+ bytes|out of GPU memory/.test(r.text), `the limit is named: ${r.text}`);
    r = await train(DATA, "data.jsonl", { ...GOOD, lora_r: 0 });
    check(r.error, `lora_r 0 trained: ${r.text}`);
    oneMessage(r.text, "lora_r", "lora_r 0");
    r = await train(DATA, "data.jsonl", { ...GOOD, learning_rate: "fast" });
    check(r.error, `learning_rate "fast" trained: ${r.text}`);
    oneMessage(r.text, "learning_rate", "learning_rate fast");
    // f16 compute where the adapter lacks shader-f16 (SwiftShader): refused, naming the feature.
    const f16 = (await page.evaluate(() => window.tinytune.state.info.features)).some((f) => f.includes("SHADER_F16"));
    await page.selectOption("#compute_dtype", "f16");
    r = await train(DATA, "data.jsonl", GOOD);
    await page.selectOption("#compute_dtype", "");
    if (f16) {
      check(!r.error, `compute_dtype f16 on an adapter with SHADER_F16: ${r.text}`);
      log("compute_dtype f16 trained (the adapter has SHADER_F16)");
    } else {
      check(r.error, `compute_dtype f16 trained without SHADER_F16: ${r.text}`);
      oneMessage(r.text, "SHADER_F16", "compute_dtype f16 without shader-f16");
    }

    // The page still works: 2 steps train and generation runs.
    r = await train(DATA, "data.jsonl", GOOD);
    check(!r.error && r.summary && r.summary.steps === 2, `training after the failures: ${r.text}`);
    await page.fill("#max_new_tokens", "4");
    await page.click("#generate");
    await page.waitForFunction(() => window.tinytune.state.lastGenerate || document.querySelector("#gen-status.error"));
    check(await page.evaluate(() => window.tinytune.state.lastGenerate), `generate: ${await page.textContent("#gen-status")}`);
    log(`after the failures: trained ${r.summary.steps} steps (max binding ${limits.max_storage_buffer_binding_size} B) and generated`);
    // A corrupt file picked while a model is loaded: the message says the loaded one stays, and it still generates.
    r = await load([{ name: "model.gguf", mimeType: "application/octet-stream", buffer: garbage }]);
    check(r.error && /\(still loaded: llama\.gguf\)$/.test(r.text), `a failed load over a loaded model: ${r.text}`);
    oneMessage(r.text, "model.gguf", "garbage over a loaded model");
    check(!(await page.isDisabled("#generate")), "Generate stays enabled with the previous model");
    await page.evaluate(() => (window.tinytune.state.lastGenerate = null));
    await page.click("#generate");
    await page.waitForFunction(() => window.tinytune.state.lastGenerate || document.querySelector("#gen-status.error"));
    check(await page.evaluate(() => window.tinytune.state.lastGenerate), `generate after a failed load: ${await page.textContent("#gen-status")}`);
    // Model URLs: a .gguf and a Hugging Face folder (sharded, with its index) are downloaded into
    // OPFS with progress and loaded from there; a URL that is neither is one message.
    const loadUrl = async (url) => {
      await page.evaluate(() => (window.tinytune.state.model = null));
      await page.fill("#model-url", url);
      await page.click("#load-url");
      await page.waitForFunction(() => window.tinytune.state.model || document.querySelector("#model-info.error"));
      return { text: await page.textContent("#model-info"), error: await page.isVisible("#model-info.error"), model: await page.evaluate(() => window.tinytune.state.model) };
    };
    r = await loadUrl(`${base}tests/fixtures/model/llama.gguf`);
    check(!r.error && r.model && r.model.name === "llama.gguf" && r.model.cached, `the .gguf URL: ${r.text}`);
    let dl = await page.evaluate(() => window.tinytune.state.downloadProgress);
    check(dl.length > 0 && dl[dl.length - 1].bytes === gguf.length, `download progress of the .gguf: ${JSON.stringify(dl[dl.length - 1])}`);
    assert.equal(r.model.file_bytes, gguf.length);
    const hfBytes = fs.readdirSync(modelDir).filter((f) => f !== "model.safetensors.index.json").reduce((n, f) => n + fs.statSync(path.join(modelDir, f)).size, 0);
    r = await loadUrl(`${base}tests/fixtures/model/llama_hf`);
    check(!r.error && r.model && r.model.layers === 2 && r.model.chat_template, `the folder URL: ${r.text}`);
    dl = await page.evaluate(() => window.tinytune.state.downloadProgress);
    assert.equal(r.model.file_bytes, hfBytes, "the folder's files (shards, config, tokenizer) were downloaded");
    check(new Set(dl.map((p) => p.file)).size >= 4, `files downloaded: ${[...new Set(dl.map((p) => p.file))]}`);
    check(/Use cached model/.test(await page.textContent("#use-cached")), "the downloaded model is offered from the cache");
    log(`model URLs: llama.gguf (${gguf.length} B) and llama_hf/ (${new Set(dl.map((p) => p.file)).size} files, ${hfBytes} B) downloaded into OPFS and loaded`);
    r = await loadUrl(`${base}tests/fixtures/model/no-such-model/`);
    check(r.error, `a URL without a model loaded: ${r.text}`);
    oneMessage(r.text, "config.json", "a URL without a model");
    await page.screenshot({ path: path.join(artifacts, "errors.png"), fullPage: true });
    // A failed device (shown as the page would once info() has a gpu_error; a real loss is not
    // provoked): one banner with the message, every GPU button off, Reload reopens a working page.
    await page.evaluate(() => window.tinytune.gpuFailed("The GPU device was lost (test). Reload the page; then use a smaller batch_size or seq_len, or a smaller model."));
    check(await page.isVisible("#gpu-failed") && /device was lost \(test\)/.test(await page.textContent("#gpu-failed")), "the GPU failure banner");
    for (const id of ["load", "train", "generate", "download", "use-cached"]) check(await page.isDisabled(`#${id}`), `#${id} is disabled after a GPU failure`);
    await page.click("#reload");
    await page.waitForFunction(() => window.tinytune && window.tinytune.state && (window.tinytune.state.ready || window.tinytune.state.error));
    check(await page.evaluate(() => window.tinytune.state.ready && !window.tinytune.state.gpuFailed), "the reloaded page opened WebGPU");
    check(await page.isHidden("#gpu-failed"), "the reloaded page shows no failure");
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (errors):", e);
  } finally {
    await close(b);
  }
}

// ---- 2. no WebGPU ----
if (want("nogpu")) {
  // An insecure origin (not localhost) has no navigator.gpu, in the page and in the worker.
  const b = await launch(["--enable-unsafe-webgpu", "--host-resolver-rules=MAP tinytune.test 127.0.0.1"]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "no-webgpu");
    page.setDefaultTimeout(60000);
    await page.goto(`http://tinytune.test:${port}/`);
    await page.waitForFunction(() => window.tinytune && window.tinytune.state.error && !window.tinytune.state.ready);
    await page.waitForFunction(() => document.querySelector("#gpu").textContent === "no WebGPU");
    const msg = await page.textContent("#nogpu");
    check(await page.isVisible("#nogpu"), "the WebGPU message is visible");
    check(/WebGPU is not available in this browser \(navigator\.gpu is missing\)/.test(msg), `message: ${msg}`);
    check(await page.isDisabled("#train"), "Train is disabled without WebGPU");
    await page.screenshot({ path: path.join(artifacts, "no-webgpu.png") });
    log(`no navigator.gpu: "${msg}"`);
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (no navigator.gpu):", e);
  } finally {
    await close(b);
  }
}
if (want("nogpu")) {
  // Without --enable-unsafe-webgpu, Chromium on Linux exposes navigator.gpu but gives no adapter.
  const b = await launch([]);
  try {
    const page = await b.ctx.newPage();
    watch(page, "no-adapter");
    page.setDefaultTimeout(60000);
    await page.goto(base);
    await page.waitForFunction(() => window.tinytune && (window.tinytune.state.error || window.tinytune.state.ready));
    const st = await page.evaluate(() => window.tinytune.state);
    if (st.ready) {
      log("this Chromium has a WebGPU adapter without --enable-unsafe-webgpu: skipped the no-adapter check");
    } else {
      const msg = await page.textContent("#nogpu");
      check(/tinytune needs WebGPU: .*(offers no GPU adapter|not available)/.test(msg), `message: ${msg}`);
      log(`no adapter: "${msg}"`);
    }
    passed++;
  } catch (e) {
    failures++;
    failed = true;
    console.error("[browser-test] FAILED (no adapter):", e);
  } finally {
    await close(b);
  }
}

server.close();
log(`${failed ? "FAILED" : "passed"} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
console.log(`browser: ${passed} passed, ${failures} failed`);
process.exit(failed ? 1 : 0);
