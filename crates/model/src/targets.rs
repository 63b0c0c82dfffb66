//! The seven linear projections of a decoder layer, in PEFT's module names: the one production
//! list (the index order of the model layer's `linears`, of LoRA's per-layer pairs and of
//! their flat layout). The CPU reference keeps its own (`tinytune_reference::llama::TARGETS`) for
//! the oracle; a test checks the two agree.

/// The seven linear layers of a decoder layer, in PEFT's names and in layer order.
pub const LINEARS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The parent module of linear `t`: `self_attn` for q/k/v/o, `mlp` for gate/up/down.
pub fn linear_group(t: usize) -> &'static str {
    if t < 4 {
        "self_attn"
    } else {
        "mlp"
    }
}

/// The module path of linear `t` in layer `i`, e.g. `model.layers.3.self_attn.q_proj`.
pub fn linear_path(i: usize, t: usize) -> String {
    format!("model.layers.{i}.{}.{}", linear_group(t), LINEARS[t])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reference_oracle_lists_the_same_projections() {
        assert_eq!(super::LINEARS, tinytune_reference::llama::TARGETS);
        assert_eq!(super::linear_path(3, 6), "model.layers.3.mlp.down_proj");
        assert_eq!(super::linear_path(0, 0), "model.layers.0.self_attn.q_proj");
    }
}
