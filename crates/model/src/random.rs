//! A model with random weights and a real model's shapes, without files: benchmarks and memory
//! checks of configs nobody downloaded ([`crate::LlamaConfig::preset`]).
//!
//! [`RandomWeights`] is a [`ByteSource`] that *is* a BF16 safetensors file: its header is built in
//! memory, and the bytes of the data section are computed when they are read, from the seed, the
//! tensor's index and the element's index alone. So [`ModelSource::random`] goes through the same
//! safetensors parser and loader as a downloaded checkpoint, streams tensor by tensor like one
//! (only the tensor being loaded is ever in host memory: no whole f32 model, which would be 4.9 GB
//! for Llama-3.2-1B), and reads the same values whatever the read boundaries.
//!
//! The values: RMSNorm weights are 1, every other tensor (embeddings, linears, biases) is
//! N(0, 0.02²) as transformers' `initializer_range` draws them, approximated by the Irwin–Hall sum
//! of four uniforms (mean 0, the same variance, bounded at ±3.46σ), rounded to BF16.

use std::borrow::Cow;

use crate::bytes::{check_range, ByteSource};
use crate::config::LlamaConfig;
use crate::safetensors::{header_json, header_prefix, StDtype, StEntry};
use crate::source::{HfParts, ModelSource};
use crate::Result;

/// Standard deviation of the random weights (transformers' usual `initializer_range`).
pub const RANDOM_STD: f32 = 0.02;

/// How one tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// N(0, [`RANDOM_STD`]²).
    Normal,
    /// All ones (RMSNorm weights).
    Ones,
}

/// One tensor of the generated file.
struct Slot {
    /// Absolute byte offset of its first element.
    start: u64,
    /// Elements (BF16, 2 bytes each).
    numel: u64,
    fill: Fill,
    /// Index in the file, mixed into every element's hash.
    id: u64,
}

/// A BF16 safetensors file of seeded random values, computed on read (see the module docs).
pub struct RandomWeights {
    /// The 8-byte length and the header.
    prefix: Vec<u8>,
    slots: Vec<Slot>,
    seed: u64,
    len: u64,
    name: String,
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of tensor `id`, as BF16 bits.
fn value_bits(seed: u64, id: u64, fill: Fill, i: u64) -> u16 {
    match fill {
        Fill::Ones => crate::float::f32_to_bf16(1.0),
        Fill::Normal => {
            let h = mix(seed
                ^ id.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ i.wrapping_mul(0xD1B5_4A32_D192_ED69));
            // Four 16-bit uniforms in (0, 1): their sum has mean 2 and variance 4/12.
            let s: f32 = (0..4)
                .map(|k| (((h >> (16 * k)) & 0xFFFF) as f32 + 0.5) / 65536.0)
                .sum();
            crate::float::f32_to_bf16((s - 2.0) * 3f32.sqrt() * RANDOM_STD)
        }
    }
}

/// Fills `out` (little-endian BF16) with elements `first..` of a slot.
fn fill_bytes(seed: u64, slot: &Slot, first: u64, out: &mut [u8]) {
    for (k, pair) in out.chunks_exact_mut(2).enumerate() {
        let bits = value_bits(seed, slot.id, slot.fill, first + k as u64);
        pair.copy_from_slice(&bits.to_le_bytes());
    }
}

/// [`fill_bytes`] over the host's cores for large reads (natively; one thread on the web).
fn fill_bytes_parallel(seed: u64, slot: &Slot, first: u64, out: &mut [u8]) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let elems = out.len() / 2;
        if threads > 1 && elems >= 1 << 20 {
            let per = elems.div_ceil(threads) * 2;
            std::thread::scope(|s| {
                for (c, chunk) in out.chunks_mut(per).enumerate() {
                    let first = first + (c * per / 2) as u64;
                    s.spawn(move || fill_bytes(seed, slot, first, chunk));
                }
            });
            return;
        }
    }
    fill_bytes(seed, slot, first, out)
}

impl RandomWeights {
    /// The file of every tensor `config` implies ([`LlamaConfig::tensor_specs`]), BF16, in that
    /// order.
    pub fn new(config: &LlamaConfig, seed: u64) -> Result<RandomWeights> {
        let specs = config.tensor_specs();
        let entries = specs
            .iter()
            .map(|(n, s)| StEntry::new(n.clone(), StDtype::BF16, s.clone()))
            .collect::<Result<Vec<_>>>()?;
        let prefix = header_prefix(header_json(&entries, None)?);
        let mut off = prefix.len() as u64;
        let mut slots = Vec::with_capacity(entries.len());
        for (id, e) in entries.iter().enumerate() {
            let fill = if e.name.ends_with("norm.weight") {
                Fill::Ones
            } else {
                Fill::Normal
            };
            slots.push(Slot {
                start: off,
                numel: e.len as u64 / 2,
                fill,
                id: id as u64,
            });
            off += e.len as u64;
        }
        Ok(RandomWeights {
            prefix,
            slots,
            seed,
            len: off,
            name: format!("random weights (seed {seed})"),
        })
    }
}

impl ByteSource for RandomWeights {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let (a, b) = check_range(&self.name, self.len, offset, len)?;
        let (a, b) = (a as u64, b as u64);
        let head = self.prefix.len() as u64;
        if b <= head {
            return Ok(Cow::Borrowed(&self.prefix[a as usize..b as usize]));
        }
        let mut out = vec![0u8; len];
        if a < head {
            out[..(head - a) as usize].copy_from_slice(&self.prefix[a as usize..]);
        }
        // The slots are contiguous from `head`; visit those overlapping a..b.
        let from = self.slots.partition_point(|s| s.start + 2 * s.numel <= a);
        for slot in &self.slots[from..] {
            let (s0, s1) = (slot.start, slot.start + 2 * slot.numel);
            if s0 >= b {
                break;
            }
            let (lo, hi) = (a.max(s0), b.min(s1));
            if lo >= hi {
                continue;
            }
            // Whole elements covering lo..hi, then the bytes asked for.
            let (e0, e1) = ((lo - s0) / 2, (hi - s0).div_ceil(2));
            let mut tmp = vec![0u8; ((e1 - e0) * 2) as usize];
            fill_bytes_parallel(self.seed, slot, e0, &mut tmp);
            let skip = (lo - s0 - 2 * e0) as usize;
            out[(lo - a) as usize..(hi - a) as usize]
                .copy_from_slice(&tmp[skip..skip + (hi - lo) as usize]);
        }
        Ok(Cow::Owned(out))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl ModelSource {
    /// A model of `config`'s shapes with seeded random weights ([`RandomWeights`]: norms 1, the
    /// rest N(0, 0.02²), BF16), read through the safetensors loader one tensor at a time. It has
    /// no tokenizer.
    pub fn random(config: &LlamaConfig, seed: u64) -> Result<ModelSource> {
        ModelSource::from_hf_parts(HfParts {
            config_json: config.to_json(),
            shards: vec![Box::new(RandomWeights::new(config, seed)?)],
            tokenizer_json: None,
            tokenizer_config_json: None,
            chat_template: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::SafetensorsFile;

    fn tiny() -> LlamaConfig {
        let mut c = LlamaConfig::preset("qwen2.5-0.5b").unwrap();
        c.hidden_size = 16;
        c.intermediate_size = 24;
        c.num_hidden_layers = 2;
        c.num_attention_heads = 4;
        c.num_key_value_heads = 2;
        c.head_dim = 4;
        c.vocab_size = 40;
        c.bos_token_id = None;
        c.eos_token_id = None;
        c.validate().unwrap();
        c
    }

    #[test]
    fn reads_are_the_same_whatever_their_boundaries() {
        let w = RandomWeights::new(&tiny(), 7).unwrap();
        let all = w.read_at(0, w.len() as usize).unwrap().into_owned();
        for (off, len) in [
            (0, 3),
            (5, 17),
            (w.prefix.len() as u64 - 3, 10),
            (1001, 333),
        ] {
            let len = len.min(all.len() - off as usize);
            assert_eq!(
                &*w.read_at(off, len).unwrap(),
                &all[off as usize..off as usize + len]
            );
        }
        assert!(w.read_at(w.len() - 1, 2).is_err());
        assert_ne!(
            RandomWeights::new(&tiny(), 8)
                .unwrap()
                .read_at(0, all.len())
                .unwrap()
                .as_ref(),
            &all[..]
        );
    }

    #[test]
    fn a_random_source_has_every_tensor_with_plausible_values() {
        let cfg = tiny();
        let src = ModelSource::random(&cfg, 1).unwrap();
        assert_eq!(src.config(), &cfg);
        assert_eq!(src.tensors().len(), cfg.tensor_specs().len());
        let norm = src.load("model.layers.1.input_layernorm.weight").unwrap();
        assert!(norm.data.iter().all(|&x| x == 1.0));
        let emb = src.load("model.embed_tokens.weight").unwrap();
        let n = emb.data.len() as f32;
        let mean = emb.data.iter().sum::<f32>() / n;
        let std = (emb.data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(
            mean.abs() < 0.005 && (std - RANDOM_STD).abs() < 0.004,
            "{mean} {std}"
        );
        assert!(src.load("model.layers.0.self_attn.k_proj.bias").is_ok());
        // The parser sees a well-formed file.
        let file = SafetensorsFile::new(Box::new(RandomWeights::new(&cfg, 1).unwrap())).unwrap();
        assert!(file.tensors().iter().all(|t| t.dtype == StDtype::BF16));
    }
}
