//! The model's tokenizer ([`tinytune_model::Tokenizer`], from `tokenizer.json` or GGUF metadata)
//! as the data pipeline's [`Tokenize`], with its chat template compiled.

use tinytune_model::Tokenizer;

use crate::chat::ChatTemplate;
use crate::tokenize::{TokenOffsets, Tokenize};
use crate::Result;

/// A model tokenizer plus its compiled chat template (if it has one).
pub struct ModelTokenizer {
    pub tok: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl ModelTokenizer {
    /// Compiles the tokenizer's chat template (BOS/EOS strings from its vocabulary).
    pub fn new(tok: Tokenizer) -> Result<ModelTokenizer> {
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        let template = match tok.chat_template() {
            Some(src) => Some(ChatTemplate::new(
                src,
                &name(tok.bos_id()),
                &name(tok.eos_id()),
            )?),
            None => None,
        };
        Ok(ModelTokenizer { tok, template })
    }
}

impl Tokenize for ModelTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> std::result::Result<Vec<u32>, String> {
        self.tok
            .encode(text, add_special)
            .map_err(|e| e.to_string())
    }

    fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Option<std::result::Result<TokenOffsets, String>> {
        Some(
            self.tok
                .encode_with_offsets(text, add_special)
                .map_err(|e| e.to_string()),
        )
    }

    fn bos_id(&self) -> Option<u32> {
        self.tok.bos_id()
    }

    fn eos_id(&self) -> Option<u32> {
        self.tok.eos_id()
    }

    fn pad_id(&self) -> Option<u32> {
        self.tok.pad_id()
    }

    fn vocab_size(&self) -> Option<usize> {
        Some(self.tok.vocab_size())
    }

    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }
}
