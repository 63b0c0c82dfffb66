// Dropout with a counter-based mask (PEFT's lora_dropout): y = x * keep(seed, i) * scale, or with
// ACCUMULATE y += x * keep(seed, i) * scale (the backward: dropout is its own adjoint, so
// dx += mask * scale * dy regenerates the forward's mask from the same seed).
//
// keep(seed, i) = hash(seed, i) >= threshold, threshold = round(p * 2^32) (clamped), scale =
// 1 / (1 - p), both from the launcher. The hash is murmur3's 32-bit finalizer fmix32, applied as
//   key  = fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9E3779B9))   (once per invocation)
//   hash = fmix32(fmix32(i ^ key) + 0x9E3779B9)
// bit for bit as tinytune_reference::nn::dropout_hash. Dropped elements give 0 (y = 0, or y += 0).
// Each invocation handles ITEMS elements strided by WG (coalesced; no shared memory).

const WG: u32 = 256u;
const ITEMS: u32 = 16u;  // elements per invocation, strided by WG (a workgroup covers WG * ITEMS)
const GOLDEN: u32 = 0x9E3779B9u;

override ACCUMULATE: bool = false;  // y += instead of y =

struct Params {
    n: u32,          // elements
    threshold: u32,  // keep iff hash >= threshold
    scale: f32,      // 1 / (1 - p)
    seed_lo: u32,    // seed bits 0..32
    seed_hi: u32,    // seed bits 32..64
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (n)

fn fmix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let key = fmix32(p.seed_lo ^ fmix32(p.seed_hi ^ GOLDEN));
    let base = (wid.x + wid.y * nwg.x) * (WG * ITEMS) + lid;
    for (var k = 0u; k < ITEMS; k++) {
        let i = base + k * WG;
        if (i >= p.n) {
            return;
        }
        let keep = fmix32(fmix32(i ^ key) + GOLDEN) >= p.threshold;
        var v = x[i];
        if (p.scale != 1.0) {  // p = 0: the exact identity even where x * 1.0 would flush subnormals
            v *= p.scale;
        }
        v = select(0.0, v, keep);
        if (ACCUMULATE) {
            y[i] = y[i] + v;
        } else {
            y[i] = v;
        }
    }
}
