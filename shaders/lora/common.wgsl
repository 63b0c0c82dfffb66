// Invocation numbering and tile indices shared by the lora kernels (joined by the shader registry).
// `linear_id` uses the kernel's `const WG`.

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The four (clamped) indices of tile `t` along an axis of length `len` (len >= 1).
fn tile4(t: u32, len: u32) -> vec4<u32> {
    let last = len - 1u;
    let i0 = t * 4u;
    return vec4<u32>(min(i0, last), min(i0 + 1u, last), min(i0 + 2u, last), min(i0 + 3u, last));
}
