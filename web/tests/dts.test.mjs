// Checks the generated TypeScript declarations (web/pkg/tinytune_wasm.d.ts, written by
// wasm-bindgen in scripts/build_web.sh) against the API that web/API.md documents: every
// documented method of class Tinytune is declared with the documented parameters (count, and
// which are optional), every declared method is documented, and every type a signature names is
// declared. No TypeScript compiler needed. Run alone (node web/tests/dts.test.mjs) or from
// browser.test.mjs.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");

/** Splits a parameter list at top-level commas. */
function splitTop(s) {
  const out = [];
  let depth = 0;
  let cur = "";
  for (const ch of s) {
    if ("([{<".includes(ch)) depth++;
    if (")]}>".includes(ch) && !(ch === ">" && cur.endsWith("="))) depth--;
    if (ch === "," && depth === 0) {
      out.push(cur.trim());
      cur = "";
    } else cur += ch;
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

/** The methods of `export class Tinytune` in a .d.ts: name -> {static, params: [{name, optional, type}], ret}. */
export function parseClass(dts, cls = "Tinytune") {
  const start = dts.indexOf(`export class ${cls} {`);
  if (start < 0) throw new Error(`no "export class ${cls}" in the declarations`);
  const body = dts.slice(start, dts.indexOf("\n}", start));
  const methods = new Map();
  const noComments = body.replace(/\/\*[\s\S]*?\*\//g, "");
  for (const line of noComments.split("\n")) {
    const m = /^\s*(static\s+)?([A-Za-z_]\w*)\((.*)\):\s*(.+);\s*$/.exec(line);
    if (!m) continue;
    const params = splitTop(m[3]).map((p) => {
      const pm = /^(\w+)(\??):\s*([\s\S]+)$/.exec(p);
      if (!pm) throw new Error(`cannot parse parameter "${p}" of ${m[2]}`);
      const optional = pm[2] === "?" || /\|\s*undefined\b/.test(pm[3]);
      return { name: pm[1], optional, type: pm[3] };
    });
    methods.set(m[2], { static: !!m[1], params, ret: m[4] });
  }
  return methods;
}

/** The documented methods: web/API.md's `Tinytune` section, `name(a, b?)` in backticks. */
export function documentedMethods(md) {
  const a = md.indexOf("## `Tinytune`");
  if (a < 0) throw new Error("web/API.md has no \"## `Tinytune`\" section");
  const end = md.indexOf("\n## ", a + 5);
  const section = md.slice(a, end < 0 ? undefined : end);
  const out = new Map();
  for (const m of section.matchAll(/`(static )?([a-z]\w*)\(([^)`]*)\)/g)) {
    const params = m[3].trim() ? m[3].split(",").map((p) => p.trim()) : [];
    const doc = { static: !!m[1], params: params.map((p) => ({ name: p.replace(/\?$/, ""), optional: p.endsWith("?") })) };
    // The first, fullest mention counts (prose may repeat a name with fewer words).
    if (!out.has(m[2]) || out.get(m[2]).params.length < doc.params.length) out.set(m[2], doc);
  }
  return out;
}

export function checkDts() {
  const dtsPath = path.join(root, "web/pkg/tinytune_wasm.d.ts");
  if (!fs.existsSync(dtsPath)) throw new Error("web/pkg/tinytune_wasm.d.ts is missing: run bash scripts/build_web.sh");
  const dts = fs.readFileSync(dtsPath, "utf8");
  const declared = parseClass(dts);
  const docs = documentedMethods(fs.readFileSync(path.join(root, "web/API.md"), "utf8"));
  const problems = [];
  const api = [...declared.keys()].filter((n) => n !== "free");
  for (const name of api) {
    const d = declared.get(name);
    const doc = docs.get(name);
    if (!doc) {
      problems.push(`${name}: declared but not documented in web/API.md`);
      continue;
    }
    if (doc.static !== d.static) problems.push(`${name}: static in one place only`);
    const want = doc.params.map((p) => `${p.name}${p.optional ? "?" : ""}`).join(", ");
    const got = d.params.map((p) => `${p.name}${p.optional ? "?" : ""}`).join(", ");
    if (want !== got) problems.push(`${name}: documented (${want}), declared (${got})`);
  }
  // Every type a signature names is declared (an unchecked_param_type typo would not be).
  const declaredTypes = new Set([...dts.matchAll(/export (?:interface|type|class) (\w+)/g)].map((m) => m[1]));
  const builtin = new Set(["Promise", "Map", "Record", "Uint8Array", "ArrayBuffer", "Blob", "Symbol", "void", "string", "number", "boolean", "null", "undefined", "any"]);
  for (const [name, d] of declared) {
    const types = d.params.map((p) => p.type).concat(d.ret).join(" ");
    for (const [t] of types.matchAll(/\b[A-Z]\w*/g)) {
      if (!builtin.has(t) && !declaredTypes.has(t)) problems.push(`${name}: type ${t} is not declared`);
    }
  }
  if (problems.length) throw new Error(`tinytune_wasm.d.ts vs web/API.md:\n  ${problems.join("\n  ")}`);
  return api.map((n) => `${declared.get(n).static ? "static " : ""}${n}(${declared.get(n).params.length})`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    console.log(`d.ts: Tinytune declares ${checkDts().join(", ")}, as documented`);
  } catch (e) {
    console.error(`d.ts: FAILED: ${e.message}`);
    process.exit(1);
  }
}
