//! Datasets → `(input_ids, labels)` examples, the held-out eval split, and a seeded, resumable
//! batch order.
//!
//! # Labels
//! Labels follow the Hugging Face convention: `labels[t]` is aligned with `input_ids[t]` (not
//! shifted); the model shifts internally, so position `t` predicts `labels[t + 1]` and `labels[0]`
//! is never a target. [`IGNORE_INDEX`] (-100) marks positions without loss: padding, prompts,
//! non-assistant chat turns. Every example is exactly `seq_len` long: longer ones are truncated
//! (the first `seq_len` tokens are kept), shorter ones padded on the right with
//! [`Tokenize::pad_id`] (default: EOS, else 0) and label -100. Right padding needs no attention
//! mask for a causal model: real positions never attend to the padding after them.
//!
//! # Formats
//! - **`.txt`** (also `.text`, `.md`): split into documents by [`TextSplit`] (default: the whole
//!   file is one document). Each document is encoded with special tokens (`add_special=true`,
//!   i.e. BOS for Llama) and followed by EOS (unless the tokenizer already ended it with EOS); the
//!   documents are concatenated into one stream and cut into consecutive `seq_len` blocks (the
//!   last one padded), with `labels = input_ids` (like transformers' `run_clm` `group_texts`;
//!   attention is not masked at document boundaries, the EOS/BOS pair separates them).
//! - **`.jsonl`**, one JSON object per line (blank lines are skipped), one example per record:
//!   - `{"text": s}`: `encode(s, add_special=true)` + EOS, every token a target.
//!   - `{"prompt": p, "completion": c}`: the text `p + c` (no separator is inserted) encoded with
//!     special tokens, + EOS; only the completion tokens and the EOS are targets.
//!   - `{"messages": [{"role", "content"}, ...], "tools"?: [...]}`: rendered with the tokenizer's
//!     chat template (see [`crate::chat`]) and encoded with `add_special=false` (the template writes
//!     BOS itself, as `apply_chat_template(tokenize=True)` does); only assistant spans are targets.
//!   - `{"conversations": [{"from", "value"}, ...]}` (ShareGPT): the same as `messages`, with
//!     `from` `human` / `user` → `user`, `gpt` / `assistant` → `assistant`, `system`, `tool`.
//!   - `{"input_ids": [...], "labels"?: [...], "attention_mask"?: [...]}` (pre-tokenized): the
//!     ids as they are (nothing added), labels one per id (default: the ids; -100 = no loss),
//!     the mask's trailing zeros (right padding) dropped; ids must be in the tokenizer's vocabulary.
//!
//!   Other keys are ignored; [`Columns`] (`--data-column FIELD=COLUMN`) reads a field from another
//!   key. A malformed record is an error naming the file, the 1-based line and what is wrong
//!   ([`TrainError::DataRecord`]).
//! - **`.parquet`** (the Hugging Face Hub's format): every row is a record of the forms above
//!   (columns `text`, `prompt`/`completion`, `messages` as a list of `{role, content}` structs,
//!   `conversations`, `input_ids`/`labels`); errors name the file and the row, counted from 0
//!   ([`TrainError::DataRow`]). Snappy and uncompressed files everywhere, zstd natively.
//!
//! Examples without any target after truncation (e.g. a prompt longer than `seq_len`) are dropped
//! and counted in [`DataStats::dropped`].
//!
//! # Order
//! [`BatchPlan`] gives each epoch a permutation drawn from `Rng::stream(seed, epoch)`, so the order
//! depends only on (seed, epoch, n_examples), never on how many batches were drawn before. A
//! [`DataPosition`] (epoch, index of the next example within that epoch's order) plus the step
//! count is all a checkpoint needs to continue with exactly the batches an uninterrupted run
//! would have seen.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::tokenize::Tokenize;
use crate::{Result, TrainError};

mod parquet;
mod records;

pub use records::{Columns, FIELDS};

/// Label of positions that carry no loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i32 = -100;

/// Shifts Hugging Face labels (aligned with `input_ids`, `[B, T]`) to per-position targets, as
/// `LlamaForCausalLM` does: position `t` predicts `labels[t+1]`; the last position of each
/// sequence gets [`IGNORE_INDEX`].
pub fn shift_labels(labels: &[i32], b: usize, t: usize) -> Vec<i32> {
    assert_eq!(labels.len(), b * t, "shift_labels: labels length");
    let mut out = vec![IGNORE_INDEX; b * t];
    for s in 0..b {
        for i in 0..t.saturating_sub(1) {
            out[s * t + i] = labels[s * t + i + 1];
        }
    }
    out
}

/// Per-position targets over `P+T` positions from Hugging Face labels `[B, T]` (unshifted), as
/// PEFT builds them for prompt tuning: [`IGNORE_INDEX`] for the `P` virtual tokens, then the
/// labels, shifted by [`shift_labels`] (so the last virtual position predicts the first label).
pub fn prompt_targets(labels: &[i32], b: usize, t: usize, p: usize) -> Vec<i32> {
    let mut full = Vec::with_capacity(b * (p + t));
    for s in 0..b {
        full.extend(std::iter::repeat_n(IGNORE_INDEX, p));
        full.extend_from_slice(&labels[s * t..(s + 1) * t]);
    }
    shift_labels(&full, b, p + t)
}

/// One training example, exactly `seq_len` long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids (padding included).
    pub input_ids: Vec<u32>,
    /// Targets aligned with `input_ids` (HF convention, see the module docs); -100 = no loss.
    pub labels: Vec<i32>,
    /// Number of real (non-padding) tokens at the start.
    pub len: usize,
}

impl Example {
    /// Number of positions that are actual targets under the HF shift (`labels[1..]` != -100).
    pub fn n_targets(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// How a `.txt` file is split into documents (each followed by EOS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TextSplit {
    /// The whole file is one document.
    #[default]
    Document,
    /// Every non-blank line is a document (the line break itself is not encoded).
    Lines,
    /// Blocks separated by one or more blank lines are documents (inner line breaks are kept).
    Paragraphs,
}

/// How datasets are turned into examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Length of every example (tokens).
    pub seq_len: usize,
    /// Document split of `.txt` files.
    #[serde(default)]
    pub text_split: TextSplit,
    /// Which key or column holds each field of a record (default: the field's own name).
    #[serde(default)]
    pub columns: Columns,
}

impl DataConfig {
    /// `seq_len` with the default text split and column names.
    pub fn new(seq_len: usize) -> DataConfig {
        DataConfig {
            seq_len,
            text_split: TextSplit::Document,
            columns: Columns::default(),
        }
    }
}

/// Counts gathered while building a [`Dataset`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    /// Records read (jsonl lines with a record, or `.txt` documents).
    pub records: usize,
    /// Examples kept.
    pub examples: usize,
    /// Examples that were longer than `seq_len` and truncated.
    pub truncated: usize,
    /// Examples dropped because no target was left.
    pub dropped: usize,
    /// Real tokens in the kept examples.
    pub tokens: usize,
    /// Target positions in the kept examples (see [`Example::n_targets`]).
    pub targets: usize,
}

impl DataStats {
    fn add(&mut self, o: &DataStats) {
        self.records += o.records;
        self.examples += o.examples;
        self.truncated += o.truncated;
        self.dropped += o.dropped;
        self.tokens += o.tokens;
        self.targets += o.targets;
    }
}

/// Examples of one or more files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub seq_len: usize,
    pub examples: Vec<Example>,
    pub stats: DataStats,
}

fn data_err(file: &str, msg: impl Into<String>) -> TrainError {
    TrainError::Data {
        file: file.to_string(),
        msg: msg.into(),
    }
}

fn row_err(file: &str, row: usize, msg: impl Into<String>) -> TrainError {
    TrainError::DataRow {
        file: file.to_string(),
        row,
        msg: msg.into(),
    }
}

fn rec_err(file: &str, line: usize, msg: impl Into<String>) -> TrainError {
    TrainError::DataRecord {
        file: file.to_string(),
        line,
        msg: msg.into(),
    }
}

struct Builder {
    seq_len: usize,
    pad: u32,
    ds: Dataset,
}

impl Builder {
    fn new<T: Tokenize + ?Sized>(file: &str, tok: &T, cfg: &DataConfig) -> Result<Builder> {
        if cfg.seq_len < 2 {
            return Err(data_err(
                file,
                format!("seq_len must be >= 2, got {}", cfg.seq_len),
            ));
        }
        Ok(Builder {
            seq_len: cfg.seq_len,
            pad: tok.pad_id().or(tok.eos_id()).unwrap_or(0),
            ds: Dataset {
                seq_len: cfg.seq_len,
                examples: Vec::new(),
                stats: DataStats::default(),
            },
        })
    }

    /// Truncates/pads one sequence to `seq_len` and keeps it if it has a target.
    fn push(&mut self, mut ids: Vec<u32>, mut labels: Vec<i32>) {
        debug_assert_eq!(ids.len(), labels.len());
        if ids.len() > self.seq_len {
            ids.truncate(self.seq_len);
            labels.truncate(self.seq_len);
            self.ds.stats.truncated += 1;
        }
        let len = ids.len();
        ids.resize(self.seq_len, self.pad);
        labels.resize(self.seq_len, IGNORE_INDEX);
        let ex = Example {
            input_ids: ids,
            labels,
            len,
        };
        let targets = ex.n_targets();
        if targets == 0 {
            self.ds.stats.dropped += 1;
            return;
        }
        self.ds.stats.examples += 1;
        self.ds.stats.tokens += len;
        self.ds.stats.targets += targets;
        self.ds.examples.push(ex);
    }

    fn finish(self, file: &str) -> Result<Dataset> {
        if self.ds.examples.is_empty() {
            return Err(data_err(
                file,
                format!(
                    "no usable example ({} records, {} dropped without targets)",
                    self.ds.stats.records, self.ds.stats.dropped
                ),
            ));
        }
        Ok(self.ds)
    }
}

/// Appends EOS unless the sequence already ends with it.
fn push_eos<T: Tokenize + ?Sized>(
    tok: &T,
    ids: &mut Vec<u32>,
    labels: &mut Vec<i32>,
    supervised: bool,
) {
    if let Some(eos) = tok.eos_id() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
            labels.push(if supervised { eos as i32 } else { IGNORE_INDEX });
        }
    }
}

/// Tokenizes `text` and labels the tokens inside `spans` (byte ranges); others get -100.
///
/// With offsets ([`Tokenize::encode_with_offsets`]) the text is encoded once and a token is a
/// target iff its byte range is non-empty and starts inside a span (a token merged across a span
/// start is not a target). Without offsets the text is cut at every span boundary and each piece
/// is encoded on its own with `add_special=false` (BOS is prepended when `add_special` and the
/// tokenizer has one); this can tokenize differently at the boundaries than encoding the whole
/// text would, which is harmless when boundaries fall at special tokens or line starts, as they do
/// for chat templates.
pub fn tokenize_supervised<T: Tokenize + ?Sized>(
    tok: &T,
    text: &str,
    spans: &[Range<usize>],
    add_special: bool,
) -> std::result::Result<(Vec<u32>, Vec<i32>), String> {
    let inside = |pos: usize| spans.iter().any(|s| s.contains(&pos));
    if let Some(enc) = tok.encode_with_offsets(text, add_special) {
        let enc = enc?;
        let mut ids = Vec::with_capacity(enc.len());
        let mut labels = Vec::with_capacity(enc.len());
        for (id, r) in enc {
            ids.push(id);
            let target = !r.is_empty() && inside(r.start);
            labels.push(if target { id as i32 } else { IGNORE_INDEX });
        }
        return Ok((ids, labels));
    }
    let mut cuts: Vec<usize> = vec![0, text.len()];
    for s in spans {
        if s.start > s.end || s.end > text.len() {
            return Err(format!("span {s:?} outside the text (len {})", text.len()));
        }
        cuts.push(s.start);
        cuts.push(s.end);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    if add_special {
        if let Some(bos) = tok.bos_id() {
            ids.push(bos);
            labels.push(IGNORE_INDEX);
        }
    }
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a == b {
            continue;
        }
        let piece = text
            .get(a..b)
            .ok_or_else(|| format!("span boundary {a} or {b} is not on a character boundary"))?;
        let target = inside(a);
        for id in tok.encode(piece, false)? {
            ids.push(id);
            labels.push(if target { id as i32 } else { IGNORE_INDEX });
        }
    }
    Ok((ids, labels))
}

fn split_documents(text: &str, split: TextSplit) -> Vec<&str> {
    match split {
        TextSplit::Document => {
            if text.trim().is_empty() {
                vec![]
            } else {
                vec![text]
            }
        }
        TextSplit::Lines => text.lines().filter(|l| !l.trim().is_empty()).collect(),
        TextSplit::Paragraphs => {
            let mut docs = Vec::new();
            let mut start: Option<usize> = None;
            let mut end = 0;
            let mut pos = 0;
            for line in text.split_inclusive('\n') {
                let blank = line.trim().is_empty();
                if blank {
                    if let Some(s) = start.take() {
                        docs.push(&text[s..end]);
                    }
                } else {
                    if start.is_none() {
                        start = Some(pos);
                    }
                    end = pos + line.trim_end_matches(['\n', '\r']).len();
                }
                pos += line.len();
            }
            if let Some(s) = start {
                docs.push(&text[s..end]);
            }
            docs
        }
    }
}

impl Dataset {
    /// Builds examples from the contents of a plain-text file (`name` is used in errors).
    pub fn from_txt<T: Tokenize + ?Sized>(
        name: &str,
        text: &str,
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let mut b = Builder::new(name, tok, cfg)?;
        let mut stream: Vec<u32> = Vec::new();
        for doc in split_documents(text, cfg.text_split) {
            b.ds.stats.records += 1;
            let mut ids = tok
                .encode(doc, true)
                .map_err(|e| data_err(name, format!("tokenizer: {e}")))?;
            let mut dummy = Vec::new();
            push_eos(tok, &mut ids, &mut dummy, false);
            stream.extend(ids);
        }
        for block in stream.chunks(cfg.seq_len) {
            let labels = block.iter().map(|&t| t as i32).collect();
            b.push(block.to_vec(), labels);
        }
        b.finish(name)
    }

    /// Builds examples from the contents of a JSON-lines file (`name` is used in errors).
    pub fn from_jsonl<T: Tokenize + ?Sized>(
        name: &str,
        text: &str,
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let mut b = Builder::new(name, tok, cfg)?;
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            b.ds.stats.records += 1;
            let (ids, labels) =
                jsonl_record(tok, line, &cfg.columns).map_err(|m| rec_err(name, lineno, m))?;
            b.push(ids, labels);
        }
        b.finish(name)
    }

    /// Builds examples from a Parquet file's bytes (`name` is used in errors): one record per row.
    pub fn from_parquet<T: Tokenize + ?Sized>(
        name: &str,
        bytes: &[u8],
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let mut b = Builder::new(name, tok, cfg)?;
        parquet::for_each_row(bytes, |row, obj| {
            b.ds.stats.records += 1;
            let raw = || Ok(minijinja::Value::from(minijinja::value::Serde(obj)));
            let (ids, labels) =
                records::record(tok, obj, &raw, &cfg.columns).map_err(|m| (Some(row), m))?;
            b.push(ids, labels);
            Ok(())
        })
        .map_err(|(row, msg)| match row {
            Some(r) => row_err(name, r, msg),
            None => data_err(name, msg),
        })?;
        b.finish(name)
    }

    /// Dispatches on the extension of `name`: `.jsonl` → [`Dataset::from_jsonl`]; `.txt`, `.text`,
    /// `.md` → [`Dataset::from_txt`]. A `.parquet` file is binary: pass its bytes to
    /// [`Dataset::from_named_bytes`].
    pub fn from_named_str<T: Tokenize + ?Sized>(
        name: &str,
        text: &str,
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl") => Dataset::from_jsonl(name, text, tok, cfg),
            Some("txt" | "text" | "md") => Dataset::from_txt(name, text, tok, cfg),
            Some("parquet") => Err(data_err(
                name,
                "a Parquet file is binary: pass its bytes, not text (in the browser, a \
                 Uint8Array as the data)",
            )),
            _ => Err(data_err(
                name,
                "unknown dataset extension (expected .txt, .text, .md, .jsonl or .parquet)",
            )),
        }
    }

    /// Like [`Dataset::from_named_str`] from raw bytes, and `.parquet` → [`Dataset::from_parquet`];
    /// invalid UTF-8 in a text file is an error naming the line.
    pub fn from_named_bytes<T: Tokenize + ?Sized>(
        name: &str,
        bytes: &[u8],
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        if ext.as_deref() == Some("parquet") {
            return Dataset::from_parquet(name, bytes, tok, cfg);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|&&c| c == b'\n').count() + 1;
            rec_err(name, line, format!("invalid UTF-8 at byte {at}"))
        })?;
        Dataset::from_named_str(name, text, tok, cfg)
    }

    /// Reads and builds a dataset file (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load<T: Tokenize + ?Sized>(
        path: &std::path::Path,
        tok: &T,
        cfg: &DataConfig,
    ) -> Result<Dataset> {
        let bytes = crate::fsio::read(path)?;
        Dataset::from_named_bytes(&path.display().to_string(), &bytes, tok, cfg)
    }

    /// Appends the examples of `other` (same `seq_len`).
    pub fn extend(&mut self, other: Dataset) -> Result<()> {
        if other.seq_len != self.seq_len {
            return Err(TrainError::Config(format!(
                "cannot merge datasets with seq_len {} and {}",
                self.seq_len, other.seq_len
            )));
        }
        self.stats.add(&other.stats);
        self.examples.extend(other.examples);
        Ok(())
    }
}

/// One `.jsonl` line → its example (the record's forms: [`records`]).
fn jsonl_record<T: Tokenize + ?Sized>(
    tok: &T,
    line: &str,
    cols: &Columns,
) -> std::result::Result<(Vec<u32>, Vec<i32>), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(records::json_line_err)?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", records::json_kind(&v)))?;
    // Re-parsed into template values so object key order is kept (as Python dicts keep it).
    let raw = || serde_json::from_str(line).map_err(records::json_line_err);
    records::record(tok, obj, &raw, cols)
}

/// Size of the held-out evaluation set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    /// No eval set.
    #[default]
    None,
    /// `ceil(fraction * n)` examples (like `datasets`' `train_test_split(test_size=0.1)`);
    /// `0 < fraction < 1`.
    Fraction(f64),
    /// Exactly this many examples.
    Count(usize),
}

/// Splits `items` into (train, eval): the eval items are the first `n_eval` of a permutation drawn
/// from `Rng::stream(seed, u64::MAX)`; both parts keep their original relative order. Errors if
/// the eval or the train part would be empty (for a non-`None` split).
pub fn split_eval<T>(items: Vec<T>, split: EvalSplit, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    let n = items.len();
    let n_eval = match split {
        EvalSplit::None => return Ok((items, Vec::new())),
        EvalSplit::Fraction(f) => {
            if !(f > 0.0 && f < 1.0) {
                return Err(TrainError::Config(format!(
                    "eval fraction must be in (0, 1), got {f}"
                )));
            }
            (f * n as f64).ceil() as usize
        }
        EvalSplit::Count(c) => c,
    };
    if n_eval == 0 || n_eval >= n {
        return Err(TrainError::Config(format!(
            "eval split of {n_eval} out of {n} examples leaves no eval or no train example"
        )));
    }
    let perm = Rng::stream(seed, u64::MAX).permutation(n);
    let mut is_eval = vec![false; n];
    for &i in &perm[..n_eval] {
        is_eval[i] = true;
    }
    let mut train = Vec::with_capacity(n - n_eval);
    let mut eval = Vec::with_capacity(n_eval);
    for (item, e) in items.into_iter().zip(is_eval) {
        if e {
            eval.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, eval))
}

/// When training ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many passes over the training set.
    Epochs(u64),
    /// After this many optimizer steps (batches), crossing epochs as needed.
    Steps(u64),
}

/// Where the data order stands: the next batch starts at `order(epoch)[index]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: usize,
}

/// The batch order over `n_examples` training examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub n_examples: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle every epoch (otherwise `0..n` in order).
    pub shuffle: bool,
    /// Skip the last, smaller batch of an epoch (otherwise it is yielded with fewer rows).
    pub drop_last: bool,
}

impl BatchPlan {
    /// A shuffled plan that keeps the last partial batch. Errors on zero examples or batch size.
    pub fn new(n_examples: usize, batch_size: usize, seed: u64) -> Result<BatchPlan> {
        let p = BatchPlan {
            n_examples,
            batch_size,
            seed,
            shuffle: true,
            drop_last: false,
        };
        p.validate()?;
        Ok(p)
    }

    /// An unshuffled plan (for evaluation).
    pub fn sequential(n_examples: usize, batch_size: usize) -> Result<BatchPlan> {
        let mut p = BatchPlan::new(n_examples, batch_size, 0)?;
        p.shuffle = false;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        if self.n_examples == 0 || self.batch_size == 0 {
            return Err(TrainError::Config(format!(
                "batch plan needs examples and a batch size (got {} examples, batch size {})",
                self.n_examples, self.batch_size
            )));
        }
        if self.drop_last && self.batch_size > self.n_examples {
            return Err(TrainError::Config(format!(
                "drop_last with batch size {} > {} examples yields no batch",
                self.batch_size, self.n_examples
            )));
        }
        Ok(())
    }

    /// Batches (optimizer steps) per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n_examples / self.batch_size
        } else {
            self.n_examples.div_ceil(self.batch_size)
        }
    }

    /// Number of optimizer steps until `stop`.
    pub fn total_steps(&self, stop: Stop) -> u64 {
        match stop {
            Stop::Epochs(e) => e * self.batches_per_epoch() as u64,
            Stop::Steps(s) => s,
        }
    }

    /// The example order of `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            Rng::stream(self.seed, epoch).permutation(self.n_examples)
        } else {
            (0..self.n_examples).collect()
        }
    }

    /// Moves a position at the end of an epoch to the start of the next one.
    pub fn normalize(&self, pos: DataPosition) -> DataPosition {
        let left = self.n_examples.saturating_sub(pos.index);
        if left == 0 || (self.drop_last && left < self.batch_size) {
            DataPosition {
                epoch: pos.epoch + 1,
                index: 0,
            }
        } else {
            pos
        }
    }

    /// Batches from `start` (after `steps_done` steps) until `stop`. A fresh run uses
    /// `iter(DataPosition::default(), 0, stop)`; a resumed one the position and step count of its
    /// checkpoint.
    pub fn iter(&self, start: DataPosition, steps_done: u64, stop: Stop) -> Result<BatchIter> {
        self.validate()?;
        if start.index > self.n_examples {
            return Err(TrainError::Config(format!(
                "data position index {} beyond {} examples",
                start.index, self.n_examples
            )));
        }
        Ok(BatchIter {
            plan: self.clone(),
            pos: self.normalize(start),
            steps_done,
            stop,
            order: Vec::new(),
            order_epoch: None,
        })
    }
}

/// Iterator over batches (as example indices) of a [`BatchPlan`].
#[derive(Clone, Debug)]
pub struct BatchIter {
    plan: BatchPlan,
    pos: DataPosition,
    steps_done: u64,
    stop: Stop,
    order: Vec<usize>,
    order_epoch: Option<u64>,
}

impl BatchIter {
    /// Position of the next batch (what a checkpoint stores).
    pub fn position(&self) -> DataPosition {
        self.pos
    }

    /// Batches yielded so far, including the `steps_done` the iterator started from.
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }
}

impl Iterator for BatchIter {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let done = match self.stop {
            Stop::Epochs(e) => self.pos.epoch >= e,
            Stop::Steps(s) => self.steps_done >= s,
        };
        if done {
            return None;
        }
        if self.order_epoch != Some(self.pos.epoch) {
            self.order = self.plan.epoch_order(self.pos.epoch);
            self.order_epoch = Some(self.pos.epoch);
        }
        let end = (self.pos.index + self.plan.batch_size).min(self.plan.n_examples);
        let batch = self.order[self.pos.index..end].to_vec();
        self.pos = self.plan.normalize(DataPosition {
            epoch: self.pos.epoch,
            index: end,
        });
        self.steps_done += 1;
        Some(batch)
    }
}

/// A batch as flat row-major `[rows, seq_len]` arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    /// Real tokens (padding excluded), for tokens/s.
    pub n_tokens: usize,
    /// Target positions (the loss denominator), see [`Example::n_targets`].
    pub n_targets: usize,
}

/// Gathers `examples[indices]` into a [`Batch`]. Errors on an index out of range, an empty index
/// list, or examples of different lengths.
pub fn collate(examples: &[Example], indices: &[usize]) -> Result<Batch> {
    let first = indices
        .first()
        .and_then(|&i| examples.get(i))
        .ok_or_else(|| TrainError::Config("collate: empty batch or index out of range".into()))?;
    let seq_len = first.input_ids.len();
    let mut b = Batch {
        rows: indices.len(),
        seq_len,
        input_ids: Vec::with_capacity(indices.len() * seq_len),
        labels: Vec::with_capacity(indices.len() * seq_len),
        n_tokens: 0,
        n_targets: 0,
    };
    for &i in indices {
        let ex = examples.get(i).ok_or_else(|| {
            TrainError::Config(format!("collate: index {i} >= {} examples", examples.len()))
        })?;
        if ex.input_ids.len() != seq_len || ex.labels.len() != seq_len {
            return Err(TrainError::Config(format!(
                "collate: example {i} has length {} / {}, expected {seq_len}",
                ex.input_ids.len(),
                ex.labels.len()
            )));
        }
        b.input_ids.extend_from_slice(&ex.input_ids);
        b.labels.extend_from_slice(&ex.labels);
        b.n_tokens += ex.len;
        b.n_targets += ex.n_targets();
    }
    Ok(b)
}
