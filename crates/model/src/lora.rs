//! LoRA adapters on the device: one `lora_A` `[R, in]` / `lora_B` `[out, R]` pair per adapted
//! linear layer, their gradients, and the flat layout the optimizer works on.
//!
//! Each pair lives in its own buffers (the kernels bind whole buffers), and the trainer's flat
//! state (params, grads, Adam moments: one layout, one optimizer dispatch) is filled and read back
//! with buffer copies: [`LoraGpu::copy_grads_to`] after the backward pass, [`LoraGpu::copy_params_from`]
//! after the update. The flat layout visits layers in order, in each layer the targets in the order
//! of [`crate::targets::LINEARS`], and for each pair `a` then `b`.
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

/// One adapted linear layer on the device.
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
    /// Offset (in f32 elements) of `a` in the flat layout; `b` follows at `offset + R * n_in`.
    pub offset: usize,
}

/// LoRA adapters over a [`crate::LlamaModel`] (uploaded by [`LoraGpu::upload`], beside the
/// model's loading): rank, scale (`alpha / r`, or `alpha / sqrt(r)` with
/// rsLoRA) and per layer one optional pair per entry of [`LINEARS`].
pub struct LoraGpu {
    pub r: usize,
    pub scale: f32,
    pub layers: Vec<[Option<LoraPairGpu>; 7]>,
    /// Total number of trainable parameters (length of the flat layout).
    pub n_params: usize,
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

    /// Records zeroing every gradient (start of an optimizer step).
    pub fn zero_grads(&self, enc: &mut Encoder) {
        for (_, _, p) in self.pairs() {
            enc.clear(&p.da);
            enc.clear(&p.db);
        }
    }

    fn check_flat(&self, flat: &GpuBuffer) -> Result<(), ModelError> {
        if flat.len < (self.n_params * 4) as u64 {
            return Err(ModelError::Shape(format!(
                "flat LoRA buffer {:?} holds {} bytes, {} parameters need {}",
                flat.label,
                flat.len,
                self.n_params,
                self.n_params * 4
            )));
        }
        Ok(())
    }

    /// Records, for every pair, a copy between its two buffers (picked by `pick`: `(a, b)` or the
    /// gradients) and their place in the flat buffer; `to_flat` sets the direction.
    fn copy_flat(
        &self,
        enc: &mut Encoder,
        flat: &GpuBuffer,
        to_flat: bool,
        pick: impl Fn(&LoraPairGpu) -> (&GpuBuffer, &GpuBuffer),
    ) -> Result<(), ModelError> {
        self.check_flat(flat)?;
        for (_, _, p) in self.pairs() {
            let na = (self.r * p.n_in * 4) as u64;
            let nb = (p.n_out * self.r * 4) as u64;
            let off = (p.offset * 4) as u64;
            let (a, b) = pick(p);
            for (buf, at, n) in [(a, off, na), (b, off + na, nb)] {
                if to_flat {
                    enc.copy(buf, 0, flat, at, n);
                } else {
                    enc.copy(flat, at, buf, 0, n);
                }
            }
        }
        Ok(())
    }

    /// Records copying every gradient into the flat buffer `flat` (`[n_params]`).
    pub fn copy_grads_to(&self, enc: &mut Encoder, flat: &GpuBuffer) -> Result<(), ModelError> {
        self.copy_flat(enc, flat, true, |p| (&p.da, &p.db))
    }

    /// Records copying every parameter into the flat buffer `flat`.
    pub fn copy_params_to(&self, enc: &mut Encoder, flat: &GpuBuffer) -> Result<(), ModelError> {
        self.copy_flat(enc, flat, true, |p| (&p.a, &p.b))
    }

    /// Records copying the parameters back from the flat buffer (after an optimizer update).
    pub fn copy_params_from(&self, enc: &mut Encoder, flat: &GpuBuffer) -> Result<(), ModelError> {
        self.copy_flat(enc, flat, false, |p| (&p.a, &p.b))
    }

    /// Splits a flat host vector (`[n_params]`, e.g. read back from the optimizer's buffers) into
    /// the host form.
    pub fn unflatten(&self, flat: &[f32]) -> Result<Lora, ModelError> {
        if flat.len() < self.n_params {
            return Err(ModelError::Shape(format!(
                "unflatten: {} values for {} LoRA parameters",
                flat.len(),
                self.n_params
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
                            a: flat[p.offset..p.offset + na].to_vec(),
                            b: flat[p.offset + na..p.offset + na + nb].to_vec(),
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

    /// Flattens host adapters of the same layout into `[n_params]`.
    pub fn flatten(&self, lora: &Lora) -> Result<Vec<f32>, ModelError> {
        let mut flat = vec![0f32; self.n_params];
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
            flat[p.offset..p.offset + na].copy_from_slice(&hp.a);
            flat[p.offset + na..p.offset + na + nb].copy_from_slice(&hp.b);
        }
        Ok(flat)
    }

    /// Reads the adapters back to the host.
    pub async fn download(&self, gpu: &Gpu) -> Result<Lora, ModelError> {
        self.read_pairs(gpu, |p| (&p.a, &p.b)).await
    }

    /// Reads the gradients back to the host (same layout as the adapters).
    pub async fn download_grads(&self, gpu: &Gpu) -> Result<Lora, ModelError> {
        self.read_pairs(gpu, |p| (&p.da, &p.db)).await
    }

    async fn read_pairs(
        &self,
        gpu: &Gpu,
        pick: impl Fn(&LoraPairGpu) -> (&GpuBuffer, &GpuBuffer),
    ) -> Result<Lora, ModelError> {
        let mut flat = vec![0f32; self.n_params];
        for (_, _, p) in self.pairs() {
            let na = self.r * p.n_in;
            let nb = p.n_out * self.r;
            let (a, b) = pick(p);
            let a = gpu.read::<f32>(a).await?;
            let b = gpu.read::<f32>(b).await?;
            flat[p.offset..p.offset + na].copy_from_slice(&a[..na]);
            flat[p.offset + na..p.offset + na + nb].copy_from_slice(&b[..nb]);
        }
        self.unflatten(&flat)
    }
}
