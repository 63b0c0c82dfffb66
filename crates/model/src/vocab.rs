//! Vocabulary-sized tables (the token embedding and the LM head, `[V, C]`) stored as row chunks
//! so that each chunk fits one storage binding: Qwen2.5-0.5B's embedding is 544 MB in f32 and
//! Llama-3.2-1B's 1 GiB, above lavapipe's 128 MiB and browsers' usual binding limits.
//!
//! The tables are frozen, so they stay in the checkpoint's own dtype ([`VocabTable::load`]): bf16
//! stays bf16, f16 stays f16, f32 stays f32, packed two 16-bit elements per u32 and widened to f32
//! exactly inside the kernels ([`TableDtype`]), so a 16-bit table gives bit for bit what its f32
//! copy gives, in half the memory. A quantized GGUF table (SmolLM2's Q8_0) becomes f16: Q8_0's
//! `q * d` products have at most 8 + 11 significant bits, which f16's 11 hold for all but the
//! largest `q`; SmolLM2's logits move by up to 1.96e-2 (`tests/model_forward.rs` measures it).
//!
//! The embedding gathers from every chunk (each id lives in exactly one); the LM head writes each
//! chunk's column band of the logits (`nn::matmul_fwd_strided_dtype`), and its backward adds each
//! chunk's share of the input gradient (`nn::matmul_bwd_input_strided_dtype`). With a single chunk
//! the band is the whole output: the plain kernels' work.

use tinytune_gpu::ops::nn;
use tinytune_gpu::{Encoder, Gpu, GpuBuffer, TableDtype};

use crate::float::FloatDtype;
use crate::source::ModelSource;
use crate::ModelError;

/// Rows converted and written to the device at a time while loading a table: the host holds one
/// such piece (`[PIECE_ROWS, C]` f32 at most), never the whole table. Even, so that every piece
/// of a 16-bit table starts on a whole u32.
const PIECE_ROWS: usize = 1024;

/// The device dtype of a frozen table stored in the model file as `stored` (`None`: quantized).
pub fn table_dtype(stored: Option<FloatDtype>) -> FloatDtype {
    stored.unwrap_or(FloatDtype::F16)
}

/// The kernels' name for a float dtype.
pub fn kernel_dtype(d: FloatDtype) -> TableDtype {
    match d {
        FloatDtype::F32 => TableDtype::F32,
        FloatDtype::F16 => TableDtype::F16,
        FloatDtype::BF16 => TableDtype::BF16,
    }
}

/// Rows `[row0, row0 + rows)` of a table.
pub struct VocabChunk {
    pub row0: usize,
    pub rows: usize,
    pub buf: GpuBuffer,
}

/// A `[V, C]` table in row chunks, f32 or 16-bit ([`TableDtype`]).
pub struct VocabTable {
    pub v: usize,
    pub c: usize,
    /// What each element is stored as.
    pub dtype: FloatDtype,
    pub chunks: Vec<VocabChunk>,
}

/// Rows of one chunk: as many `[c]` rows of `dtype` as one binding of `gpu` holds, at most
/// `max_rows` (and at least 1).
fn chunk_rows(gpu: &Gpu, c: usize, dtype: FloatDtype, max_rows: Option<usize>) -> usize {
    // A 16-bit chunk of an odd number of elements takes one more u16.
    let fit =
        ((gpu.max_binding().saturating_sub(4)) / (c as u64 * dtype.size() as u64)).max(1) as usize;
    max_rows.unwrap_or(fit).clamp(1, fit)
}

fn chunk_label(name: &str, row0: usize, rows: usize, v: usize) -> String {
    if rows == v {
        name.to_string()
    } else {
        format!("{name}[{row0}..{}]", row0 + rows)
    }
}

impl VocabTable {
    /// Loads the 2-D tensor `name` of `src` (`[V, C]`) in chunks of at most `max_rows` rows
    /// (default: as many as one binding holds), stored as `dtype` (default: [`table_dtype`] of
    /// how the file stores it). The host converts and writes [`PIECE_ROWS`] rows at a time: no
    /// copy of the whole table is made.
    pub fn load(
        gpu: &Gpu,
        src: &ModelSource,
        name: &str,
        dtype: Option<FloatDtype>,
        max_rows: Option<usize>,
    ) -> Result<VocabTable, ModelError> {
        let meta = src
            .tensor_meta(name)
            .ok_or_else(|| ModelError::Tensor(format!("the model has no tensor '{name}'")))?;
        let [v, c] = meta.shape[..] else {
            return Err(ModelError::Shape(format!(
                "{name}: shape {:?}, expected [V, C]",
                meta.shape
            )));
        };
        if v == 0 || c == 0 {
            return Err(ModelError::Shape(format!("{name}: empty table [{v}, {c}]")));
        }
        let dtype = dtype.unwrap_or_else(|| table_dtype(src.stored_float(name)));
        let per = chunk_rows(gpu, c, dtype, max_rows);
        let kd = kernel_dtype(dtype);
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < v {
            let rows = per.min(v - row0);
            let buf = gpu.alloc(
                &chunk_label(name, row0, rows, v),
                kd.bytes((rows * c) as u64),
            )?;
            let mut r = 0;
            while r < rows {
                let n = PIECE_ROWS.min(rows - r);
                let bytes = src.load_rows(name, row0 + r, n, dtype)?;
                gpu.write(&buf, (r * c * dtype.size()) as u64, &bytes);
                r += n;
            }
            chunks.push(VocabChunk { row0, rows, buf });
            row0 += rows;
        }
        Ok(VocabTable {
            v,
            c,
            dtype,
            chunks,
        })
    }

    /// Uploads f32 `data` (`[v, c]` row-major) as an f32 table in chunks of at most `max_rows` rows (default: as many
    /// as one binding of the device holds).
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        data: &[f32],
        v: usize,
        c: usize,
        max_rows: Option<usize>,
    ) -> Result<VocabTable, ModelError> {
        if data.len() != v * c || v == 0 || c == 0 {
            return Err(ModelError::Shape(format!(
                "{name}: {} values for [{v}, {c}]",
                data.len()
            )));
        }
        let per = chunk_rows(gpu, c, FloatDtype::F32, max_rows);
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < v {
            let rows = per.min(v - row0);
            let label = chunk_label(name, row0, rows, v);
            let buf = gpu.upload(&label, &data[row0 * c..(row0 + rows) * c])?;
            chunks.push(VocabChunk { row0, rows, buf });
            row0 += rows;
        }
        Ok(VocabTable {
            v,
            c,
            dtype: FloatDtype::F32,
            chunks,
        })
    }

    /// Device bytes of the table (every chunk).
    pub fn device_bytes(&self) -> u64 {
        self.chunks.iter().map(|ch| ch.buf.device_bytes()).sum()
    }

    /// Records `x[i] = table[ids[i]]` for `m` ids.
    pub fn embed(
        &self,
        enc: &mut Encoder,
        ids: &GpuBuffer,
        x: &GpuBuffer,
        m: usize,
    ) -> Result<(), ModelError> {
        let kd = kernel_dtype(self.dtype);
        for ch in &self.chunks {
            nn::embedding_fwd_rows_dtype(
                enc, ids, &ch.buf, kd, x, m, self.v, ch.row0, ch.rows, self.c,
            )?;
        }
        Ok(())
    }

    /// Records `logits[m, V] = h[m, C] · tableᵀ`.
    pub fn head_fwd(
        &self,
        enc: &mut Encoder,
        h: &GpuBuffer,
        logits: &GpuBuffer,
        m: usize,
    ) -> Result<(), ModelError> {
        let kd = kernel_dtype(self.dtype);
        for ch in &self.chunks {
            nn::matmul_fwd_strided_dtype(
                enc,
                h,
                &ch.buf,
                kd,
                logits,
                nn::MatmulShape {
                    m,
                    k: self.c,
                    n: ch.rows,
                },
                self.v,
                ch.row0,
                1.0,
                false,
            )?;
        }
        Ok(())
    }

    /// Records `dh[m, C] = dlogits[m, V] · table` (no gradient for the frozen table).
    pub fn head_bwd(
        &self,
        enc: &mut Encoder,
        dlogits: &GpuBuffer,
        dh: &GpuBuffer,
        m: usize,
    ) -> Result<(), ModelError> {
        let kd = kernel_dtype(self.dtype);
        for (j, ch) in self.chunks.iter().enumerate() {
            nn::matmul_bwd_input_strided_dtype(
                enc,
                dlogits,
                &ch.buf,
                kd,
                dh,
                nn::MatmulShape {
                    m,
                    k: self.c,
                    n: ch.rows,
                },
                self.v,
                ch.row0,
                j > 0,
            )?;
        }
        Ok(())
    }
}
