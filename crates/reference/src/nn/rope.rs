//! Rotary position embedding, Hugging Face "rotate_half" convention (Llama, SmolLM2, Qwen2; not
//! the interleaved GPT-J pairing).
//!
//! Layout: `x[M, H*D]` row-major (the `q_proj` / `k_proj` output: row `m` holds `H` heads of `D`
//! values), `pos[M]` the position of each row, `inv_freq[D/2]` (transformers' buffer, computed by
//! the model crate's `rope_inv_freq`). For head
//! vector `q[0..D)` and `i < D/2`, with `a = f32(pos) * inv_freq[i]` rounded to f32 (transformers:
//! `freqs = position_ids.float() * inv_freq`), `c = cos(a)`, `s = sin(a)` (f32, as torch's `cos` /
//! `sin` of the f32 angle):
//!
//! ```text
//! q'[i]       = q[i]       * c - q[i + D/2] * s
//! q'[i + D/2] = q[i + D/2] * c + q[i]       * s
//! ```
//!
//! each product rounded to f32 before the sum (`q * cos + rotate_half(q) * sin`). transformers'
//! `attention_scaling` is 1.0 for the "default" and "llama3" rope types, the only ones supported.
//! cos/sin here are Rust's (the platform libm, within an ulp); torch's vectorised SLEEF `cosf` /
//! `sinf` agree to about an ulp as well, so references and kernels are compared with tolerances.

fn check(kernel: &str, x: &[f32], pos: &[u32], inv_freq: &[f32], m: usize, h: usize, d: usize) {
    assert!(
        d > 0 && d.is_multiple_of(2),
        "{kernel}: head size {d} must be even and positive"
    );
    assert!(
        x.len() >= m * h * d,
        "{kernel}: x has {} values, shape ({m}, {h}*{d})",
        x.len()
    );
    assert!(
        pos.len() >= m,
        "{kernel}: pos has {} values, m = {m}",
        pos.len()
    );
    assert!(
        inv_freq.len() >= d / 2,
        "{kernel}: inv_freq has {} values, d/2 = {}",
        inv_freq.len(),
        d / 2
    );
}

/// Rotates every head of every row by `sign * angle` (see the module docs), returning a new array.
fn rotate(
    x: &[f32],
    pos: &[u32],
    inv_freq: &[f32],
    m: usize,
    h: usize,
    d: usize,
    inverse: bool,
) -> Vec<f32> {
    let half = d / 2;
    let mut y = x[..m * h * d].to_vec();
    for (r, &p) in pos[..m].iter().enumerate() {
        let p = p as f32;
        for i in 0..half {
            let a = p * inv_freq[i];
            let (c, s) = (a.cos(), a.sin());
            for hh in 0..h {
                let base = r * h * d + hh * d;
                let (x1, x2) = (x[base + i], x[base + i + half]);
                if inverse {
                    y[base + i] = x1 * c + x2 * s;
                    y[base + i + half] = x2 * c - x1 * s;
                } else {
                    y[base + i] = x1 * c - x2 * s;
                    y[base + i + half] = x2 * c + x1 * s;
                }
            }
        }
    }
    y
}

/// RoPE forward of `x[M, H*D]` at positions `pos[M]` with `inv_freq[D/2]`: returns the rotated
/// copy (the GPU kernel works in place).
///
/// Panics if `d` is odd or zero or a slice is shorter than its shape.
pub fn rope_fwd(
    x: &[f32],
    pos: &[u32],
    inv_freq: &[f32],
    m: usize,
    h: usize,
    d: usize,
) -> Vec<f32> {
    check("rope_fwd", x, pos, inv_freq, m, h, d);
    rotate(x, pos, inv_freq, m, h, d, false)
}

/// RoPE backward: the gradient with respect to the input of [`rope_fwd`] from the gradient `dy` of
/// its output, i.e. the transpose rotation (`angle -> -angle`):
/// `dx[i] = dy[i]*c + dy[i+D/2]*s`, `dx[i+D/2] = dy[i+D/2]*c - dy[i]*s` (torch autograd's order).
///
/// Panics if `d` is odd or zero or a slice is shorter than its shape.
pub fn rope_bwd(
    dy: &[f32],
    pos: &[u32],
    inv_freq: &[f32],
    m: usize,
    h: usize,
    d: usize,
) -> Vec<f32> {
    check("rope_bwd", dy, pos, inv_freq, m, h, d);
    rotate(dy, pos, inv_freq, m, h, d, true)
}
