//! Reference of the probe kernels (`shaders/probe/*.wgsl`).

/// `probe/fma_peak`: output `i` of `n` after `iters` rounds of the kernel's 32 chains
/// `x = x * (1 - 2^-10) + 2^-10` started from `s = (i % 1024) / 1024` plus 0, 0.125, ..., 3.875.
pub fn fma_peak(n: usize, iters: u32) -> Vec<f32> {
    const MUL: f32 = 1.0 - 1.0 / 1024.0;
    const ADD: f32 = 1.0 / 1024.0;
    (0..n)
        .map(|i| {
            let s = (i % 1024) as f32 / 1024.0;
            let mut lanes = [[0f32; 4]; 8];
            for (c, chain) in lanes.iter_mut().enumerate() {
                for (l, x) in chain.iter_mut().enumerate() {
                    *x = s + 0.125 * l as f32 + 0.5 * c as f32;
                }
            }
            for _ in 0..iters {
                for x in lanes.iter_mut().flatten() {
                    *x = *x * MUL + ADD;
                }
            }
            let t: Vec<f32> = (0..4)
                .map(|l| {
                    let v = |c: usize| lanes[c][l];
                    ((v(0) + v(1)) + (v(2) + v(3))) + ((v(4) + v(5)) + (v(6) + v(7)))
                })
                .collect();
            (t[0] + t[1]) + (t[2] + t[3])
        })
        .collect()
}
