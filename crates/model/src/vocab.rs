//! Vocabulary-sized tables (the token embedding and the LM head, `[V, C]` f32) stored as row chunks
//! so that each chunk fits one storage binding: Qwen2.5-0.5B's embedding is 544 MB and
//! Llama-3.2-1B's 1 GiB, above lavapipe's 128 MiB and browsers' usual binding limits.
//!
//! The embedding gathers from every chunk (each id lives in exactly one); the LM head writes each
//! chunk's column band of the logits (`nn::matmul_fwd_strided`), and its backward adds each
//! chunk's share of the input gradient (`nn::matmul_bwd_input_strided`). With a single chunk the
//! plain kernels run.

use tinytune_gpu::ops::nn;
use tinytune_gpu::{Encoder, Gpu, GpuBuffer};

use crate::ModelError;

/// Rows `[row0, row0 + rows)` of a table.
pub struct VocabChunk {
    pub row0: usize,
    pub rows: usize,
    pub buf: GpuBuffer,
}

/// A `[V, C]` f32 table in row chunks.
pub struct VocabTable {
    pub v: usize,
    pub c: usize,
    pub chunks: Vec<VocabChunk>,
}

impl VocabTable {
    /// Uploads `data` (`[v, c]` row-major) in chunks of at most `max_rows` rows (default: as many
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
        let fit = (gpu.max_binding() / (c as u64 * 4)).max(1) as usize;
        let per = max_rows.unwrap_or(fit).clamp(1, fit);
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < v {
            let rows = per.min(v - row0);
            let label = if rows == v {
                name.to_string()
            } else {
                format!("{name}[{row0}..{}]", row0 + rows)
            };
            let buf = gpu.upload(&label, &data[row0 * c..(row0 + rows) * c])?;
            chunks.push(VocabChunk { row0, rows, buf });
            row0 += rows;
        }
        Ok(VocabTable { v, c, chunks })
    }

    /// Records `x[i] = table[ids[i]]` for `m` ids.
    pub fn embed(
        &self,
        enc: &mut Encoder,
        ids: &GpuBuffer,
        x: &GpuBuffer,
        m: usize,
    ) -> Result<(), ModelError> {
        match self.chunks.as_slice() {
            [one] => nn::embedding_fwd(enc, ids, &one.buf, x, m, self.v, self.c)?,
            chunks => {
                for ch in chunks {
                    nn::embedding_fwd_rows(
                        enc, ids, &ch.buf, x, m, self.v, ch.row0, ch.rows, self.c,
                    )?;
                }
            }
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
        match self.chunks.as_slice() {
            [one] => nn::matmul_fwd(
                enc,
                h,
                &one.buf,
                logits,
                nn::MatmulShape {
                    m,
                    k: self.c,
                    n: self.v,
                },
                1.0,
                false,
            )?,
            chunks => {
                for ch in chunks {
                    nn::matmul_fwd_strided(
                        enc,
                        h,
                        &ch.buf,
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
            }
        }
        Ok(())
    }

    /// Records `dh[m, C] = dlogits[m, V] · table`.
    pub fn head_bwd(
        &self,
        enc: &mut Encoder,
        dlogits: &GpuBuffer,
        dh: &GpuBuffer,
        m: usize,
    ) -> Result<(), ModelError> {
        match self.chunks.as_slice() {
            [one] => nn::matmul_bwd_input(
                enc,
                dlogits,
                &one.buf,
                dh,
                nn::MatmulShape {
                    m,
                    k: self.c,
                    n: self.v,
                },
                false,
            )?,
            chunks => {
                for (j, ch) in chunks.iter().enumerate() {
                    nn::matmul_bwd_input_strided(
                        enc,
                        dlogits,
                        &ch.buf,
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
            }
        }
        Ok(())
    }
}
