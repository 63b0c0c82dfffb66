// The smallest embedding of tinytune: import the module built by scripts/build_web.sh, open
// WebGPU, load a model, fine-tune a LoRA adapter, generate, and save the adapter in PEFT's layout.
// (The page's own app runs the module in a Web Worker; here it runs on the main thread.)
import init, { Tinytune } from "../../web/pkg/tinytune_wasm.js";

const out = document.getElementById("log");
const log = (line) => (out.textContent += line + "\n");
const result = (window.result = { losses: [], done: false, error: null });

try {
  await init();
  const tt = await Tinytune.create(); // rejects with a clear message without WebGPU
  log(`WebGPU adapter: ${tt.info().adapter.backend}`);

  // A URL (a .gguf, or a Hugging Face folder), or {name: File | Blob | Uint8Array}.
  const model = await tt.loadModel("../../tests/fixtures/model/llama.gguf", "nf4");
  log(`model: ${model.model_type}, ${model.layers} layers, vocab ${model.vocab_size}`);

  // Plain text (.txt) split into seq_len windows; options are `tinytune train`'s flags.
  const text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
  const options = { num_steps: 5, batch_size: 2, seq_len: 32, learning_rate: 1e-2, lora_r: 4, seed: 1 };
  const summary = await tt.train(text, "data.txt", JSON.stringify(options), (json) => {
    const m = JSON.parse(json);
    result.losses.push(m.loss);
    log(`step ${m.step}/${m.total_steps}  loss ${m.loss.toFixed(4)}  ${m.tokens_per_s.toFixed(0)} tokens/s`);
  });
  log(`trained ${summary.steps} steps, ${summary.n_params} LoRA parameters`);

  const gen = await tt.generate("the quick brown", JSON.stringify({ max_new_tokens: 8, raw: true }));
  log(`generated: ${JSON.stringify(gen.text)}`);

  const files = await tt.saveAdapter(); // {"adapter_config.json": Uint8Array, "adapter_model.safetensors": ...}
  for (const [name, bytes] of Object.entries(files)) log(`${name}: ${bytes.length} bytes`);
  result.done = true;
} catch (e) {
  result.error = e.message;
  log(`error: ${e.message}`);
}
