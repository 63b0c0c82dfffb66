//! Hugging Face chat templates (Jinja2) rendered with `minijinja`, and the character spans of the
//! assistant turns (which are the only tokens that carry loss for `{"messages": [...]}` records).
//!
//! # Fidelity to transformers
//! The environment mirrors `transformers.utils.chat_template_utils._compile_jinja_template`:
//! `trim_blocks` and `lstrip_blocks` on, `{% break %}`/`{% continue %}` (loopcontrols), the
//! `raise_exception(msg)` function (rendering fails with `msg`), a `tojson` filter equal to
//! Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`
//! (minijinja's own escapes HTML characters, which transformers' does not), `namespace()` and
//! `dict()`, and Python string/dict methods (`.strip()`, `.startswith()`, `.items()`...) through
//! `minijinja_contrib::pycompat`. The template sees `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `tools` and `documents` (`none` unless given: transformers passes
//! `None`, so `tools is not none` is false as there), plus variables added with
//! [`ChatTemplate::set_var`]. `strftime_now` is deliberately not defined (no clock in wasm, and
//! a training set should not depend on the day it is rendered): Llama-3.x templates then fall back
//! to their built-in date string; pass `date_string` with `set_var` to pin another.
//! `tests/train_data.rs` pins rendered strings against transformers' renderer.
//!
//! # Assistant spans (which characters carry loss)
//! Two methods, chosen per template:
//! 1. **`{% generation %}` tags** (what transformers' `return_assistant_tokens_mask` uses): if the
//!    template contains them, each `{% generation %}...{% endgeneration %}` block is rewritten to a
//!    filter block that wraps its output in two reserved markers (U+10FFFC, U+10FFFD); the markers
//!    are removed after rendering and their positions are the spans. Whitespace control and
//!    `trim_blocks`/`lstrip_blocks` behave exactly as for the original block tags.
//! 2. **Prefix rendering** otherwise: for each assistant message `i`, render
//!    `messages[..i]` with `add_generation_prompt=true` (`P`) and `messages[..=i]` without (`Q`);
//!    the span is `P.len()..Q.len()` in the full rendering `F` of all messages. This requires `Q`
//!    to be a prefix of `F` and `P` a prefix of `Q`. If `P` is not a prefix of `Q` (templates
//!    whose generation prompt differs from how history turns start, e.g. a forced `<think>`),
//!    `messages[..i]` rendered without the generation prompt is tried, so the assistant header also
//!    carries loss. If `Q` is not a prefix of `F` (templates that render earlier turns differently
//!    once later ones exist, e.g. dropping reasoning of old turns) it is an error. The span covers
//!    the assistant content and whatever the template emits up to the next turn: end-of-turn
//!    tokens (`<|im_end|>`, `<|eot_id|>`, `</s>`) and a trailing newline, so the model learns to
//!    stop.
//!
//! Spans are byte ranges into the rendered `String` (always on `char` boundaries).

use std::collections::BTreeMap;
use std::ops::Range;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// A template value. Parse JSON into it (`serde_json::from_str::<TemplateValue>`) to keep object
/// key order as Python's `json.loads` does (`serde_json::Value` sorts keys), which matters for
/// templates that `tojson` tool schemas or arguments.
pub use minijinja::Value as TemplateValue;

/// One chat message as HF templates expect it (`{"role": ..., "content": ...}`). Any
/// `Serialize` value (e.g. a `serde_json::Value` with more fields) can be rendered too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// How the assistant spans of a [`RenderedChat`] were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanMethod {
    /// From `{% generation %}` blocks of the template.
    GenerationTags,
    /// By rendering conversation prefixes (see the module docs).
    PrefixRendering,
}

/// A rendered conversation and the byte ranges of its assistant turns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedChat {
    pub text: String,
    pub assistant_spans: Vec<Range<usize>>,
    pub method: SpanMethod,
}

const MARK_START: char = '\u{10FFFC}';
const MARK_END: char = '\u{10FFFD}';
const GEN_FILTER: &str = "__tinytune_generation";
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled Hugging Face chat template with the tokenizer's BOS/EOS strings.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    vars: BTreeMap<String, Value>,
    has_generation_tags: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_generation_tags", &self.has_generation_tags)
            .finish()
    }
}

fn template_err(e: Error) -> TrainError {
    TrainError::Template(e.to_string())
}

impl ChatTemplate {
    /// Compiles `source` (the `chat_template` string of `tokenizer_config.json`); `bos_token` and
    /// `eos_token` are the strings the template sees (e.g. `"<s>"`, `"<|im_end|>"`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let (rewritten, has_generation_tags) = rewrite_generation_tags(source);
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_err)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson_filter);
        env.add_filter(GEN_FILTER, |s: String| -> String {
            format!("{MARK_START}{s}{MARK_END}")
        });
        env.add_template_owned(TEMPLATE_NAME, rewritten)
            .map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            vars: BTreeMap::new(),
            has_generation_tags,
        })
    }

    /// Reads `chat_template`, `bos_token` and `eos_token` from a `tokenizer_config.json` text.
    /// `chat_template` may be a string or a list of `{"name", "template"}` (the one named
    /// `"default"` is used); tokens may be strings or `{"content": ...}` objects.
    pub fn from_tokenizer_config(json: &str) -> Result<ChatTemplate> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| TrainError::Template(format!("tokenizer_config.json: {e}")))?;
        let source = match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    TrainError::Template(
                        "tokenizer_config.json: chat_template list has no \"default\" entry".into(),
                    )
                })?
                .to_string(),
            _ => {
                return Err(TrainError::Template(
                    "tokenizer_config.json has no chat_template".into(),
                ))
            }
        };
        let token = |name: &str| -> String {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(o @ serde_json::Value::Object(_)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .to_string(),
                _ => String::new(),
            }
        };
        ChatTemplate::new(&source, &token("bos_token"), &token("eos_token"))
    }

    /// Adds a variable the template can read (like extra kwargs of `apply_chat_template`).
    pub fn set_var<T: Serialize>(&mut self, name: &str, value: T) {
        self.vars.insert(name.to_string(), sval(value));
    }

    /// The template source as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template marks assistant output with `{% generation %}` blocks.
    pub fn has_generation_tags(&self) -> bool {
        self.has_generation_tags
    }

    /// Renders `messages` like `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with_tools::<M, ()>(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with a `tools` list (JSON schemas) for tool-calling templates.
    pub fn render_with_tools<M: Serialize, T: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&T>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let msgs = to_values(messages);
        let tools = tools.map(sval);
        let raw = self.render_raw(&msgs, tools.as_ref(), add_generation_prompt)?;
        Ok(split_markers(&raw, self.has_generation_tags)?.0)
    }

    /// Renders the whole conversation (no generation prompt) and returns the byte spans of the
    /// assistant turns; see the module docs for the method.
    pub fn render_with_assistant_spans<M: Serialize>(
        &self,
        messages: &[M],
    ) -> Result<RenderedChat> {
        self.render_with_assistant_spans_tools::<M, ()>(messages, None)
    }

    /// [`ChatTemplate::render_with_assistant_spans`] with a `tools` list.
    pub fn render_with_assistant_spans_tools<M: Serialize, T: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&T>,
    ) -> Result<RenderedChat> {
        let msgs = to_values(messages);
        let tools = tools.map(sval);
        let tools = tools.as_ref();
        let raw = self.render_raw(&msgs, tools, false)?;
        let (text, tagged) = split_markers(&raw, self.has_generation_tags)?;
        if self.has_generation_tags {
            return Ok(RenderedChat {
                text,
                assistant_spans: tagged,
                method: SpanMethod::GenerationTags,
            });
        }
        let mut spans = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let role = m.get_attr("role").ok();
            if role.as_ref().and_then(|r| r.as_str()) != Some("assistant") {
                continue;
            }
            let q = self.render_plain(&msgs[..=i], tools, false)?;
            if !text.starts_with(&q) {
                return Err(TrainError::Template(format!(
                    "the template is not prefix-stable: rendering messages[0..={i}] is not a prefix \
                     of the rendering of the whole conversation, so the assistant span of message \
                     {i} cannot be located (add {{% generation %}} tags to the template, or use \
                     prompt/completion records)"
                )));
            }
            let mut start = None;
            for agp in [true, false] {
                if let Ok(p) = self.render_plain(&msgs[..i], tools, agp) {
                    if q.starts_with(&p) {
                        start = Some(p.len());
                        break;
                    }
                }
            }
            let start = start.ok_or_else(|| {
                TrainError::Template(format!(
                    "rendering messages[0..{i}] (with or without the generation prompt) is not a \
                     prefix of rendering messages[0..={i}], so the assistant span of message {i} \
                     cannot be located"
                ))
            })?;
            if q.len() > start {
                spans.push(start..q.len());
            }
        }
        Ok(RenderedChat {
            text,
            assistant_spans: spans,
            method: SpanMethod::PrefixRendering,
        })
    }

    fn render_plain(
        &self,
        msgs: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let raw = self.render_raw(msgs, tools, add_generation_prompt)?;
        Ok(split_markers(&raw, self.has_generation_tags)?.0)
    }

    fn render_raw(
        &self,
        msgs: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = self.vars.clone();
        ctx.insert("messages".into(), Value::from(msgs.to_vec()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.clone()));
        ctx.insert("tools".into(), tools.cloned().unwrap_or(Value::from(())));
        ctx.entry("documents".into()).or_insert(Value::from(()));
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(template_err)?;
        tmpl.render(ctx).map_err(template_err)
    }
}

/// Any `Serialize` value as a template value.
fn sval<T: Serialize>(x: T) -> Value {
    Value::from(minijinja::value::Serde(x))
}

fn to_values<M: Serialize>(messages: &[M]) -> Vec<Value> {
    messages.iter().map(sval).collect()
}

/// Removes the generation markers; returns the clean text and the marked byte spans.
fn split_markers(raw: &str, expect: bool) -> Result<(String, Vec<Range<usize>>)> {
    if !raw.contains([MARK_START, MARK_END]) {
        return Ok((raw.to_string(), Vec::new()));
    }
    if !expect {
        return Err(TrainError::Template(
            "a message contains U+10FFFC or U+10FFFD, which tinytune reserves as span markers"
                .into(),
        ));
    }
    let mut out = String::with_capacity(raw.len());
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    for c in raw.chars() {
        match (c, open) {
            (MARK_START, None) => open = Some(out.len()),
            (MARK_END, Some(s)) => {
                if out.len() > s {
                    spans.push(s..out.len());
                }
                open = None;
            }
            (MARK_START | MARK_END, _) => {
                return Err(TrainError::Template(
                    "unbalanced generation markers (nested {% generation %} blocks, or a message \
                     containing U+10FFFC/U+10FFFD)"
                        .into(),
                ))
            }
            _ => out.push(c),
        }
    }
    if open.is_some() {
        return Err(TrainError::Template("unterminated generation block".into()));
    }
    Ok((out, spans))
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any `-`/`+` whitespace control) into
/// `{% filter __tinytune_generation %}` / `{% endfilter %}`. Returns whether any tag was found.
fn rewrite_generation_tags(src: &str) -> (String, bool) {
    let mut out = String::with_capacity(src.len());
    let mut found = false;
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        if let Some((len, replacement)) = match_generation_tag(tag) {
            out.push_str(&replacement);
            rest = &tag[len..];
            found = true;
        } else {
            out.push_str("{%");
            rest = &tag[2..];
        }
    }
    out.push_str(rest);
    (out, found)
}

/// If `s` starts with a generation tag, its length and its rewrite.
fn match_generation_tag(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    let mut i = 2;
    let open_ctl = match b.get(i) {
        Some(c @ (b'-' | b'+')) => {
            i += 1;
            Some(*c as char)
        }
        _ => None,
    };
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    let (word, replacement) = if s[i..].starts_with("endgeneration") {
        ("endgeneration", "endfilter".to_string())
    } else if s[i..].starts_with("generation") {
        ("generation", format!("filter {GEN_FILTER}"))
    } else {
        return None;
    };
    i += word.len();
    let ws_start = i;
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    if i == ws_start && !matches!(b.get(i), Some(b'-' | b'+' | b'%')) {
        return None; // e.g. `{% generation_prompt ... %}` is not ours
    }
    let close_ctl = match b.get(i) {
        Some(c @ (b'-' | b'+')) => {
            i += 1;
            Some(*c as char)
        }
        _ => None,
    };
    if !s[i..].starts_with("%}") {
        return None;
    }
    i += 2;
    let mut r = String::from("{%");
    if let Some(c) = open_ctl {
        r.push(c);
    }
    r.push(' ');
    r.push_str(&replacement);
    r.push(' ');
    if let Some(c) = close_ctl {
        r.push(c);
    }
    r.push_str("%}");
    Some((i, r))
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` with those four keyword arguments.
fn tojson_filter(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.is_integer() => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
        Some(v) if v.as_str().is_some() => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: bad indent {v}"),
            ))
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let parts: Vec<String> = s
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
        _ => {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_string(), ": ".to_string())
        }
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    py_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn py_json(
    v: &Value,
    o: &JsonOpts,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: Object of type Undefined is not JSON serializable",
            ))
        }
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())
                    .map_err(|_| Error::new(ErrorKind::InvalidOperation, "tojson: bad number"))?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => py_json_str(v.as_str().unwrap_or(""), o.ensure_ascii, out),
        ValueKind::Map => {
            let mut items: Vec<(String, Value)> = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or("").to_string(),
                    ValueKind::Number if k.is_integer() => k.to_string(),
                    ValueKind::Number => py_float_repr(f64::try_from(k.clone()).unwrap_or(0.0)),
                    ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).to_string(),
                    ValueKind::None => "null".to_string(),
                    _ => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: keys must be str, int, float, bool or None",
                        ))
                    }
                };
                items.push((key, val));
            }
            if o.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if items.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (n, (k, val)) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(&o.item_sep);
                }
                newline_indent(o, level + 1, out);
                py_json_str(k, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                py_json(val, o, level + 1, out)?;
            }
            newline_indent(o, level, out);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(&o.item_sep);
                }
                newline_indent(o, level + 1, out);
                py_json(item, o, level + 1, out)?;
            }
            newline_indent(o, level, out);
            out.push(']');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: value {v} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn newline_indent(o: &JsonOpts, level: usize, out: &mut String) {
    if let Some(ind) = &o.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn py_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7E => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` as `json.dumps` writes it (shortest round-trip digits; scientific when
/// the decimal exponent is < -4 or >= 16; `NaN`, `Infinity`).
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", x); // shortest round-trip digits, e.g. "-1.2345e-7"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // python3 -c "print([repr(x) for x in [1.0, 0.1, 1e-05, 0.0001, 1e16, 123456789012345.6, 1.5e-07, -2.5, 1e22]])"
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1.5e-07, "1.5e-07"),
            (-2.5, "-2.5"),
            (1e22, "1e+22"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn generation_tags_are_rewritten_with_whitespace_control() {
        let (s, found) =
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration +%}{% generations %}");
        assert!(found);
        assert_eq!(
            s,
            "a{%- filter __tinytune_generation -%}b{% endfilter +%}{% generations %}"
        );
        let (s, found) = rewrite_generation_tags("{% if x %}{{ '{%' }}{% endif %}");
        assert!(!found);
        assert_eq!(s, "{% if x %}{{ '{%' }}{% endif %}");
    }
}
