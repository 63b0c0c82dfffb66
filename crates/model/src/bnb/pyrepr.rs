//! Python's float `repr` and the `json.dumps` of bitsandbytes' packed quant state.
//!
//! bitsandbytes' `QuantState.as_dict(packed=True)` stores its non-tensor fields as the UTF-8 bytes of
//! `json.dumps(dict)`; to produce the same bytes we need CPython's `repr(float)` (the shortest
//! string that round-trips, exponent form when the decimal exponent is < -4 or >= 16) and
//! `json.dumps`' default separators `", "` and `": "`.

/// CPython's `repr(x)` of a float (`float_repr_style == 'short'`): `0.5`, `12.0`, `1e-05`,
/// `1.5e-07`, `1e+16`, `-0.0`, `inf`, `nan`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` prints the shortest round-tripping digits, e.g. "1.5e-7", "1e16", "6.25e-1".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    // CPython's `decpt`: x = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    let body = if !(-4 < decpt && decpt <= 16) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{dot}e{esign}{:02}", exp.unsigned_abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let d = decpt as usize;
        if d >= digits.len() {
            format!("{digits}{}.0", "0".repeat(d - digits.len()))
        } else {
            format!("{}.{}", &digits[..d], &digits[d..])
        }
    };
    format!("{sign}{body}")
}

/// A float as `json.dumps` writes it (`NaN`, `Infinity`, `-Infinity` for the non-finite values).
pub fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        py_float_repr(x)
    }
}

/// `json.dumps` of the non-tensor fields of bitsandbytes' `QuantState.as_dict(packed=True)` for an
/// NF4 tensor of shape `[rows, cols]` (`dtype` is the torch name of the tensor's dtype, e.g.
/// `"bfloat16"`); `nested_offset` is `Some(offset)` with double quantization.
pub fn quant_state_json(
    dtype: &str,
    block: usize,
    rows: usize,
    cols: usize,
    nested_offset: Option<f32>,
) -> String {
    let mut s = format!(
        r#"{{"quant_type": "nf4", "blocksize": {block}, "dtype": "{dtype}", "shape": [{rows}, {cols}]"#
    );
    if let Some(offset) = nested_offset {
        s.push_str(&format!(
            r#", "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {}"#,
            tinytune_gpu::nf4::NESTED_BLOCK,
            json_float(offset as f64)
        ));
    }
    s.push('}');
    s
}

/// Upper bound of `py_float_repr(x).len()` for any f64 (sign, 17 digits, point, exponent or zeros).
pub const MAX_FLOAT_REPR: usize = 25;

#[cfg(test)]
mod tests {
    use super::*;

    /// (f32 bits, CPython 3 `repr(float(f32))`), generated with `struct.unpack('<f', ...)` in Python.
    const PYTHON: &[(u32, &str)] = &[
        (0x00000003, "4.203895392974451e-45"),
        (0x00029137, "2.357642627272575e-40"),
        (0x01bab425, "6.858410386666253e-38"),
        (0x0e06052c, "1.6519265370297717e-30"),
        (0x1f897d80, "5.822937922067038e-20"),
        (0x25f75ef0, "4.29120020089711e-16"),
        (0x2f275838, "1.521990311559307e-10"),
        (0x36bacb7e, "5.566921572608408e-06"),
        (0x37606382, "1.3374608897720464e-05"),
        (0x384da389, "4.902811269857921e-05"),
        (0x392ac80d, "0.00016286988102365285"),
        (0x393e7713, "0.0001816417061490938"),
        (0x3b9df6bc, "0.004820672795176506"),
        (0x3dace2a9, "0.0844166949391365"),
        (0x3e587ef2, "0.21142175793647766"),
        (0x3e9a118a, "0.30091506242752075"),
        (0x40d4b366, "6.646899223327637"),
        (0x41187858, "9.529380798339844"),
        (0x4277c1cf, "61.939266204833984"),
        (0x43e48197, "457.0124206542969"),
        (0x496eec5a, "978629.625"),
        (0x50537bde, "14192441344.0"),
        (0x59f80394, "8726216051785728.0"),
        (0x594d013e, "3606483501580288.0"),
        (0x5aa34dc2, "2.298295841141555e+16"),
        (0x5a92618d, "2.060130240901939e+16"),
        (0x5ca7b3f9, "3.776336251112653e+17"),
        (0x6234f4d1, "8.345137036207766e+20"),
        (0x72049b33, "2.6265373209055003e+30"),
        (0x7e3b9c15, "6.234401486307809e+37"),
        (0x3f800000, "1.0"),
        (0x3dcccccd, "0.10000000149011612"),
        (0x3c4a42af, "0.01234500017017126"),
        (0x33a6d8bc, "7.769401122459385e-08"),
        (0x7f7fffff, "3.4028234663852886e+38"),
        (0x00000001, "1.401298464324817e-45"),
        (0x00800000, "1.1754943508222875e-38"),
        (0x5a0e1bca, "1.0000000272564224e+16"),
        (0x4b000000, "8388608.0"),
        (0x3a83126f, "0.0010000000474974513"),
        (0x38d1b717, "9.999999747378752e-05"),
        (0x37a7c5ac, "1.9999999494757503e-05"),
        (0x59b1a2bc, "6249999901917184.0"),
        (0x5a5e0b6b, "1.562499975479296e+16"),
        (0xbe000000, "-0.125"),
        (0xc2f60000, "-123.0"),
    ];

    #[test]
    fn py_float_repr_matches_cpython_on_f32_values() {
        for &(bits, want) in PYTHON {
            let x = f32::from_bits(bits) as f64;
            assert_eq!(py_float_repr(x), want, "bits {bits:#010x}");
            assert_eq!(
                want.parse::<f64>().unwrap(),
                x,
                "table entry {want} does not round-trip"
            );
        }
    }

    #[test]
    fn py_float_repr_f64_cases() {
        // CPython: repr of these f64 literals.
        let cases: &[(f64, &str)] = &[
            (0.012345678, "0.012345678"),
            (1e-05, "1e-05"),
            (1.5e-07, "1.5e-07"),
            (3.0, "3.0"),
            (0.5, "0.5"),
            (12.0, "12.0"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (123456789.0, "123456789.0"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (-2.5e-5, "-2.5e-05"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for &(x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn py_float_repr_round_trips_and_respects_the_bound() {
        // Every 4099th f32 bit pattern: the repr parses back to the same f64 and fits MAX_FLOAT_REPR.
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(4099) {
            let x = f32::from_bits(bits) as f64;
            let r = py_float_repr(x);
            if x.is_finite() {
                assert_eq!(r.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{r}");
                assert!(
                    r.contains('.') || r.contains('e'),
                    "{r} has neither '.' nor an exponent"
                );
            }
            assert!(r.len() <= MAX_FLOAT_REPR, "{r}");
            bits = next;
        }
    }

    #[test]
    fn json_float_non_finite() {
        assert_eq!(json_float(f64::NAN), "NaN");
        assert_eq!(json_float(f64::INFINITY), "Infinity");
        assert_eq!(json_float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(json_float(0.25), "0.25");
    }

    #[test]
    fn quant_state_json_matches_python_json_dumps() {
        // Python: json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": (3, 5),
        //   "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(np.float32(0.1))})
        assert_eq!(
            quant_state_json("bfloat16", 64, 3, 5, Some(0.1)),
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [3, 5], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.10000000149011612}"#
        );
        assert_eq!(
            quant_state_json("float16", 128, 7, 1, None),
            r#"{"quant_type": "nf4", "blocksize": 128, "dtype": "float16", "shape": [7, 1]}"#
        );
        assert_eq!(
            quant_state_json("float32", 64, 1, 1, Some(1e-5)),
            r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1, 1], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 9.999999747378752e-06}"#
        );
    }
}
