// Block scales of a stored NF4 weight, shared by nf4/dequantize and the nf4 matmuls (joined by the
// shader registry). Uses the kernel's `override DOUBLE_QUANT` and its `absmax` and `dq` bindings.

fn block_absmax(b: u32) -> f32 {
    if (DOUBLE_QUANT) {
        let q = (absmax[b / 4u] >> (8u * (b % 4u))) & 255u;
        return dq[q] * dq[257u + b / 256u] + dq[256];
    }
    return bitcast<f32>(absmax[b]);
}
