//! Kernel parameters: one `#[repr(C)]` [`bytemuck::Pod`] struct per uniform `Params` layout,
//! mirrored field for field by the `struct Params` of the WGSL kernels listed with it (binding 0,
//! a uniform buffer). [`PARAMS`] records each struct's fields, offsets and types; a test
//! (`tests/shaders.rs`) reads every registered kernel's WGSL `Params` with naga and checks it
//! against that record, and [`crate::Encoder::dispatch`] refuses a struct that does not list the
//! kernel. Sizes are multiples of 16 bytes (uniform layout), checked at compile time.

/// One field of a params struct: name, byte offset, WGSL scalar type (`"u32"` or `"f32"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub ty: &'static str,
}

/// A params struct: the kernels whose WGSL `Params` it mirrors and its layout.
pub trait KernelParams: bytemuck::Pod {
    /// Names of the kernels (registry names, e.g. `"nn/rope_fwd"`) that take this struct.
    const KERNELS: &'static [&'static str];
    /// The name of the mirroring WGSL struct: `Params` unless an entry point binds another.
    const WGSL: &'static str;
    /// The fields in order, with their byte offsets and WGSL types.
    const FIELDS: &'static [Field];
}

/// The record of one params struct in [`PARAMS`].
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub rust_name: &'static str,
    pub kernels: &'static [&'static str],
    pub wgsl: &'static str,
    pub fields: &'static [Field],
    pub size: usize,
}

macro_rules! kernel_params {
    (@wgsl) => {
        "Params"
    };
    (@wgsl $wgsl:literal) => {
        $wgsl
    };
    ($(
        $(#[$meta:meta])*
        [$($kernel:literal),+ $(,)?] pub struct $name:ident $(= $wgsl:literal)? {
            $($(#[$fmeta:meta])* $field:ident: $ty:ident),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
            pub struct $name {
                $($(#[$fmeta])* pub $field: $ty),*
            }

            impl KernelParams for $name {
                const KERNELS: &'static [&'static str] = &[$($kernel),+];
                const WGSL: &'static str = kernel_params!(@wgsl $($wgsl)?);
                const FIELDS: &'static [Field] = &[$(Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    ty: stringify!($ty),
                }),*];
            }

            const _: () = assert!(std::mem::size_of::<$name>() % 16 == 0, "uniform size");
        )*

        /// Every params struct with the kernels it serves.
        pub static PARAMS: &[Layout] = &[$(Layout {
            rust_name: stringify!($name),
            kernels: <$name as KernelParams>::KERNELS,
            wgsl: <$name as KernelParams>::WGSL,
            fields: <$name as KernelParams>::FIELDS,
            size: std::mem::size_of::<$name>(),
        }),*];
    };
}

/// The layout of the WGSL struct `wgsl` (e.g. `"Params"`) of a registered kernel.
pub fn layout(kernel: &str, wgsl: &str) -> Option<&'static Layout> {
    PARAMS
        .iter()
        .find(|l| l.wgsl == wgsl && l.kernels.contains(&kernel))
}

kernel_params! {
    /// `nf4/quantize`.
    ["nf4/quantize"] pub struct QuantizeParams {
        /// Elements.
        n: u32,
        nblocks: u32,
        /// Code words, `ceil(n / 8)`.
        nwords: u32,
        _pad: u32,
    }

    /// `nf4/absmax_mean`.
    ["nf4/absmax_mean"] pub struct AbsmaxMeanParams {
        nblocks: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nf4/absmax_quantize`.
    ["nf4/absmax_quantize"] pub struct AbsmaxQuantizeParams {
        nblocks: u32,
        nnested: u32,
        _p0: u32,
        _p1: u32,
    }

    /// `nf4/dequantize`.
    ["nf4/dequantize"] pub struct DequantizeParams {
        /// Elements.
        n: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nf4/matmul_fwd`.
    ["nf4/matmul_fwd"] pub struct Nf4MatmulFwdParams {
        m: u32,
        k: u32,
        n: u32,
        alpha: f32,
        /// Column tiles, `ceil(n / 8)`.
        ntn: u32,
        ntiles: u32,
        nwords: u32,
        _p0: u32,
    }

    /// `nf4/matmul_bwd_input`.
    ["nf4/matmul_bwd_input"] pub struct Nf4MatmulBwdInputParams {
        m: u32,
        k: u32,
        n: u32,
        /// k tiles, `ceil(k / 8)`.
        ntk: u32,
        ntiles: u32,
        nwords: u32,
        _p0: u32,
        _p1: u32,
    }

    /// `nn/matmul_fwd`.
    ["nn/matmul_fwd"] pub struct MatmulFwdParams {
        m: u32,
        k: u32,
        n: u32,
        alpha: f32,
        /// Column tiles, `ceil(n / 8)`.
        ntn: u32,
        ntiles: u32,
        /// Row stride of y.
        ldy: u32,
        /// Column of y where the product's column 0 goes.
        col0: u32,
    }

    /// `nn/matmul_bwd_input`.
    ["nn/matmul_bwd_input"] pub struct MatmulBwdInputParams {
        m: u32,
        k: u32,
        n: u32,
        /// k tiles, `ceil(k / 8)`.
        ntk: u32,
        ntiles: u32,
        /// Row stride of dy.
        lddy: u32,
        /// Column of dy holding the product's n = 0.
        col0: u32,
        _p0: u32,
    }

    /// `nn/rmsnorm_fwd`.
    ["nn/rmsnorm_fwd"] pub struct RmsnormFwdParams {
        m: u32,
        c: u32,
        eps: f32,
        /// `1 / c`.
        inv_c: f32,
    }

    /// `nn/rmsnorm_bwd` (both entry points).
    ["nn/rmsnorm_bwd"] pub struct RmsnormBwdParams {
        m: u32,
        c: u32,
        /// `1 / c`.
        inv_c: f32,
        _p0: u32,
    }

    /// `nn/rope_fwd` and `nn/rope_bwd`.
    ["nn/rope_fwd", "nn/rope_bwd"] pub struct RopeParams {
        /// Rows (tokens).
        m: u32,
        /// Heads per row.
        h: u32,
        /// Head size (even).
        d: u32,
        /// `d / 2`.
        half: u32,
        /// `m * half`: invocations that do work.
        n: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nn/embedding_fwd`.
    ["nn/embedding_fwd"] pub struct EmbeddingParams {
        m: u32,
        v: u32,
        c: u32,
        n: u32,
        row0: u32,
        rows: u32,
        _p0: u32,
        _p1: u32,
    }

    /// `nn/swiglu_fwd` and `nn/swiglu_bwd`.
    ["nn/swiglu_fwd", "nn/swiglu_bwd"] pub struct SwigluParams {
        /// Elements.
        n: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nn/cross_entropy_fwd` (both entry points).
    ["nn/cross_entropy_fwd"] pub struct CrossEntropyFwdParams {
        m: u32,
        v: u32,
        _p0: u32,
        _p1: u32,
    }

    /// `nn/cross_entropy_bwd`.
    ["nn/cross_entropy_bwd"] pub struct CrossEntropyBwdParams {
        m: u32,
        v: u32,
        scale: f32,
        _p0: u32,
    }

    /// `nn/add_fwd`.
    ["nn/add_fwd"] pub struct AddParams {
        n: u32,
        alpha: f32,
        _p0: u32,
        _p1: u32,
    }

    /// `nn/dropout_fwd`.
    ["nn/dropout_fwd"] pub struct DropoutParams {
        n: u32,
        threshold: u32,
        scale: f32,
        seed_lo: u32,
        seed_hi: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nn/attention_fwd`'s `repack` entry point (its WGSL `RepackParams`).
    ["nn/attention_fwd"] pub struct RepackParams = "RepackParams" {
        /// dst elements: rows * heads * dd.
        n: u32,
        /// src head size.
        ds: u32,
        /// dst head size.
        dd: u32,
        _p0: u32,
    }

    /// `nn/attention_fwd`'s `main` and `nn/attention_bwd` (both entry points).
    ["nn/attention_fwd", "nn/attention_bwd"] pub struct AttentionParams {
        b: u32,
        tq: u32,
        tk: u32,
        h: u32,
        kvh: u32,
        /// Score scale, usually `1/sqrt(D)`.
        scale: f32,
        /// Row blocks per (batch, head): `ceil(tq / ROWS)` or (`stage_dkdv`) `ceil(tk / ROWS)`.
        nblk: u32,
        /// Invocations with work.
        nitems: u32,
        /// Head size / 4.
        d4: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `nn/bias_add_fwd`.
    ["nn/bias_add_fwd"] pub struct BiasAddParams {
        m: u32,
        n: u32,
        nq: u32,
        _p0: u32,
    }

    /// `nn/prefix_fwd` and `nn/prefix_bwd`.
    ["nn/prefix_fwd", "nn/prefix_bwd"] pub struct PrefixParams {
        b: u32,
        t: u32,
        p: u32,
        kvd: u32,
        stride: u32,
        col: u32,
        n: u32,
        _p0: u32,
    }

    /// `nn/prefix_proj_fwd` and `nn/prefix_proj_bwd` (every entry point).
    ["nn/prefix_proj_fwd", "nn/prefix_proj_bwd"] pub struct PrefixProjParams {
        p: u32,
        t: u32,
        e: u32,
        n: u32,
        w1: u32,
        b1: u32,
        w2: u32,
        b2: u32,
    }

    /// `lora/adapter_fwd` and `lora/adapter_bwd` (every entry point).
    ["lora/adapter_fwd", "lora/adapter_bwd"] pub struct LoraParams {
        m: u32,
        k: u32,
        n: u32,
        r: u32,
        scale: f32,
        mc: u32,
        nsplit: u32,
        len: u32,
    }

    /// `optim/adamw_step`.
    ["optim/adamw_step"] pub struct AdamwParams {
        n: u32,
        decay: f32,
        w1: f32,
        beta2: f32,
        w2: f32,
        step_size: f32,
        bc2_sqrt: f32,
        eps: f32,
        max_norm: f32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }

    /// `optim/grad_norm` (both entry points).
    ["optim/grad_norm"] pub struct GradNormParams {
        n: u32,
        nparts: u32,
        _p0: u32,
        _p1: u32,
    }
    ["probe/fma_peak"] pub struct FmaPeakParams {
        n: u32,
        iters: u32,
        _p0: u32,
        _p1: u32,
    }
}
