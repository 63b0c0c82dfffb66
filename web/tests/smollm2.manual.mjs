// Manual check (not in the test command: ~100 MB model, minutes on SwiftShader): the web app
// loads SmolLM2-135M-Instruct's GGUF through the page's file picker (read in the worker tensor by
// tensor), trains a step or two of prompt tuning and of LoRA, generates, and reports times and
// GPU memory. Run: bash scripts/build_web.sh && node web/tests/smollm2.manual.mjs [GGUF]
import { chromium } from "playwright-core";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(here, "..");
const gguf = process.argv[2] || path.join(os.homedir(), ".cache/tinytune/SmolLM2-135M-Instruct.Q4_1.gguf");
const log = (...a) => console.log("[smollm2]", ...a);
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
const server = http.createServer((req, res) => {
  let p = path.normalize(path.join(web, decodeURIComponent(new URL(req.url, "http://x").pathname)));
  if (!p.startsWith(web)) return res.writeHead(403).end();
  if (fs.existsSync(p) && fs.statSync(p).isDirectory()) p = path.join(p, "index.html");
  fs.readFile(p, (e, body) => {
    if (e) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": TYPES[path.extname(p)] || "application/octet-stream" });
    res.end(body);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tinytune-smol-"));
const ctx = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking"],
});
try {
  const page = await ctx.newPage();
  page.setDefaultTimeout(1800 * 1000);
  page.on("pageerror", (e) => log("page error:", e.message));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForFunction(() => window.tinytune && (window.tinytune.state.ready || window.tinytune.state.error));
  let t = Date.now();
  await page.setInputFiles("#model-files", [gguf]);
  await page.click("#load");
  await page.waitForFunction(() => window.tinytune.state.model || document.querySelector("#model-info.error"));
  log(`load: ${((Date.now() - t) / 1000).toFixed(1)} s; ${await page.textContent("#model-info")}`);
  log(await page.textContent("#gpu-memory"));
  for (const [peft, steps, lr] of [["prompt-tuning", 2, "3e-2"], ["lora", 2, "2e-3"]]) {
    await page.selectOption("#peft", peft);
    for (const [id, v] of [["num_steps", steps], ["batch_size", 2], ["seq_len", 64], ["learning_rate", lr], ["layers_to_transform", "top:8"], ["num_virtual_tokens", 8]]) await page.fill(`#${id}`, String(v));
    await page.evaluate(() => (window.tinytune.state.summary = null));
    t = Date.now();
    await page.click("#train");
    await page.waitForFunction(() => (window.tinytune.state.summary && !window.tinytune.state.training) || document.querySelector("#train-status.error"));
    const st = await page.evaluate(() => window.tinytune.state);
    log(`${peft}: ${((Date.now() - t) / 1000).toFixed(1)} s; losses ${st.steps.map((m) => m.loss.toFixed(4)).join(" ")}; ${await page.textContent("#train-status")}`);
    log(await page.textContent("#gpu-memory"));
    await page.evaluate(() => (window.tinytune.state.lastGenerate = null));
    await page.fill("#max_new_tokens", "8");
    t = Date.now();
    await page.click("#generate");
    await page.waitForFunction(() => window.tinytune.state.lastGenerate || document.querySelector("#gen-status.error"));
    const g = await page.evaluate(() => window.tinytune.state.lastGenerate);
    log(`generate (${((Date.now() - t) / 1000).toFixed(1)} s): base ${JSON.stringify(g && g.base && g.base.text)}, adapted ${JSON.stringify(g && g.adapted && g.adapted.text)}`);
  }
} finally {
  await ctx.close();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
