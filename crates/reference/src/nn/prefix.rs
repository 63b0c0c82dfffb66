//! Prefix tuning's key/value prefixes (PEFT `PREFIX_TUNING`): each layer's attention sees `P`
//! trainable key and value rows in front of every sequence's own keys and values.
//!
//! The trainable tensor is PEFT's `prompt_embeddings` `[P, L*2*KVD]` (`KVD = KVH*D`): row `j`,
//! columns `(l*2 + s)*KVD .. (l*2 + s + 1)*KVD` hold virtual token `j`'s key (`s = 0`) or value
//! (`s = 1`) of layer `l`, head `h` at `h*D..h*D+D` (PEFT views it as
//! `[P, L*2, KVH, D]` and permutes to per-layer `[B, KVH, P, D]` caches). The keys are used as
//! stored (a KV cache holds keys after RoPE), and the real tokens sit at positions `P..P+T`.

fn check(kernel: &str, what: &str, x: &[f32], n: usize) {
    assert_eq!(
        x.len(),
        n,
        "{kernel}: {what} has {} values, expected {n}",
        x.len()
    );
}

/// Element offset of layer `layer`'s keys (`s = 0`) or values (`s = 1`) in a prefix row.
fn column(layer: usize, s: usize, kvd: usize) -> usize {
    (layer * 2 + s) * kvd
}

/// Forward: `(kf, vf)`, each `[B*(P+T), KVD]`: per sequence, layer `layer`'s `P` prefix rows of
/// `prefix` (`[P, n_layers*2*KVD]`), then the sequence's `T` rows of `k` / `v` (`[B*T, KVD]`).
#[allow(clippy::too_many_arguments)]
pub fn prefix_fwd(
    prefix: &[f32],
    k: &[f32],
    v: &[f32],
    layer: usize,
    n_layers: usize,
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
) -> (Vec<f32>, Vec<f32>) {
    const K: &str = "prefix_fwd";
    assert!(layer < n_layers, "{K}: layer {layer} of {n_layers}");
    let stride = n_layers * 2 * kvd;
    check(K, "prefix", prefix, p * stride);
    check(K, "k", k, b * t * kvd);
    check(K, "v", v, b * t * kvd);
    let build = |x: &[f32], s: usize| {
        let mut out = Vec::with_capacity(b * (p + t) * kvd);
        for bi in 0..b {
            for j in 0..p {
                let at = j * stride + column(layer, s, kvd);
                out.extend_from_slice(&prefix[at..at + kvd]);
            }
            out.extend_from_slice(&x[bi * t * kvd..(bi + 1) * t * kvd]);
        }
        out
    };
    (build(k, 0), build(v, 1))
}

/// Backward of [`prefix_fwd`] for the gradients `dkf`, `dvf` (`[B*(P+T), KVD]`): returns
/// `(dk, dv)` (`[B*T, KVD]`, the real tokens' rows) and **adds** the prefix rows, summed over the
/// batch, into layer `layer`'s columns of `grad` (`[P, n_layers*2*KVD]`).
#[allow(clippy::too_many_arguments)]
pub fn prefix_bwd(
    dkf: &[f32],
    dvf: &[f32],
    grad: &mut [f32],
    layer: usize,
    n_layers: usize,
    b: usize,
    t: usize,
    p: usize,
    kvd: usize,
) -> (Vec<f32>, Vec<f32>) {
    const K: &str = "prefix_bwd";
    assert!(layer < n_layers, "{K}: layer {layer} of {n_layers}");
    let stride = n_layers * 2 * kvd;
    let tk = p + t;
    check(K, "dkf", dkf, b * tk * kvd);
    check(K, "dvf", dvf, b * tk * kvd);
    check(K, "grad", grad, p * stride);
    let mut split = |dx: &[f32], s: usize| {
        let mut out = Vec::with_capacity(b * t * kvd);
        for bi in 0..b {
            let rows = &dx[bi * tk * kvd..(bi + 1) * tk * kvd];
            out.extend_from_slice(&rows[p * kvd..]);
        }
        // The batch sum in sequence order (as the kernel adds it).
        for j in 0..p {
            let at = j * stride + column(layer, s, kvd);
            for c in 0..kvd {
                let mut sum = 0f32;
                for bi in 0..b {
                    sum += dx[(bi * tk + j) * kvd + c];
                }
                grad[at + c] += sum;
            }
        }
        out
    };
    let dk = split(dkf, 0);
    let dv = split(dvf, 1);
    (dk, dv)
}

/// Shapes of PEFT's prefix projection (`prefix_projection=True`): `P` virtual tokens of width
/// `t` (`token_dim`, the KV width) → `Linear(t, e)` → `tanh` → `Linear(e, n)` with
/// `n = L*2*KVD`, the prefix row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjDims {
    pub p: usize,
    pub t: usize,
    pub e: usize,
    pub n: usize,
}

impl ProjDims {
    /// Offsets of `(w1, b1, w2, b2)` in the flat parameters, which hold, in PEFT's parameter
    /// order, `embedding.weight [P, t]`, `transform.0.weight [e, t]`, `transform.0.bias [e]`,
    /// `transform.2.weight [n, e]`, `transform.2.bias [n]`.
    pub fn offsets(&self) -> (usize, usize, usize, usize) {
        let w1 = self.p * self.t;
        let b1 = w1 + self.e * self.t;
        let w2 = b1 + self.e;
        let b2 = w2 + self.n * self.e;
        (w1, b1, w2, b2)
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.offsets().3 + self.n
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Projection forward: `(h, kv)` with `h = tanh(emb · w1ᵀ + b1)` `[P, e]` and
/// `kv = h · w2ᵀ + b2` `[P, n]` from the flat `params` ([`ProjDims::offsets`]). Sums run in index
/// order from the bias, as the kernel does.
pub fn prefix_proj_fwd(params: &[f32], d: ProjDims) -> (Vec<f32>, Vec<f32>) {
    check("prefix_proj_fwd", "params", params, d.len());
    let (w1, b1, w2, b2) = d.offsets();
    let mut h = vec![0f32; d.p * d.e];
    for r in 0..d.p {
        for j in 0..d.e {
            let mut s = params[b1 + j];
            for c in 0..d.t {
                s += params[r * d.t + c] * params[w1 + j * d.t + c];
            }
            h[r * d.e + j] = s.tanh();
        }
    }
    let mut kv = vec![0f32; d.p * d.n];
    for r in 0..d.p {
        for o in 0..d.n {
            let mut s = params[b2 + o];
            for j in 0..d.e {
                s += h[r * d.e + j] * params[w2 + o * d.e + j];
            }
            kv[r * d.n + o] = s;
        }
    }
    (h, kv)
}

/// Projection backward for the prefix gradient `dkv` `[P, n]`: the gradient of every parameter,
/// in the layout of `params` (the forward's `h` is passed back in).
pub fn prefix_proj_bwd(params: &[f32], h: &[f32], dkv: &[f32], d: ProjDims) -> Vec<f32> {
    const K: &str = "prefix_proj_bwd";
    check(K, "params", params, d.len());
    check(K, "h", h, d.p * d.e);
    check(K, "dkv", dkv, d.p * d.n);
    let (w1, b1, w2, b2) = d.offsets();
    let mut g = vec![0f32; d.len()];
    // Second linear: dW2 = dkvᵀ · h, db2 = Σ_rows dkv.
    for o in 0..d.n {
        for j in 0..d.e {
            let mut s = 0f32;
            for r in 0..d.p {
                s += dkv[r * d.n + o] * h[r * d.e + j];
            }
            g[w2 + o * d.e + j] = s;
        }
        let mut s = 0f32;
        for r in 0..d.p {
            s += dkv[r * d.n + o];
        }
        g[b2 + o] = s;
    }
    // Through tanh: dpre = (dkv · w2) ⊙ (1 - h²).
    let mut dpre = vec![0f32; d.p * d.e];
    for r in 0..d.p {
        for j in 0..d.e {
            let mut s = 0f32;
            for o in 0..d.n {
                s += dkv[r * d.n + o] * params[w2 + o * d.e + j];
            }
            let hv = h[r * d.e + j];
            dpre[r * d.e + j] = s * (1.0 - hv * hv);
        }
    }
    // First linear: dW1 = dpreᵀ · emb, db1 = Σ_rows dpre, demb = dpre · w1.
    for j in 0..d.e {
        for c in 0..d.t {
            let mut s = 0f32;
            for r in 0..d.p {
                s += dpre[r * d.e + j] * params[r * d.t + c];
            }
            g[w1 + j * d.t + c] = s;
        }
        let mut s = 0f32;
        for r in 0..d.p {
            s += dpre[r * d.e + j];
        }
        g[b1 + j] = s;
    }
    for r in 0..d.p {
        for c in 0..d.t {
            let mut s = 0f32;
            for j in 0..d.e {
                s += dpre[r * d.e + j] * params[w1 + j * d.t + c];
            }
            g[r * d.t + c] = s;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fwd_places_each_layers_prefix_in_front() {
        // P = 2, L = 2, KVD = 1: prefix row j = [k(l0), v(l0), k(l1), v(l1)].
        let prefix = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let k = [10.0, 11.0, 20.0, 21.0]; // B = 2, T = 2
        let v = [-10.0, -11.0, -20.0, -21.0];
        let (kf, vf) = prefix_fwd(&prefix, &k, &v, 1, 2, 2, 2, 2, 1);
        assert_eq!(kf, [3.0, 7.0, 10.0, 11.0, 3.0, 7.0, 20.0, 21.0]);
        assert_eq!(vf, [4.0, 8.0, -10.0, -11.0, 4.0, 8.0, -20.0, -21.0]);
    }

    #[test]
    fn bwd_is_the_transpose_of_fwd() {
        // <fwd(x), y> == <x, bwd(y)> for the linear map (prefix, k, v) -> (kf, vf).
        let (p, l, b, t, kvd) = (3, 2, 2, 4, 5);
        let val = |i: usize, s: f32| ((i as f32 * 0.37 + s).sin() * 2.0).round() / 4.0;
        let prefix: Vec<f32> = (0..p * l * 2 * kvd).map(|i| val(i, 0.1)).collect();
        let k: Vec<f32> = (0..b * t * kvd).map(|i| val(i, 0.2)).collect();
        let v: Vec<f32> = (0..b * t * kvd).map(|i| val(i, 0.3)).collect();
        let dkf: Vec<f32> = (0..b * (p + t) * kvd).map(|i| val(i, 0.4)).collect();
        let dvf: Vec<f32> = (0..b * (p + t) * kvd).map(|i| val(i, 0.5)).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        for layer in 0..l {
            let (kf, vf) = prefix_fwd(&prefix, &k, &v, layer, l, b, t, p, kvd);
            let mut grad = vec![0.0; prefix.len()];
            let (dk, dv) = prefix_bwd(&dkf, &dvf, &mut grad, layer, l, b, t, p, kvd);
            let lhs = dot(&kf, &dkf) + dot(&vf, &dvf);
            let rhs = dot(&prefix, &grad) + dot(&k, &dk) + dot(&v, &dv);
            assert_eq!(lhs, rhs, "layer {layer}");
        }
    }

    #[test]
    fn proj_bwd_matches_finite_differences() {
        let d = ProjDims {
            p: 3,
            t: 4,
            e: 5,
            n: 6,
        };
        let params: Vec<f32> = (0..d.len())
            .map(|i| ((i as f32) * 0.71).sin() * 0.5)
            .collect();
        let dkv: Vec<f32> = (0..d.p * d.n).map(|i| ((i as f32) * 1.3).cos()).collect();
        let (h, _) = prefix_proj_fwd(&params, d);
        let g = prefix_proj_bwd(&params, &h, &dkv, d);
        // L = <kv, dkv>; central differences in f64 on a few parameters of every tensor.
        let loss = |x: &[f32]| -> f64 {
            let (_, kv) = prefix_proj_fwd(x, d);
            kv.iter()
                .zip(&dkv)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let (w1, b1, w2, b2) = d.offsets();
        for &i in &[0, 7, w1, w1 + 9, b1 + 2, w2 + 3, w2 + 20, b2 + 5] {
            let eps = 1e-2f32;
            let mut a = params.clone();
            a[i] += eps;
            let mut b = params.clone();
            b[i] -= eps;
            let fd = (loss(&a) - loss(&b)) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-3 * (1.0 + fd.abs()),
                "param {i}: fd {fd} vs {}",
                g[i]
            );
        }
    }
}
