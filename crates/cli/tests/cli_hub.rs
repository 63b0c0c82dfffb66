//! `--model ORG/NAME[@REVISION]`: Hugging Face Hub downloads against a local stand-in for the Hub
//! (a `TcpListener` thread serving `/api/models/{repo}/revision/{rev}` and
//! `/{repo}/resolve/{rev}/{file}` from the tiny test models), never the network.
//!
//! Most cases drive the download through `tinytune merge` with an adapter folder that does not
//! exist: the model is resolved (downloaded) first, then the command stops with the adapter
//! error, no GPU needed. Full runs: `merge` (CPU) and `logits` (GPU) on a downloaded model.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{have_gpu, root};

/// One request the stand-in saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

/// A repo: its commits (sha -> files) and refs (branch -> sha).
#[derive(Default, Clone)]
struct Repo {
    commits: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    refs: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    seen: Vec<Seen>,
    /// Bearer token every request must carry, when set.
    token: Option<String>,
    /// File name -> how many GETs of it are cut half-way (the connection closes after half of
    /// the bytes it should send).
    cut: BTreeMap<String, usize>,
    /// Files listed in the API but answered 404 by resolve.
    vanished: Vec<String>,
    /// Unknown repos answer 401 RepoNotFound, as the Hub does for anonymous callers.
    unknown_401: bool,
    /// The "CDN" (another port): resolve redirects `.safetensors` and `.gguf` files there, as the
    /// Hub does with LFS files (X-Linked-Etag / X-Linked-Size; a signed URL, no token).
    cdn: String,
}

struct Hub {
    url: String,
    state: Arc<Mutex<State>>,
}

const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const V1: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// The files of a fixture folder.
fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

fn sharded_model() -> PathBuf {
    root().join("tests/fixtures/model/llama_hf")
}

/// The stand-in's repos: `tiny/llama` (sharded safetensors + tokenizer; branch v1 is the
/// single-file model of tests/fixtures/hf/llama/model), `tiny/gguf` (a GGUF and a README).
fn repos() -> BTreeMap<String, Repo> {
    let mut llama = Repo::default();
    llama.commits.insert(MAIN.into(), folder(&sharded_model()));
    llama.commits.insert(
        V1.into(),
        folder(&root().join("tests/fixtures/hf/llama/model")),
    );
    llama.refs.insert("main".into(), MAIN.into());
    llama.refs.insert("v1".into(), V1.into());
    let mut gguf = Repo::default();
    let mut files = BTreeMap::new();
    files.insert(
        "llama.gguf".to_string(),
        std::fs::read(root().join("tests/fixtures/model/llama.gguf")).unwrap(),
    );
    files.insert("README.md".to_string(), b"# a GGUF repo\n".to_vec());
    gguf.commits.insert(MAIN.into(), files);
    gguf.refs.insert("main".into(), MAIN.into());
    let mut pt = Repo::default();
    let mut files = BTreeMap::new();
    files.insert("config.json".to_string(), b"{}".to_vec());
    files.insert("pytorch_model.bin".to_string(), vec![0u8; 16]);
    pt.commits.insert(MAIN.into(), files);
    pt.refs.insert("main".into(), MAIN.into());
    let mut all = BTreeMap::new();
    all.insert("tiny/pt".to_string(), pt);
    all.insert("tiny/llama".to_string(), llama);
    all.insert("tiny/gguf".to_string(), gguf);
    all
}

/// A content hash for ETags (FNV-1a, hex): equal files share a blob, as on the Hub.
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn respond(s: &mut TcpStream, code: u16, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut h = format!("HTTP/1.1 {code} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| *k == "Content-Length") {
        h.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    h.push_str("\r\n");
    let _ = s.write_all(h.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

fn handle(mut s: TcpStream, state: &Mutex<State>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let head = method == "HEAD";
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        auth: auth.clone(),
    });
    let on_cdn = path.starts_with("/cdn/");
    if let (Some(t), false) = (&st.token, on_cdn) {
        if auth.as_deref() != Some(&format!("Bearer {t}")) {
            let hd = [("X-Error-Code", "GatedRepo".to_string())];
            return respond(&mut s, 401, &hd, b"{\"error\":\"gated\"}", head);
        }
    }
    let not_found = |s: &mut TcpStream, code: &str| {
        respond(s, 404, &[("X-Error-Code", code.to_string())], b"{}", head)
    };
    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let seg: Vec<&str> = rest.splitn(4, '/').collect();
        if seg.len() != 4 || seg[2] != "revision" {
            return not_found(&mut s, "EntryNotFound");
        }
        let repo = format!("{}/{}", seg[0], seg[1]);
        let rev = decode(seg[3]);
        let Some(rp) = st.repos.get(&repo) else {
            if st.unknown_401 {
                let hd = [("X-Error-Code", "RepoNotFound".to_string())];
                return respond(&mut s, 401, &hd, b"{}", head);
            }
            return not_found(&mut s, "RepoNotFound");
        };
        let sha = rp.refs.get(&rev).cloned().unwrap_or(rev);
        let Some(files) = rp.commits.get(&sha) else {
            return not_found(&mut s, "RevisionNotFound");
        };
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": repo, "sha": sha, "siblings": siblings }).to_string();
        let hd = [("Content-Type", "application/json".to_string())];
        return respond(&mut s, 200, &hd, body.as_bytes(), head);
    }
    // /cdn/{org}/{name}/{sha}/{file}
    if let Some(rest) = path.strip_prefix("/cdn/") {
        let seg: Vec<&str> = rest.splitn(4, '/').collect();
        let bytes = (seg.len() == 4)
            .then(|| st.repos.get(&format!("{}/{}", seg[0], seg[1])))
            .flatten()
            .and_then(|rp| rp.commits.get(seg[2]))
            .and_then(|f| f.get(&decode(seg[3])))
            .cloned();
        return match bytes {
            Some(b) => serve(s, st, &decode(seg[3]), &b, seg[2], range, head),
            None => not_found(&mut s, "EntryNotFound"),
        };
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let seg: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if seg.len() != 5 || seg[2] != "resolve" {
        return not_found(&mut s, "EntryNotFound");
    }
    let repo = format!("{}/{}", seg[0], seg[1]);
    let (rev, file) = (decode(seg[3]), decode(seg[4]));
    let Some(rp) = st.repos.get(&repo) else {
        return not_found(&mut s, "RepoNotFound");
    };
    let sha = rp.refs.get(&rev).cloned().unwrap_or(rev);
    let Some(bytes) = rp.commits.get(&sha).and_then(|f| f.get(&file)).cloned() else {
        return not_found(&mut s, "EntryNotFound");
    };
    if st.vanished.contains(&file) {
        return not_found(&mut s, "EntryNotFound");
    }
    if file.ends_with(".safetensors") || file.ends_with(".gguf") {
        let hd = [
            ("X-Linked-Etag", format!("\"{}\"", etag(&bytes))),
            ("X-Linked-Size", bytes.len().to_string()),
            ("X-Repo-Commit", sha.clone()),
            (
                "Location",
                format!("{}/cdn/{repo}/{sha}/{}", st.cdn, seg[4]),
            ),
        ];
        return respond(&mut s, 302, &hd, b"", head);
    }
    serve(s, st, &file, &bytes, &sha, range, head)
}

/// A file's bytes (or the range asked for), cut half-way while `cut` says so.
fn serve(
    mut s: TcpStream,
    mut st: std::sync::MutexGuard<State>,
    file: &str,
    bytes: &[u8],
    sha: &str,
    range: Option<String>,
    head: bool,
) {
    let tag = format!("\"{}\"", etag(bytes));
    let len = bytes.len();
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (code, body, mut hd) = match from {
        Some(n) if n >= len => return respond(&mut s, 416, &[], b"", head),
        Some(n) => (
            206,
            &bytes[n..],
            vec![("Content-Range", format!("bytes {n}-{}/{len}", len - 1))],
        ),
        None => (200, bytes, vec![]),
    };
    hd.push(("ETag", tag));
    hd.push(("X-Repo-Commit", sha.to_string()));
    hd.push(("Content-Length", body.len().to_string()));
    let cut = match st.cut.get_mut(file) {
        Some(n) if *n > 0 && !head => {
            *n -= 1;
            true
        }
        _ => false,
    };
    drop(st);
    if cut {
        // Headers announce the whole body; half of it comes, then the connection closes.
        respond(&mut s, code, &hd, &body[..body.len() / 2], false);
        let _ = s.shutdown(Shutdown::Both);
        return;
    }
    respond(&mut s, code, &hd, body, head);
}

impl Hub {
    fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let state = Arc::new(Mutex::new(State {
            repos: repos(),
            cdn: format!("http://{}", cdn.local_addr().unwrap()),
            ..State::default()
        }));
        for l in [listener, cdn] {
            let st = state.clone();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    std::thread::spawn(move || handle(conn, &st));
                }
            });
        }
        Hub { url, state }
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }
}

/// A temporary HF_HOME and a run of `tinytune` against `endpoint` in it.
struct Env {
    home: tempfile::TempDir,
    endpoint: String,
}

impl Env {
    fn new(endpoint: &str) -> Env {
        Env {
            home: tempfile::tempdir().unwrap(),
            endpoint: endpoint.to_string(),
        }
    }

    fn cmd(&self, extra_env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tinytune"));
        c.env("HF_HOME", self.home.path())
            .env("HF_ENDPOINT", &self.endpoint)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .current_dir(self.home.path());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c
    }

    /// Resolves (downloads) `model` through `merge` with a missing adapter: succeeds when the
    /// command gets as far as the adapter.
    fn fetch(&self, model: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
        let o = self
            .cmd(env)
            .args(["merge", "--model", model, "--adapter", "no-such-adapter"])
            .args(["--output-dir", "merged"])
            .args(extra)
            .output()
            .unwrap();
        let err = last_error(&o);
        if err.contains("adapter no-such-adapter is not a folder") {
            Ok(())
        } else {
            Err(err)
        }
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.home
            .path()
            .join("hub")
            .join(format!("models--{}", name.replace('/', "--")))
    }
}

/// The `error:` line of a failed run (downloads may print progress lines before it).
fn last_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected a failure: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    lines[0].to_string()
}

fn resolves(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.path.contains("/resolve/"))
        .collect()
}

fn assert_same_files(snapshot: &Path, want: &Path, names: &[&str]) {
    for n in names {
        let got = std::fs::read(snapshot.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(got, std::fs::read(want.join(n)).unwrap(), "{n}");
    }
}

#[test]
fn download_then_cache_hit() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    env.fetch("tiny/llama", &[], &[]).unwrap();
    let seen = hub.seen();
    assert_eq!(seen[0].path, "/api/models/tiny/llama/revision/main");
    let gets: Vec<&str> = resolves(&seen)
        .iter()
        .filter(|s| s.method == "GET")
        .map(|s| s.path.rsplit('/').next().unwrap())
        .collect();
    let mut want = vec![
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];
    let mut got = gets.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "each needed file fetched once");
    // The Hugging Face cache layout.
    let repo = env.repo("tiny/llama");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        MAIN
    );
    let snap = repo.join("snapshots").join(MAIN);
    assert_same_files(&snap, &sharded_model(), &want);
    for n in &want {
        let link = std::fs::read_link(snap.join(n)).unwrap();
        assert!(link.starts_with("../../blobs"), "{n} -> {}", link.display());
    }
    let blobs = std::fs::read_dir(repo.join("blobs")).unwrap().count();
    assert_eq!(blobs, want.len());

    // Second run: only the revision lookup, no file requests.
    env.fetch("tiny/llama", &[], &[]).unwrap();
    let seen = hub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].path.starts_with("/api/models/"));
}

#[test]
fn revision_branch_and_sha() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    env.fetch("tiny/llama@v1", &[], &[]).unwrap();
    let repo = env.repo("tiny/llama");
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1")).unwrap(), V1);
    let snap = repo.join("snapshots").join(V1);
    assert_same_files(
        &snap,
        &root().join("tests/fixtures/hf/llama/model"),
        &["config.json", "model.safetensors", "generation_config.json"],
    );
    assert!(!repo.join("snapshots").join(MAIN).exists());
    // A commit sha: no ref is written for it.
    hub.seen();
    env.fetch(&format!("tiny/llama@{MAIN}"), &[], &[]).unwrap();
    let seen = hub.seen();
    assert_eq!(
        seen[0].path,
        format!("/api/models/tiny/llama/revision/{MAIN}")
    );
    assert!(resolves(&seen)
        .iter()
        .all(|s| s.path.contains(&format!("/resolve/{MAIN}/"))));
    assert!(repo
        .join("snapshots")
        .join(MAIN)
        .join("tokenizer.json")
        .is_file());
    assert!(!repo.join("refs").join(MAIN).exists());
    // Unknown revision.
    let e = env.fetch("tiny/llama@nope", &[], &[]).unwrap_err();
    assert!(e.contains("revision nope of tiny/llama not found"), "{e}");
}

#[test]
fn offline_uses_the_cache_and_names_what_is_missing() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    // Empty cache.
    let off = [("HF_HUB_OFFLINE", "1")];
    let e = env.fetch("tiny/llama", &[], &off).unwrap_err();
    assert!(
        e.contains("HF_HUB_OFFLINE=1") && e.contains("tiny/llama@main is not in the cache"),
        "{e}"
    );
    assert!(hub.seen().is_empty(), "offline runs make no requests");
    // Cached: works with no request at all, even with the endpoint unreachable.
    env.fetch("tiny/llama", &[], &[]).unwrap();
    hub.seen();
    let dead = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_ENDPOINT", "http://127.0.0.1:9"),
    ];
    env.fetch("tiny/llama", &[], &dead).unwrap();
    env.fetch(&format!("tiny/llama@{MAIN}"), &[], &dead)
        .unwrap();
    assert!(hub.seen().is_empty());
    let e = env.fetch("tiny/llama@v1", &[], &off).unwrap_err();
    assert!(e.contains("tiny/llama@v1 is not in the cache"), "{e}");
    // A cached snapshot missing a shard: named.
    let snap = env.repo("tiny/llama").join("snapshots").join(MAIN);
    std::fs::remove_file(snap.join("model-00002-of-00002.safetensors")).unwrap();
    let e = env.fetch("tiny/llama", &[], &off).unwrap_err();
    assert!(
        e.contains("lacks model-00002-of-00002.safetensors in the cache"),
        "{e}"
    );
    // Online again: the missing shard comes back, its blob reused (no GET).
    env.fetch("tiny/llama", &[], &[]).unwrap();
    let gets = hub
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/resolve/"))
        .count();
    assert_eq!(gets, 0);
    assert!(snap.join("model-00002-of-00002.safetensors").is_file());
}

#[test]
fn not_found_repo_file_and_gguf() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let e = env.fetch("tiny/missing", &[], &[]).unwrap_err();
    assert!(
        e.contains("model repo tiny/missing") && e.contains("not found") && e.contains("404"),
        "{e}"
    );
    hub.state.lock().unwrap().unknown_401 = true;
    let e = env.fetch("tiny/missing", &[], &[]).unwrap_err();
    assert!(
        e.contains("model repo tiny/missing not found")
            && e.contains("if it is private, set HF_TOKEN"),
        "{e}"
    );
    let e = env
        .fetch("tiny/gguf", &["--gguf-file", "other.gguf"], &[])
        .unwrap_err();
    assert!(
        e.contains("has no file other.gguf") && e.contains("llama.gguf"),
        "{e}"
    );
    let e = env.fetch("tiny/gguf", &[], &[]).unwrap_err();
    assert!(
        e.contains("no config.json") && e.contains("--gguf-file"),
        "{e}"
    );
    let e = env.fetch("tiny/pt", &[], &[]).unwrap_err();
    assert!(
        e.contains("tiny/pt@main has no model.safetensors")
            && e.contains("only PyTorch weights, pytorch_model.bin"),
        "{e}"
    );
    // Listed but gone from resolve.
    hub.state.lock().unwrap().vanished = vec!["tokenizer.json".into()];
    let e = env.fetch("tiny/llama", &[], &[]).unwrap_err();
    assert!(
        e.contains("file tokenizer.json of tiny/llama@main not found"),
        "{e}"
    );
    hub.state.lock().unwrap().vanished.clear();
    // A named GGUF: only that file is fetched.
    hub.seen();
    env.fetch("tiny/gguf", &["--gguf-file", "llama.gguf"], &[])
        .unwrap();
    let gets: Vec<String> = hub
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/resolve/"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(gets, vec![format!("/tiny/gguf/resolve/{MAIN}/llama.gguf")]);
    let got = std::fs::read(
        env.repo("tiny/gguf")
            .join("snapshots")
            .join(MAIN)
            .join("llama.gguf"),
    );
    assert_eq!(
        got.unwrap(),
        std::fs::read(root().join("tests/fixtures/model/llama.gguf")).unwrap()
    );
}

#[test]
fn auth_error_then_token() {
    let hub = Hub::start();
    hub.state.lock().unwrap().token = Some("hf_secret".into());
    let env = Env::new(&hub.url);
    let e = env.fetch("tiny/llama", &[], &[]).unwrap_err();
    assert!(
        e.contains("denied (HTTP 401") && e.contains("set HF_TOKEN"),
        "{e}"
    );
    let e = env
        .fetch("tiny/llama", &[], &[("HF_TOKEN", "hf_wrong")])
        .unwrap_err();
    assert!(e.contains("HF_TOKEN is set but gives no access"), "{e}");
    // The token `huggingface-cli login` saved in HF_HOME is used when HF_TOKEN is not set.
    std::fs::write(env.home.path().join("token"), "hf_secret\n").unwrap();
    let login = Env::new(&hub.url);
    hub.seen();
    login
        .fetch(
            "tiny/llama",
            &[],
            &[(
                "HF_TOKEN_PATH",
                env.home.path().join("token").to_str().unwrap(),
            )],
        )
        .unwrap();
    assert!(hub
        .seen()
        .iter()
        .filter(|s| !s.path.starts_with("/cdn/"))
        .all(|s| s.auth.as_deref() == Some("Bearer hf_secret")));
    std::fs::remove_file(env.home.path().join("token")).unwrap();
    hub.seen();
    env.fetch("tiny/llama", &[], &[("HF_TOKEN", "hf_secret")])
        .unwrap();
    let seen = hub.seen();
    assert!(seen.len() > 1);
    // The token goes to the Hub, never to the CDN its LFS files redirect to.
    let (cdn, own): (Vec<&Seen>, Vec<&Seen>) =
        seen.iter().partition(|s| s.path.starts_with("/cdn/"));
    assert_eq!(cdn.len(), 2, "the two shards come from the CDN: {seen:?}");
    assert!(cdn.iter().all(|s| s.auth.is_none()), "{cdn:?}");
    assert!(own
        .iter()
        .all(|s| s.auth.as_deref() == Some("Bearer hf_secret")));
}

#[test]
fn interrupted_download_resumes_with_range() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let shard = "model-00001-of-00002.safetensors";
    let len = std::fs::metadata(sharded_model().join(shard))
        .unwrap()
        .len() as usize;
    // Every attempt of the first run is cut (3 attempts), then the transfers complete.
    hub.state.lock().unwrap().cut.insert(shard.into(), 3);
    let e = env.fetch("tiny/llama", &[], &[]).unwrap_err();
    assert!(
        e.contains(&format!(
            "download of {shard} of tiny/llama@main interrupted"
        )) && e.contains("run the command again to resume"),
        "{e}"
    );
    let ranges: Vec<Option<String>> = hub
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/") && s.path.ends_with(shard))
        .map(|s| s.range.clone())
        .collect();
    // Each retry asks for the rest: half, then half of the rest...
    let (a, b) = (len / 2, len / 2 + (len - len / 2) / 2);
    assert_eq!(
        ranges,
        vec![
            None,
            Some(format!("bytes={a}-")),
            Some(format!("bytes={b}-"))
        ]
    );
    let blobs = env.repo("tiny/llama").join("blobs");
    let part: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "incomplete"))
        .collect();
    assert_eq!(part.len(), 1);
    let have = std::fs::metadata(&part[0]).unwrap().len() as usize;
    assert!(have > b && have < len, "{have} of {len}");
    // The next run resumes from the partial file and completes it.
    env.fetch("tiny/llama", &[], &[]).unwrap();
    let ranges: Vec<Option<String>> = hub
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/cdn/") && s.path.ends_with(shard))
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(ranges, vec![Some(format!("bytes={have}-"))]);
    assert!(!part[0].exists());
    let snap = env.repo("tiny/llama").join("snapshots").join(MAIN);
    assert_same_files(&snap, &sharded_model(), &[shard]);
    // A cut within a run is retried in the same run.
    let env2 = Env::new(&hub.url);
    hub.state.lock().unwrap().cut.insert(shard.into(), 1);
    env2.fetch("tiny/llama", &[], &[]).unwrap();
    let snap2 = env2.repo("tiny/llama").join("snapshots").join(MAIN);
    assert_same_files(&snap2, &sharded_model(), &[shard]);
}

#[test]
fn unreachable_endpoint_and_local_path_wins() {
    // A port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = Env::new(&format!("http://127.0.0.1:{port}"));
    let e = env.fetch("tiny/llama", &[], &[]).unwrap_err();
    assert!(
        e.contains("cannot reach the Hugging Face Hub")
            && e.contains("HF_HUB_OFFLINE=1")
            && e.contains("no local path tiny/llama exists"),
        "{e}"
    );
    // A folder named like the id (relative to the working directory) is used as it is.
    let local = env.home.path().join("tiny/llama");
    std::fs::create_dir_all(&local).unwrap();
    for (n, b) in folder(&sharded_model()) {
        std::fs::write(local.join(n), b).unwrap();
    }
    env.fetch("tiny/llama", &[], &[]).unwrap();
    // --gguf-file belongs with a Hub id.
    let e = env
        .fetch("tiny/llama", &["--gguf-file", "x.gguf"], &[])
        .unwrap_err();
    assert!(
        e.contains("--gguf-file x.gguf") && e.contains("local path"),
        "{e}"
    );
}

/// `tinytune merge --model ORG/NAME` end to end (CPU): the same output as from the local folder.
#[test]
fn merge_from_the_hub_matches_local() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let adapter = root().join("tests/fixtures/hf/llama/adapter");
    let run = |model: &str, out: &str| {
        let o = env
            .cmd(&[])
            .args(["merge", "--model", model, "--adapter"])
            .arg(&adapter)
            .args(["--output-dir", out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(env.home.path().join(out).join("model.safetensors")).unwrap()
    };
    let local = root().join("tests/fixtures/hf/llama/model");
    let a = run("tiny/llama@v1", "from-hub");
    let b = run(local.to_str().unwrap(), "from-local");
    assert_eq!(a, b);
}

/// `tinytune logits --model ORG/NAME --prompt ...` end to end on the GPU: the same logits file as
/// from the local folder (the tokenizer came from the Hub too).
#[test]
fn logits_from_the_hub_match_local() {
    if !have_gpu() {
        return;
    }
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let run = |model: &str, out: &str| {
        let o = env
            .cmd(&[])
            .args(["logits", "--quant", "none", "--model", model])
            .args(["--prompt", "hello world", "--out", out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(env.home.path().join(out)).unwrap()
    };
    let a = run("tiny/llama", "hub.safetensors");
    let b = run(sharded_model().to_str().unwrap(), "local.safetensors");
    assert_eq!(a, b);
    // And again from the cache alone.
    let o = env
        .cmd(&[("HF_HUB_OFFLINE", "1")])
        .args(["logits", "--quant", "none", "--model", "tiny/llama"])
        .args(["--prompt", "hello world", "--out", "offline.safetensors"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(env.home.path().join("offline.safetensors")).unwrap(),
        b
    );
}

/// `tinytune train` and `eval` with `--model ORG/NAME`: the adapter records the Hub id as its
/// base model (as PEFT does), and eval gives the same loss as from the local folder.
#[test]
fn train_and_eval_from_the_hub() {
    if !have_gpu() {
        return;
    }
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let mut text = String::new();
    for i in 0..8 {
        text.push_str(&format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"Question {i}?\"}},{{\"role\":\"assistant\",\"content\":\"Arr! Answer {i}.\"}}]}}\n"
        ));
    }
    std::fs::write(env.home.path().join("data.jsonl"), text).unwrap();
    let o = env
        .cmd(&[])
        .args(["train", "--model", "tiny/llama", "--data", "data.jsonl"])
        .args([
            "--output-dir",
            "run",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
        ])
        .args([
            "--num-steps",
            "2",
            "--lora-r",
            "4",
            "--eval-split",
            "0",
            "--log-steps",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.home.path().join("run/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny/llama");
    let eval = |model: &str| {
        let o = env
            .cmd(&[])
            .args([
                "eval",
                "--model",
                model,
                "--data",
                "data.jsonl",
                "--adapter",
                "run",
            ])
            .args(["--seq-len", "32"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(out.contains("\"eval_loss\""), "{out}");
        out
    };
    let local = sharded_model();
    assert_eq!(eval("tiny/llama"), eval(local.to_str().unwrap()));
}

/// Two processes fetching one blob: the second waits on `blobs/<etag>.lock` while its holder
/// lives, then finds the file; a lock left by a process that is gone is taken over.
#[test]
fn a_blob_being_fetched_elsewhere_is_waited_for() {
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let config = std::fs::read(sharded_model().join("config.json")).unwrap();
    let blobs = env.repo("tiny/llama").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let lock = blobs.join(format!("{}.lock", etag(&config)));
    // Held by a live process (this test): the run waits.
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let mut child = env
        .cmd(&[])
        .args([
            "merge",
            "--model",
            "tiny/llama",
            "--adapter",
            "no-such-adapter",
        ])
        .args(["--output-dir", "merged"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the run should wait");
    std::fs::remove_file(&lock).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = last_error(&o);
    assert!(err.contains("no-such-adapter"), "{err}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("waiting for process"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!lock.exists());
    // Left by a process that is gone: taken over.
    let env2 = Env::new(&hub.url);
    let blobs2 = env2.repo("tiny/llama").join("blobs");
    std::fs::create_dir_all(&blobs2).unwrap();
    let lock2 = blobs2.join(format!("{}.lock", etag(&config)));
    std::fs::write(&lock2, "4294967295\n").unwrap();
    env2.fetch("tiny/llama", &[], &[]).unwrap();
    assert!(!lock2.exists());
    assert!(blobs2.join(etag(&config)).is_file());
}

/// `tinytune quantize ORG/NAME OUT_DIR` (the Hub id as IN): the same bitsandbytes folder as from
/// the local model folder.
#[test]
fn quantize_from_the_hub_matches_local() {
    if !have_gpu() {
        return;
    }
    let hub = Hub::start();
    let env = Env::new(&hub.url);
    let run = |model: &str, out: &str| {
        let o = env
            .cmd(&[])
            .args(["quantize", model, out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(env.home.path().join(out).join("model.safetensors")).unwrap()
    };
    let local = root().join("tests/fixtures/hf/llama/model");
    assert_eq!(
        run("tiny/llama@v1", "q-hub"),
        run(local.to_str().unwrap(), "q-local")
    );
}
