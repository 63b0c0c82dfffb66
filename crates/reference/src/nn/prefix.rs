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
}
