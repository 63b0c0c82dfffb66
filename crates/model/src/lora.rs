//! LoRA adapters on the device: one `lora_A` `[R, in]` / `lora_B` `[out, R]` pair per adapted
//! linear layer, their gradients, and the flat layout the optimizer works on.
//!
//! The parameters live in one flat buffer and the gradients in another of the same layout; each
//! pair's `a`, `b`, `da` and `db` are views of them ([`Gpu::view`]) that the kernels bind one by
//! one. So the optimizer updates the parameters in place (one dispatch over the flat buffers, no
//! copies), zeroing the gradients is one clear, and reading the adapter back is one read. The flat
//! layout visits layers in order, in each layer the targets in the order of
//! [`crate::targets::LINEARS`], and for each pair `a` then `b`, each tensor starting at the
//! device's storage offset alignment (the gaps stay zero: zero gradients, and AdamW keeps a zero
//! parameter with zero moments at zero).
//!
//! The host form is [`Lora`]: per layer one optional [`LoraPair`] per entry of [`LINEARS`] (the
//! CPU reference has its own, `tinytune_reference::llama::Lora`, of the same layout).

use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::targets::LINEARS;
use crate::ModelError;

/// The A and B matrices of one adapted projection, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `lora_A.weight` `[r, in_features]`.
    pub a: Vec<f32>,
    /// `lora_B.weight` `[out_features, r]`.
    pub b: Vec<f32>,
}

impl LoraPair {
    /// All-zero A and B.
    pub fn zeros(r: usize, in_features: usize, out_features: usize) -> LoraPair {
        LoraPair {
            r,
            in_features,
            out_features,
            a: vec![0.0; r * in_features],
            b: vec![0.0; out_features * r],
        }
    }

    /// The pair of `a` (`[r, in]`) and `b` (`[out, r]`), its shape taken from their lengths.
    pub fn new(r: usize, a: Vec<f32>, b: Vec<f32>) -> LoraPair {
        let r1 = r.max(1);
        LoraPair {
            r,
            in_features: a.len() / r1,
            out_features: b.len() / r1,
            a,
            b,
        }
    }

    /// Whether `o` has the same rank and shape.
    pub fn same_shape(&self, o: &LoraPair) -> bool {
        self.r == o.r && self.in_features == o.in_features && self.out_features == o.out_features
    }
}

/// LoRA adapters on the host, in the model's layout: rank, scale (`alpha / r`, or
/// `alpha / sqrt(r)` with rsLoRA) and per layer one optional pair per entry of [`LINEARS`].
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub scale: f32,
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

/// One adapted linear layer on the device: views of [`LoraGpu::params`] and [`LoraGpu::grads`].
pub struct LoraPairGpu {
    /// `lora_A.weight` `[R, in]`.
    pub a: GpuBuffer,
    /// `lora_B.weight` `[out, R]`.
    pub b: GpuBuffer,
    /// Gradient of `a` (accumulates over micro-batches until [`LoraGpu::zero_grads`]).
    pub da: GpuBuffer,
    /// Gradient of `b`.
    pub db: GpuBuffer,
    pub n_in: usize,
    pub n_out: usize,
    /// Where `a` and `b` start in the flat layout (f32 elements).
    pub a_at: usize,
    pub b_at: usize,
}

/// LoRA adapters over a [`crate::LlamaModel`] (uploaded by [`LoraGpu::upload`], beside the
/// model's loading): rank, scale (`alpha / r`, or `alpha / sqrt(r)` with
/// rsLoRA) and per layer one optional pair per entry of [`LINEARS`].
pub struct LoraGpu {
    pub r: usize,
    pub scale: f32,
    pub layers: Vec<[Option<LoraPairGpu>; 7]>,
    /// Total number of trainable parameters.
    pub n_params: usize,
    /// Length of the flat layout (f32 elements): the parameters and the alignment gaps.
    pub flat_len: usize,
    /// Every parameter, `[flat_len]`.
    pub params: GpuBuffer,
    /// Every gradient, `[flat_len]`, the same layout.
    pub grads: GpuBuffer,
}

/// Where each pair of `lora` goes in the flat layout (`(a_at, b_at)` per adapted linear, in
/// flat order) and the layout's length, each tensor starting at a multiple of `align` elements.
pub(crate) fn flat_layout(lora: &Lora, align: usize) -> (Vec<(usize, usize)>, usize) {
    let align = align.max(1);
    let mut at = 0usize;
    let mut place = |n: usize| {
        let start = at.div_ceil(align) * align;
        at = start + n;
        start
    };
    let spots = lora
        .layers
        .iter()
        .flat_map(|l| l.iter().flatten())
        .map(|p| (place(p.a.len()), place(p.b.len())))
        .collect();
    (spots, at)
}

impl LoraGpu {
    /// The pair of linear `t` in layer `i`, if adapted.
    pub fn pair(&self, i: usize, t: usize) -> Option<&LoraPairGpu> {
        self.layers.get(i).and_then(|l| l[t].as_ref())
    }

    /// Every adapted pair with its layer and target index, in flat-layout order.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, &LoraPairGpu)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            l.iter()
                .enumerate()
                .filter_map(move |(t, p)| p.as_ref().map(|p| (i, t, p)))
        })
    }

    /// The lowest layer with an adapter (the backward pass stops there), `None` without adapters.
    pub fn lowest_layer(&self) -> Option<usize> {
        self.pairs().next().map(|(i, _, _)| i)
    }

    /// Records zeroing every gradient (start of an optimizer step): one clear.
    pub fn zero_grads(&self, enc: &mut Encoder) {
        enc.clear(&self.grads);
    }

    /// Splits a flat host vector (`[flat_len]`, e.g. read back from the optimizer's buffers) into
    /// the host form.
    pub fn unflatten(&self, flat: &[f32]) -> Result<Lora, ModelError> {
        if flat.len() < self.flat_len {
            return Err(ModelError::Shape(format!(
                "unflatten: {} values for a LoRA layout of {}",
                flat.len(),
                self.flat_len
            )));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut out: [Option<LoraPair>; 7] = Default::default();
                for (t, p) in l.iter().enumerate() {
                    if let Some(p) = p {
                        let na = self.r * p.n_in;
                        let nb = p.n_out * self.r;
                        out[t] = Some(LoraPair {
                            r: self.r,
                            in_features: p.n_in,
                            out_features: p.n_out,
                            a: flat[p.a_at..p.a_at + na].to_vec(),
                            b: flat[p.b_at..p.b_at + nb].to_vec(),
                        });
                    }
                }
                out
            })
            .collect();
        Ok(Lora {
            r: self.r,
            scale: self.scale,
            layers,
        })
    }

    /// Flattens host adapters of the same layout into `[flat_len]` (zeros in the gaps).
    pub fn flatten(&self, lora: &Lora) -> Result<Vec<f32>, ModelError> {
        let mut flat = vec![0f32; self.flat_len];
        for (i, t, p) in self.pairs() {
            let hp = lora
                .layers
                .get(i)
                .and_then(|l| l[t].as_ref())
                .ok_or_else(|| {
                    ModelError::Shape(format!("flatten: no pair for layers.{i}.{}", LINEARS[t]))
                })?;
            let na = self.r * p.n_in;
            let nb = p.n_out * self.r;
            if hp.a.len() != na || hp.b.len() != nb {
                return Err(ModelError::Shape(format!(
                    "flatten: layers.{i}.{} has a different shape",
                    LINEARS[t]
                )));
            }
            flat[p.a_at..p.a_at + na].copy_from_slice(&hp.a);
            flat[p.b_at..p.b_at + nb].copy_from_slice(&hp.b);
        }
        Ok(flat)
    }

    /// Reads the adapters back to the host (one read).
    pub async fn download(&self, gpu: &Gpu) -> Result<Lora, ModelError> {
        self.unflatten(&gpu.read::<f32>(&self.params).await?)
    }

    /// Reads the gradients back to the host (same layout as the adapters).
    pub async fn download_grads(&self, gpu: &Gpu) -> Result<Lora, ModelError> {
        self.unflatten(&gpu.read::<f32>(&self.grads).await?)
    }
}
