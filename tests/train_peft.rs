//! PEFT adapter IO and checkpoints of `tinytune::train`, pinned to adapters written by `peft`
//! itself (`tests/fixtures/train/peft_lora*`, generator `gen_peft_fixture.py`). No GPU needed.
//!
//! Set `TINYTUNE_WRITE_ADAPTER_TO=<dir>` to also write the adapter built in
//! `written_adapter_has_peft_structure` there, for `check_peft_load.py` (loads it with
//! `PeftModel.from_pretrained`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tinytune::train::checkpoint::{
    Checkpoint, Moments, OptimizerState, TrainerState, CHECKPOINT_VERSION, OPTIMIZER_STATE,
    TRAINER_STATE,
};
use tinytune::train::peft::{
    kaiming_uniform_bound, read_f32_safetensors, LoraAdapter, LoraConfig, LoraKey, LoraModule,
    LoraWeights, TargetModules, TensorMap, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use tinytune::train::{BatchPlan, DataPosition, PeftAdapter, Rng, Stop, TrainConfig, TrainError};

const FIX: &str = "tests/fixtures/train";

fn fixture(dir: &str) -> LoraAdapter {
    LoraAdapter::load(&Path::new(FIX).join(dir)).unwrap()
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn summary() -> serde_json::Value {
    serde_json::from_slice(&read(Path::new(FIX).join("peft_lora_summary.json"))).unwrap()
}

/// A fresh temporary directory for one test.
fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinytune-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Names in `dir` (sorted).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// bf16 round-to-nearest-even of an f32 (what torch's `.to(torch.bfloat16)` does).
fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(r)
}

#[test]
fn reads_the_adapter_peft_wrote() {
    let a = fixture("peft_lora");
    let c = &a.config;
    assert_eq!(c.r, 4);
    assert_eq!(c.lora_alpha, 8.0);
    assert_eq!(c.lora_dropout, 0.05);
    assert!(!c.use_rslora);
    assert_eq!(c.scale(), 2.0);
    assert_eq!(c.task_type.as_deref(), Some("CAUSAL_LM"));
    assert_eq!(c.base_model_name_or_path, None);
    let TargetModules::Names(names) = &c.target_modules else {
        panic!("{:?}", c.target_modules)
    };
    let mut names = names.clone();
    names.sort();
    assert_eq!(
        names,
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );

    // 2 layers x 7 projections; hidden 16, 2 KV heads of 4 → k/v out 8, intermediate 24.
    assert_eq!(a.weights.pairs.len(), 14);
    for (k, p) in &a.weights.pairs {
        assert!(k.layer < 2);
        let (fin, fout) = match k.module {
            LoraModule::Q | LoraModule::O => (16, 16),
            LoraModule::K | LoraModule::V => (16, 8),
            LoraModule::Gate | LoraModule::Up => (16, 24),
            LoraModule::Down => (24, 16),
        };
        assert_eq!(
            (p.r, p.in_features, p.out_features),
            (4, fin, fout),
            "{k:?}"
        );
        assert_eq!(c.targets(k), Some(true));
    }
    // Values against the per-tensor summary torch printed (independent of the safetensors bytes).
    let s = summary();
    let tensors = s["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 28);
    for (name, info) in tensors {
        let (key, which) = LoraKey::parse_tensor_name(name).unwrap();
        let p = &a.weights.pairs[&key];
        let (data, shape) = if which == 'A' {
            (&p.a, vec![p.r, p.in_features])
        } else {
            (&p.b, vec![p.out_features, p.r])
        };
        let want_shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, want_shape, "{name}");
        // (serde_json's default float parsing may be an ulp off in f64; exact in f32.)
        assert_eq!(data[0], info["first"].as_f64().unwrap() as f32, "{name}");
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let want = info["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-12 * (1.0 + want.abs()),
            "{name}: {sum} vs {want}"
        );
    }
}

#[test]
fn reads_bf16_and_f16_adapters_and_all_linear_rslora() {
    let f32a = fixture("peft_lora");
    let bf = fixture("peft_lora_bf16");
    assert_eq!(bf.config, f32a.config);
    assert!(bf.weights.same_layout(&f32a.weights));
    for (k, p) in &bf.weights.pairs {
        let q = &f32a.weights.pairs[k];
        for (x, y) in p.a.iter().chain(&p.b).zip(q.a.iter().chain(&q.b)) {
            assert_eq!(*x, bf16_round(*y), "{k:?}");
        }
    }
    let rs = fixture("peft_lora_rslora");
    assert!(rs.config.use_rslora);
    assert_eq!(rs.config.r, 2);
    assert_eq!(rs.config.scale(), 4.0 / 2f64.sqrt());
    assert_eq!(rs.weights.pairs.len(), 7); // "all-linear" on a 1-layer model, LM head excluded
    let (st, _) = read_f32_safetensors(
        &read(
            Path::new(FIX)
                .join("peft_lora_rslora")
                .join(ADAPTER_WEIGHTS),
        ),
        "x",
    )
    .unwrap();
    assert_eq!(st.len(), 14);
    for p in rs.weights.pairs.values() {
        assert!(p.a.iter().chain(&p.b).all(|x| x.is_finite()));
        assert!(p.b.iter().any(|&x| x != 0.0));
    }
}

#[test]
fn peft_init_of_lora_a_is_within_the_kaiming_bound() {
    // torch's bound, as computed by torch (summary), equals ours bit for bit.
    let s = summary();
    for (fan, want) in s["kaiming_uniform_bounds"].as_object().unwrap() {
        let fan: usize = fan.parse().unwrap();
        assert_eq!(
            kaiming_uniform_bound(fan),
            want.as_f64().unwrap(),
            "fan_in {fan}"
        );
        assert!((kaiming_uniform_bound(fan) - 1.0 / (fan as f64).sqrt()).abs() < 1e-15);
    }
    // The fixture's A matrices are PEFT's own init: inside the bound, and filling it.
    let a = fixture("peft_lora");
    for (k, p) in &a.weights.pairs {
        let b = kaiming_uniform_bound(p.in_features) as f32;
        assert!(p.a.iter().all(|x| x.abs() <= b), "{k:?}");
    }
    let all_a: Vec<f32> = a
        .weights
        .pairs
        .values()
        .filter(|p| p.in_features == 16)
        .flat_map(|p| p.a.clone())
        .collect();
    let max = all_a.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(max > 0.9 * 0.25, "{max}");

    // Ours: U(-b, b) for A, zeros for B, seeded.
    let shapes: Vec<(LoraKey, usize, usize)> = (0..2)
        .flat_map(|l| {
            LoraModule::ALL.map(|m| {
                (
                    LoraKey {
                        layer: l,
                        module: m,
                    },
                    if m == LoraModule::Down { 96 } else { 64 },
                    40,
                )
            })
        })
        .collect();
    let w = LoraWeights::init(shapes.clone(), 8, 11);
    assert_eq!(w, LoraWeights::init(shapes.clone(), 8, 11));
    assert_ne!(w, LoraWeights::init(shapes.clone(), 8, 12));
    assert_eq!(
        w.n_params(),
        2 * (6 * (8 * 64 + 40 * 8) + (8 * 96 + 40 * 8))
    );
    // Per-tensor streams: adapting fewer modules does not change the others' init.
    let only_q = LoraWeights::init(
        shapes
            .iter()
            .copied()
            .filter(|(k, _, _)| k.module == LoraModule::Q),
        8,
        11,
    );
    for (k, p) in &only_q.pairs {
        assert_eq!(p, &w.pairs[k]);
    }
    let mut xs = Vec::new();
    for p in w.pairs.values() {
        let b = kaiming_uniform_bound(p.in_features) as f32;
        assert!(p.b.iter().all(|&x| x == 0.0));
        assert!(p.a.iter().all(|x| x.abs() <= b));
        xs.extend(p.a.iter().map(|&x| x as f64 / b as f64));
    }
    // Uniform on [-1, 1): mean 0, variance 1/3.
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    assert!(mean.abs() < 0.02, "{mean}");
    assert!((var - 1.0 / 3.0).abs() < 0.01, "{var}");
}

#[test]
fn written_adapter_is_byte_identical_to_peft() {
    let dir = Path::new(FIX).join("peft_lora");
    let a = fixture("peft_lora");
    let files = a.to_files().unwrap();
    assert_eq!(files[0].0, ADAPTER_CONFIG);
    assert_eq!(files[1].0, ADAPTER_WEIGHTS);
    // The same config and tensors produce PEFT's exact bytes: JSON fields, order, formatting, and
    // the safetensors header (keys, dtypes, shapes, offsets, metadata) and data.
    assert_eq!(
        String::from_utf8(files[0].1.clone()).unwrap(),
        String::from_utf8(read(dir.join(ADAPTER_CONFIG))).unwrap()
    );
    assert!(
        files[1].1 == read(dir.join(ADAPTER_WEIGHTS)),
        "safetensors bytes differ from PEFT's"
    );
}

#[test]
fn written_adapter_has_peft_structure() {
    // A fresh adapter for a model of other dims, written by us.
    let shapes: Vec<(LoraKey, usize, usize)> = (0..3)
        .flat_map(|l| {
            [LoraModule::Q, LoraModule::V, LoraModule::Down].map(|m| {
                (
                    LoraKey {
                        layer: l,
                        module: m,
                    },
                    if m == LoraModule::Down { 24 } else { 16 },
                    if m == LoraModule::V { 8 } else { 16 },
                )
            })
        })
        .collect();
    let mut weights = LoraWeights::init(shapes, 4, 5);
    let mut rng = Rng::new(9);
    for p in weights.pairs.values_mut() {
        for x in &mut p.b {
            *x = rng.next_f32() - 0.5;
        }
    }
    let mut config = LoraConfig::new(4, 8.0, &[LoraModule::Q, LoraModule::V, LoraModule::Down]);
    config.base_model_name_or_path = Some("tiny-llama".into());
    config.lora_dropout = 0.1;
    let ours = LoraAdapter { config, weights };
    let dir = tmp_dir("adapter");
    ours.save(&dir).unwrap();
    assert_eq!(
        listing(&dir),
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS],
        "no temporary files left"
    );
    if let Ok(out) = std::env::var("TINYTUNE_WRITE_ADAPTER_TO") {
        ours.save(Path::new(&out)).unwrap();
    }

    // JSON: exactly PEFT's field set; values as PEFT types them.
    let theirs: serde_json::Value =
        serde_json::from_slice(&read(Path::new(FIX).join("peft_lora").join(ADAPTER_CONFIG)))
            .unwrap();
    let mine: serde_json::Value = serde_json::from_slice(&read(dir.join(ADAPTER_CONFIG))).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&mine), keys(&theirs));
    for (k, v) in theirs.as_object().unwrap() {
        let m = &mine[k];
        let same_type =
            std::mem::discriminant(m) == std::mem::discriminant(v) || v.is_null() || m.is_null();
        assert!(same_type, "{k}: ours {m}, PEFT {v}");
    }
    assert_eq!(
        mine["lora_alpha"],
        serde_json::json!(8),
        "integral alpha is written as an int like PEFT"
    );
    assert_eq!(mine["peft_type"], "LORA");
    assert_eq!(mine["task_type"], "CAUSAL_LM");
    assert_eq!(
        mine["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(mine["base_model_name_or_path"], "tiny-llama");

    // safetensors: PEFT key pattern, F32, [r, in] / [out, r], {"format": "pt"}.
    let bytes = read(dir.join(ADAPTER_WEIGHTS));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"], serde_json::json!({"format": "pt"}));
    let header_theirs = {
        let b = read(Path::new(FIX).join("peft_lora").join(ADAPTER_WEIGHTS));
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        serde_json::from_slice::<serde_json::Value>(&b[8..8 + n]).unwrap()
    };
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F32");
        let (key, which) = LoraKey::parse_tensor_name(name).unwrap_or_else(|| panic!("{name}"));
        let p = &ours.weights.pairs[&key];
        let shape = if which == 'A' {
            [p.r, p.in_features]
        } else {
            [p.out_features, p.r]
        };
        assert_eq!(info["shape"], serde_json::json!(shape), "{name}");
        // PEFT's file has the same key for the same module of layer 0/1.
        if key.layer < 2 && [LoraModule::Q, LoraModule::V, LoraModule::Down].contains(&key.module) {
            assert!(header_theirs.get(name).is_some(), "{name} not a PEFT key");
        }
    }
    assert_eq!(header.as_object().unwrap().len(), 1 + 18);

    // Round trip.
    let back = LoraAdapter::load(&dir).unwrap();
    assert_eq!(back, ours);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn config_with(edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&read(Path::new(FIX).join("peft_lora").join(ADAPTER_CONFIG)))
            .unwrap();
    edit(v.as_object_mut().unwrap());
    serde_json::to_vec(&v).unwrap()
}

fn fixture_weights() -> Vec<u8> {
    read(Path::new(FIX).join("peft_lora").join(ADAPTER_WEIGHTS))
}

#[test]
fn config_variants_peft_accepts_are_read() {
    // target_modules as a string.
    let cfg = config_with(|m| {
        m.insert("target_modules".into(), "all-linear".into());
    });
    let a = LoraAdapter::from_bytes(&cfg, &fixture_weights(), "d").unwrap();
    assert_eq!(
        a.config.target_modules,
        TargetModules::Pattern("all-linear".into())
    );
    // A regex cannot be checked here; the tensor keys decide.
    let cfg = config_with(|m| {
        m.insert(
            "target_modules".into(),
            r".*\.(q|k|v|o|gate|up|down)_proj".into(),
        );
    });
    let a = LoraAdapter::from_bytes(&cfg, &fixture_weights(), "d").unwrap();
    assert_eq!(
        a.config.targets(&LoraKey {
            layer: 0,
            module: LoraModule::Q
        }),
        None
    );
    // A minimal config (older PEFT, hand-written): missing optional fields take defaults.
    let minimal = br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 16.0}"#;
    let a = LoraAdapter::from_bytes(minimal, &fixture_weights(), "d").unwrap();
    assert_eq!(
        (a.config.lora_dropout, a.config.use_rslora, a.config.scale()),
        (0.0, false, 4.0)
    );
    assert_eq!(a.config.target_modules, TargetModules::Unspecified);
    // Unknown fields are kept and written back.
    let cfg = config_with(|m| {
        m.insert("future_field".into(), serde_json::json!({"x": 1}));
    });
    let a = LoraAdapter::from_bytes(&cfg, &fixture_weights(), "d").unwrap();
    let out: serde_json::Value = serde_json::from_str(&a.config.to_json()).unwrap();
    assert_eq!(out["future_field"], serde_json::json!({"x": 1}));
    // layers_to_transform restricts the targets.
    let cfg = config_with(|m| {
        m.insert("layers_to_transform".into(), serde_json::json!([0]));
    });
    let e = LoraAdapter::from_bytes(&cfg, &fixture_weights(), "d").unwrap_err();
    assert!(
        e.to_string().contains("model.layers.1.") && e.to_string().contains("not targeted"),
        "{e}"
    );
}

fn expect_adapter_err(r: Result<LoraAdapter, TrainError>, file: &str, what: &str) {
    match r {
        Err(TrainError::Adapter { file: f, msg }) => {
            assert_eq!(f, file, "{msg}");
            assert!(msg.contains(what), "{msg:?} lacks {what:?}");
        }
        other => panic!("expected an adapter error about {what}, got {other:?}"),
    }
}

#[test]
fn unsupported_adapters_are_errors_naming_file_and_field() {
    let cfgf = "d/adapter_config.json";
    let stf = "d/adapter_model.safetensors";
    for (field, value, what) in [
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("bias", serde_json::json!("all"), "bias"),
        ("peft_type", serde_json::json!("IA3"), "peft_type"),
        ("fan_in_fan_out", serde_json::json!(true), "fan_in_fan_out"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
        (
            "rank_pattern",
            serde_json::json!({"q_proj": 8}),
            "rank_pattern",
        ),
        ("r", serde_json::json!(0), "r must be a positive integer"),
        ("target_modules", serde_json::json!(7), "target_modules"),
        ("lora_alpha", serde_json::json!("8"), "lora_alpha"),
    ] {
        let cfg = config_with(|m| {
            m.insert(field.into(), value.clone());
        });
        expect_adapter_err(
            LoraAdapter::from_bytes(&cfg, &fixture_weights(), "d"),
            cfgf,
            what,
        );
    }
    let cfg = config_with(|_| {});
    expect_adapter_err(
        LoraAdapter::from_bytes(b"{not json", &fixture_weights(), "d"),
        cfgf,
        "invalid JSON",
    );
    // The config says r = 8 but the tensors have rank 4.
    let r8 = config_with(|m| {
        m.insert("r".into(), 8.into());
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&r8, &fixture_weights(), "d"),
        stf,
        "rank 4 but the config says r = 8",
    );

    // Tensor-level problems, built from the fixture's tensors.
    let (tensors, _) = read_f32_safetensors(&fixture_weights(), "x").unwrap();
    let rebuild = |edit: &dyn Fn(&mut TensorMap)| {
        let mut t = tensors.clone();
        edit(&mut t);
        let list: Vec<(String, Vec<usize>, &[f32])> = t
            .iter()
            .map(|(k, (s, d))| (k.clone(), s.clone(), d.as_slice()))
            .collect();
        tinytune::train::peft::write_f32_safetensors(&list, &[]).unwrap()
    };
    let extra = rebuild(&|t| {
        t.insert(
            "base_model.model.lm_head.weight".into(),
            (vec![2, 2], vec![0.0; 4]),
        );
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &extra, "d"),
        stf,
        "unsupported tensor \"base_model.model.lm_head.weight\"",
    );
    let dora = rebuild(&|t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector".into(),
            (vec![16], vec![1.0; 16]),
        );
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &dora, "d"),
        stf,
        "lora_magnitude_vector",
    );
    let no_b = rebuild(&|t| {
        t.remove("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &no_b, "d"),
        stf,
        "layers.1.mlp.up_proj.lora_B.weight is missing",
    );
    let wrong_parent = rebuild(&|t| {
        let v = t
            .remove("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
            .unwrap();
        t.insert(
            "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight".into(),
            v,
        );
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &wrong_parent, "d"),
        stf,
        "mlp.q_proj",
    );
    let bad_rank = rebuild(&|t| {
        t.insert(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".into(),
            (vec![16, 3], vec![0.0; 48]),
        );
    });
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &bad_rank, "d"),
        stf,
        "rank mismatch",
    );
    // An integer dtype.
    let mut int_bytes = fixture_weights();
    let n = u64::from_le_bytes(int_bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(int_bytes[8..8 + n].to_vec()).unwrap();
    let patched = header.replacen("\"F32\"", "\"I32\"", 1);
    assert_eq!(patched.len(), header.len());
    int_bytes.splice(8..8 + n, patched.into_bytes());
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, &int_bytes, "d"),
        stf,
        "dtype I32",
    );
    expect_adapter_err(
        LoraAdapter::from_bytes(&cfg, b"garbage", "d"),
        stf,
        "not a valid safetensors file",
    );

    // A directory with only a pickled adapter.
    let dir = tmp_dir("pickle");
    std::fs::write(dir.join("adapter_model.bin"), b"pickle").unwrap();
    std::fs::write(dir.join(ADAPTER_CONFIG), &cfg).unwrap();
    let e = LoraAdapter::load(&dir).unwrap_err();
    assert!(
        e.to_string().contains("adapter_model.bin") && e.to_string().contains("not supported"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sample_checkpoint(step: u64) -> Checkpoint {
    let adapter = fixture("peft_lora");
    let mut optimizer = OptimizerState::new(&adapter.weights);
    optimizer.step = step;
    let mut rng = Rng::new(step);
    for w in [&mut optimizer.m, &mut optimizer.v] {
        let Moments::Lora(w) = w else {
            unreachable!("a LoRA checkpoint")
        };
        for p in w.pairs.values_mut() {
            for x in p.a.iter_mut().chain(p.b.iter_mut()) {
                *x = rng.next_f32();
            }
        }
    }
    let config = TrainConfig {
        base_model: "tiny".into(),
        data: vec!["d.jsonl".into()],
        seq_len: 32,
        batch_size: 3,
        stop: Stop::Steps(20),
        ..TrainConfig::default()
    };
    let state = TrainerState {
        version: CHECKPOINT_VERSION,
        global_step: step,
        position: DataPosition { epoch: 1, index: 3 },
        rng_state: Rng::new(99).state(),
        data_seed: config.seed,
        n_train_examples: 10,
        total_steps: 20,
        tokens_seen: 1234,
        elapsed_s: 1.5,
        last_lr: 1e-4,
        best_eval_loss: Some(2.25),
    };
    Checkpoint {
        adapter: PeftAdapter::Lora(adapter),
        projection: None,
        optimizer,
        state,
        config,
    }
}

#[test]
fn checkpoints_round_trip_atomically() {
    let root = tmp_dir("ckpt");
    let dir = root.join("checkpoint-7");
    let ck = sample_checkpoint(7);
    ck.save(&dir).unwrap();
    assert_eq!(
        listing(&root),
        ["checkpoint-7"],
        "no temporary directories left"
    );
    assert_eq!(
        listing(&dir),
        [
            ADAPTER_CONFIG,
            ADAPTER_WEIGHTS,
            OPTIMIZER_STATE,
            TRAINER_STATE,
            "training_config.json"
        ]
    );
    let back = Checkpoint::load(&dir).unwrap();
    assert_eq!(back, ck);
    // The checkpoint directory is itself a PEFT adapter directory.
    assert_eq!(
        PeftAdapter::Lora(LoraAdapter::load(&dir).unwrap()),
        ck.adapter
    );
    // Overwriting replaces the whole directory.
    let ck2 = sample_checkpoint(8);
    ck2.save(&dir).unwrap();
    assert_eq!(Checkpoint::load(&dir).unwrap(), ck2);
    assert_eq!(listing(&root), ["checkpoint-7"]);
    // In memory (the browser path).
    let files: BTreeMap<String, Vec<u8>> = ck.to_files().unwrap().into_iter().collect();
    assert_eq!(
        Checkpoint::from_files(|n| files.get(n).cloned(), "mem").unwrap(),
        ck
    );
    // The optimizer file: F32 moments keyed like the adapter, step in the metadata.
    let (t, meta) = read_f32_safetensors(&files[OPTIMIZER_STATE], "o").unwrap();
    assert_eq!(meta.get("step").map(String::as_str), Some("7"));
    assert_eq!(t.len(), 2 * 28);
    assert!(
        t.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.exp_avg_sq")
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn broken_checkpoints_are_errors_naming_the_file() {
    let ck = sample_checkpoint(3);
    let files: BTreeMap<String, Vec<u8>> = ck.to_files().unwrap().into_iter().collect();
    let without = |name: &str| {
        let mut f = files.clone();
        f.remove(name);
        Checkpoint::from_files(move |n| f.get(n).cloned(), "ck")
            .unwrap_err()
            .to_string()
    };
    for name in [
        OPTIMIZER_STATE,
        TRAINER_STATE,
        "training_config.json",
        ADAPTER_WEIGHTS,
    ] {
        assert_eq!(without(name), format!("ck/{name}: missing"));
    }
    // Moments that do not match the adapter.
    let mut bad = ck.clone();
    if let Moments::Lora(w) = &mut bad.optimizer.m {
        w.pairs.pop_first();
    }
    let mut f = files.clone();
    f.insert(
        OPTIMIZER_STATE.into(),
        bad.optimizer.to_safetensors().unwrap(),
    );
    let e = Checkpoint::from_files(|n| f.get(n).cloned(), "ck")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("ck/optimizer.safetensors: exp_avg tensors do not match"),
        "{e}"
    );
    // A bad trainer state.
    let mut f = files.clone();
    f.insert(TRAINER_STATE.into(), b"{\"version\": 1}".to_vec());
    let e = Checkpoint::from_files(|n| f.get(n).cloned(), "ck")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("ck/trainer_state.json: bad trainer state"),
        "{e}"
    );
    let mut f = files.clone();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&files["training_config.json"]).unwrap();
    cfg["learning_rate"] = 1.0.into();
    f.insert(
        "training_config.json".into(),
        serde_json::to_vec(&cfg).unwrap(),
    );
    let e = Checkpoint::from_files(|n| f.get(n).cloned(), "ck")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("training_config.json: bad training config") && e.contains("learning_rate"),
        "{e}"
    );
}

#[test]
fn resuming_from_a_checkpoint_continues_the_same_batches() {
    let ck = sample_checkpoint(0);
    let plan = BatchPlan::new(10, 3, ck.config.seed).unwrap();
    let stop = ck.config.stop;
    let full: Vec<Vec<usize>> = plan
        .iter(DataPosition::default(), 0, stop)
        .unwrap()
        .collect();
    let mut it = plan.iter(DataPosition::default(), 0, stop).unwrap();
    let mut seen: Vec<Vec<usize>> = it.by_ref().take(6).collect();
    let mut saved = ck.clone();
    saved.state.global_step = it.steps_done();
    saved.state.position = it.position();
    saved.optimizer.step = it.steps_done();
    let files: BTreeMap<String, Vec<u8>> = saved.to_files().unwrap().into_iter().collect();
    let resumed = Checkpoint::from_files(|n| files.get(n).cloned(), "ck").unwrap();
    seen.extend(resumed.resume_batches(&plan, stop).unwrap());
    assert_eq!(seen, full);
    assert_eq!(
        resumed
            .config
            .schedule(resumed.state.total_steps)
            .unwrap()
            .total_steps,
        20
    );
    // Other data (count or seed) cannot be resumed.
    let other = BatchPlan::new(11, 3, ck.config.seed).unwrap();
    assert!(matches!(
        resumed.resume_batches(&other, stop),
        Err(TrainError::Config(_))
    ));
    let other = BatchPlan::new(10, 3, ck.config.seed + 1).unwrap();
    assert!(resumed.resume_batches(&other, stop).is_err());
}

#[test]
fn train_config_json_round_trips_with_defaults() {
    let c = TrainConfig::default();
    assert_eq!(TrainConfig::from_json(&c.to_json(), "c").unwrap(), c);
    let partial = TrainConfig::from_json(
        r#"{"lr": 0.001, "stop": {"steps": 5}, "lora": {"r": 4}}"#,
        "c",
    )
    .unwrap();
    assert_eq!(partial.lr, 0.001);
    assert_eq!(partial.stop, Stop::Steps(5));
    assert_eq!(partial.lora.r, 4);
    assert_eq!(partial.lora.alpha, 16.0);
    let lc = partial.lora_config();
    assert_eq!(lc.r, 4);
    assert_eq!(lc.scale(), 4.0);
    assert_eq!(
        lc.target_modules,
        TargetModules::from_modules(&LoraModule::ALL)
    );
}
