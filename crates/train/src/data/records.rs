//! One record (a `.jsonl` line's object, or a Parquet row) → `(input_ids, labels)`, whatever its
//! form: `text`, `prompt`/`completion`, `messages`, ShareGPT `conversations`, or pre-tokenized
//! `input_ids` (+ `labels`). [`Columns`] renames the fields (`--data-column FIELD=COLUMN`).
//! Errors are plain messages naming the field as the file calls it; the caller adds the file
//! and the line or row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{push_eos, tokenize_supervised, IGNORE_INDEX};
use crate::tokenize::Tokenize;

/// The fields of a record that [`Columns`] can rename.
pub const FIELDS: [&str; 7] = [
    "text",
    "prompt",
    "completion",
    "messages",
    "conversations",
    "input_ids",
    "labels",
];

/// Which key of a `.jsonl` record or column of a Parquet file holds each field (`text`,
/// `prompt`, `completion`, `messages`, `conversations`, `input_ids`, `labels`); unnamed fields are
/// read from the key of their own name. Naming a field also picks its form when a record has
/// several (Hub datasets often carry `prompt` next to `messages`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Columns(pub BTreeMap<String, String>);

impl Columns {
    /// Parses `FIELD=COLUMN` specs (`--data-column text=content`).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Columns, String> {
        let mut map = BTreeMap::new();
        for spec in specs {
            let spec = spec.as_ref();
            let (field, col) = spec.split_once('=').ok_or_else(|| {
                format!("data_column {spec:?}: expected FIELD=COLUMN, e.g. text=content")
            })?;
            let (field, col) = (field.trim(), col.trim());
            if !FIELDS.contains(&field) {
                return Err(format!(
                    "data_column {spec:?}: unknown field {field:?} (expected one of {})",
                    FIELDS.join(", ")
                ));
            }
            if col.is_empty() {
                return Err(format!(
                    "data_column {spec:?}: the column after '=' is empty"
                ));
            }
            if map.insert(field.to_string(), col.to_string()).is_some() {
                return Err(format!(
                    "data_column names the column of {field:?} twice: give it once"
                ));
            }
        }
        Ok(Columns(map))
    }

    /// Whether every field is read from its own name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key or column that holds `field`.
    pub fn col<'a>(&'a self, field: &'a str) -> &'a str {
        self.0.get(field).map_or(field, String::as_str)
    }

    /// The specs back (`FIELD=COLUMN`), for messages.
    pub fn specs(&self) -> Vec<String> {
        self.0.iter().map(|(f, c)| format!("{f}={c}")).collect()
    }
}

/// The forms of a record, each with the fields that make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Text,
    PromptCompletion,
    Messages,
    Conversations,
    Tokens,
}

const FORMS: [(Form, &[&str]); 5] = [
    (Form::Text, &["text"]),
    (Form::PromptCompletion, &["prompt", "completion"]),
    (Form::Messages, &["messages"]),
    (Form::Conversations, &["conversations"]),
    (Form::Tokens, &["input_ids"]),
];

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON error in one `.jsonl` record: the position within the line as a column (serde_json
/// counts lines within the string it parsed, always line 1 here, which reads like the file's).
pub(crate) fn json_line_err(e: serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!("invalid JSON at column {}: {what}", e.column())
}

/// Which form `obj` is, by the keys it has (only the named fields' forms when [`Columns`] names
/// any of them).
fn form_of(obj: &Map<String, Value>, cols: &Columns) -> Result<Form, String> {
    let named: Vec<Form> = FORMS
        .iter()
        .filter(|(_, fields)| fields.iter().any(|f| cols.0.contains_key(*f)))
        .map(|(form, _)| *form)
        .collect();
    let found: Vec<(Form, &[&str])> = FORMS
        .iter()
        .filter(|(form, fields)| {
            (named.is_empty() || named.contains(form))
                && fields.iter().any(|f| obj.contains_key(cols.col(f)))
        })
        .copied()
        .collect();
    let quoted = |fields: &[&str]| {
        fields
            .iter()
            .map(|f| format!("\"{}\"", cols.col(f)))
            .collect::<Vec<_>>()
            .join("/")
    };
    match found.as_slice() {
        [(form, _)] => Ok(*form),
        [] => {
            let mut keys: Vec<String> = obj.keys().map(|k| format!("\"{k}\"")).collect();
            keys.truncate(8);
            let expected = if named.is_empty() {
                format!(
                    "a {}, {}, {}, {} (ShareGPT) or {} (pre-tokenized) record",
                    quoted(&["text"]),
                    quoted(&["prompt", "completion"]),
                    quoted(&["messages"]),
                    quoted(&["conversations"]),
                    quoted(&["input_ids"])
                )
            } else {
                format!(
                    "{} (as data_column {} names)",
                    FORMS
                        .iter()
                        .filter(|(f, _)| named.contains(f))
                        .map(|(_, f)| quoted(f))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    cols.specs().join(", ")
                )
            };
            Err(format!(
                "expected {expected}; this one has {}: name the column to use with \
                 --data-column FIELD=COLUMN (data_column), e.g. text=content",
                if keys.is_empty() {
                    "no keys".to_string()
                } else {
                    keys.join(", ")
                }
            ))
        }
        many => Err(format!(
            "ambiguous record: it has {}; keep one form, or pick it with --data-column \
             (data_column), e.g. --data-column {}={}",
            many.iter()
                .map(|(_, f)| quoted(f))
                .collect::<Vec<_>>()
                .join(" and "),
            many[many.len() - 1].1[0],
            cols.col(many[many.len() - 1].1[0]),
        )),
    }
}

/// A record's examples: its ids and labels (HF convention, unshifted). `raw` gives the record as
/// template values with its keys in file order (for `messages` / `conversations` / `tools`).
pub(crate) fn record<T: Tokenize + ?Sized>(
    tok: &T,
    obj: &Map<String, Value>,
    raw: &dyn Fn() -> Result<minijinja::Value, String>,
    cols: &Columns,
) -> Result<(Vec<u32>, Vec<i32>), String> {
    let string_field = |field: &str| -> Result<&str, String> {
        let k = cols.col(field);
        match obj.get(k) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!(
                "\"{k}\" must be a string, got {}",
                json_kind(other)
            )),
            None => Err(format!("missing \"{k}\"")),
        }
    };
    let tokerr = |e: String| format!("tokenizer: {e}");
    match form_of(obj, cols)? {
        Form::Text => {
            let text = string_field("text")?;
            let mut ids = tok.encode(text, true).map_err(tokerr)?;
            let mut labels: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
            push_eos(tok, &mut ids, &mut labels, true);
            Ok((ids, labels))
        }
        Form::PromptCompletion => {
            let prompt = string_field("prompt")?;
            let completion = string_field("completion")?;
            let full = format!("{prompt}{completion}");
            let span = prompt.len()..full.len();
            let (mut ids, mut labels) =
                tokenize_supervised(tok, &full, std::slice::from_ref(&span), true)
                    .map_err(tokerr)?;
            push_eos(tok, &mut ids, &mut labels, true);
            Ok((ids, labels))
        }
        Form::Messages => {
            let m = cols.col("messages");
            check_messages(obj.get(m), m)?;
            let raw = raw()?;
            let messages: Vec<minijinja::Value> = raw
                .get_attr(m)
                .and_then(|v| v.try_iter().map(|it| it.collect()))
                .map_err(|e| format!("{m}: {e}"))?;
            render_chat(tok, &raw, &messages)
        }
        Form::Conversations => {
            let c = cols.col("conversations");
            let messages = sharegpt_messages(obj.get(c), c)?;
            render_chat(tok, &raw()?, &messages)
        }
        Form::Tokens => tokens(tok, obj, cols),
    }
}

/// Checks a `messages` array: objects with string `role` and `content`, an assistant turn.
fn check_messages(v: Option<&Value>, m: &str) -> Result<(), String> {
    let msgs = match v {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "\"{m}\" must be an array, got {}",
                json_kind(other)
            ))
        }
        None => return Err(format!("missing \"{m}\"")),
    };
    if msgs.is_empty() {
        return Err(format!("\"{m}\" is empty"));
    }
    let mut n_assistant = 0;
    for (i, msg) in msgs.iter().enumerate() {
        let msg = msg
            .as_object()
            .ok_or_else(|| format!("{m}[{i}] must be an object, got {}", json_kind(msg)))?;
        match msg.get("role") {
            Some(Value::String(r)) => n_assistant += usize::from(r == "assistant"),
            Some(other) => {
                return Err(format!(
                    "{m}[{i}].role must be a string, got {}",
                    json_kind(other)
                ))
            }
            None => return Err(format!("{m}[{i}] has no \"role\"")),
        }
        match msg.get("content") {
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(format!(
                    "{m}[{i}].content must be a string, got {}",
                    json_kind(other)
                ))
            }
            None => return Err(format!("{m}[{i}] has no \"content\"")),
        }
    }
    if n_assistant == 0 {
        return Err("conversation has no \"assistant\" message (nothing to learn)".into());
    }
    Ok(())
}

/// ShareGPT's speaker names → chat roles.
fn sharegpt_role(from: &str) -> Option<&'static str> {
    Some(match from {
        "system" => "system",
        "human" | "user" => "user",
        "gpt" | "assistant" | "chatgpt" | "bing" | "bard" | "model" => "assistant",
        "tool" | "function_response" | "observation" => "tool",
        _ => return None,
    })
}

/// A ShareGPT `conversations` array (`[{"from": "human" | "gpt" | "system", "value": ...}]`) as
/// chat messages.
fn sharegpt_messages(v: Option<&Value>, c: &str) -> Result<Vec<minijinja::Value>, String> {
    let turns = match v {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "\"{c}\" must be an array, got {}",
                json_kind(other)
            ))
        }
        None => return Err(format!("missing \"{c}\"")),
    };
    if turns.is_empty() {
        return Err(format!("\"{c}\" is empty"));
    }
    let mut out = Vec::with_capacity(turns.len());
    let mut n_assistant = 0;
    for (i, t) in turns.iter().enumerate() {
        let t = t
            .as_object()
            .ok_or_else(|| format!("{c}[{i}] must be an object, got {}", json_kind(t)))?;
        let field = |k: &str| -> Result<&str, String> {
            match t.get(k) {
                Some(Value::String(s)) => Ok(s),
                Some(other) => Err(format!(
                    "{c}[{i}].{k} must be a string, got {}",
                    json_kind(other)
                )),
                None => Err(format!(
                    "{c}[{i}] has no \"{k}\" (ShareGPT turns are {{\"from\", \"value\"}})"
                )),
            }
        };
        let from = field("from")?;
        let value = field("value")?;
        let role = sharegpt_role(from).ok_or_else(|| {
            format!(
                "{c}[{i}].from {from:?}: expected \"human\", \"gpt\" or \"system\" (or \"user\", \
                 \"assistant\", \"tool\")"
            )
        })?;
        n_assistant += usize::from(role == "assistant");
        out.push(minijinja::context! { role => role, content => value });
    }
    if n_assistant == 0 {
        return Err("conversation has no \"gpt\" (assistant) turn (nothing to learn)".into());
    }
    Ok(out)
}

/// Renders chat messages with the tokenizer's template (`tools` from the record, if any) and
/// labels the assistant spans.
fn render_chat<T: Tokenize + ?Sized>(
    tok: &T,
    raw: &minijinja::Value,
    messages: &[minijinja::Value],
) -> Result<(Vec<u32>, Vec<i32>), String> {
    let tpl = tok
        .chat_template()
        .ok_or("a chat record but the tokenizer has no chat template")?;
    let tools = match raw.get_attr("tools") {
        Ok(t) if !t.is_undefined() && !t.is_none() => Some(t),
        _ => None,
    };
    let rendered = tpl
        .render_with_assistant_spans_tools(messages, tools.as_ref())
        .map_err(|e| e.to_string())?;
    tokenize_supervised(tok, &rendered.text, &rendered.assistant_spans, false)
        .map_err(|e| format!("tokenizer: {e}"))
}

/// An array of integers (`what` names it in errors), each checked by `ok`.
fn int_array(
    v: &Value,
    what: &str,
    ok: impl Fn(i64) -> Result<(), String>,
) -> Result<Vec<i64>, String> {
    let a = v.as_array().ok_or_else(|| {
        format!(
            "\"{what}\" must be an array of integers, got {}",
            json_kind(v)
        )
    })?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            let n = x.as_i64().ok_or_else(|| {
                format!("\"{what}\"[{i}] must be an integer, got {}", json_kind(x))
            })?;
            ok(n).map_err(|e| format!("\"{what}\"[{i}] is {n}: {e}"))?;
            Ok(n)
        })
        .collect()
}

/// A pre-tokenized record: `input_ids`, optional `labels` (one per id, -100 = no loss; default:
/// every id) and `attention_mask` (ones, then the padding's zeros, which are dropped). Nothing is
/// added: no BOS, no EOS.
fn tokens<T: Tokenize + ?Sized>(
    tok: &T,
    obj: &Map<String, Value>,
    cols: &Columns,
) -> Result<(Vec<u32>, Vec<i32>), String> {
    let (ik, lk) = (cols.col("input_ids"), cols.col("labels"));
    let vocab = tok.vocab_size();
    let in_vocab = |n: i64| match vocab {
        _ if n < 0 => Err("token ids are >= 0".to_string()),
        Some(v) if n as u64 >= v as u64 => Err(format!(
            "beyond the tokenizer's {v} ids (tokenize with this model's tokenizer)"
        )),
        _ if n > u32::MAX as i64 => Err("beyond the 32-bit ids".to_string()),
        _ => Ok(()),
    };
    let ids = int_array(obj.get(ik).unwrap_or(&Value::Null), ik, in_vocab)?;
    if ids.is_empty() {
        return Err(format!("\"{ik}\" is empty"));
    }
    let mut labels: Vec<i64> = match obj.get(lk) {
        None | Some(Value::Null) => ids.clone(),
        Some(v) => int_array(v, lk, |n| {
            if n == IGNORE_INDEX as i64 {
                Ok(())
            } else {
                in_vocab(n).map_err(|e| format!("{e}; -100 marks no loss"))
            }
        })?,
    };
    if labels.len() != ids.len() {
        return Err(format!(
            "\"{lk}\" has {} entries and \"{ik}\" {}: give one label per id (Hugging Face's \
             convention: not shifted, -100 for no loss)",
            labels.len(),
            ids.len()
        ));
    }
    let mut len = ids.len();
    if let Some(m) = obj.get("attention_mask").filter(|m| !m.is_null()) {
        let mask = int_array(m, "attention_mask", |n| match n {
            0 | 1 => Ok(()),
            _ => Err("expected 0 or 1".into()),
        })?;
        if mask.len() != ids.len() {
            return Err(format!(
                "\"attention_mask\" has {} entries and \"{ik}\" {}",
                mask.len(),
                ids.len()
            ));
        }
        len = mask.iter().take_while(|&&b| b == 1).count();
        if mask[len..].contains(&1) {
            return Err(
                "\"attention_mask\" has zeros before ones: only right padding can be dropped; \
                 remove left padding (or give records without padding)"
                    .into(),
            );
        }
    }
    labels.truncate(len);
    Ok((
        ids[..len].iter().map(|&n| n as u32).collect(),
        labels.into_iter().map(|n| n as i32).collect(),
    ))
}
