//! Reading bitsandbytes 4-bit checkpoints: a model folder whose `config.json` carries a
//! bitsandbytes `quantization_config`, each quantized linear stored as transformers saves
//! `QuantState.as_dict(packed=True)` (see the module docs of [`crate::bnb`]). The codes are read
//! as they are ([`read_nf4`] returns bitsandbytes' own bytes), never dequantized and quantized
//! again.

use serde_json::Value;
use tinytune_gpu::nf4::{Absmax, DoubleQuant, Nf4Tensor, DYNAMIC_MAP, NESTED_BLOCK, NF4};

use super::QUANT_STATE_SUFFIX;
use crate::safetensors::{SafetensorsFile, StDtype};
use crate::{ModelError, Result};

pub use tinytune_gpu::nf4::valid_block_size;

/// Suffix of the JSON blob bitsandbytes writes for an FP4 quant state.
pub const FP4_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__fp4";

/// The tensors bitsandbytes stores beside a quantized weight `NAME` (besides the quant state).
pub const COMPANIONS: [&str; 4] = [
    ".absmax",
    ".quant_map",
    ".nested_absmax",
    ".nested_quant_map",
];

/// What a `config.json`'s `quantization_config` says about the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prequantized {
    /// No `quantization_config`: plain float weights.
    No,
    /// bitsandbytes 4-bit NF4 (each weight's own quant state gives its block size and double
    /// quantization).
    Nf4,
}

/// Checks a `config.json`'s `quantization_config` (if any): bitsandbytes 4-bit NF4 is read, every
/// other quantization is refused with a message saying what to use instead. `what` names the file.
pub fn check_quantization_config(config_json: &str, what: &str) -> Result<Prequantized> {
    let v: Value = serde_json::from_str(config_json)
        .map_err(|e| ModelError::Format(format!("{what} is not valid JSON: {e}")))?;
    let Some(q) = v.get("quantization_config") else {
        return Ok(Prequantized::No);
    };
    if q.is_null() {
        return Ok(Prequantized::No);
    }
    let get = |k: &str| q.get(k);
    let method = get("quant_method").and_then(Value::as_str).unwrap_or("");
    let flag = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
    if method != "bitsandbytes" {
        return Err(ModelError::Unsupported(format!(
            "{what}: quantization_config.quant_method {method:?} is not supported (only \
             bitsandbytes 4-bit NF4 checkpoints are read); load the original float model instead"
        )));
    }
    if flag("load_in_8bit") || flag("_load_in_8bit") {
        return Err(ModelError::Unsupported(format!(
            "{what}: a bitsandbytes 8-bit (LLM.int8) checkpoint is not supported; load the \
             original float model (tinytune quantizes it to NF4 itself) or a 4-bit NF4 checkpoint"
        )));
    }
    if !(flag("load_in_4bit") || flag("_load_in_4bit")) {
        return Err(ModelError::Unsupported(format!(
            "{what}: quantization_config is bitsandbytes but neither 4-bit nor 8-bit \
             (load_in_4bit is not true); expected a 4-bit NF4 checkpoint"
        )));
    }
    let qt = get("bnb_4bit_quant_type")
        .and_then(Value::as_str)
        .unwrap_or("fp4");
    if qt != "nf4" {
        return Err(ModelError::Unsupported(format!(
            "{what}: bitsandbytes 4-bit quant type {qt:?} is not supported (only \"nf4\": \
             tinytune's kernels use the NF4 code book); quantize the original float model with \
             bnb_4bit_quant_type=\"nf4\" or load it unquantized"
        )));
    }
    Ok(Prequantized::Nf4)
}

/// The parsed non-tensor fields of one quant state.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantState {
    pub block: usize,
    pub rows: usize,
    pub cols: usize,
    /// `Some(offset)` with double quantization.
    pub nested_offset: Option<f32>,
}

/// Parses the `NAME.quant_state.bitsandbytes__nf4` blob of weight `name` in `file`.
pub fn parse_quant_state(bytes: &[u8], name: &str, file: &str) -> Result<QuantState> {
    let bad = |m: String| ModelError::Format(format!("{file}: {name}{QUANT_STATE_SUFFIX}: {m}"));
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON quant state: {e}")))?;
    let qt = v.get("quant_type").and_then(Value::as_str).unwrap_or("");
    if qt != "nf4" {
        return Err(ModelError::Unsupported(format!(
            "{file}: {name}: bitsandbytes quant type {qt:?} is not supported (only \"nf4\")"
        )));
    }
    let block = v
        .get("blocksize")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no integer \"blocksize\"".into()))? as usize;
    if !valid_block_size(block) {
        return Err(ModelError::Unsupported(format!(
            "{file}: {name}: block size {block} is not one bitsandbytes accepts for 4-bit \
             quantization (32, 64, 128, 256, 512, 1024, 2048 or 4096); re-quantize the original \
             model with one of those"
        )));
    }
    let shape: Vec<usize> = v
        .get("shape")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|d| d as usize)
                .collect()
        })
        .unwrap_or_default();
    let [rows, cols] = shape[..] else {
        return Err(bad(format!(
            "\"shape\" must be [rows, cols], got {:?}",
            v.get("shape")
        )));
    };
    let nested_offset = match v.get("nested_offset") {
        None | Some(Value::Null) => None,
        Some(o) => {
            let nb = v
                .get("nested_blocksize")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            if nb != NESTED_BLOCK {
                return Err(ModelError::Unsupported(format!(
                    "{file}: {name}: nested block size {nb} is not supported (bitsandbytes uses \
                     {NESTED_BLOCK})"
                )));
            }
            let o = o
                .as_f64()
                .ok_or_else(|| bad(format!("\"nested_offset\" {o} is not a number")))?;
            Some(o as f32)
        }
    };
    Ok(QuantState {
        block,
        rows,
        cols,
        nested_offset,
    })
}

/// Whether `file` stores `name` as a bitsandbytes 4-bit weight: `Ok(true)` when its NF4 quant state
/// is there, an error for an FP4 one.
pub fn is_nf4_weight(file: &SafetensorsFile, name: &str) -> Result<bool> {
    if file.info(&format!("{name}{FP4_STATE_SUFFIX}")).is_some() {
        return Err(ModelError::Unsupported(format!(
            "{}: {name} is bitsandbytes FP4; only NF4 is supported (tinytune's kernels use the \
             NF4 code book): quantize the original float model with bnb_4bit_quant_type=\"nf4\"",
            file.name()
        )));
    }
    Ok(file.info(&format!("{name}{QUANT_STATE_SUFFIX}")).is_some())
}

/// The quant state of bitsandbytes weight `name` of `file`.
pub fn quant_state(file: &SafetensorsFile, name: &str) -> Result<QuantState> {
    let blob = file.raw(&format!("{name}{QUANT_STATE_SUFFIX}"))?;
    parse_quant_state(&blob, name, file.name())
}

fn f32_values(file: &SafetensorsFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let info = file
        .info(name)
        .ok_or_else(|| ModelError::Tensor(format!("{}: no tensor '{name}'", file.name())))?;
    if info.dtype != StDtype::F32 || info.numel() != len as u64 {
        return Err(ModelError::Tensor(format!(
            "{}: tensor '{name}' is {} {:?}, expected F32 with {len} values",
            file.name(),
            info.dtype,
            info.shape
        )));
    }
    Ok(file.load(name)?.data)
}

/// Reads bitsandbytes weight `name` of `file` as it is stored: the packed codes, the absmax
/// (8-bit codes + nested absmax + offset with double quantization, else f32) and the block size,
/// checking every size and that the code books are bitsandbytes' NF4 and dynamic maps bit for bit.
pub fn read_nf4(file: &SafetensorsFile, name: &str) -> Result<(Nf4Tensor, QuantState)> {
    let fname = file.name();
    let qs = quant_state(file, name)?;
    let n = qs.rows * qs.cols;
    let nblocks = n.div_ceil(qs.block);
    let packed_info = file
        .info(name)
        .ok_or_else(|| ModelError::Tensor(format!("{fname}: no tensor '{name}'")))?;
    // Any quant_storage dtype holds the same bytes (bitsandbytes views them as uint8).
    let packed = file.raw(name)?;
    let want = n.div_ceil(2);
    if packed.len() < want || packed.len() > want.next_multiple_of(8) {
        return Err(ModelError::Tensor(format!(
            "{fname}: tensor '{name}' ({} {:?}) holds {} bytes, a [{}, {}] NF4 weight needs {want}",
            packed_info.dtype,
            packed_info.shape,
            packed.len(),
            qs.rows,
            qs.cols
        )));
    }
    let packed = packed[..want].to_vec();
    let quant_map = f32_values(file, &format!("{name}.quant_map"), 16)?;
    if quant_map
        .iter()
        .zip(NF4.iter())
        .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(ModelError::Unsupported(format!(
            "{fname}: {name}.quant_map is not bitsandbytes' NF4 code book; only standard NF4 \
             checkpoints are supported"
        )));
    }
    let absmax = match qs.nested_offset {
        Some(offset) => {
            let an = format!("{name}.absmax");
            let info = file
                .info(&an)
                .ok_or_else(|| ModelError::Tensor(format!("{fname}: no tensor '{an}'")))?;
            if info.dtype != StDtype::U8 || info.numel() != nblocks as u64 {
                return Err(ModelError::Tensor(format!(
                    "{fname}: tensor '{an}' is {} {:?}, expected U8 with {nblocks} codes (block \
                     size {})",
                    info.dtype, info.shape, qs.block
                )));
            }
            let codes = file.raw(&an)?.to_vec();
            let nested_absmax = f32_values(
                file,
                &format!("{name}.nested_absmax"),
                nblocks.div_ceil(NESTED_BLOCK),
            )?;
            let map = f32_values(file, &format!("{name}.nested_quant_map"), 256)?;
            if map
                .iter()
                .zip(DYNAMIC_MAP.iter())
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return Err(ModelError::Unsupported(format!(
                    "{fname}: {name}.nested_quant_map is not bitsandbytes' signed dynamic map; \
                     only standard double quantization is supported"
                )));
            }
            Absmax::Double(DoubleQuant {
                codes,
                nested_absmax,
                offset,
            })
        }
        None => Absmax::F32(f32_values(file, &format!("{name}.absmax"), nblocks)?),
    };
    let t = Nf4Tensor {
        n,
        block: qs.block,
        packed,
        absmax,
    };
    Ok((t, qs))
}

/// The f32 absmax of every block (double quantization undone as bitsandbytes does:
/// `DYNAMIC_MAP[code] * nested_absmax[b / 256] + offset`).
pub fn absmax_f32(t: &Nf4Tensor) -> Vec<f32> {
    match &t.absmax {
        Absmax::F32(a) => a.clone(),
        Absmax::Double(d) => d
            .codes
            .iter()
            .enumerate()
            .map(|(b, &c)| DYNAMIC_MAP[c as usize] * d.nested_absmax[b / NESTED_BLOCK] + d.offset)
            .collect(),
    }
}

/// `dequantize_4bit`: `W[i] = NF4[code(i)] * absmax[i / block]`, on the host.
pub fn dequantize(t: &Nf4Tensor) -> Vec<f32> {
    let absmax = absmax_f32(t);
    (0..t.n)
        .map(|i| {
            let b = t.packed[i / 2];
            let c = if i % 2 == 0 { b >> 4 } else { b & 15 };
            NF4[c as usize] * absmax[i / t.block]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_config_refuses_8bit_fp4_and_other_methods() {
        let cfg = |q: &str| format!(r#"{{"model_type": "llama", "quantization_config": {q}}}"#);
        assert_eq!(
            check_quantization_config(r#"{"model_type": "llama"}"#, "c").unwrap(),
            Prequantized::No
        );
        let nf4 = cfg(
            r#"{"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}"#,
        );
        assert_eq!(
            check_quantization_config(&nf4, "c").unwrap(),
            Prequantized::Nf4
        );
        let e8 = check_quantization_config(
            &cfg(r#"{"quant_method": "bitsandbytes", "load_in_8bit": true}"#),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(e8.contains("8-bit"), "{e8}");
        let fp4 = check_quantization_config(
            &cfg(r#"{"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "fp4"}"#),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(fp4.contains("\"fp4\""), "{fp4}");
        let gptq = check_quantization_config(&cfg(r#"{"quant_method": "gptq"}"#), "c")
            .unwrap_err()
            .to_string();
        assert!(gptq.contains("\"gptq\""), "{gptq}");
    }

    #[test]
    fn quant_state_with_a_bad_block_size_is_refused() {
        let js = br#"{"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [4, 8]}"#;
        let e = parse_quant_state(js, "w", "f").unwrap_err().to_string();
        assert!(e.contains("block size 48"), "{e}");
        let js = br#"{"quant_type": "nf4", "blocksize": 32, "dtype": "float32", "shape": [4, 8], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}"#;
        let qs = parse_quant_state(js, "w", "f").unwrap();
        assert_eq!(
            qs,
            QuantState {
                block: 32,
                rows: 4,
                cols: 8,
                nested_offset: Some(0.5)
            }
        );
    }
}
