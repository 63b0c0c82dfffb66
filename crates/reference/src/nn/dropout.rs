//! Dropout (PEFT's `lora_dropout` on the LoRA branch's input) with a counter-based mask: element
//! `i` under a 64-bit `seed` is kept iff `dropout_hash(seed, i) >= dropout_threshold(p)`, and kept
//! elements are scaled by `dropout_scale(p) = 1 / (1 - p)`. The mask is a pure function of
//! `(seed, i)`, so the backward regenerates it instead of storing it, and the kernel
//! (`shaders/nn/dropout_fwd.wgsl`) computes the same hash bit for bit.
//!
//! The hash is built from murmur3's 32-bit finalizer `fmix32` (full avalanche, two multiplies):
//!
//! ```text
//! key  = fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9E3779B9))   // once per seed
//! hash = fmix32(fmix32(i ^ key) + 0x9E3779B9)             // per element
//! ```
//!
//! Both seed words enter the key nonlinearly, so nearby seeds give unrelated keys (masks that are
//! not shifts or local shuffles of each other); the second round decorrelates neighbouring
//! indices beyond what one `fmix32` of `i ^ key` does.

/// Murmur3's 32-bit finalizer (`fmix32`), a bijection on `u32` with full avalanche.
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The golden-ratio constant `floor(2^32 / phi)`, mixed in so seed 0 and index 0 are not fixed
/// points of `fmix32` (`fmix32(0) = 0`).
const GOLDEN: u32 = 0x9E37_79B9;

/// The per-seed key of [`dropout_hash`]: `fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9E3779B9))`.
pub fn dropout_key(seed: u64) -> u32 {
    fmix32(seed as u32 ^ fmix32((seed >> 32) as u32 ^ GOLDEN))
}

/// The 32-bit hash of element `i` under `seed`: `fmix32(fmix32(i ^ key) + 0x9E3779B9)` with
/// `key = dropout_key(seed)` (wrapping add).
pub fn dropout_hash(seed: u64, i: u32) -> u32 {
    fmix32(fmix32(i ^ dropout_key(seed)).wrapping_add(GOLDEN))
}

/// The keep threshold of drop probability `p`: `round(p * 2^32)`, clamped to `u32::MAX` (an
/// element is kept iff its hash is `>=` this, so `p = 0` keeps everything).
///
/// Panics unless `0 <= p < 1`.
pub fn dropout_threshold(p: f32) -> u32 {
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} is not in [0, 1)");
    (p as f64 * 4294967296.0).round().min(u32::MAX as f64) as u32
}

/// The scale of kept elements, `1 / (1 - p)` computed in f64 and rounded once to f32 (exactly 1
/// for `p = 0`, exactly 2 for `p = 0.5`).
///
/// Panics unless `0 <= p < 1`.
pub fn dropout_scale(p: f32) -> f32 {
    assert!((0.0..1.0).contains(&p), "dropout: p = {p} is not in [0, 1)");
    (1.0 / (1.0 - p as f64)) as f32
}

/// Whether element `i` survives dropout with probability `p` under `seed`:
/// `dropout_hash(seed, i) >= dropout_threshold(p)`.
///
/// Panics unless `0 <= p < 1`.
pub fn dropout_mask(seed: u64, i: u32, p: f32) -> bool {
    dropout_hash(seed, i) >= dropout_threshold(p)
}

/// `y[i] = if mask(seed, i) { x[i] * scale } else { 0 }` with `scale = dropout_scale(p)`, one
/// f32 product per kept element as the kernel computes it (`p = 0` returns `x` exactly).
///
/// Panics unless `0 <= p < 1`, or if `x` has more than 2^32 elements.
pub fn dropout_fwd(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    assert!(x.len() as u64 <= 1 << 32, "dropout_fwd: over 2^32 elements");
    let threshold = dropout_threshold(p);
    let scale = dropout_scale(p);
    let key = dropout_key(seed);
    let mut y = Vec::with_capacity(x.len());
    for (i, &v) in x.iter().enumerate() {
        let h = fmix32(fmix32(i as u32 ^ key).wrapping_add(GOLDEN));
        y.push(if h >= threshold { v * scale } else { 0.0 });
    }
    y
}

/// Backward of [`dropout_fwd`] (dropout is its own adjoint): `dx[i] = mask(seed, i) * scale *
/// dy[i]` with the forward's mask. The kernel adds this into `dx`; this returns the term alone.
///
/// Panics unless `0 <= p < 1`, or if `dy` has more than 2^32 elements.
pub fn dropout_bwd(dy: &[f32], p: f32, seed: u64) -> Vec<f32> {
    dropout_fwd(dy, p, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmix32_known_values() {
        assert_eq!(fmix32(0), 0);
        assert_eq!(fmix32(1), 0x514e_28b7); // murmur3's finalizer
                                            // Pinned hashes (computed independently): the kernel and this reference must not drift
                                            // together.
        assert_eq!(dropout_hash(0, 0), 0x118a_cab5);
        assert_eq!(dropout_hash(0, 1), 0xa3fc_4c8c);
        assert_eq!(dropout_hash(42, 7), 0x2019_71c9);
        assert_eq!(dropout_hash(u64::MAX, u32::MAX), 0xf553_b77f);
        // fmix32 is a bijection: distinct inputs over a small range give distinct outputs.
        let mut v: Vec<u32> = (0..1000).map(fmix32).collect();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 1000);
    }

    #[test]
    fn hash_matches_its_pieces() {
        for seed in [0u64, 1, 0xDEAD_BEEF_0000_0001, u64::MAX] {
            for i in [0u32, 1, 255, 4096, u32::MAX] {
                let key = dropout_key(seed);
                assert_eq!(
                    dropout_hash(seed, i),
                    fmix32(fmix32(i ^ key).wrapping_add(GOLDEN))
                );
                let m = dropout_mask(seed, i, 0.3);
                let y = dropout_fwd(&vec![1.0; i.min(4096) as usize + 1], 0.3, seed);
                if i <= 4096 {
                    assert_eq!(y[i as usize] != 0.0, m);
                }
            }
        }
    }

    #[test]
    fn threshold_and_scale() {
        assert_eq!(dropout_threshold(0.0), 0);
        assert_eq!(dropout_threshold(0.5), 1 << 31);
        assert_eq!(dropout_threshold(0.25), 1 << 30);
        assert_eq!(dropout_scale(0.0), 1.0);
        assert_eq!(dropout_scale(0.5), 2.0);
        assert!(dropout_threshold(1.0 - f32::EPSILON / 2.0) > u32::MAX - 512);
    }

    #[test]
    fn p_zero_is_identity() {
        let x = [1.5f32, -0.0, 3.0e-38, -7.25];
        let y = dropout_fwd(&x, 0.0, 42);
        assert_eq!(
            x.map(f32::to_bits).to_vec(),
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    #[should_panic(expected = "not in [0, 1)")]
    fn p_one_panics() {
        dropout_threshold(1.0);
    }
}
