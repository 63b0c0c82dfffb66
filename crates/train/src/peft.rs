//! LoRA adapters in Hugging Face PEFT's on-disk layout: `adapter_config.json` and
//! `adapter_model.safetensors`, readable by `PeftModel.from_pretrained` and read back from what
//! `peft` writes (pinned by the fixtures of `tests/fixtures/train/`, generated with peft 0.21.2).
//!
//! Tensors: `base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight` `[r, in]`
//! and `.lora_B.weight` `[out, r]`, likewise `...mlp.{gate,up,down}_proj...`; written as F32 with
//! the metadata `{"format": "pt"}` that `safetensors.torch.save_file` writes; read from F32, F16,
//! BF16 or F64. The LoRA update of a linear layer is `y += scale * B (A x)` with
//! `scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
//!
//! Reading is strict about what would change the meaning of the weights: DoRA, biases, `fan_in_fan_out`,
//! `modules_to_save`, per-module rank/alpha patterns, layer replication, trainable tokens, aLoRA
//! and tensors other than the LoRA A/B of the seven Llama projections are errors naming the file and
//! the field or key. Fields PEFT writes that do not matter here are kept and written back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::rng::Rng;
use crate::{Result, TrainError};
use tinytune_model::safetensors::{self, StDtype};
use tinytune_model::FloatDtype;

/// File name of the adapter config.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The PEFT release whose `adapter_config.json` field set this writer reproduces (written as
/// `peft_version`, which PEFT only records).
pub use tinytune_model::lora::{Lora, LoraPair};
use tinytune_model::targets::{linear_group, LINEARS};

pub const PEFT_FORMAT_VERSION: &str = "0.21.2";
/// Decoded tensors by name: (shape, values as f32).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Prefix PEFT gives every tensor of a `PeftModelForCausalLM` around a `LlamaForCausalLM`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// One of the seven linear projections of a Llama decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LoraModule {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl LoraModule {
    /// All seven, in layer order.
    pub const ALL: [LoraModule; 7] = [
        LoraModule::Q,
        LoraModule::K,
        LoraModule::V,
        LoraModule::O,
        LoraModule::Gate,
        LoraModule::Up,
        LoraModule::Down,
    ];

    /// The Hugging Face module name (`"q_proj"`...), from the model's one list of projections.
    pub fn name(self) -> &'static str {
        LINEARS[self.index() as usize]
    }

    /// The parent module (`"self_attn"` or `"mlp"`).
    pub fn parent(self) -> &'static str {
        linear_group(self.index() as usize)
    }

    /// Parses a module name (`"q_proj"`...).
    pub fn from_name(name: &str) -> Option<LoraModule> {
        LoraModule::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The index in [`LoraModule::ALL`] and [`LINEARS`] (the enum's declaration order).
    pub(crate) fn index(self) -> u64 {
        self as u64
    }
}

/// Which projection of which layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoraKey {
    pub layer: usize,
    pub module: LoraModule,
}

impl LoraKey {
    /// The module path inside the base model, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_path(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer,
            self.module.parent(),
            self.module.name()
        )
    }

    /// The safetensors key of `lora_A` (`which = 'A'`) or `lora_B` (`'B'`).
    pub fn tensor_name(&self, which: char) -> String {
        format!("{PEFT_PREFIX}{}.lora_{which}.weight", self.module_path())
    }

    /// Parses a PEFT tensor key into (key, 'A' | 'B'); `None` if it is not a LoRA A/B weight of a
    /// Llama projection.
    pub fn parse_tensor_name(name: &str) -> Option<(LoraKey, char)> {
        let rest = name
            .strip_prefix(PEFT_PREFIX)?
            .strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        if layer.is_empty() || !layer.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let layer: usize = layer.parse().ok()?;
        let (parent, rest) = rest.split_once('.')?;
        let (module, rest) = rest.split_once('.')?;
        let module = LoraModule::from_name(module)?;
        if module.parent() != parent {
            return None;
        }
        let which = match rest {
            "lora_A.weight" => 'A',
            "lora_B.weight" => 'B',
            _ => return None,
        };
        Some((LoraKey { layer, module }, which))
    }
}

/// Bound of `torch.nn.init.kaiming_uniform_(w, a=sqrt(5))` for a `[*, fan_in]` weight, computed as
/// torch does (`gain = sqrt(2 / (1 + a^2))`, `bound = sqrt(3) * gain / sqrt(fan_in)`), which is
/// `1/sqrt(fan_in)` up to rounding. PEFT initialises `lora_A` this way (`init_lora_weights=True`).
pub fn kaiming_uniform_bound(fan_in: usize) -> f64 {
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let std = gain / (fan_in as f64).sqrt();
    3f64.sqrt() * std
}

/// The LoRA weights of a model, by (layer, projection).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraWeights {
    pub pairs: BTreeMap<LoraKey, LoraPair>,
}

impl LoraWeights {
    /// PEFT's default init: `A ~ U(-b, b)` with `b = kaiming_uniform_bound(in)`, `B = 0`, for each
    /// `(key, in_features, out_features)`. Each A is drawn from its own stream
    /// `Rng::stream(seed, layer * 7 + module)`, so one projection's init does not depend on which
    /// others are adapted.
    pub fn init(
        shapes: impl IntoIterator<Item = (LoraKey, usize, usize)>,
        r: usize,
        seed: u64,
    ) -> LoraWeights {
        let mut pairs = BTreeMap::new();
        for (key, fin, fout) in shapes {
            let mut p = LoraPair::zeros(r, fin, fout);
            let bound = kaiming_uniform_bound(fin) as f32;
            let mut rng = Rng::stream(seed, key.layer as u64 * 7 + key.module.index());
            for x in &mut p.a {
                *x = (2.0 * rng.next_f32() - 1.0) * bound;
            }
            pairs.insert(key, p);
        }
        LoraWeights { pairs }
    }

    /// The same keys and shapes, all zeros (AdamW moments start like this).
    pub fn zeros_like(&self) -> LoraWeights {
        LoraWeights {
            pairs: self
                .pairs
                .iter()
                .map(|(k, p)| (*k, LoraPair::zeros(p.r, p.in_features, p.out_features)))
                .collect(),
        }
    }

    /// Whether `other` has exactly the same keys and shapes.
    pub fn same_layout(&self, other: &LoraWeights) -> bool {
        self.pairs.len() == other.pairs.len()
            && self
                .pairs
                .iter()
                .zip(&other.pairs)
                .all(|((ka, a), (kb, b))| ka == kb && a.same_shape(b))
    }

    /// The model's host form ([`Lora`]: per layer one optional pair per projection, in
    /// [`LoraModule::ALL`] order) for a model of `n_layers` layers.
    pub fn to_layers(&self, n_layers: usize, scale: f32) -> Result<Lora> {
        let r = self.pairs.values().next().map_or(0, |p| p.r);
        let mut layers: Vec<[Option<LoraPair>; 7]> =
            (0..n_layers).map(|_| Default::default()).collect();
        for (k, p) in &self.pairs {
            if p.r != r {
                return Err(TrainError::Config(format!(
                    "{}: rank {} differs from the other adapters' {r}",
                    k.module_path(),
                    p.r
                )));
            }
            let slot = layers.get_mut(k.layer).ok_or_else(|| {
                TrainError::Config(format!(
                    "adapter for layer {} but the model has {n_layers} layers",
                    k.layer
                ))
            })?;
            slot[k.module.index() as usize] = Some(p.clone());
        }
        Ok(Lora { r, scale, layers })
    }

    /// From the model's host form.
    pub fn from_layers(lora: &Lora) -> LoraWeights {
        let mut pairs = BTreeMap::new();
        for (layer, l) in lora.layers.iter().enumerate() {
            for (t, p) in l.iter().enumerate() {
                if let Some(p) = p {
                    let key = LoraKey {
                        layer,
                        module: LoraModule::ALL[t],
                    };
                    pairs.insert(key, LoraPair::new(lora.r, p.a.clone(), p.b.clone()));
                }
            }
        }
        LoraWeights { pairs }
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.pairs.values().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// Serializes as F32 safetensors with PEFT's keys (each name followed by `suffix`, empty for
    /// the adapter itself) and `metadata` (`{"format": "pt"}` is always added).
    pub fn to_safetensors(&self, suffix: &str, metadata: &[(&str, String)]) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        self.push_tensors(suffix, &mut tensors);
        write_f32_safetensors(&tensors, metadata)
    }

    /// Appends every A and B with its PEFT name (followed by `suffix`) and shape: the one place
    /// the adapter's tensor layout is spelled out for writing.
    pub(crate) fn push_tensors<'a>(
        &'a self,
        suffix: &str,
        out: &mut Vec<(String, Vec<usize>, &'a [f32])>,
    ) {
        for (k, p) in &self.pairs {
            out.push((
                format!("{}{suffix}", k.tensor_name('A')),
                vec![p.r, p.in_features],
                &p.a,
            ));
            out.push((
                format!("{}{suffix}", k.tensor_name('B')),
                vec![p.out_features, p.r],
                &p.b,
            ));
        }
    }

    /// Reads PEFT tensors (names followed by `suffix`) from a safetensors file; `file` names it in
    /// errors. Every tensor must be a LoRA A/B of a Llama projection, every A needs its B, and all
    /// ranks must be equal to `r` when given.
    pub fn from_safetensors(
        bytes: &[u8],
        file: &str,
        suffix: &str,
        r: Option<usize>,
    ) -> Result<LoraWeights> {
        let (tensors, _) = read_f32_safetensors(bytes, file)?;
        LoraWeights::from_tensors(tensors, file, suffix, r)
    }

    /// [`LoraWeights::from_safetensors`] from already decoded tensors (name → (shape, values)).
    pub fn from_tensors(
        tensors: TensorMap,
        file: &str,
        suffix: &str,
        r: Option<usize>,
    ) -> Result<LoraWeights> {
        let err = |msg: String| TrainError::Adapter {
            file: file.to_string(),
            msg,
        };
        let mut a_parts: BTreeMap<LoraKey, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
        let mut b_parts: BTreeMap<LoraKey, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
        for (name, (shape, data)) in tensors {
            let parsed = name
                .strip_suffix(suffix)
                .and_then(LoraKey::parse_tensor_name);
            let Some((key, which)) = parsed else {
                return Err(err(format!(
                    "unsupported tensor {name:?}: expected {PEFT_PREFIX}model.layers.N.\
                     {{self_attn.{{q,k,v,o}}_proj|mlp.{{gate,up,down}}_proj}}.lora_{{A,B}}.weight{suffix}"
                )));
            };
            if shape.len() != 2 {
                return Err(err(format!(
                    "tensor {name:?} has shape {shape:?}, expected 2-D"
                )));
            }
            let slot = if which == 'A' {
                &mut a_parts
            } else {
                &mut b_parts
            };
            slot.insert(key, (shape, data));
        }
        let mut pairs = BTreeMap::new();
        for (key, (ashape, a)) in a_parts {
            let bname = key.tensor_name('B');
            let (bshape, b) = b_parts
                .remove(&key)
                .ok_or_else(|| err(format!("{bname}{suffix} is missing (its lora_A exists)")))?;
            let (rank, fin) = (ashape[0], ashape[1]);
            let (fout, rb) = (bshape[0], bshape[1]);
            if rb != rank {
                return Err(err(format!(
                    "{bname}{suffix} has shape {bshape:?} but lora_A is {ashape:?} (rank mismatch)"
                )));
            }
            if let Some(r) = r {
                if rank != r {
                    return Err(err(format!(
                        "{}{suffix} has rank {rank} but the config says r = {r} \
                         (rank_pattern is not supported)",
                        key.tensor_name('A')
                    )));
                }
            }
            if rank == 0 {
                return Err(err(format!("{}{suffix} has rank 0", key.tensor_name('A'))));
            }
            pairs.insert(
                key,
                LoraPair {
                    r: rank,
                    in_features: fin,
                    out_features: fout,
                    a,
                    b,
                },
            );
        }
        if let Some(key) = b_parts.keys().next() {
            return Err(err(format!(
                "{}{suffix} is missing (its lora_B exists)",
                key.tensor_name('A')
            )));
        }
        Ok(LoraWeights { pairs })
    }
}

/// Serializes f32 tensors `(name, shape, data)` to safetensors bytes with `{"format": "pt"}` plus
/// `metadata` (the model crate's writer: the bytes `safetensors.torch.save_file` writes).
pub fn write_f32_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &[(&str, String)],
) -> Result<Vec<u8>> {
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if shape.iter().product::<usize>() != data.len() {
            return Err(TrainError::Config(format!(
                "tensor {name}: shape {shape:?} does not match {} values",
                data.len()
            )));
        }
        bytes.push(FloatDtype::F32.encode(data));
    }
    let views: Vec<(&str, StDtype, Vec<usize>, &[u8])> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| (name.as_str(), StDtype::F32, shape.clone(), b.as_slice()))
        .collect();
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    for (k, v) in metadata {
        meta.insert(k.to_string(), v.clone());
    }
    safetensors::serialize(&views, Some(&meta))
        .map_err(|e| TrainError::Config(format!("safetensors: {e}")))
}

/// Tensors of a safetensors file converted to f32, and its metadata. Accepts F32, F16, BF16 and
/// F64; any other dtype is an error naming `file` and the tensor.
#[allow(clippy::type_complexity)]
pub fn read_f32_safetensors(
    bytes: &[u8],
    file: &str,
) -> Result<(
    BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    BTreeMap<String, String>,
)> {
    // The reader's messages name the file, which the error names already.
    let err = |e: tinytune_model::ModelError| TrainError::Adapter {
        file: file.to_string(),
        msg: e.to_string().replacen(&format!("{file}: "), "", 1),
    };
    let st = safetensors::from_bytes(bytes, file).map_err(err)?;
    let mut out = BTreeMap::new();
    for info in st.tensors() {
        let t = st.load(&info.name).map_err(err)?;
        out.insert(info.name.clone(), (t.shape, t.data));
    }
    Ok((out, st.metadata().clone()))
}

/// `target_modules` of a LoRA config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// A list of module names or name suffixes (`"q_proj"`, `"model.layers.0.mlp.up_proj"`).
    Names(Vec<String>),
    /// A single string: `"all-linear"` or a regular expression (full match on the module path).
    Pattern(String),
    /// `null` / missing: PEFT then uses its per-architecture default (`q_proj`, `v_proj` for
    /// Llama); the tensor keys decide.
    Unspecified,
}

impl TargetModules {
    /// The names of `modules`.
    pub fn from_modules(modules: &[LoraModule]) -> TargetModules {
        TargetModules::Names(modules.iter().map(|m| m.name().to_string()).collect())
    }

    /// Whether PEFT would adapt `key`: a name matches a module path it equals or ends with after a
    /// dot; `"all-linear"` matches every projection (the LM head is excluded by PEFT). `None` for
    /// a regular expression (tinytune has no regex engine; the tensor keys decide then).
    pub fn matches(&self, key: &LoraKey) -> Option<bool> {
        let path = key.module_path();
        match self {
            TargetModules::Names(names) => Some(
                names
                    .iter()
                    .any(|n| path == *n || path.ends_with(&format!(".{n}"))),
            ),
            TargetModules::Pattern(p) if p.eq_ignore_ascii_case("all-linear") => Some(true),
            TargetModules::Pattern(_) | TargetModules::Unspecified => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            TargetModules::Names(n) => json!(n),
            TargetModules::Pattern(p) => json!(p),
            TargetModules::Unspecified => Value::Null,
        }
    }
}

/// The fields of `adapter_config.json` tinytune uses; every other field read with a value other
/// than PEFT's default is kept in `extra` and written back.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub layers_to_transform: Option<Vec<usize>>,
    /// `"CAUSAL_LM"` when written by tinytune.
    pub task_type: Option<String>,
    pub inference_mode: bool,
    /// Other fields as read, where they differ from PEFT's defaults (written back over them).
    pub extra: BTreeMap<String, Value>,
}

/// Every field PEFT 0.21.2's `LoraConfig.to_dict()` writes, with its default value.
fn peft_defaults() -> BTreeMap<String, Value> {
    let v = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": null,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_FORMAT_VERSION,
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": null,
        "target_modules": null,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    });
    match v {
        Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

/// Fields stored in [`LoraConfig`] itself rather than in `extra`.
const MODELLED: [&str; 11] = [
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "base_model_name_or_path",
    "revision",
    "layers_to_transform",
    "task_type",
    "inference_mode",
    "peft_version",
];

fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl LoraConfig {
    /// A config for `modules` with PEFT's defaults elsewhere (dropout 0, no rsLoRA).
    pub fn new(r: usize, lora_alpha: f64, modules: &[LoraModule]) -> LoraConfig {
        LoraConfig {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: TargetModules::from_modules(modules),
            use_rslora: false,
            base_model_name_or_path: None,
            revision: None,
            layers_to_transform: None,
            task_type: Some("CAUSAL_LM".into()),
            inference_mode: true,
            extra: BTreeMap::new(),
        }
    }

    /// The LoRA scale: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether the config adapts `key` (see [`TargetModules::matches`]), also honouring
    /// `layers_to_transform`.
    pub fn targets(&self, key: &LoraKey) -> Option<bool> {
        if let Some(layers) = &self.layers_to_transform {
            if !layers.contains(&key.layer) {
                return Some(false);
            }
        }
        self.target_modules.matches(key)
    }

    /// `adapter_config.json` as PEFT writes it: every PEFT 0.21.2 field, sorted keys, two-space
    /// indent, no trailing newline (`json.dumps(d, indent=2, sort_keys=True)`).
    pub fn to_json(&self) -> String {
        let mut m = peft_defaults();
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m.insert("r".into(), json!(self.r));
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 9.0e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        m.insert("lora_alpha".into(), alpha);
        m.insert("lora_dropout".into(), json!(self.lora_dropout));
        m.insert("target_modules".into(), self.target_modules.to_json());
        m.insert("use_rslora".into(), json!(self.use_rslora));
        m.insert(
            "base_model_name_or_path".into(),
            json!(self.base_model_name_or_path),
        );
        m.insert("revision".into(), json!(self.revision));
        m.insert(
            "layers_to_transform".into(),
            json!(self.layers_to_transform),
        );
        m.insert("task_type".into(), json!(self.task_type));
        m.insert("inference_mode".into(), json!(self.inference_mode));
        m.insert("peft_version".into(), json!(PEFT_FORMAT_VERSION));
        let obj: Map<String, Value> = m.into_iter().collect();
        serde_json::to_string_pretty(&Value::Object(obj)).unwrap_or_default()
    }

    /// Parses `adapter_config.json` text (`file` names it in errors). Missing optional fields take
    /// PEFT's defaults (`r` 8, `lora_alpha` 8, `lora_dropout` 0, ...); unsupported features are
    /// errors naming the field.
    pub fn from_json(text: &str, file: &str) -> Result<LoraConfig> {
        let err = |msg: String| TrainError::Adapter {
            file: file.to_string(),
            msg,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(err("expected a JSON object".into()));
        };
        match obj.get("peft_type") {
            Some(Value::String(s)) if s == "LORA" => {}
            Some(other) => {
                return Err(err(format!(
                    "peft_type is {other}, only \"LORA\" adapters are supported"
                )))
            }
            None => return Err(err("missing peft_type (expected \"LORA\")".into())),
        }
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let bool_field = |k: &str, default: bool| -> Result<bool> {
            match get(k) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(err(format!("{k} must be a boolean, got {other}"))),
            }
        };
        let num_field = |k: &str, default: f64| -> Result<f64> {
            match get(k) {
                None => Ok(default),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .ok_or_else(|| err(format!("{k} is not a number: {n}"))),
                Some(other) => Err(err(format!("{k} must be a number, got {other}"))),
            }
        };
        let str_field = |k: &str| -> Result<Option<String>> {
            match get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(err(format!("{k} must be a string, got {other}"))),
            }
        };
        // Features that change what the weights mean.
        let unsupported = |k: &str, what: &str| -> Result<()> {
            match get(k) {
                Some(v) if !is_empty_json(v) => {
                    Err(err(format!("{k} = {v} is not supported ({what})")))
                }
                _ => Ok(()),
            }
        };
        unsupported("use_dora", "DoRA")?;
        unsupported("fan_in_fan_out", "Conv1D-style transposed weights")?;
        unsupported("modules_to_save", "fully trained extra modules")?;
        unsupported("rank_pattern", "per-module ranks")?;
        unsupported("alpha_pattern", "per-module alphas")?;
        unsupported("layer_replication", "layer replication")?;
        unsupported("trainable_token_indices", "trainable tokens")?;
        unsupported("alora_invocation_tokens", "activated LoRA")?;
        unsupported("target_parameters", "LoRA on nn.Parameter")?;
        unsupported("lora_bias", "LoRA bias")?;
        unsupported("use_qalora", "QALoRA")?;
        match get("bias") {
            None => {}
            Some(Value::String(s)) if s == "none" => {}
            Some(other) => {
                return Err(err(format!(
                    "bias = {other} is not supported (only \"none\")"
                )))
            }
        }
        let r = match get("r") {
            None => 8,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) if r > 0 => r as usize,
                _ => return Err(err(format!("r must be a positive integer, got {n}"))),
            },
            Some(other) => return Err(err(format!("r must be a positive integer, got {other}"))),
        };
        let target_modules = match get("target_modules") {
            None => TargetModules::Unspecified,
            Some(Value::String(s)) => TargetModules::Pattern(s.clone()),
            Some(Value::Array(a)) => TargetModules::Names(
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err("target_modules must be a list of strings".into()))?,
            ),
            Some(other) => {
                return Err(err(format!(
                    "target_modules must be a list or a string, got {other}"
                )))
            }
        };
        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Value::Number(n)) => Some(vec![n
                .as_u64()
                .ok_or_else(|| err(format!("layers_to_transform: bad layer {n}")))?
                as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64().map(|l| l as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        err("layers_to_transform must be a list of layer indices".into())
                    })?,
            ),
            Some(other) => return Err(err(format!("layers_to_transform: bad value {other}"))),
        };
        let defaults = peft_defaults();
        let extra = obj
            .iter()
            .filter(|(k, v)| !MODELLED.contains(&k.as_str()) && defaults.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(LoraConfig {
            r,
            lora_alpha: num_field("lora_alpha", 8.0)?,
            lora_dropout: num_field("lora_dropout", 0.0)?,
            target_modules,
            use_rslora: bool_field("use_rslora", false)?,
            base_model_name_or_path: str_field("base_model_name_or_path")?,
            revision: str_field("revision")?,
            layers_to_transform,
            task_type: str_field("task_type")?,
            inference_mode: bool_field("inference_mode", true)?,
            extra,
        })
    }
}

/// A LoRA adapter: config and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    pub weights: LoraWeights,
}

impl LoraAdapter {
    /// The two files of a PEFT adapter directory: ([`ADAPTER_CONFIG`], json), ([`ADAPTER_WEIGHTS`],
    /// safetensors). Errors if a weight's rank differs from `config.r`.
    pub fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        for (k, p) in &self.weights.pairs {
            if p.r != self.config.r {
                return Err(TrainError::Config(format!(
                    "{} has rank {} but the config says r = {}",
                    k.module_path(),
                    p.r,
                    self.config.r
                )));
            }
        }
        Ok(vec![
            (
                ADAPTER_CONFIG.to_string(),
                self.config.to_json().into_bytes(),
            ),
            (
                ADAPTER_WEIGHTS.to_string(),
                self.weights.to_safetensors("", &[])?,
            ),
        ])
    }

    /// Parses the two files of an adapter (`dir` only names them in errors). Checks that every
    /// tensor belongs to a module the config targets (when decidable) and has rank `r`.
    pub fn from_bytes(config_json: &[u8], safetensors: &[u8], dir: &str) -> Result<LoraAdapter> {
        let cfg_file = format!("{dir}/{ADAPTER_CONFIG}");
        let st_file = format!("{dir}/{ADAPTER_WEIGHTS}");
        let text = std::str::from_utf8(config_json).map_err(|e| TrainError::Adapter {
            file: cfg_file.clone(),
            msg: format!("invalid UTF-8: {e}"),
        })?;
        let config = LoraConfig::from_json(text, &cfg_file)?;
        let weights = LoraWeights::from_safetensors(safetensors, &st_file, "", Some(config.r))?;
        if weights.pairs.is_empty() {
            return Err(TrainError::Adapter {
                file: st_file,
                msg: "no LoRA tensors".into(),
            });
        }
        for key in weights.pairs.keys() {
            if config.targets(key) == Some(false) {
                return Err(TrainError::Adapter {
                    file: st_file,
                    msg: format!(
                        "{} is not targeted by target_modules / layers_to_transform of {cfg_file}",
                        key.tensor_name('A')
                    ),
                });
            }
        }
        Ok(LoraAdapter { config, weights })
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// needed), each atomically (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        crate::fsio::create_dir_all(dir)?;
        for (name, bytes) in self.to_files()? {
            crate::fsio::write_atomic(&dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// Reads a PEFT adapter directory (native only). A directory with only a pickled
    /// `adapter_model.bin` is an error (unsupported format).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dir: &std::path::Path) -> Result<LoraAdapter> {
        let st = dir.join(ADAPTER_WEIGHTS);
        if !st.exists() && dir.join("adapter_model.bin").exists() {
            return Err(TrainError::Adapter {
                file: dir.join("adapter_model.bin").display().to_string(),
                msg:
                    "pickled PyTorch adapters are not supported; save with safe_serialization=True"
                        .into(),
            });
        }
        let cfg = crate::fsio::read(&dir.join(ADAPTER_CONFIG))?;
        let weights = crate::fsio::read(&st)?;
        LoraAdapter::from_bytes(&cfg, &weights, &dir.display().to_string())
    }
}
