// Invocation numbering of nn/prefix_proj_fwd and nn/prefix_proj_bwd (joined by the shader registry):
// a 1-D grid split across x and y. Uses the kernel's `const WG`.

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}
