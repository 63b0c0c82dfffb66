//! The tokenizer interface the data pipeline needs. The model crate's tokenizer (or a test's toy
//! tokenizer) implements it; nothing here depends on a particular tokenizer implementation.

use std::ops::Range;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::{Result, TrainError};

/// Token ids with their byte ranges in the encoded text.
pub type TokenOffsets = Vec<(u32, Range<usize>)>;

/// What the data pipeline needs from a tokenizer.
pub trait Tokenize {
    /// Token ids of `text`. `add_special` adds what the tokenizer adds around a sequence
    /// (`add_special_tokens=True` in transformers: BOS for Llama-family tokenizers). Errors are
    /// plain messages; the data pipeline prefixes them with the file and line.
    fn encode(&self, text: &str, add_special: bool) -> std::result::Result<Vec<u32>, String>;

    /// Like [`Tokenize::encode`], with each token's byte range in `text` (special tokens added by
    /// `add_special` have an empty range). Tokenizers that cannot report offsets return `None`
    /// (the default); the pipeline then tokenizes supervised and unsupervised spans separately
    /// (see [`crate::data::tokenize_supervised`]).
    fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Option<std::result::Result<TokenOffsets, String>> {
        let _ = (text, add_special);
        None
    }

    /// Beginning-of-sequence id, if the tokenizer has one.
    fn bos_id(&self) -> Option<u32>;

    /// End-of-sequence id, if the tokenizer has one (appended after every plain-text document and
    /// completion).
    fn eos_id(&self) -> Option<u32>;

    /// Number of token ids, if known (pre-tokenized records are checked against it).
    fn vocab_size(&self) -> Option<usize> {
        None
    }

    /// Id written into padding positions (their labels are always -100, so any id works); the
    /// default is the EOS id, then 0.
    fn pad_id(&self) -> Option<u32> {
        None
    }

    /// The model's chat template (needed for `{"messages": [...]}` records).
    fn chat_template(&self) -> Option<&ChatTemplate> {
        None
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`: renders
    /// `messages` with [`Tokenize::chat_template`]; an error if there is none.
    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template()
            .ok_or_else(|| TrainError::Template("the tokenizer has no chat template".into()))?
            .render(messages, add_generation_prompt)
    }
}

/// A tokenizer plus a compiled chat template: lets a tokenizer that only stores the template
/// source (or none) serve `{"messages": [...]}` records.
pub struct WithChatTemplate<T> {
    pub inner: T,
    pub template: ChatTemplate,
}

impl<T: Tokenize> Tokenize for WithChatTemplate<T> {
    fn encode(&self, text: &str, add_special: bool) -> std::result::Result<Vec<u32>, String> {
        self.inner.encode(text, add_special)
    }
    fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Option<std::result::Result<TokenOffsets, String>> {
        self.inner.encode_with_offsets(text, add_special)
    }
    fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }
    fn pad_id(&self) -> Option<u32> {
        self.inner.pad_id()
    }
    fn vocab_size(&self) -> Option<usize> {
        self.inner.vocab_size()
    }
    fn chat_template(&self) -> Option<&ChatTemplate> {
        Some(&self.template)
    }
}
