//! SwiGLU activation of the Llama MLP (`LlamaMLP`: `down(silu(gate(x)) * up(x))`): the elementwise
//! part `h = silu(gate) * up` and its backward. Computed in f64 and rounded once to f32.

/// `sigmoid(x)` in f64 without overflow: `1 / (1 + e^-x)` for `x >= 0`, `e^x / (1 + e^x)` below.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `silu(x) = x * sigmoid(x)` (torch `F.silu`), stable for large `|x|`.
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x * sigmoid(x)) as f32
}

/// `h[i] = silu(gate[i]) * up[i]` over equal-length `gate` and `up` (`[M, I]` flattened).
///
/// Panics if the lengths differ.
pub fn swiglu_fwd(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "swiglu_fwd: gate and up lengths");
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let g = g as f64;
            (g * sigmoid(g) * u as f64) as f32
        })
        .collect()
}

/// Backward of [`swiglu_fwd`] for the upstream gradient `dh`: returns `(dgate, dup)` with
/// `dgate = dh * up * silu'(gate)`, `silu'(x) = s * (1 + x * (1 - s))`, `s = sigmoid(x)`, and
/// `dup = dh * silu(gate)`.
///
/// Panics if the lengths differ.
pub fn swiglu_bwd(dh: &[f32], gate: &[f32], up: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(gate.len(), up.len(), "swiglu_bwd: gate and up lengths");
    assert_eq!(dh.len(), gate.len(), "swiglu_bwd: dh and gate lengths");
    let mut dgate = Vec::with_capacity(gate.len());
    let mut dup = Vec::with_capacity(gate.len());
    for ((&d, &g), &u) in dh.iter().zip(gate).zip(up) {
        let (d, g, u) = (d as f64, g as f64, u as f64);
        let s = sigmoid(g);
        dgate.push((d * u * s * (1.0 + g * (1.0 - s))) as f32);
        dup.push((d * g * s) as f32);
    }
    (dgate, dup)
}
