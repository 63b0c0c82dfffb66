//! The data pipeline, chat templates, batch order, LR schedules and metrics of `tinytune::train`.
//! No GPU needed. Chat renderings are pinned to transformers by
//! `tests/fixtures/train/chat_templates.json` (generator: `gen_chat_fixture.py` beside it); LR
//! values are transformers' printed numbers.

use std::ops::Range;

use tinytune::train::chat::{ChatMessage, ChatTemplate, SpanMethod, TemplateValue};
use tinytune::train::data::{tokenize_supervised, Columns, DataConfig, Dataset, TextSplit};
use tinytune::train::metrics::{parse_metrics, MetricsRecord, MetricsWriter};
use tinytune::train::schedule::{warmup_steps_from_ratio, Schedule, ScheduleKind};
use tinytune::train::{
    collate, split_eval, BatchPlan, DataPosition, EvalSplit, Example, Rng, Stop, Tokenize,
    TrainError, WithChatTemplate, IGNORE_INDEX,
};

const BOS: u32 = 1;
const EOS: u32 = 2;
const PAD: u32 = 0;

/// A byte-level toy tokenizer: token = byte + 3, BOS 1, EOS 2, PAD 0. With `offsets` it reports
/// byte offsets (the single-encode path), without it the pipeline encodes span by span.
struct ByteTok {
    offsets: bool,
    template: Option<ChatTemplate>,
}

impl ByteTok {
    fn new(offsets: bool) -> ByteTok {
        ByteTok {
            offsets,
            template: None,
        }
    }
    fn with_template(offsets: bool, source: &str, bos: &str, eos: &str) -> ByteTok {
        ByteTok {
            offsets,
            template: Some(ChatTemplate::new(source, bos, eos).unwrap()),
        }
    }
}

fn ids_of(text: &str) -> Vec<u32> {
    text.bytes().map(|b| b as u32 + 3).collect()
}

fn text_of(ids: &[u32]) -> String {
    String::from_utf8(ids.iter().map(|&t| (t - 3) as u8).collect()).unwrap()
}

impl Tokenize for ByteTok {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        if text.contains('\u{7}') {
            return Err("BEL is not in the vocabulary".into());
        }
        let mut v = if add_special { vec![BOS] } else { vec![] };
        v.extend(ids_of(text));
        Ok(v)
    }
    fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Option<Result<Vec<(u32, Range<usize>)>, String>> {
        if !self.offsets {
            return None;
        }
        let mut v = if add_special {
            vec![(BOS, 0..0)]
        } else {
            vec![]
        };
        v.extend(
            text.bytes()
                .enumerate()
                .map(|(i, b)| (b as u32 + 3, i..i + 1)),
        );
        Some(Ok(v))
    }
    fn bos_id(&self) -> Option<u32> {
        Some(BOS)
    }
    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn pad_id(&self) -> Option<u32> {
        Some(PAD)
    }
    fn vocab_size(&self) -> Option<usize> {
        Some(256 + 3)
    }
    fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }
}

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The text of the positions that carry loss (labels != -100), in order.
fn supervised_text(ex: &Example) -> String {
    let ids: Vec<u32> = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX && l as u32 > 2)
        .map(|&l| l as u32)
        .collect();
    text_of(&ids)
}

#[test]
fn rng_is_splitmix64() {
    // Reference SplitMix64 outputs for seed 0 (Vigna's splitmix64.c).
    let mut r = Rng::new(0);
    assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
    assert_eq!(r.next_u64(), 0x6e789e6aa1b965f4);
    assert_eq!(r.next_u64(), 0x06c45d188009454f);
    let st = r.state();
    let a = r.next_u64();
    assert_eq!(Rng::from_state(st).next_u64(), a);
    // below(n) is in range and roughly uniform; floats in [0, 1).
    let mut r = Rng::new(7);
    let mut counts = [0usize; 6];
    for _ in 0..60_000 {
        counts[r.below(6) as usize] += 1;
    }
    for c in counts {
        assert!((9_000..11_000).contains(&c), "{counts:?}");
    }
    for _ in 0..10_000 {
        let f = r.next_f32();
        assert!((0.0..1.0).contains(&f));
        let d = r.next_f64();
        assert!((0.0..1.0).contains(&d));
    }
    assert_ne!(Rng::stream(5, 0).next_u64(), Rng::stream(5, 1).next_u64());
    let p = Rng::new(3).permutation(100);
    let mut s = p.clone();
    s.sort();
    assert_eq!(s, (0..100).collect::<Vec<_>>());
    assert_ne!(p, s, "a shuffle of 100 items left them in order");
}

#[test]
fn txt_is_packed_into_blocks_with_eos_between_documents() {
    for offsets in [false, true] {
        let tok = ByteTok::new(offsets);
        // Paragraphs: "ab" and "cd" → [BOS a b EOS BOS c d EOS] = two blocks of 4.
        let cfg = DataConfig {
            seq_len: 4,
            text_split: TextSplit::Paragraphs,
            columns: Columns::default(),
        };
        let ds = Dataset::from_txt("p.txt", "ab\n\n\ncd\n", &tok, &cfg).unwrap();
        let a = ids_of("a")[0];
        let b = ids_of("b")[0];
        let c = ids_of("c")[0];
        let d = ids_of("d")[0];
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[0].input_ids, vec![BOS, a, b, EOS]);
        assert_eq!(ds.examples[1].input_ids, vec![BOS, c, d, EOS]);
        for ex in &ds.examples {
            let l: Vec<i32> = ex.input_ids.iter().map(|&t| t as i32).collect();
            assert_eq!(
                ex.labels, l,
                "labels = input_ids (HF convention, unshifted)"
            );
            assert_eq!(ex.len, 4);
        }
        assert_eq!(ds.stats.records, 2);

        // Whole file as one document; the last block is padded with -100 labels.
        let ds = Dataset::from_txt("d.txt", "ab\n\ncd", &tok, &DataConfig::new(5)).unwrap();
        let mut stream = vec![BOS];
        stream.extend(ids_of("ab\n\ncd"));
        stream.push(EOS);
        assert_eq!(ds.examples.len(), 2);
        assert_eq!(ds.examples[0].input_ids, stream[..5].to_vec());
        assert_eq!(ds.examples[1].input_ids[..3], stream[5..]);
        assert_eq!(ds.examples[1].input_ids[3..], [PAD, PAD]);
        assert_eq!(ds.examples[1].labels[3..], [IGNORE_INDEX, IGNORE_INDEX]);
        assert_eq!(ds.examples[1].len, 3);
        assert_eq!(ds.stats.tokens, 8);
        // Targets under the shift: 4 of the first block, 2 of the second.
        assert_eq!(ds.stats.targets, 6);

        // Lines: every non-blank line is a document, line breaks are not encoded.
        let cfg = DataConfig {
            seq_len: 64,
            text_split: TextSplit::Lines,
            columns: Columns::default(),
        };
        let ds = Dataset::from_txt("l.txt", "x\r\n\n  \ny z\n", &tok, &cfg).unwrap();
        let mut want = vec![BOS];
        want.extend(ids_of("x"));
        want.extend([EOS, BOS]);
        want.extend(ids_of("y z"));
        want.push(EOS);
        assert_eq!(ds.examples[0].input_ids[..want.len()], want[..]);
        assert_eq!(ds.stats.records, 2);
    }
}

#[test]
fn jsonl_records_label_only_what_is_learned() {
    for offsets in [false, true] {
        let tok = ByteTok::with_template(offsets, CHATML, "<s>", "<|im_end|>");
        let data = concat!(
            "{\"text\": \"hi\"}\n",
            "\n",
            "{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\", \"id\": 7}\n",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hey\"}, {\"role\": \"assistant\", \"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"bye\"}, {\"role\": \"assistant\", \"content\": \"ciao\"}]}\n",
        );
        let ds = Dataset::from_jsonl("d.jsonl", data, &tok, &DataConfig::new(256)).unwrap();
        assert_eq!(ds.stats.records, 3);
        assert_eq!(ds.stats.truncated, 0);
        assert_eq!(ds.examples.len(), 3);
        for ex in &ds.examples {
            assert_eq!(ex.input_ids.len(), 256);
            assert_eq!(ex.labels.len(), 256);
            assert!(ex.input_ids[ex.len..].iter().all(|&t| t == PAD));
            assert!(ex.labels[ex.len..].iter().all(|&l| l == IGNORE_INDEX));
        }
        // text: BOS h i EOS, all targets.
        let t = &ds.examples[0];
        let mut want = vec![BOS];
        want.extend(ids_of("hi"));
        want.push(EOS);
        assert_eq!(t.input_ids[..4], want[..]);
        assert_eq!(
            t.labels[..4],
            [BOS as i32, want[1] as i32, want[2] as i32, EOS as i32]
        );
        // prompt/completion: only " 2" and EOS carry loss.
        let pc = &ds.examples[1];
        let prompt = "Q: 1+1?\nA:";
        assert_eq!(pc.len, 1 + prompt.len() + 2 + 1);
        assert!(pc.labels[..1 + prompt.len()]
            .iter()
            .all(|&l| l == IGNORE_INDEX));
        assert_eq!(supervised_text(pc), " 2");
        assert_eq!(pc.labels[pc.len - 1], EOS as i32);
        // messages: the template's text with loss on the assistant turns incl. end-of-turn.
        let chat = &ds.examples[2];
        let rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nciao<|im_end|>\n";
        assert_eq!(
            chat.input_ids[..chat.len],
            ids_of(rendered)[..],
            "no BOS added to chat"
        );
        assert_eq!(supervised_text(chat), "yo<|im_end|>\nciao<|im_end|>\n");
        let first_target = chat.labels.iter().position(|&l| l != IGNORE_INDEX).unwrap();
        assert_eq!(
            first_target,
            rendered.find("yo<|im_end|>").unwrap(),
            "loss starts right after the generation prompt"
        );
    }
}

#[test]
fn jsonl_chat_records_pass_tools_in_key_order() {
    // transformers' tojson keeps dict insertion order; so must the jsonl path.
    let tpl = "{% if tools %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}";
    let tok = ByteTok::with_template(true, tpl, "", "");
    let line = r#"{"tools": [{"type": "function", "name": "f", "args": {"z": 1.0, "a": [true, null, "é<&>"]}}], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    let ds = Dataset::from_jsonl("t.jsonl", line, &tok, &DataConfig::new(128)).unwrap();
    let ex = &ds.examples[0];
    let text = text_of(&ex.input_ids[..ex.len]);
    assert_eq!(
        text,
        "{\"type\": \"function\", \"name\": \"f\", \"args\": {\"z\": 1.0, \"a\": [true, null, \"é<&>\"]}}\n<user>q</user><assistant>a</assistant>"
    );
    // This template has no generation prompt, so the assistant header is part of the turn.
    assert_eq!(supervised_text(ex), "<assistant>a</assistant>");
}

#[test]
fn offsets_and_segmented_tokenization_agree() {
    let text = "<|im_start|>user\nhé<|im_end|>\n<|im_start|>assistant\nça va<|im_end|>\n";
    let start = text.find("ça").unwrap();
    let span = start..text.len();
    let spans = std::slice::from_ref(&span);
    let a = tokenize_supervised(&ByteTok::new(true), text, spans, true).unwrap();
    let b = tokenize_supervised(&ByteTok::new(false), text, spans, true).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.0[0], BOS);
    assert_eq!(a.1[0], IGNORE_INDEX);
    let n_sup = a.1.iter().filter(|&&l| l != IGNORE_INDEX).count();
    assert_eq!(n_sup, text.len() - start);
}

#[test]
fn truncation_and_unsupervised_examples() {
    let tok = ByteTok::new(true);
    let long = "x".repeat(40);
    let data = format!(
        "{{\"text\": \"{long}\"}}\n{{\"prompt\": \"{long}\", \"completion\": \"y\"}}\n{{\"text\": \"ok\"}}\n"
    );
    let ds = Dataset::from_jsonl("t.jsonl", &data, &tok, &DataConfig::new(16)).unwrap();
    // The long text is truncated (first 16 tokens kept); the long prompt leaves no target.
    assert_eq!(ds.stats.records, 3);
    assert_eq!(ds.stats.truncated, 2);
    assert_eq!(ds.stats.dropped, 1);
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.examples[0].len, 16);
    assert_eq!(ds.examples[0].input_ids[0], BOS);
    assert!(ds.examples[0].input_ids[1..]
        .iter()
        .all(|&t| t == ids_of("x")[0]));
    // Everything dropped → error naming the file.
    let e = Dataset::from_jsonl(
        "only.jsonl",
        &format!("{{\"prompt\": \"{long}\", \"completion\": \"y\"}}\n"),
        &tok,
        &DataConfig::new(16),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("only.jsonl: no usable example"),
        "{e}"
    );
}

/// Loads `lines` (joined by '\n') as a jsonl file and returns the (line, message) of the error.
fn jsonl_error(tok: &ByteTok, lines: &[&str]) -> (usize, String) {
    let text = lines.join("\n");
    match Dataset::from_jsonl("bad.jsonl", &text, tok, &DataConfig::new(64)) {
        Err(TrainError::DataRecord { file, line, msg }) => {
            assert_eq!(file, "bad.jsonl");
            let full = TrainError::DataRecord {
                file,
                line,
                msg: msg.clone(),
            }
            .to_string();
            assert!(full.starts_with(&format!("bad.jsonl:{line}: ")), "{full}");
            (line, msg)
        }
        other => panic!("expected a record error, got {other:?}"),
    }
}

#[test]
fn malformed_jsonl_names_file_line_and_problem() {
    let tok = ByteTok::with_template(false, CHATML, "", "<|im_end|>");
    let good = r#"{"text": "fine"}"#;
    let cases: &[(&str, &str)] = &[
        (
            r#"{"text": "unterminated"#,
            "invalid JSON at column 22: EOF while parsing a string",
        ),
        ("[1, 2]", "expected a JSON object, got an array"),
        (
            r#"{"txt": "typo"}"#,
            "expected a \"text\", \"prompt\"/\"completion\", \"messages\", \"conversations\" \
             (ShareGPT) or \"input_ids\" (pre-tokenized) record; this one has \"txt\"",
        ),
        (r#"{"text": 5}"#, "\"text\" must be a string, got a number"),
        (r#"{"prompt": "p"}"#, "missing \"completion\""),
        (
            r#"{"prompt": "p", "completion": null}"#,
            "\"completion\" must be a string, got null",
        ),
        (
            r#"{"text": "a", "prompt": "p", "completion": "c"}"#,
            "ambiguous record",
        ),
        (
            r#"{"messages": "hi"}"#,
            "\"messages\" must be an array, got a string",
        ),
        (r#"{"messages": []}"#, "\"messages\" is empty"),
        (r#"{"messages": ["hi"]}"#, "messages[0] must be an object"),
        (
            r#"{"messages": [{"content": "x"}]}"#,
            "messages[0] has no \"role\"",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ["y"]}]}"#,
            "messages[1].content must be a string, got an array",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            "no \"assistant\" message",
        ),
        (
            r#"{"text": "bell \u0007"}"#,
            "tokenizer: BEL is not in the vocabulary",
        ),
    ];
    for (bad, want) in cases {
        // The bad record on line 4, after two good records and a blank line.
        let (line, msg) = jsonl_error(&tok, &[good, good, "", bad, good]);
        assert_eq!(line, 4, "{bad}");
        assert!(msg.contains(want), "{bad}: got {msg:?}, want {want:?}");
    }
    // No chat template.
    let plain = ByteTok::new(false);
    let (line, msg) = jsonl_error(
        &plain,
        &[
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
        ],
    );
    assert_eq!(line, 1);
    assert!(msg.contains("no chat template"), "{msg}");
    // A template that raises.
    let mistral = "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ message['content'] }}{% endfor %}";
    let tok = ByteTok::with_template(true, mistral, "<s>", "</s>");
    let (line, msg) = jsonl_error(
        &tok,
        &[
            good,
            r#"{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}"#,
        ],
    );
    assert_eq!(line, 2);
    assert!(msg.contains("Conversation roles must alternate"), "{msg}");
    // Invalid UTF-8 is reported with its line.
    let bytes = b"{\"text\": \"a\"}\n{\"text\": \"\xff\"}\n";
    match Dataset::from_named_bytes("u.jsonl", bytes, &ByteTok::new(true), &DataConfig::new(8)) {
        Err(TrainError::DataRecord { line, msg, .. }) => {
            assert_eq!(line, 2);
            assert!(msg.contains("invalid UTF-8"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    let e = Dataset::from_named_str("data.csv", "a,b", &ByteTok::new(true), &DataConfig::new(8))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("data.csv: unknown dataset extension"),
        "{e}"
    );
}

#[test]
fn dataset_load_reads_files() {
    let dir = std::env::temp_dir().join(format!("tinytune-train-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("d.txt");
    std::fs::write(&p, "hello world").unwrap();
    let ds = Dataset::load(&p, &ByteTok::new(true), &DataConfig::new(6)).unwrap();
    // BOS + 11 bytes + EOS = 13 tokens → blocks of 6, 6 and 1; a 1-token block has no target
    // under the shift and is dropped.
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.stats.dropped, 1);
    let missing = Dataset::load(
        &dir.join("nope.jsonl"),
        &ByteTok::new(true),
        &DataConfig::new(6),
    )
    .unwrap_err();
    assert!(matches!(missing, TrainError::Io { .. }));
    assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Byte span → Python character indices.
fn char_span(text: &str, r: &Range<usize>) -> [usize; 2] {
    [
        text[..r.start].chars().count(),
        text[..r.end].chars().count(),
    ]
}

#[test]
fn chat_templates_render_like_transformers() {
    let raw = std::fs::read_to_string("tests/fixtures/train/chat_templates.json").unwrap();
    let fx: serde_json::Value = serde_json::from_str(&raw).unwrap();
    // Template values parsed from the JSON text keep key order like Python dicts (for tojson);
    // serde_json::Value sorts keys.
    let fx_ordered: TemplateValue = serde_json::from_str(&raw).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    let mut checked = 0;
    for case in cases {
        let tname = case["template"].as_str().unwrap();
        let cname = case["conversation"].as_str().unwrap();
        let t = &fx["templates"][tname];
        let tpl = ChatTemplate::new(
            t["source"].as_str().unwrap(),
            t["bos_token"].as_str().unwrap(),
            t["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        let conv = &fx["conversations"][cname];
        let msgs: Vec<serde_json::Value> = conv["messages"].as_array().unwrap().clone();
        let conv_ordered = fx_ordered
            .get_attr("conversations")
            .and_then(|c| c.get_attr(cname))
            .unwrap();
        let tools = conv_ordered
            .get_attr("tools")
            .ok()
            .filter(|t| !t.is_undefined());
        let msgs_ordered: Vec<TemplateValue> = conv_ordered
            .get_attr("messages")
            .unwrap()
            .try_iter()
            .unwrap()
            .collect();
        let ctx = format!("{tname} / {cname}");
        if let Some(err) = case.get("error") {
            let e = tpl
                .render_with_tools(&msgs_ordered, tools.as_ref(), false)
                .unwrap_err();
            assert!(e.to_string().contains(err.as_str().unwrap()), "{ctx}: {e}");
            checked += 1;
            continue;
        }
        let text = tpl
            .render_with_tools(&msgs_ordered, tools.as_ref(), false)
            .unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{ctx}");
        let gen = tpl
            .render_with_tools(&msgs_ordered, tools.as_ref(), true)
            .unwrap();
        assert_eq!(
            gen,
            case["text_generation_prompt"].as_str().unwrap(),
            "{ctx} (generation prompt)"
        );
        let spans = tpl.render_with_assistant_spans_tools(&msgs_ordered, tools.as_ref());
        match case["assistant_spans"].as_array() {
            None => {
                let e = spans.unwrap_err();
                assert!(e.to_string().contains("prefix"), "{ctx}: {e}");
            }
            Some(want) => {
                let r = spans.unwrap();
                assert_eq!(r.text, text, "{ctx}");
                let method = match r.method {
                    SpanMethod::GenerationTags => "generation_tags",
                    SpanMethod::PrefixRendering => "prefix_rendering",
                };
                assert_eq!(method, case["span_method"].as_str().unwrap(), "{ctx}");
                let got: Vec<[usize; 2]> = r
                    .assistant_spans
                    .iter()
                    .map(|s| char_span(&r.text, s))
                    .collect();
                let want: Vec<[usize; 2]> = want
                    .iter()
                    .map(|s| {
                        [
                            s[0].as_u64().unwrap() as usize,
                            s[1].as_u64().unwrap() as usize,
                        ]
                    })
                    .collect();
                assert_eq!(got, want, "{ctx}");
                // Every assistant content lies inside its span.
                let assistant: Vec<&serde_json::Value> =
                    msgs.iter().filter(|m| m["role"] == "assistant").collect();
                assert_eq!(r.assistant_spans.len(), assistant.len(), "{ctx}");
                for (m, s) in assistant.iter().zip(&r.assistant_spans) {
                    let content = m["content"].as_str().unwrap().trim();
                    assert!(
                        r.text[s.clone()].contains(content),
                        "{ctx}: {:?}",
                        &r.text[s.clone()]
                    );
                }
            }
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
    assert!(checked >= 17);
}

#[test]
fn chat_template_from_tokenizer_config_and_vars() {
    let cfg = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ date_string | default('none') }}"}
        ]
    });
    let mut tpl = ChatTemplate::from_tokenizer_config(&cfg.to_string()).unwrap();
    let msgs = [
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
    ];
    assert_eq!(tpl.render(&msgs, false).unwrap(), "<s>a</s>b</s>none");
    // A tokenizer without a template can be given one.
    let plain = ByteTok::new(true);
    assert!(plain.apply_chat_template(&msgs, false).is_err());
    let wrapped = WithChatTemplate {
        inner: plain,
        template: tpl.clone(),
    };
    assert_eq!(
        wrapped.apply_chat_template(&msgs, true).unwrap(),
        "<s>a</s>b</s>none"
    );
    let record = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
    // This template appends text after the last turn, so turns are not prefixes of the whole.
    let e = Dataset::from_jsonl("w.jsonl", record, &wrapped, &DataConfig::new(32)).unwrap_err();
    assert!(
        e.to_string().starts_with("w.jsonl:1: chat template:") && e.to_string().contains("prefix"),
        "{e}"
    );
    let wrapped = WithChatTemplate {
        inner: ByteTok::new(false),
        template: ChatTemplate::new(CHATML, "", "").unwrap(),
    };
    let ds = Dataset::from_jsonl("w.jsonl", record, &wrapped, &DataConfig::new(64)).unwrap();
    assert_eq!(supervised_text(&ds.examples[0]), "b<|im_end|>\n");
    tpl.set_var("date_string", "26 Jul 2024");
    assert_eq!(
        tpl.render(&msgs, false).unwrap(),
        "<s>a</s>b</s>26 Jul 2024"
    );
    let e = ChatTemplate::from_tokenizer_config("{}").unwrap_err();
    assert!(e.to_string().contains("no chat_template"), "{e}");
    let e = ChatTemplate::new("{% if %}", "", "").unwrap_err();
    assert!(matches!(e, TrainError::Template(_)), "{e}");
    // Reserved marker characters in a message are refused rather than mis-parsed.
    let gen = ChatTemplate::new(
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let e = gen
        .render_with_assistant_spans(&[ChatMessage::new("assistant", "x\u{10FFFD}")])
        .unwrap_err();
    assert!(e.to_string().contains("marker"), "{e}");
}

#[test]
fn eval_split_is_seeded_disjoint_and_ordered() {
    let items: Vec<usize> = (0..50).collect();
    let (train, eval) = split_eval(items.clone(), EvalSplit::Fraction(0.1), 3).unwrap();
    assert_eq!(eval.len(), 5); // ceil(0.1 * 50)
    assert_eq!(train.len(), 45);
    let (_, eval_b) = split_eval(items.clone(), EvalSplit::Fraction(0.1), 3).unwrap();
    assert_eq!(eval, eval_b, "same seed, same split");
    let (_, eval_c) = split_eval(items.clone(), EvalSplit::Fraction(0.1), 4).unwrap();
    assert_ne!(eval, eval_c, "another seed, another split");
    let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
    all.sort();
    assert_eq!(all, items);
    assert!(train.windows(2).all(|w| w[0] < w[1]) && eval.windows(2).all(|w| w[0] < w[1]));
    let (_, e7) = split_eval(items.clone(), EvalSplit::Fraction(0.13), 1).unwrap();
    assert_eq!(e7.len(), 7); // ceil(6.5)
    let (t, e) = split_eval(items.clone(), EvalSplit::Count(3), 9).unwrap();
    assert_eq!((t.len(), e.len()), (47, 3));
    let (t, e) = split_eval(items.clone(), EvalSplit::None, 9).unwrap();
    assert_eq!((t.len(), e.len()), (50, 0));
    for bad in [
        EvalSplit::Fraction(0.0),
        EvalSplit::Fraction(1.0),
        EvalSplit::Count(50),
        EvalSplit::Count(0),
    ] {
        assert!(
            matches!(
                split_eval(items.clone(), bad, 0),
                Err(TrainError::Config(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn batch_order_is_seeded_and_covers_each_epoch() {
    let plan = BatchPlan::new(10, 3, 77).unwrap();
    assert_eq!(plan.batches_per_epoch(), 4);
    assert_eq!(plan.total_steps(Stop::Epochs(3)), 12);
    assert_eq!(plan.total_steps(Stop::Steps(5)), 5);
    let batches: Vec<Vec<usize>> = plan
        .iter(DataPosition::default(), 0, Stop::Epochs(2))
        .unwrap()
        .collect();
    assert_eq!(batches.len(), 8);
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [3, 3, 3, 1, 3, 3, 3, 1]
    );
    let e0: Vec<usize> = batches[..4].concat();
    let e1: Vec<usize> = batches[4..].concat();
    assert_eq!(e0, plan.epoch_order(0));
    assert_eq!(e1, plan.epoch_order(1));
    assert_ne!(e0, e1, "each epoch is reshuffled");
    for e in [&e0, &e1] {
        let mut s = e.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
    // Deterministic; a different seed gives another order.
    assert_eq!(
        BatchPlan::new(10, 3, 77).unwrap().epoch_order(5),
        plan.epoch_order(5)
    );
    assert_ne!(BatchPlan::new(10, 3, 78).unwrap().epoch_order(0), e0);
    // drop_last skips the short batch; sequential is in order.
    let mut dl = plan.clone();
    dl.drop_last = true;
    assert_eq!(dl.batches_per_epoch(), 3);
    let b: Vec<Vec<usize>> = dl
        .iter(DataPosition::default(), 0, Stop::Epochs(1))
        .unwrap()
        .collect();
    assert_eq!(b.concat(), plan.epoch_order(0)[..9].to_vec());
    let seq: Vec<Vec<usize>> = BatchPlan::sequential(5, 2)
        .unwrap()
        .iter(DataPosition::default(), 0, Stop::Epochs(1))
        .unwrap()
        .collect();
    assert_eq!(seq, vec![vec![0, 1], vec![2, 3], vec![4]]);
    assert!(BatchPlan::new(0, 2, 0).is_err());
    assert!(BatchPlan::new(4, 0, 0).is_err());
}

#[test]
fn resumed_batch_order_equals_uninterrupted() {
    for (n, bs, drop_last, stop) in [
        (10, 3, false, Stop::Steps(17)),
        (10, 3, true, Stop::Steps(11)),
        (7, 7, false, Stop::Epochs(3)),
        (9, 2, false, Stop::Epochs(2)),
    ] {
        let mut plan = BatchPlan::new(n, bs, 1234).unwrap();
        plan.drop_last = drop_last;
        let full: Vec<Vec<usize>> = plan
            .iter(DataPosition::default(), 0, stop)
            .unwrap()
            .collect();
        assert_eq!(full.len() as u64, plan.total_steps(stop));
        for k in 0..=full.len() {
            let mut it = plan.iter(DataPosition::default(), 0, stop).unwrap();
            let mut got: Vec<Vec<usize>> = it.by_ref().take(k).collect();
            let (pos, steps) = (it.position(), it.steps_done());
            assert_eq!(steps, k as u64);
            // Round-trip the position through JSON, as a checkpoint does.
            let pos: DataPosition =
                serde_json::from_str(&serde_json::to_string(&pos).unwrap()).unwrap();
            got.extend(plan.iter(pos, steps, stop).unwrap());
            assert_eq!(
                got, full,
                "n {n} bs {bs} drop_last {drop_last} resumed after {k}"
            );
        }
    }
    // A position at the end of an epoch continues in the next one.
    let plan = BatchPlan::new(4, 2, 5).unwrap();
    let it = plan
        .iter(DataPosition { epoch: 0, index: 4 }, 2, Stop::Epochs(2))
        .unwrap();
    assert_eq!(it.position(), DataPosition { epoch: 1, index: 0 });
    assert!(plan
        .iter(DataPosition { epoch: 0, index: 5 }, 0, Stop::Epochs(1))
        .is_err());
}

#[test]
fn collate_builds_flat_batches() {
    let tok = ByteTok::new(true);
    let ds = Dataset::from_jsonl(
        "c.jsonl",
        "{\"text\": \"abc\"}\n{\"prompt\": \"ab\", \"completion\": \"c\"}\n",
        &tok,
        &DataConfig::new(6),
    )
    .unwrap();
    let b = collate(&ds.examples, &[1, 0]).unwrap();
    assert_eq!((b.rows, b.seq_len), (2, 6));
    assert_eq!(b.input_ids[..6], ds.examples[1].input_ids[..]);
    assert_eq!(b.labels[6..], ds.examples[0].labels[..]);
    assert_eq!(b.n_tokens, 5 + 5);
    // text: targets at positions 1..=4 (a b c EOS); prompt/completion: c and EOS.
    assert_eq!(b.n_targets, 4 + 2);
    assert!(collate(&ds.examples, &[]).is_err());
    assert!(collate(&ds.examples, &[0, 2]).is_err());
}

#[test]
fn lr_schedules_match_transformers() {
    // Values printed by transformers 5.24.0 (torch 2.15.0):
    //   from transformers import get_cosine_schedule_with_warmup as cos, \
    //       get_linear_schedule_with_warmup as lin, get_constant_schedule_with_warmup as const
    //   def lrs(make, steps, base=2e-4):
    //       opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    //       s = make(opt); out = []
    //       for _ in range(steps):
    //           out.append(s.get_last_lr()[0]); opt.step(); s.step()
    //       return out
    //   lrs(lambda o: cos(o, 3, 10), 13); lrs(lambda o: lin(o, 3, 10), 13)
    //   lrs(lambda o: const(o, 3), 6); lrs(lambda o: cos(o, 0, 7), 8); lrs(lambda o: lin(o, 4, 4), 6)
    //   lrs(lambda o: cos(o, 2, 9, num_cycles=1.0), 10, base=1e-3)
    #[allow(clippy::type_complexity)]
    let cases: &[(ScheduleKind, f64, u64, u64, &[f64])] = &[
        (
            ScheduleKind::COSINE,
            2e-4,
            3,
            10,
            &[
                0.0,
                6.666666666666667e-05,
                0.00013333333333333334,
                0.0002,
                0.0001900968867902419,
                0.00016234898018587337,
                0.00012225209339563145,
                7.774790660436858e-05,
                3.7651019814126654e-05,
                9.903113209758096e-06,
                0.0,
                9.903113209758086e-06,
                3.765101981412663e-05,
            ],
        ),
        (
            ScheduleKind::Linear,
            2e-4,
            3,
            10,
            &[
                0.0,
                6.666666666666667e-05,
                0.00013333333333333334,
                0.0002,
                0.00017142857142857143,
                0.00014285714285714287,
                0.00011428571428571428,
                8.571428571428571e-05,
                5.714285714285714e-05,
                2.857142857142857e-05,
                0.0,
                0.0,
                0.0,
            ],
        ),
        (
            ScheduleKind::Constant,
            2e-4,
            3,
            0,
            &[
                0.0,
                6.666666666666667e-05,
                0.00013333333333333334,
                0.0002,
                0.0002,
                0.0002,
            ],
        ),
        (
            ScheduleKind::COSINE,
            2e-4,
            0,
            7,
            &[
                0.0002,
                0.0001900968867902419,
                0.00016234898018587337,
                0.00012225209339563145,
                7.774790660436858e-05,
                3.7651019814126654e-05,
                9.903113209758096e-06,
                0.0,
            ],
        ),
        (
            ScheduleKind::Linear,
            2e-4,
            4,
            4,
            &[0.0, 5e-05, 0.0001, 0.00015000000000000001, 0.0, 0.0],
        ),
        (
            ScheduleKind::Cosine { num_cycles: 1.0 },
            1e-3,
            2,
            9,
            &[
                0.0,
                0.0005,
                0.001,
                0.0008117449009293668,
                0.00038873953302184284,
                4.9515566048790485e-05,
                4.951556604879043e-05,
                0.00038873953302184273,
                0.0008117449009293667,
                0.001,
            ],
        ),
    ];
    for (kind, base, warmup, total, want) in cases {
        let s = Schedule::new(*kind, *base, *warmup, *total).unwrap();
        for (step, &w) in want.iter().enumerate() {
            let got = s.lr(step as u64);
            // f64 libm cos may differ by an ulp between platforms.
            assert!(
                (got - w).abs() <= 1e-15 * w.abs().max(1e-6),
                "{kind:?} w{warmup} t{total} step {step}: {got:e} vs {w:e}"
            );
        }
    }
    assert_eq!(warmup_steps_from_ratio(10, 0.03), 1);
    assert_eq!(warmup_steps_from_ratio(100, 0.1), 10);
    assert_eq!(ScheduleKind::parse("cosine").unwrap(), ScheduleKind::COSINE);
    assert!(ScheduleKind::parse("polynomial").is_err());
    assert!(Schedule::new(ScheduleKind::Linear, -1.0, 0, 1).is_err());
}

#[test]
fn metrics_are_json_lines() {
    let mut w = MetricsWriter::new(Vec::new(), "mem");
    let r1 = MetricsRecord {
        step: 1,
        loss: 2.5,
        lr: 1e-4,
        grad_norm: 0.75,
        tokens_per_s: 1234.5,
        elapsed_s: 0.5,
        eval_loss: None,
        eval_ppl: None,
        eval_data: Default::default(),
    };
    let r2 = MetricsRecord {
        step: 2,
        loss: f64::NAN,
        ..r1.clone()
    }
    .with_eval(1.0);
    w.write(&r1).unwrap();
    w.write(&r2).unwrap();
    let text = String::from_utf8(w.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        r#"{"step":1,"loss":2.5,"lr":0.0001,"grad_norm":0.75,"tokens_per_s":1234.5,"elapsed_s":0.5}"#
    );
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert!(v["loss"].is_null());
    assert_eq!(v["eval_loss"], 1.0);
    assert!((v["eval_ppl"].as_f64().unwrap() - std::f64::consts::E).abs() < 1e-15);
    let back = parse_metrics(&text, "m.jsonl").unwrap();
    assert_eq!(back[0], r1);
    assert!(back[1].loss.is_nan());
    assert_eq!(back[1].eval_loss, Some(1.0));
    let e = parse_metrics("{\"step\": 1}\n\n{", "m.jsonl").unwrap_err();
    assert!(e.to_string().starts_with("m.jsonl:1:"), "{e}");

    // A resumed log drops the records written after the checkpoint step.
    let dir = std::env::temp_dir().join(format!("tinytune-train-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("metrics.jsonl");
    let mut w = MetricsWriter::open(&path, None).unwrap();
    for step in 1..=5 {
        w.write(&MetricsRecord { step, ..r1.clone() }).unwrap();
    }
    drop(w);
    // An interrupted write left half a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\": 6, \"lo").unwrap();
    drop(f);
    let mut w = MetricsWriter::open(&path, Some(3)).unwrap();
    w.write(&MetricsRecord {
        step: 4,
        loss: 9.0,
        ..r1.clone()
    })
    .unwrap();
    drop(w);
    let back = parse_metrics(&std::fs::read_to_string(&path).unwrap(), "m").unwrap();
    assert_eq!(
        back.iter().map(|r| r.step).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(back[3].loss, 9.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_hold_eval_sets_and_the_evaluation_before_training() {
    let before = MetricsRecord::before_training()
        .with_eval(2.0)
        .with_eval_set("general", 1.5)
        .with_eval_set("code", f64::INFINITY);
    let line = before.to_json_line();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    // Step 0 has no training fields; each set has its loss and perplexity.
    for k in ["loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(v.get(k).is_none(), "{line}");
    }
    assert_eq!((&v["step"], &v["elapsed_s"]), (&0.into(), &0.0.into()));
    assert_eq!(v["eval_data"]["general"]["loss"], 1.5);
    assert_eq!(v["eval_data"]["general"]["ppl"], 1.5f64.exp());
    assert!(v["eval_data"]["code"]["loss"].is_null(), "{line}");
    assert!(before.has_eval());
    assert_eq!(
        before.eval_summary(),
        format!(
            " eval_loss 2.0000 ppl {:.2} code_loss inf ppl inf general_loss 1.5000 ppl {:.2}",
            2f64.exp(),
            1.5f64.exp()
        )
    );
    // Read back (as a resumed log does) and written again: the same line.
    let back = parse_metrics(&line, "m.jsonl").unwrap();
    assert!(back[0].loss.is_nan() && back[0].eval_data["code"].loss.is_nan());
    assert_eq!(back[0].to_json_line(), line);
    // A training step keeps its fields even when they are not finite.
    let mut step = MetricsRecord::before_training().with_eval_set("general", 1.0);
    step.step = 3;
    let v: serde_json::Value = serde_json::from_str(&step.to_json_line()).unwrap();
    assert!(v["loss"].is_null() && v["eval_data"]["general"]["loss"] == 1.0);
    assert!(!MetricsRecord::before_training().has_eval());
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/data/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn with_columns(seq_len: usize, specs: &[&str]) -> DataConfig {
    DataConfig {
        columns: Columns::parse(specs).unwrap(),
        ..DataConfig::new(seq_len)
    }
}

/// The same records as `.jsonl` text and as Parquet (written by pyarrow, as the Hub serves them):
/// identical examples, whatever the compression (snappy, zstd), row groups or column types.
#[test]
fn parquet_rows_read_like_jsonl_records() {
    let tok = ByteTok::with_template(true, CHATML, "", "<|im_end|>");
    let cfg = DataConfig::new(256);
    let same = |file: &str, cfg: &DataConfig, jsonl: &str| {
        let p = Dataset::from_named_bytes(file, &fixture(file), &tok, cfg).unwrap();
        let j = Dataset::from_jsonl("same.jsonl", jsonl, &tok, cfg).unwrap();
        assert_eq!(p.examples, j.examples, "{file}");
        assert_eq!(p.stats, j.stats, "{file}");
        p
    };
    let text = same(
        "text.parquet",
        &cfg,
        "{\"text\": \"Hello world.\"}\n{\"text\": \"Second row.\"}\n{\"text\": \"Third.\"}",
    );
    assert_eq!(text.examples.len(), 3);
    let msg = |pairs: &[(&str, &str)]| {
        let m: Vec<String> = pairs
            .iter()
            .map(|(r, c)| format!("{{\"role\": \"{r}\", \"content\": \"{c}\"}}"))
            .collect();
        format!("{{\"messages\": [{}]}}", m.join(", "))
    };
    let chats = [
        msg(&[("user", "Hi?"), ("assistant", "Arr! Hi.")]),
        msg(&[
            ("system", "Be a pirate."),
            ("user", "Sea?"),
            ("assistant", "Arr! Wet."),
        ]),
        msg(&[
            ("user", "One?"),
            ("assistant", "Arr! 1."),
            ("user", "Two?"),
            ("assistant", "Arr! 2."),
        ]),
    ];
    // zstd, two row groups, an extra prompt_id column.
    let m = same("messages.parquet", &cfg, &chats.join("\n"));
    assert_eq!(
        supervised_text(&m.examples[2]),
        "Arr! 1.<|im_end|>\nArr! 2.<|im_end|>\n"
    );
    // ShareGPT: the same conversations as messages.
    same(
        "sharegpt.parquet",
        &cfg,
        &[
            msg(&[
                ("system", "Pirate."),
                ("user", "Hi?"),
                ("assistant", "Arr! Hi."),
            ]),
            msg(&[("user", "Sea?"), ("assistant", "Arr! Wet.")]),
        ]
        .join("\n"),
    );
    // Other column names, mapped.
    let qa = with_columns(32, &["prompt=question", "completion=answer"]);
    same(
        "qa.parquet",
        &qa,
        "{\"question\": \"Q1: \", \"answer\": \"A1.\"}\n{\"question\": \"Q2: \", \"answer\": \"A2.\"}",
    );
    // Pre-tokenized: the ids as they are, int32 ids and int64 labels.
    let t = same(
        "tokens.parquet",
        &DataConfig::new(6),
        "{\"input_ids\": [1, 10, 11, 12], \"labels\": [-100, -100, 11, 12]}\n{\"input_ids\": [1, 20, 21], \"labels\": [1, 20, 21]}",
    );
    assert_eq!(t.examples[0].input_ids, [1, 10, 11, 12, PAD, PAD]);
    assert_eq!(
        t.examples[0].labels[..4],
        [IGNORE_INDEX, IGNORE_INDEX, 11, 12]
    );
    assert_eq!(t.examples[0].len, 4);
}

/// ShareGPT `conversations` render through the chat template like `messages`; pre-tokenized
/// records keep their ids, take labels or default to every id, drop right padding; each form's
/// errors name the field and what to do.
#[test]
fn sharegpt_and_pretokenized_records() {
    let tok = ByteTok::with_template(false, CHATML, "", "<|im_end|>");
    let share = r#"{"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "yo"}], "id": 3}"#;
    let chat = r#"{"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo"}]}"#;
    let a = Dataset::from_jsonl("s.jsonl", share, &tok, &DataConfig::new(256)).unwrap();
    let b = Dataset::from_jsonl("m.jsonl", chat, &tok, &DataConfig::new(256)).unwrap();
    assert_eq!(a.examples, b.examples);
    assert_eq!(supervised_text(&a.examples[0]), "yo<|im_end|>\n");

    let toks = concat!(
        "{\"input_ids\": [5, 6, 7, 8]}\n",
        "{\"input_ids\": [5, 6, 7, 0, 0], \"labels\": [-100, 6, 7, -100, -100], \"attention_mask\": [1, 1, 1, 0, 0]}\n",
    );
    let d = Dataset::from_jsonl("t.jsonl", toks, &tok, &DataConfig::new(6)).unwrap();
    assert_eq!(d.examples[0].input_ids, [5, 6, 7, 8, PAD, PAD]);
    assert_eq!(
        d.examples[0].labels[..4],
        [5, 6, 7, 8],
        "labels default to the ids"
    );
    assert_eq!(d.examples[1].len, 3, "the mask's padding is dropped");
    assert_eq!(d.examples[1].labels[..3], [IGNORE_INDEX, 6, 7]);
    // No BOS or EOS added, truncated like any record.
    let d = Dataset::from_jsonl("t.jsonl", toks, &tok, &DataConfig::new(3)).unwrap();
    assert_eq!(d.examples[0].input_ids, [5, 6, 7]);
    assert_eq!(d.stats.truncated, 1);

    for (bad, want) in [
        (r#"{"conversations": "hi"}"#, "\"conversations\" must be an array, got a string"),
        (r#"{"conversations": []}"#, "\"conversations\" is empty"),
        (
            r#"{"conversations": [{"from": "human"}]}"#,
            "conversations[0] has no \"value\" (ShareGPT turns are {\"from\", \"value\"})",
        ),
        (
            r#"{"conversations": [{"from": "narrator", "value": "x"}]}"#,
            "conversations[0].from \"narrator\": expected \"human\", \"gpt\" or \"system\"",
        ),
        (
            r#"{"conversations": [{"from": "human", "value": "x"}]}"#,
            "no \"gpt\" (assistant) turn",
        ),
        (r#"{"input_ids": []}"#, "\"input_ids\" is empty"),
        (r#"{"input_ids": "1 2"}"#, "\"input_ids\" must be an array of integers, got a string"),
        (r#"{"input_ids": [1, 2.5]}"#, "\"input_ids\"[1] must be an integer, got a number"),
        (r#"{"input_ids": [1, -3]}"#, "\"input_ids\"[1] is -3: token ids are >= 0"),
        (
            r#"{"input_ids": [1, 300]}"#,
            "\"input_ids\"[1] is 300: beyond the tokenizer's 259 ids",
        ),
        (
            r#"{"input_ids": [1, 2], "labels": [1]}"#,
            "\"labels\" has 1 entries and \"input_ids\" 2",
        ),
        (
            r#"{"input_ids": [1, 2], "labels": [1, -1]}"#,
            "\"labels\"[1] is -1: token ids are >= 0; -100 marks no loss",
        ),
        (
            r#"{"input_ids": [1, 2, 3], "attention_mask": [0, 1, 1]}"#,
            "only right padding can be dropped",
        ),
        (r#"{"labels": [1, 2]}"#, "this one has \"labels\""),
        (
            r#"{"text": "a", "conversations": []}"#,
            "ambiguous record: it has \"text\" and \"conversations\"; keep one form, or pick it with --data-column",
        ),
    ] {
        let (line, msg) = jsonl_error(&tok, &[r#"{"text": "ok"}"#, bad]);
        assert_eq!(line, 2, "{bad}");
        assert!(msg.contains(want), "{bad}: got {msg:?}, want {want:?}");
    }
}

/// `--data-column FIELD=COLUMN`: reads a field from another key, and naming a field picks its
/// form in records that have several (Hub datasets with `prompt` next to `messages`).
#[test]
fn data_columns_rename_fields_and_pick_forms() {
    let tok = ByteTok::with_template(true, CHATML, "", "<|im_end|>");
    let rec = r#"{"prompt": "Hi?", "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "yo"}]}"#;
    let (_, msg) = jsonl_error(&tok, &[rec]);
    assert!(
        msg.contains("ambiguous record: it has \"prompt\"/\"completion\" and \"messages\"")
            && msg.contains("--data-column messages=messages"),
        "{msg}"
    );
    let d = Dataset::from_jsonl(
        "d.jsonl",
        rec,
        &tok,
        &with_columns(256, &["messages=messages"]),
    )
    .unwrap();
    assert_eq!(supervised_text(&d.examples[0]), "yo<|im_end|>\n");
    let renamed = r#"{"body": "hello", "text": 5}"#;
    let d =
        Dataset::from_jsonl("d.jsonl", renamed, &tok, &with_columns(64, &["text=body"])).unwrap();
    assert_eq!(d.examples[0].input_ids[1..6], ids_of("hello")[..]);
    // A mapped column that a record lacks says what the mapping asked for.
    let e = Dataset::from_jsonl(
        "d.jsonl",
        r#"{"text": "x"}"#,
        &tok,
        &with_columns(64, &["text=body"]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "d.jsonl:1: expected \"body\" (as data_column text=body names); this one has \"text\""
        ),
        "{e}"
    );
    for (specs, want) in [
        (&["text"][..], "expected FIELD=COLUMN"),
        (
            &["body=text"][..],
            "unknown field \"body\" (expected one of text, prompt",
        ),
        (&["text="][..], "the column after '=' is empty"),
        (
            &["text=a", "text=b"][..],
            "names the column of \"text\" twice",
        ),
    ] {
        let e = Columns::parse(specs).unwrap_err();
        assert!(e.contains(want), "{specs:?}: {e}");
    }
}

/// A bad Parquet row is an error naming the file, the row (from 0) and the column; a file that
/// is not Parquet, or uses a compression tinytune does not read, says what to do.
#[test]
fn malformed_parquet_names_file_row_and_column() {
    let tok = ByteTok::with_template(true, CHATML, "", "<|im_end|>");
    let load = |name: &str, bytes: &[u8], cfg: &DataConfig| {
        Dataset::from_named_bytes(name, bytes, &tok, cfg)
            .unwrap_err()
            .to_string()
    };
    let cfg = DataConfig::new(64);
    let e = load("bad_row.parquet", &fixture("bad_row.parquet"), &cfg);
    assert_eq!(
        e,
        "bad_row.parquet: row 1 (from 0): messages[0].content must be a string, got null"
    );
    let e = load("qa.parquet", &fixture("qa.parquet"), &cfg);
    assert!(
        e.starts_with("qa.parquet: row 0 (from 0): expected a \"text\"")
            && e.contains("this one has \"answer\", \"question\"")
            && e.contains("--data-column FIELD=COLUMN"),
        "{e}"
    );
    let e = load("gzip.parquet", &fixture("gzip.parquet"), &cfg);
    assert!(
        e.starts_with("gzip.parquet: ") && e.contains("snappy"),
        "{e}"
    );
    let e = load("junk.parquet", b"not a parquet file at all", &cfg);
    assert!(
        e.starts_with("junk.parquet: not a readable Parquet file"),
        "{e}"
    );
    let e = Dataset::from_named_str("d.parquet", "text", &tok, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.parquet: a Parquet file is binary"), "{e}");
}
