//! The production copies of the reference's constants and host helpers (owned by the crates that
//! use them, so that `tinytune-reference` stays a test oracle) equal the reference's bit for bit.

use tinytune::gpu::nf4 as gnf4;
use tinytune::gpu::ops::nn as gnn;
use tinytune::reference::nf4 as rnf4;
use tinytune::reference::nn as rnn;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn nf4_tables_match_the_reference() {
    assert_eq!(bits(&gnf4::NF4), bits(&rnf4::NF4));
    assert_eq!(bits(&gnf4::DYNAMIC_MAP), bits(&rnf4::DYNAMIC_MAP));
    assert_eq!(gnf4::NESTED_BLOCK, rnf4::NESTED_BLOCK);
    assert_eq!(gnf4::DEFAULT_BLOCK, rnf4::DEFAULT_BLOCK);
    assert_eq!(gnf4::PAD_CODE, rnf4::PAD_CODE);
    for block in 0..=8193 {
        assert_eq!(
            gnf4::valid_block_size(block),
            rnf4::valid_block_size(block),
            "block {block}"
        );
    }
}

#[test]
fn ignore_index_matches_the_reference() {
    assert_eq!(gnn::IGNORE_INDEX, rnn::IGNORE_INDEX);
    assert_eq!(tinytune::train::IGNORE_INDEX, rnn::IGNORE_INDEX);
}

#[test]
fn dropout_helpers_match_the_reference() {
    let mut ps = vec![
        0.0f32,
        0.05,
        0.1,
        0.25,
        0.5,
        0.9,
        0.999,
        1.0 - f32::EPSILON / 2.0,
    ];
    ps.extend((1..1000).map(|i| i as f32 / 1000.0));
    ps.extend((0..64).map(|i| f32::from_bits(0x3f7f_ff00 + i))); // just below 1
    for p in ps {
        if !(0.0..1.0).contains(&p) {
            continue;
        }
        assert_eq!(
            gnn::dropout_threshold(p),
            rnn::dropout_threshold(p),
            "p {p}"
        );
        assert_eq!(
            gnn::dropout_scale(p).to_bits(),
            rnn::dropout_scale(p).to_bits(),
            "p {p}"
        );
    }
}

#[test]
fn lora_dropout_seeds_match_the_reference() {
    use tinytune::model::llama::lora_dropout_seed;
    use tinytune::reference::llama::lora_dropout_seed as reference_seed;
    for seed in [0u64, 1, 9, 0x6C6F_7261_5F64_726F, u64::MAX] {
        for layer in 0..40 {
            for target in 0..7 {
                assert_eq!(
                    lora_dropout_seed(seed, layer, target),
                    reference_seed(seed, layer, target),
                    "seed {seed} layer {layer} target {target}"
                );
            }
        }
    }
}
