//! Softmax cross-entropy over LM-head logits with Hugging Face causal-LM semantics
//! (`F.cross_entropy(logits, targets, ignore_index=-100)`, mean over the non-ignored rows).
//!
//! A row is *ignored* when its target is [`IGNORE_INDEX`] or, unlike torch (which raises), any
//! other value outside `[0, V)`: it contributes no loss, is not counted, and gets a zero gradient.
//! Row sums use f64; results are rounded once to f32.

/// The target value that marks a row as ignored (torch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Forward results of [`cross_entropy_fwd`].
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyFwd {
    /// Per row `logsumexp(row) - row[target]`; 0 for ignored rows. `[M]`.
    pub loss_rows: Vec<f32>,
    /// Per row `logsumexp(row)` (saved for the backward); 0 for ignored rows. `[M]`.
    pub lse: Vec<f32>,
    /// Sum of `loss_rows` over the counted rows.
    pub sum: f32,
    /// Number of non-ignored rows.
    pub count: u32,
    /// `sum / count`, the HF loss; 0 when every row is ignored (torch gives NaN there).
    pub mean: f32,
}

/// Whether `t` is a valid target for a vocabulary of `v` (otherwise the row is ignored).
pub fn target_valid(t: i32, v: usize) -> bool {
    t >= 0 && (t as usize) < v
}

fn check(what: &str, logits: &[f32], targets: &[i32], m: usize, v: usize) {
    assert!(
        logits.len() >= m * v,
        "{what}: logits has {} values, shape ({m}, {v})",
        logits.len()
    );
    assert!(
        targets.len() >= m,
        "{what}: targets has {} values, {m} rows",
        targets.len()
    );
}

/// Cross-entropy forward over `logits[M, V]` and `targets[M]` (see the module doc for ignored rows).
///
/// Panics if a slice is shorter than its shape.
pub fn cross_entropy_fwd(logits: &[f32], targets: &[i32], m: usize, v: usize) -> CrossEntropyFwd {
    check("cross_entropy_fwd", logits, targets, m, v);
    let mut loss_rows = vec![0f32; m];
    let mut lse = vec![0f32; m];
    let mut sum = 0f64;
    let mut count = 0u32;
    for r in 0..m {
        let t = targets[r];
        if !target_valid(t, v) {
            continue;
        }
        let row = &logits[r * v..(r + 1) * v];
        let mx = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let s: f64 = row.iter().map(|&x| (x as f64 - mx).exp()).sum();
        let l = mx + s.ln();
        let loss = l - row[t as usize] as f64;
        lse[r] = l as f32;
        loss_rows[r] = loss as f32;
        sum += loss_rows[r] as f64;
        count += 1;
    }
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    CrossEntropyFwd {
        loss_rows,
        lse,
        sum: sum as f32,
        count,
        mean: mean as f32,
    }
}

/// Cross-entropy backward: `dlogits[r, j] = (exp(logits[r, j] - lse[r]) - [j == target[r]]) * scale`
/// for counted rows and 0 for ignored rows, with `lse` from [`cross_entropy_fwd`] and `scale`
/// the upstream factor (`1 / count` for the mean loss).
///
/// Panics if a slice is shorter than its shape.
pub fn cross_entropy_bwd(
    logits: &[f32],
    targets: &[i32],
    lse: &[f32],
    m: usize,
    v: usize,
    scale: f32,
) -> Vec<f32> {
    check("cross_entropy_bwd", logits, targets, m, v);
    assert!(
        lse.len() >= m,
        "cross_entropy_bwd: lse has {} values, {m} rows",
        lse.len()
    );
    let mut d = vec![0f32; m * v];
    for r in 0..m {
        let t = targets[r];
        if !target_valid(t, v) {
            continue;
        }
        let l = lse[r] as f64;
        for j in 0..v {
            let p = (logits[r * v + j] as f64 - l).exp();
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            d[r * v + j] = ((p - onehot) * scale as f64) as f32;
        }
    }
    d
}
