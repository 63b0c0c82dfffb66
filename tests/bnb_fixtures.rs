//! `tinytune_reference::nf4` against outputs of real bitsandbytes (0.50.2, CPU) and a numpy emulation
//! of its CUDA kernels, committed under `tests/fixtures/bnb` by `gen_bnb_fixtures.py` (see its README).
//! No GPU and no Python needed: only the committed `.safetensors` files are read.
//!
//! - ours (with bnb's offset) == the CUDA emulation, bit for bit (all-zero blocks: ours 7, CUDA 0 = NaN path);
//! - ours vs bnb's own CPU output: the only differences are the ones the generator recorded and explained
//!   (threshold literals 1 ulp off the f32 midpoints, the partial last block divided instead of multiplied
//!   by the reciprocal, bnb's 65536-bin lookup table for the nested 8-bit codes, the f32 mean's rounding).

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::Value;
use tinytune::reference::nf4::{self, Absmax, Nf4Tensor, DYNAMIC_MAP, NF4, NF4_MIDPOINTS};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bnb/nf4_cases.safetensors"
);
/// bitsandbytes' dequantize_4bit vs ours (f32 output).
const DEQUANT_RTOL: f32 = 1e-6;
/// bitsandbytes' mean of the absmax (torch, cascade sum) vs our 256-lane order: both round; measured up to
/// 3 ulp apart on random data (see README.md), the fixtures contain 0, 1 and 2.
const OFFSET_MAX_ULP: u32 = 3;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Fixture {
        let bytes = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
        Fixture { bytes }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("safetensors")
    }
    fn meta(&self) -> Value {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).expect("metadata");
        let s = m
            .metadata()
            .as_ref()
            .and_then(|m| m.get("fixture"))
            .expect("fixture metadata");
        serde_json::from_str(s).expect("fixture json")
    }
}

fn f32s(v: &TensorView) -> Vec<f32> {
    assert_eq!(v.dtype(), Dtype::F32);
    v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u8s(v: &TensorView) -> Vec<u8> {
    assert_eq!(v.dtype(), Dtype::U8);
    v.data().to_vec()
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f32;
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 => sign * if man == 0.0 { f32::INFINITY } else { f32::NAN },
        _ => sign * (1.0 + man / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// A float tensor of any of bitsandbytes' input dtypes, upcast to f32 exactly; also returns its unit roundoff.
fn floats(v: &TensorView) -> (Vec<f32>, f32) {
    let halves = || {
        v.data()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match v.dtype() {
        Dtype::F32 => (f32s(v), 0.0),
        Dtype::F16 => (halves().map(f16_to_f32).collect(), 2f32.powi(-11)),
        Dtype::BF16 => (
            halves().map(|h| f32::from_bits((h as u32) << 16)).collect(),
            2f32.powi(-8),
        ),
        d => panic!("unexpected dtype {d:?}"),
    }
}

/// Distance in units in the last place between two finite f32.
fn ulp_dist(a: f32, b: f32) -> u32 {
    let ord = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            -(i & 0x7fff_ffff) as i64
        } else {
            i as i64
        }
    };
    (ord(a) - ord(b)).unsigned_abs() as u32
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The f32 midpoints bitsandbytes' portable backend buckets against (`(code[:-1] + code[1:]) / 2`).
fn f32_midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4[i] + NF4[i + 1]) / 2.0)
}

struct Case<'a> {
    name: &'a str,
    rec: &'a Value,
    x: Vec<f32>,
    roundoff: f32,
    block: usize,
    dq: bool,
}

fn cases<'a>(st: &SafeTensors<'_>, meta: &'a Value) -> Vec<Case<'a>> {
    let cases = meta["cases"].as_object().expect("cases");
    assert!(cases.len() >= 10, "fixture has {} cases", cases.len());
    cases
        .iter()
        .map(|(name, rec)| {
            let xv = st.tensor(&format!("{name}.x")).unwrap();
            let (x, roundoff) = floats(&xv);
            assert_eq!(x.len(), rec["n"].as_u64().unwrap() as usize, "{name}");
            let shape: Vec<usize> = usizes(&rec["shape"]);
            assert_eq!(xv.shape(), &shape[..], "{name}");
            let dtype = rec["dtype"].as_str().unwrap();
            let expect_dtype = match dtype {
                "float32" => Dtype::F32,
                "float16" => Dtype::F16,
                "bfloat16" => Dtype::BF16,
                d => panic!("{d}"),
            };
            assert_eq!(xv.dtype(), expect_dtype, "{name}");
            Case {
                name,
                rec,
                x,
                roundoff,
                block: rec["block"].as_u64().unwrap() as usize,
                dq: rec["double_quant"].as_bool().unwrap(),
            }
        })
        .collect()
}

fn t_f32(st: &SafeTensors<'_>, case: &str, key: &str) -> Vec<f32> {
    f32s(
        &st.tensor(&format!("{case}.{key}"))
            .unwrap_or_else(|e| panic!("{case}.{key}: {e:?}")),
    )
}

fn t_u8(st: &SafeTensors<'_>, case: &str, key: &str) -> Vec<u8> {
    u8s(&st
        .tensor(&format!("{case}.{key}"))
        .unwrap_or_else(|e| panic!("{case}.{key}: {e:?}")))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The literal text of a top-level number in a JSON object. serde_json (without its `float_roundtrip`
/// feature) may parse a float 1 ulp off, so we parse the literal with Rust's correctly rounded `parse`.
fn json_number(text: &str, key: &str) -> f64 {
    let k = format!("\"{key}\"");
    let at = text
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + k.len();
    let rest = text[at..]
        .trim_start()
        .strip_prefix(':')
        .expect("colon")
        .trim_start();
    let end = rest.find([',', '}']).expect("end of number");
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// bnb's offset: the `nested_offset` of its serialized quant state (a Python float of the f32 mean).
fn bnb_offset(st: &SafeTensors<'_>, c: &Case) -> f32 {
    let blob = t_u8(st, c.name, "bnb.qs.quant_state.bitsandbytes__nf4");
    let off = json_number(std::str::from_utf8(&blob).unwrap(), "nested_offset");
    let off32 = off as f32;
    assert_eq!(
        off32 as f64, off,
        "{}: nested_offset is an f32 value",
        c.name
    );
    assert_eq!(
        off32.to_bits() as u64,
        c.rec["offset_bnb_bits"].as_u64().unwrap(),
        "{}",
        c.name
    );
    off32
}

#[test]
fn bnb_tables_match_reference_constants() {
    let fx = Fixture::load();
    let st = fx.st();
    let meta = fx.meta();
    assert_eq!(meta["versions"]["bitsandbytes"].as_str(), Some("0.50.2"));
    // create_dynamic_map(signed=True) and get_4bit_type("nf4"), bit for bit.
    assert_eq!(
        bits(&t_f32(&st, "global", "dynamic_map")),
        bits(&DYNAMIC_MAP[..])
    );
    assert_eq!(bits(&t_f32(&st, "global", "nf4_code")), bits(&NF4[..]));
    // dQuantizeNF4's literals, and where they are 1 ulp off the f32 midpoints bnb's CPU path uses.
    assert_eq!(
        bits(&t_f32(&st, "global", "cuda_thresholds")),
        bits(&NF4_MIDPOINTS[..])
    );
    let mids = f32_midpoints();
    assert_eq!(
        bits(&t_f32(&st, "global", "f32_midpoints")),
        bits(&mids[..])
    );
    let differing: Vec<usize> = (0..15).filter(|&i| NF4_MIDPOINTS[i] != mids[i]).collect();
    assert_eq!(differing, usizes(&meta["differing_thresholds"]));
    assert!(differing
        .iter()
        .all(|&i| ulp_dist(NF4_MIDPOINTS[i], mids[i]) == 1));
    // Every serialized quant state carries the same maps.
    for c in cases(&st, &meta) {
        assert_eq!(
            bits(&t_f32(&st, c.name, "bnb.qs.quant_map")),
            bits(&NF4[..]),
            "{}",
            c.name
        );
        if c.dq {
            let nm = t_f32(&st, c.name, "bnb.qs.nested_quant_map");
            assert_eq!(bits(&nm), bits(&DYNAMIC_MAP[..]), "{}", c.name);
        }
    }
}

#[test]
fn nf4_quantize_matches_cuda_emulation_bit_for_bit() {
    let fx = Fixture::load();
    let st = fx.st();
    let meta = fx.meta();
    for c in cases(&st, &meta) {
        let (packed, absmax) = nf4::quantize(&c.x, c.block);
        assert_eq!(
            bits(&absmax),
            bits(&t_f32(&st, c.name, "cuda.absmax")),
            "{}: absmax",
            c.name
        );
        let cuda = t_u8(&st, c.name, "cuda.packed");
        assert_eq!(packed.len(), cuda.len(), "{}", c.name);
        let zero_blocks = usizes(&c.rec["zero_blocks"]);
        let mut zero_diffs = 0;
        for i in 0..packed.len() * 2 {
            let (ours, theirs) = (nf4::code_at(&packed, i), nf4::code_at(&cuda, i));
            // The padding nibble of an odd count belongs to the last block.
            if zero_blocks.contains(&(i / c.block)) {
                // Deliberate: CUDA's 0 * (1/0) = NaN falls through dQuantizeNF4 to code 0 (-1.0 * absmax = -0.0).
                assert_eq!(
                    (ours, theirs),
                    (nf4::PAD_CODE, 0),
                    "{}: all-zero block, element {i}",
                    c.name
                );
                zero_diffs += 1;
            } else {
                assert_eq!(ours, theirs, "{}: NF4 code of element {i}", c.name);
            }
        }
        let n_zero = c.rec["nf4_diff_zero_block"].as_u64().unwrap() as usize;
        assert!(
            zero_diffs == n_zero || zero_diffs == n_zero + 1,
            "{}",
            c.name
        );

        if !c.dq {
            continue;
        }
        // Double quantization with the offset bitsandbytes computed.
        let off = bnb_offset(&st, &c);
        let dq = nf4::absmax_quantize(&absmax, off);
        assert_eq!(
            dq.codes,
            t_u8(&st, c.name, "cuda.absmax_codes"),
            "{}: nested codes",
            c.name
        );
        let nested = t_f32(&st, c.name, "cuda.nested_absmax");
        assert_eq!(
            bits(&dq.nested_absmax),
            bits(&nested),
            "{}: nested absmax",
            c.name
        );
        // And the whole default path, with our own mean.
        let t = Nf4Tensor::quantize(&c.x, c.block, true);
        assert_eq!(t.packed, packed, "{}", c.name);
        let Absmax::Double(ours) = &t.absmax else {
            panic!("{}: not double-quantized", c.name)
        };
        assert_eq!(
            ours.offset.to_bits() as u64,
            c.rec["offset_ours_bits"].as_u64().unwrap(),
            "{}",
            c.name
        );
        assert_eq!(
            ours.codes,
            t_u8(&st, c.name, "cuda_ourmean.absmax_codes"),
            "{}",
            c.name
        );
        let nested = t_f32(&st, c.name, "cuda_ourmean.nested_absmax");
        assert_eq!(bits(&ours.nested_absmax), bits(&nested), "{}", c.name);
    }
}

#[test]
fn nf4_quantize_matches_bnb_cpu_except_documented_cases() {
    let fx = Fixture::load();
    let st = fx.st();
    let meta = fx.meta();
    let mids = f32_midpoints();
    let differing = usizes(&meta["differing_thresholds"]);
    let (mut tot_thr, mut tot_div, mut tot_lut, mut tot_elems, mut tot_blocks) = (0, 0, 0, 0, 0);
    for c in cases(&st, &meta) {
        let n = c.x.len();
        let (packed, absmax) = nf4::quantize(&c.x, c.block);
        let bnb = t_u8(&st, c.name, "bnb.packed");
        assert_eq!(
            st.tensor(&format!("{}.bnb.packed", c.name))
                .unwrap()
                .shape(),
            &[n.div_ceil(2), 1]
        );
        assert_eq!(bnb.len(), packed.len(), "{}", c.name);
        let (mut thr, mut div) = (vec![], vec![]);
        for i in 0..n {
            let (ours, theirs) = (nf4::code_at(&packed, i), nf4::code_at(&bnb, i));
            if ours == theirs {
                continue;
            }
            let b = i / c.block;
            let s = c.x[i] * (1.0 / absmax[b]);
            let partial = (b + 1) * c.block > n;
            // Same s, but CUDA's literal threshold and the f32 midpoint put it on different sides.
            if differing
                .iter()
                .any(|&k| ulp_dist(s, NF4_MIDPOINTS[k]) <= 1)
            {
                thr.push(i);
            } else if partial {
                // bnb's portable backend divides the partial last block: x / absmax, then buckets on midpoints.
                let s2 = (c.x[i] / absmax[b]).clamp(-1.0, 1.0);
                let code = mids.iter().filter(|&&m| m < s2).count() as u8;
                assert_eq!(code, theirs, "{}: element {i}", c.name);
                assert_ne!(s2, s, "{}: element {i}", c.name);
                div.push(i);
            } else {
                panic!(
                    "{}: element {i}: ours {ours}, bnb {theirs}, s = {s:e}",
                    c.name
                );
            }
        }
        if n % 2 == 1 {
            assert_eq!(
                nf4::code_at(&bnb, n),
                nf4::PAD_CODE,
                "{}: padding nibble",
                c.name
            );
            assert_eq!(
                nf4::code_at(&packed, n),
                nf4::PAD_CODE,
                "{}: padding nibble",
                c.name
            );
        }
        assert_eq!(
            thr,
            usizes(&c.rec["nf4_diff_threshold_window"]),
            "{}: threshold-window cases",
            c.name
        );
        assert_eq!(
            div,
            usizes(&c.rec["nf4_diff_partial_block_division"]),
            "{}: division cases",
            c.name
        );
        tot_thr += thr.len();
        tot_div += div.len();
        tot_elems += n;
        tot_blocks += absmax.len();

        let dequant_bnb = t_f32(&st, c.name, "bnb.dequant");
        assert_eq!(dequant_bnb.len(), n, "{}", c.name);
        // Blocks whose absmax we store differently from bnb: their dequantized values differ by a code step.
        let mut skip_blocks = vec![false; absmax.len()];
        let ours = if !c.dq {
            assert_eq!(
                bits(&absmax),
                bits(&t_f32(&st, c.name, "bnb.qs.absmax")),
                "{}: absmax",
                c.name
            );
            Nf4Tensor::quantize(&c.x, c.block, false)
        } else {
            let off = bnb_offset(&st, &c);
            let dq = nf4::absmax_quantize(&absmax, off);
            let bnb_codes = t_u8(&st, c.name, "bnb.qs.absmax");
            assert_eq!(bnb_codes.len(), absmax.len(), "{}", c.name);
            let nested = t_f32(&st, c.name, "bnb.qs.nested_absmax");
            assert_eq!(
                bits(&dq.nested_absmax),
                bits(&nested),
                "{}: nested absmax",
                c.name
            );
            // bnb's CPU 8-bit kernel maps x / nested_absmax through a 65536-bin table; CUDA searches.
            let lut: Vec<usize> = (0..absmax.len())
                .filter(|&b| dq.codes[b] != bnb_codes[b])
                .collect();
            assert_eq!(
                lut,
                usizes(&c.rec["nested_diff_lut"]),
                "{}: lookup-table cases",
                c.name
            );
            let cuda = t_u8(&st, c.name, "cuda.absmax_codes");
            assert!(lut.iter().all(|&b| dq.codes[b] == cuda[b]), "{}", c.name);
            tot_lut += lut.len();
            // Our mean vs torch's.
            let ours_mean = nf4::absmax_mean(&absmax);
            let ulp = ulp_dist(ours_mean, off);
            assert_eq!(
                ulp as u64,
                c.rec["offset_ulp_diff"].as_u64().unwrap(),
                "{}: offset",
                c.name
            );
            assert!(
                ulp <= OFFSET_MAX_ULP,
                "{}: offset {ours_mean:e} vs bnb {off:e}",
                c.name
            );
            eprintln!(
                "{}: offset ours {ours_mean:e} bnb {off:e}: {ulp} ulp; nested codes differing from bnb: {} of {}",
                c.name,
                lut.len(),
                absmax.len()
            );
            let t = Nf4Tensor::quantize(&c.x, c.block, true);
            let Absmax::Double(dq_ours) = &t.absmax else {
                unreachable!()
            };
            for b in 0..absmax.len() {
                skip_blocks[b] = dq_ours.codes[b] != bnb_codes[b];
            }
            t
        };
        // Dequantized values.
        let deq = ours.dequantize();
        let (mut checked, mut exact) = (0, 0);
        for i in 0..n {
            if skip_blocks[i / c.block] || thr.contains(&i) || div.contains(&i) {
                continue;
            }
            let (a, b) = (deq[i], dequant_bnb[i]);
            assert!(
                (a - b).abs() <= DEQUANT_RTOL * b.abs(),
                "{}: dequant[{i}] ours {a:e} bnb {b:e}",
                c.name
            );
            checked += 1;
            exact += (a.to_bits() == b.to_bits()) as usize;
        }
        assert!(
            checked * 2 >= n,
            "{}: only {checked} of {n} dequantized values compared",
            c.name
        );
        // bnb's output in the input dtype (f16 / bf16): its f32 result rounded.
        if c.roundoff > 0.0 {
            let (native, _) = floats(
                &st.tensor(&format!("{}.bnb.dequant_native", c.name))
                    .unwrap(),
            );
            for i in 0..n {
                if skip_blocks[i / c.block] || thr.contains(&i) || div.contains(&i) {
                    continue;
                }
                let tol = (c.roundoff + DEQUANT_RTOL) * deq[i].abs() + 2f32.powi(-25);
                assert!(
                    (native[i] - deq[i]).abs() <= tol,
                    "{}: native dequant[{i}]",
                    c.name
                );
            }
        }
        eprintln!(
            "{}: n={n} block={} {}: NF4 codes differing from bnb: {} threshold-window + {} partial-block \
             division; dequant compared {checked}, bit-identical {exact}",
            c.name,
            c.block,
            c.rec["dtype"],
            thr.len(),
            div.len()
        );
    }
    eprintln!(
        "total: {tot_elems} elements, {tot_thr} threshold-window, {tot_div} division; {tot_blocks} blocks, {tot_lut} \
         nested codes from bnb's lookup table"
    );
    // The fixtures do exercise each documented difference.
    assert!(tot_thr > 0 && tot_div > 0 && tot_lut > 0);
}

#[test]
fn bnb_quant_state_json_matches_case() {
    let fx = Fixture::load();
    let st = fx.st();
    let meta = fx.meta();
    for c in cases(&st, &meta) {
        let blob = t_u8(&st, c.name, "bnb.qs.quant_state.bitsandbytes__nf4");
        let text = std::str::from_utf8(&blob).unwrap();
        let j: Value = serde_json::from_str(text).unwrap();
        assert_eq!(j["quant_type"], "nf4");
        assert_eq!(j["blocksize"].as_u64(), Some(c.block as u64));
        assert_eq!(j["dtype"], c.rec["dtype"]);
        assert_eq!(j["shape"], c.rec["shape"]);
        let mut keys = vec!["quant_type", "blocksize", "dtype", "shape"];
        if c.dq {
            assert_eq!(
                j["nested_blocksize"].as_u64(),
                Some(nf4::NESTED_BLOCK as u64)
            );
            assert_eq!(j["nested_dtype"], "float32");
            bnb_offset(&st, &c);
            keys.extend(["nested_blocksize", "nested_dtype", "nested_offset"]);
        }
        assert_eq!(
            j.as_object().unwrap().len(),
            keys.len(),
            "{}: {text}",
            c.name
        );
        // Key order as json.dumps wrote them.
        let pos: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{}: {text}", c.name);
    }
}
