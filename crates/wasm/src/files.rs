//! Models and adapters from named in-memory files (what a browser's file picker gives), without a
//! file system. Plain Rust, so it is tested natively against the path-based loaders.

use tinytune_model::{ByteSource, ChunkedBytes, HfParts, ModelSource};
use tinytune_train::PeftAdapter;

/// One picked file: its name (a path's last component is used) and its bytes: in chunks in
/// memory, or read range by range from a browser `File` ([`crate::reader::RangeSource`]).
pub struct NamedFile {
    pub name: String,
    pub bytes: Box<dyn ByteSource>,
}

impl NamedFile {
    /// A file read through any [`ByteSource`].
    pub fn new(name: &str, bytes: Box<dyn ByteSource>) -> NamedFile {
        NamedFile {
            name: base_name(name).to_string(),
            bytes,
        }
    }

    /// A file from chunks (e.g. the `Uint8Array`s of a `File`'s stream).
    pub fn from_chunks(name: &str, chunks: Vec<Box<[u8]>>) -> NamedFile {
        let name = base_name(name).to_string();
        let mut bytes = ChunkedBytes::new(name.clone());
        for c in chunks {
            bytes.push(c);
        }
        NamedFile {
            name,
            bytes: Box::new(bytes),
        }
    }

    fn text(&self) -> Result<String, String> {
        let b = self
            .bytes
            .read_at(0, self.bytes.len() as usize)
            .map_err(|e| e.to_string())?;
        String::from_utf8(b.into_owned()).map_err(|e| format!("{}: invalid UTF-8: {e}", self.name))
    }

    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        Ok(self
            .bytes
            .read_at(0, self.bytes.len() as usize)
            .map_err(|e| e.to_string())?
            .into_owned())
    }
}

/// The last component of a `/`- or `\`-separated path (`webkitRelativePath` of a picked folder).
pub fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

fn is_gguf(f: &NamedFile) -> bool {
    f.name.to_ascii_lowercase().ends_with(".gguf")
        || f.bytes.read_at(0, 4).is_ok_and(|m| &*m == b"GGUF")
}

/// A model from picked files: one `.gguf`, or a Hugging Face folder's `config.json`, its
/// `*.safetensors` (one file or every shard), `tokenizer.json`, `tokenizer_config.json` and
/// optionally `chat_template.jinja`. Other files (`generation_config.json`, the shard index,
/// README...) are ignored.
pub fn open_model(files: Vec<NamedFile>) -> Result<ModelSource, String> {
    if files.is_empty() {
        return Err(
            "no model files given: pick one .gguf, or a Hugging Face folder's config.json, \
                    *.safetensors, tokenizer.json and tokenizer_config.json"
                .into(),
        );
    }
    let (gguf, rest): (Vec<NamedFile>, Vec<NamedFile>) = files.into_iter().partition(is_gguf);
    if !gguf.is_empty() {
        if gguf.len() > 1 {
            let names: Vec<&str> = gguf.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "more than one GGUF file given ({}): pick one",
                names.join(", ")
            ));
        }
        let f = gguf.into_iter().next().expect("one");
        let name = f.name.clone();
        return ModelSource::from_gguf_bytes(f.bytes).map_err(|e| named(&name, e));
    }
    let mut config_json = None;
    let mut tokenizer_json = None;
    let mut tokenizer_config_json = None;
    let mut chat_template = None;
    let mut shards: Vec<Box<dyn ByteSource>> = Vec::new();
    for f in rest {
        match f.name.as_str() {
            "config.json" => config_json = Some(f.text()?),
            "tokenizer.json" => tokenizer_json = Some(f.text()?),
            "tokenizer_config.json" => tokenizer_config_json = Some(f.text()?),
            "chat_template.jinja" => chat_template = Some(f.text()?),
            n if n.ends_with(".safetensors") => shards.push(f.bytes),
            _ => {}
        }
    }
    let config_json = config_json.ok_or(
        "no config.json among the model files (pick a .gguf, or a Hugging Face folder's config.json, \
         *.safetensors, tokenizer.json and tokenizer_config.json)",
    )?;
    if shards.is_empty() {
        return Err("no .safetensors file among the model files".into());
    }
    ModelSource::from_hf_parts(HfParts {
        config_json,
        shards,
        tokenizer_json,
        tokenizer_config_json,
        chat_template,
    })
    .map_err(|e| e.to_string())
}

/// `e` as a message that names `file` once (the loaders' errors often name it already).
pub fn named(file: &str, e: impl std::fmt::Display) -> String {
    let m = e.to_string();
    if m.contains(file) {
        m
    } else {
        format!("{file}: {m}")
    }
}

/// A PEFT adapter (LoRA, prompt or prefix tuning, by `adapter_config.json`'s `peft_type`) from
/// its two picked files (`adapter_config.json`, `adapter_model.safetensors`).
pub fn open_adapter(files: Vec<NamedFile>) -> Result<PeftAdapter, String> {
    let mut cfg = None;
    let mut st = None;
    for f in files {
        match f.name.as_str() {
            "adapter_config.json" => cfg = Some(f.to_vec()?),
            "adapter_model.safetensors" => st = Some(f.to_vec()?),
            "adapter_model.bin" => {
                return Err(
                    "adapter_model.bin: pickled PyTorch adapters are not supported; save \
                            with safe_serialization=True"
                        .into(),
                )
            }
            _ => {}
        }
    }
    let cfg = cfg.ok_or("no adapter_config.json among the adapter files")?;
    let st = st.ok_or("no adapter_model.safetensors among the adapter files")?;
    PeftAdapter::from_bytes(&cfg, &st, "adapter").map_err(|e| e.to_string())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// Every file of a folder, each split into 3 chunks (exercises reads across chunks).
    fn picked(dir: &Path) -> Vec<NamedFile> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            let third = b.len() / 3;
            let chunks = vec![
                b[..third].to_vec().into_boxed_slice(),
                b[third..2 * third].to_vec().into_boxed_slice(),
                b[2 * third..].to_vec().into_boxed_slice(),
            ];
            out.push(NamedFile::from_chunks(
                &format!("picked/{}", p.file_name().unwrap().to_str().unwrap()),
                chunks,
            ));
        }
        out
    }

    fn same(a: &ModelSource, b: &ModelSource) {
        assert_eq!(a.config(), b.config());
        assert_eq!(a.tensor_names(), b.tensor_names());
        for n in a.tensor_names() {
            assert_eq!(a.load(n).unwrap(), b.load(n).unwrap(), "{n}");
        }
        let (ta, tb) = (a.tokenizer().unwrap(), b.tokenizer().unwrap());
        assert_eq!(ta.chat_template(), tb.chat_template());
        assert_eq!(
            ta.encode("Hello, world!", true).unwrap(),
            tb.encode("Hello, world!", true).unwrap()
        );
    }

    #[test]
    fn picked_folders_and_gguf_load_like_paths() {
        for dir in [
            "tests/fixtures/model/llama_hf",
            "tests/fixtures/model/qwen2_hf",
        ] {
            let d = fixture(dir);
            let mem = open_model(picked(&d)).unwrap();
            same(&mem, &ModelSource::open(&d).unwrap());
        }
        let g = fixture("tests/fixtures/model/qwen2.gguf");
        let f = NamedFile::from_chunks(
            "qwen2.gguf",
            vec![std::fs::read(&g).unwrap().into_boxed_slice()],
        );
        same(
            &open_model(vec![f]).unwrap(),
            &ModelSource::open(&g).unwrap(),
        );
    }

    /// A file on disk read range by range, as a browser `File` is through `FileReaderSync`.
    struct DiskRange(std::fs::File);

    impl crate::reader::RangeRead for DiskRange {
        fn read_range(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
            use std::os::unix::fs::FileExt;
            let mut b = vec![0; len];
            self.0
                .read_exact_at(&mut b, offset)
                .map_err(|e| e.to_string())?;
            Ok(b)
        }
    }

    /// Every file of `paths` as a counted range source.
    fn ranged(
        paths: &[PathBuf],
        counter: &std::sync::Arc<crate::reader::LoadCounter>,
    ) -> Vec<NamedFile> {
        use crate::reader::{Counted, RangeSource};
        paths
            .iter()
            .map(|p| {
                let f = std::fs::File::open(p).unwrap();
                let len = f.metadata().unwrap().len();
                let name = p.file_name().unwrap().to_str().unwrap();
                let src = RangeSource::new(DiskRange(f), len, name);
                NamedFile::new(
                    name,
                    Box::new(Counted::new(Box::new(src), counter.clone(), None)),
                )
            })
            .collect()
    }

    #[test]
    fn ranged_files_load_tensor_by_tensor() {
        let folder = fixture("tests/fixtures/model/llama_hf");
        let gguf = fixture("tests/fixtures/model/qwen2.gguf");
        let folder_files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for (paths, reference) in [
            (folder_files, ModelSource::open(&folder).unwrap()),
            (vec![gguf.clone()], ModelSource::open(&gguf).unwrap()),
        ] {
            let total: u64 = paths
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            let counter = std::sync::Arc::new(crate::reader::LoadCounter::default());
            let src = open_model(ranged(&paths, &counter)).unwrap();
            let header_bytes = counter.bytes();
            counter.start_tensors();
            same(&src, &reference);
            // `same` loads every tensor once: one read each, and no byte read twice.
            assert_eq!(counter.tensor_reads() as usize, src.tensors().len());
            assert!(counter.bytes() <= total, "{} > {total}", counter.bytes());
            assert!(header_bytes < total / 2, "{header_bytes} of {total}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let d = fixture("tests/fixtures/model/qwen2_hf");
        let files: Vec<NamedFile> = picked(&d)
            .into_iter()
            .filter(|f| f.name != "config.json")
            .collect();
        assert!(open_model(files).err().unwrap().contains("config.json"));
        let files: Vec<NamedFile> = picked(&d)
            .into_iter()
            .filter(|f| !f.name.ends_with(".safetensors"))
            .collect();
        assert!(open_model(files).err().unwrap().contains(".safetensors"));
        assert!(open_model(Vec::new()).is_err());
    }

    #[test]
    fn corrupt_files_are_named_once() {
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let e = open_model(vec![NamedFile::from_chunks(
            "picked/model.gguf",
            vec![garbage.into_boxed_slice()],
        )])
        .err()
        .unwrap();
        assert_eq!(e.matches("model.gguf").count(), 1, "{e}");
        // Cut in the middle of the tensor data: the header names tensors past the end.
        let g = std::fs::read(fixture("tests/fixtures/model/llama.gguf")).unwrap();
        let cut = g[..g.len() * 7 / 10].to_vec().into_boxed_slice();
        let e = open_model(vec![NamedFile::from_chunks("cut.gguf", vec![cut])])
            .err()
            .unwrap();
        assert_eq!(e.matches("cut.gguf").count(), 1, "{e}");
        assert!(e.contains("past the end of the file"), "{e}");
        assert_eq!(named("a.gguf", "a.gguf: bad"), "a.gguf: bad");
        assert_eq!(named("a.gguf", "bad"), "a.gguf: bad");
    }

    #[test]
    fn adapters_round_trip() {
        let d = fixture("tests/fixtures/train/peft_lora");
        let a = open_adapter(picked(&d)).unwrap();
        assert_eq!(
            a,
            PeftAdapter::Lora(tinytune_train::LoraAdapter::load(&d).unwrap())
        );
        // Prefix tuning by its peft_type (a PEFT-written adapter).
        let pd = fixture("tests/fixtures/hf/llama/prefix_tuning/init");
        let p = open_adapter(picked(&pd)).unwrap();
        assert_eq!(p.method(), tinytune_train::PeftMethod::PrefixTuning);
        let files = a
            .to_files()
            .unwrap()
            .into_iter()
            .map(|(n, b)| NamedFile::from_chunks(&n, vec![b.into_boxed_slice()]))
            .collect();
        assert_eq!(open_adapter(files).unwrap(), a);
        assert!(open_adapter(Vec::new())
            .unwrap_err()
            .contains("adapter_config.json"));
    }
}
