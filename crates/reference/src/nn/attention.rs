//! Causal grouped-query attention (GQA), forward and backward, with plain loops and the full
//! softmax (a T×T score row per query, no online tricks): the reference of
//! `shaders/nn/attention_fwd.wgsl` and `shaders/nn/attention_bwd.wgsl`.
//!
//! Layouts (f32, row-major) are the projection outputs directly:
//! `q[B*Tq, H*D]`, `k[B*Tk, KVH*D]`, `v[B*Tk, KVH*D]`, `o[B*Tq, H*D]`; head `h`'s vector is
//! columns `h*D..h*D+D`, and batch `b`'s rows start at `b*Tq` (queries) and `b*Tk` (keys).
//! `lse[B, H, Tq]` is the log-sum-exp of each (scaled, masked) score row.
//!
//! - GQA: query head `h` reads KV head `h / (H / KVH)` (`H` divisible by `KVH`).
//! - Causal mask with `Tk >= Tq`: query row `i` of a sequence sits at absolute position
//!   `Tk - Tq + i` and attends keys `j <= Tk - Tq + i` (training: `Tk = Tq`; decoding with a KV
//!   cache: `Tq = 1` or a chunk, `Tk` = cache length including the new rows).
//! - Scores `s = q·kᵀ · scale` (`scale` is usually `1/sqrt(D)`).
//!
//! Sums run in f64 (results rounded to f32 once), so the reference is accurate well below the
//! GPU kernels' f32 rounding and a finite-difference check of the backward needs no f64 copy.

fn check(kernel: &str, name: &str, v: &[f32], rows: usize, cols: usize) {
    assert!(
        v.len() >= rows * cols,
        "{kernel}: {name} has {} values, shape ({rows}, {cols})",
        v.len()
    );
}

fn check_dims(kernel: &str, tq: usize, tk: usize, h: usize, kvh: usize) {
    assert!(tk >= tq, "{kernel}: Tk = {tk} < Tq = {tq}");
    assert!(
        kvh > 0 && h.is_multiple_of(kvh),
        "{kernel}: H = {h} is not a multiple of KVH = {kvh}"
    );
}

/// The softmax probabilities (f64) of query row `i`, head `hh`, batch `bi` over keys
/// `0..=Tk-Tq+i` (the visible ones), and their log-sum-exp.
#[allow(clippy::too_many_arguments)]
fn probs(
    q: &[f32],
    k: &[f32],
    bi: usize,
    i: usize,
    hh: usize,
    tq: usize,
    tk: usize,
    h: usize,
    kvh: usize,
    d: usize,
    scale: f32,
) -> (Vec<f64>, f64) {
    let kh = hh / (h / kvh);
    let qr = &q[(bi * tq + i) * h * d + hh * d..][..d];
    let nvis = tk - tq + i + 1;
    let mut s = Vec::with_capacity(nvis);
    for j in 0..nvis {
        let kr = &k[(bi * tk + j) * kvh * d + kh * d..][..d];
        let dot: f64 = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum();
        s.push(dot * scale as f64);
    }
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = s.iter().map(|&x| (x - m).exp()).sum();
    let lse = m + sum.ln();
    (s.iter().map(|&x| (x - lse).exp()).collect(), lse)
}

/// Forward: returns `(o, lse)` with `o[B*Tq, H*D] = softmax(q·kᵀ·scale + mask)·v` per head and
/// `lse[B, H, Tq]` the log-sum-exp of each masked score row (saved for the backward).
///
/// Panics if a slice is shorter than its shape, `Tk < Tq`, or `H % KVH != 0`.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    kvh: usize,
    d: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    const K: &str = "attention_fwd";
    check_dims(K, tq, tk, h, kvh);
    check(K, "q", q, b * tq, h * d);
    check(K, "k", k, b * tk, kvh * d);
    check(K, "v", v, b * tk, kvh * d);
    let mut o = vec![0f32; b * tq * h * d];
    let mut lse = vec![0f32; b * h * tq];
    for bi in 0..b {
        for hh in 0..h {
            let kh = hh / (h / kvh);
            for i in 0..tq {
                let (p, l) = probs(q, k, bi, i, hh, tq, tk, h, kvh, d, scale);
                lse[(bi * h + hh) * tq + i] = l as f32;
                let orow = &mut o[(bi * tq + i) * h * d + hh * d..][..d];
                for (c, out) in orow.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for (j, &pj) in p.iter().enumerate() {
                        acc += pj * v[(bi * tk + j) * kvh * d + kh * d + c] as f64;
                    }
                    *out = acc as f32;
                }
            }
        }
    }
    (o, lse)
}

/// Backward of [`attention_fwd`] for the upstream gradient `dout[B*Tq, H*D]` (= dL/do): returns
/// `(dq, dk, dv)` shaped like `q`, `k`, `v`. The gradients of the query heads sharing a KV head are
/// summed into that head's `dk`/`dv`.
///
/// Recomputes the full softmax `P` of every row and uses its Jacobian directly:
/// `dv = Pᵀ·dout`, `dP = dout·vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dq = dS·k·scale`,
/// `dk = dSᵀ·q·scale` (the GPU kernel's `rowsum(dout ⊙ o)` is the same quantity, and it
/// uses the saved `lse`; this reference needs neither `o` nor `lse`).
///
/// Panics if a slice is shorter than its shape, `Tk < Tq`, or `H % KVH != 0`.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    kvh: usize,
    d: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    const K: &str = "attention_bwd";
    check_dims(K, tq, tk, h, kvh);
    check(K, "dout", dout, b * tq, h * d);
    check(K, "q", q, b * tq, h * d);
    check(K, "k", k, b * tk, kvh * d);
    check(K, "v", v, b * tk, kvh * d);
    let mut dq = vec![0f64; b * tq * h * d];
    let mut dk = vec![0f64; b * tk * kvh * d];
    let mut dv = vec![0f64; b * tk * kvh * d];
    let sc = scale as f64;
    for bi in 0..b {
        for hh in 0..h {
            let kh = hh / (h / kvh);
            for i in 0..tq {
                let (p, _) = probs(q, k, bi, i, hh, tq, tk, h, kvh, d, scale);
                let qo = (bi * tq + i) * h * d + hh * d;
                let dor = &dout[qo..][..d];
                let qr = &q[qo..][..d];
                // dP[j] = dout_i · v_j and its P-weighted mean.
                let dp: Vec<f64> = (0..p.len())
                    .map(|j| {
                        let vr = &v[(bi * tk + j) * kvh * d + kh * d..][..d];
                        dor.iter().zip(vr).map(|(&a, &b)| a as f64 * b as f64).sum()
                    })
                    .collect();
                let mean: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (j, (&pj, &dpj)) in p.iter().zip(&dp).enumerate() {
                    let ds = pj * (dpj - mean);
                    let ko = (bi * tk + j) * kvh * d + kh * d;
                    for c in 0..d {
                        dv[ko + c] += pj * dor[c] as f64;
                        dq[qo + c] += ds * k[ko + c] as f64 * sc;
                        dk[ko + c] += ds * qr[c] as f64 * sc;
                    }
                }
            }
        }
    }
    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    (f(dq), f(dk), f(dv))
}
