//! Helpers for the tests that compare against the transformers/PEFT fixtures in `tests/fixtures/hf`.

use std::path::PathBuf;

use tinytune::model::llama::{config_inv_freq, linear_path};
use tinytune::model::ModelSource;
use tinytune::reference::llama::{Dims, Layer, Linear, Weights};
use tinytune::reference::nf4::Nf4Tensor;
use tinytune::train::{AdamWConfig, DataStats, Dataset, Example, ScheduleKind, Stop, TrainConfig};

/// `tests/fixtures/hf/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(rel)
}

/// Reads every tensor of a safetensors fixture as f32 (F32 and I32/I64 converted).
pub fn read_tensors(rel: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I32 => view
                    .data()
                    .chunks(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                _ => return None,
            };
            Some((name, (view.shape().to_vec(), data)))
        })
        .collect()
}

/// The reference model's view of a model source. With `nf4`, each decoder linear weight is replaced
/// by `dequant(quant(w))` (block 64, double quant), which is what the GPU's NF4 path multiplies by.
pub fn reference_model(src: &ModelSource, nf4: bool) -> (Dims, Weights) {
    let cfg = src.config();
    let load = |n: &str| src.load(n).unwrap_or_else(|e| panic!("{n}: {e}")).data;
    let d = Dims {
        hidden: cfg.hidden_size,
        intermediate: cfg.intermediate_size,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        vocab: cfg.vocab_size,
        eps: cfg.rms_norm_eps as f32,
        inv_freq: config_inv_freq(cfg),
    };
    let layers = (0..cfg.num_hidden_layers)
        .map(|i| Layer {
            input_layernorm: load(&format!("model.layers.{i}.input_layernorm.weight")),
            linears: std::array::from_fn(|t| {
                let p = linear_path(i, t);
                let w = load(&format!("{p}.weight"));
                let w = if nf4 {
                    Nf4Tensor::quantize(&w, 64, true).dequantize()
                } else {
                    w
                };
                let bias = src
                    .tensor_meta(&format!("{p}.bias"))
                    .map(|_| load(&format!("{p}.bias")));
                Linear { w, bias }
            }),
            post_attention_layernorm: load(&format!(
                "model.layers.{i}.post_attention_layernorm.weight"
            )),
        })
        .collect();
    let w = Weights {
        embed: load("model.embed_tokens.weight"),
        layers,
        norm: load("model.norm.weight"),
        lm_head: (!cfg.tie_word_embeddings).then(|| load("lm_head.weight")),
    };
    (d, w)
}

/// The batch of a fixture file (`input_ids_i32`, `labels_i32` `[B, T]`) as a dataset of `B`
/// examples of `T` tokens.
pub fn fixture_dataset(rel: &str) -> Dataset {
    let tr = read_tensors(rel);
    let (shape, ids) = &tr["input_ids_i32"];
    let (b, t) = (shape[0], shape[1]);
    let labels = &tr["labels_i32"].1;
    let examples = (0..b)
        .map(|r| Example {
            input_ids: ids[r * t..(r + 1) * t].iter().map(|&v| v as u32).collect(),
            labels: labels[r * t..(r + 1) * t]
                .iter()
                .map(|&v| v as i32)
                .collect(),
            len: t,
        })
        .collect();
    Dataset {
        seq_len: t,
        examples,
        stats: DataStats::default(),
    }
}

/// The PEFT fixtures' recipe: constant lr 1e-2, AdamW (0.9, 0.999, 1e-8, wd 0.01), clip 1.0,
/// the whole batch of `batch_size` rows every step, `steps` steps.
pub fn peft_recipe(steps: u64, batch_size: usize) -> TrainConfig {
    TrainConfig {
        batch_size,
        stop: Stop::Steps(steps),
        lr: 1e-2,
        schedule: ScheduleKind::Constant,
        max_grad_norm: 1.0,
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// The reference's form of the model's host LoRA (same layout, the pairs' A and B only).
pub fn reference_lora(l: &tinytune::model::Lora) -> tinytune::reference::llama::Lora {
    use tinytune::reference::llama::{Lora, LoraPair};
    Lora {
        r: l.r,
        scale: l.scale,
        layers: l
            .layers
            .iter()
            .map(|layer| {
                std::array::from_fn(|t| {
                    layer[t].as_ref().map(|p| LoraPair {
                        a: p.a.clone(),
                        b: p.b.clone(),
                    })
                })
            })
            .collect(),
    }
}

/// The model's form of the reference's host LoRA.
pub fn model_lora(l: &tinytune::reference::llama::Lora) -> tinytune::model::Lora {
    use tinytune::model::{Lora, LoraPair};
    Lora {
        r: l.r,
        scale: l.scale,
        layers: l
            .layers
            .iter()
            .map(|layer| {
                std::array::from_fn(|t| {
                    layer[t]
                        .as_ref()
                        .map(|p| LoraPair::new(l.r, p.a.clone(), p.b.clone()))
                })
            })
            .collect(),
    }
}

/// The fixture model `rel` (a folder with one `model.safetensors`) with its embedding and LM head
/// rounded to `dtype` (round to nearest even) and stored as such, everything else as it is: a
/// checkpoint with a 16-bit vocabulary, built in memory.
#[allow(dead_code)]
pub fn with_vocab_dtype(rel: &str, dtype: tinytune::model::FloatDtype) -> ModelSource {
    use tinytune::model::safetensors::serialize;
    use tinytune::model::{HfParts, MemBytes, SafetensorsFile, StDtype};
    let dir = fixture(rel);
    let st = SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
    let mut owned = Vec::new();
    for t in st.tensors() {
        let vocab = t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight";
        let (dt, bytes) = if vocab {
            let x = st.load(&t.name).unwrap().data;
            (StDtype::parse(dtype.st_name()), dtype.encode(&x))
        } else {
            (t.dtype.clone(), st.raw(&t.name).unwrap().into_owned())
        };
        owned.push((t.name.clone(), dt, t.shape.clone(), bytes));
    }
    let refs: Vec<(&str, StDtype, Vec<usize>, &[u8])> = owned
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), d.clone(), s.clone(), b.as_slice()))
        .collect();
    let file = serialize(&refs, None).unwrap();
    ModelSource::from_hf_parts(HfParts {
        config_json: std::fs::read_to_string(dir.join("config.json")).unwrap(),
        shards: vec![Box::new(MemBytes::new(file, "model.safetensors"))],
        tokenizer_json: None,
        tokenizer_config_json: None,
        chat_template: None,
    })
    .unwrap()
}
