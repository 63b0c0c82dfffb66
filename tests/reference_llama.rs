//! The reference Llama decoder's backward pass against central finite differences of its loss.

mod common;

use common::Rng;
use tinytune::reference::llama::{self, Dims, Layer, Linear, Lora, LoraPair, Weights};

fn tiny(rng: &mut Rng, tied: bool, bias: bool) -> (Dims, Weights) {
    let d = Dims {
        hidden: 8,
        intermediate: 12,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 2,
        vocab: 11,
        eps: 1e-5,
        inv_freq: tinytune::model::rope::rope_inv_freq(2, 10000.0, None),
    };
    let lin = |rng: &mut Rng, t: usize| {
        let (k, n) = d.target_shape(t);
        Linear {
            w: rng.vec(n * k, 0.4),
            bias: (bias && t < 3).then(|| rng.vec(n, 0.1)),
        }
    };
    let layers = (0..d.layers)
        .map(|_| Layer {
            input_layernorm: (0..d.hidden).map(|_| 1.0 + 0.1 * rng.uniform()).collect(),
            linears: std::array::from_fn(|t| lin(rng, t)),
            post_attention_layernorm: (0..d.hidden).map(|_| 1.0 + 0.1 * rng.uniform()).collect(),
        })
        .collect();
    let w = Weights {
        embed: rng.vec(d.vocab * d.hidden, 1.0),
        layers,
        norm: (0..d.hidden).map(|_| 1.0 + 0.1 * rng.uniform()).collect(),
        lm_head: (!tied).then(|| rng.vec(d.vocab * d.hidden, 0.5)),
    };
    (d, w)
}

fn lora_for(d: &Dims, rng: &mut Rng, r: usize) -> Lora {
    Lora {
        r,
        scale: 2.0,
        layers: (0..d.layers)
            .map(|_| {
                std::array::from_fn(|t| {
                    let (k, n) = d.target_shape(t);
                    // Skip one target to cover layers with partial adapters.
                    (t != 2).then(|| LoraPair {
                        a: rng.vec(r * k, 0.3),
                        b: rng.vec(n * r, 0.3),
                    })
                })
            })
            .collect(),
    }
}

#[test]
fn reference_llama_grads_match_finite_differences() {
    // The last case trains with LoRA dropout (fixed masks: the loss is a smooth function of the
    // adapters, so finite differences still apply).
    for &(tied, bias, p) in &[(false, false, 0.0), (true, true, 0.0), (false, true, 0.3)] {
        let drop = (p > 0.0).then_some(llama::LoraDropout { p, seed: 77 });
        let mut rng = Rng::new(if tied { 11 } else { 5 });
        let (d, w) = tiny(&mut rng, tied, bias);
        let lora = lora_for(&d, &mut rng, 3);
        let (b, t) = (2, 5);
        let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % d.vocab) as u32).collect();
        let mut labels: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        labels[3] = -100;
        let targets = tinytune::train::shift_labels(&labels, b, t);
        let (loss, grads) = llama::loss_and_grads_with(&d, &w, &lora, &ids, &targets, b, t, drop);
        assert!(
            (loss - llama::loss_with(&d, &w, Some(&lora), &ids, &targets, b, t, drop)).abs() < 1e-6
        );
        if drop.is_some() {
            let plain = llama::loss(&d, &w, Some(&lora), &ids, &targets, b, t);
            assert!(
                (loss - plain).abs() > 1e-4,
                "dropout changes the loss: {loss} vs {plain}"
            );
        }
        let eps = 1e-2f32;
        let mut checked = 0;
        for li in 0..d.layers {
            for ti in 0..7 {
                let Some(g) = &grads.layers[li][ti] else {
                    continue;
                };
                for (which, len) in [(0, g.a.len()), (1, g.b.len())] {
                    for idx in [0, len / 2, len - 1] {
                        let f = |delta: f32| {
                            let mut l2 = lora.clone();
                            let p = l2.layers[li][ti].as_mut().unwrap();
                            let v = if which == 0 { &mut p.a } else { &mut p.b };
                            v[idx] += delta;
                            llama::loss_with(&d, &w, Some(&l2), &ids, &targets, b, t, drop) as f64
                        };
                        let fd = ((f(eps) - f(-eps)) / (2.0 * eps as f64)) as f32;
                        let an = if which == 0 { g.a[idx] } else { g.b[idx] };
                        assert!(
                            (fd - an).abs() <= 2e-3 + 3e-2 * fd.abs(),
                            "layer {li} {} {} [{idx}]: analytic {an} vs finite difference {fd}",
                            llama::TARGETS[ti],
                            if which == 0 { "lora_A" } else { "lora_B" }
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 70, "checked {checked}");
    }
}
