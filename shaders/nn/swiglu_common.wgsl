// The logistic function of nn/swiglu_fwd and nn/swiglu_bwd (joined by the shader registry).

fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    return select(e * r, r, x >= 0.0);
}
