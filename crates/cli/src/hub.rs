//! Hugging Face Hub ids for `--model`: `ORG/NAME[@REVISION]` is downloaded (only the files a run
//! needs) into the standard Hugging Face cache, so transformers and tinytune share one copy.
//!
//! Cache layout (as `huggingface_hub` writes it), under `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`:
//!
//! ```text
//! models--ORG--NAME/
//!   blobs/<etag>                     file contents, named by the Hub's ETag (sha256 for LFS files)
//!   blobs/<etag>.incomplete          a download in progress (resumed with a Range request)
//!   refs/<revision>                  the commit sha a branch or tag pointed at
//!   snapshots/<commit>/<file>        symlinks into blobs/ (copies where symlinks are unavailable)
//! ```
//!
//! Protocol (`$HF_ENDPOINT`, default `https://huggingface.co`): `GET
//! /api/models/{repo}/revision/{rev}` gives the commit sha and the file list; `HEAD` then `GET
//! /{repo}/resolve/{commit}/{file}` give each missing file (ETag / `X-Linked-Etag` name the blob,
//! `X-Linked-Size` / `Content-Length` its size; LFS files redirect to a CDN, which is followed
//! without the token). `$HF_TOKEN` (else the token file `huggingface-cli login` writes) is sent as
//! `Authorization: Bearer`. With `HF_HUB_OFFLINE=1` nothing is requested: the revision is resolved
//! through `refs/` and the files must already be in the snapshot.
//!
//! Why not the `hf-hub` crate: its blocking API has no offline mode (`HF_HUB_OFFLINE`), reports
//! HTTP failures as one opaque error (no "set HF_TOKEN" versus "not found" versus "unreachable"),
//! and resumes into its own file naming; this module is small and does exactly what the CLI needs.
//! It is native-only by construction: only the CLI crate depends on it (the browser build has its
//! own URL loader).

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tinytune_model::source::COPIED_FILES;

/// The default endpoint when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The default revision when the id has no `@REVISION`.
pub const DEFAULT_REVISION: &str = "main";

/// Attempts per file within one run when the connection drops mid-transfer; each resumes where the
/// previous one stopped (and so does the next run, from the `.incomplete` file).
const ATTEMPTS: usize = 3;

/// A model argument made local: the path to open and the name to record.
#[derive(Debug, Clone)]
pub struct ModelArg {
    /// The local folder or `.gguf` file to open with `ModelSource::open`.
    pub path: PathBuf,
    /// How the user named the model: the Hub repo id (`ORG/NAME`) or the local path as given;
    /// written as the adapter's `base_model_name_or_path`.
    pub name: String,
}

/// A parsed `ORG/NAME[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `ORG/NAME`.
    pub repo: String,
    /// Branch, tag or commit sha (`main` when not given).
    pub revision: String,
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// One part of a repo id: what the Hub allows (letters, digits, `-`, `_`, `.`), not starting with
/// `.` or `-` (so `./x` and `../x` stay paths), no `..`, at most 96 characters.
fn id_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with(['.', '-'])
        && !s.contains("..")
}

/// Parses `ORG/NAME[@REVISION]`; `None` for anything else (a path, `NAME` alone, more slashes).
pub fn parse_id(s: &str) -> Option<HubId> {
    let (repo, revision) = match s.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (s, DEFAULT_REVISION),
    };
    let (org, name) = repo.split_once('/')?;
    if !id_part(org) || !id_part(name) {
        return None;
    }
    // Branch names may hold '/' (refs/pr/1) but no empty or dot-dot segments, which would escape
    // refs/ in the cache.
    let rev_ok = !revision.is_empty()
        && revision
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !rev_ok {
        return None;
    }
    Some(HubId {
        repo: repo.to_string(),
        revision: revision.to_string(),
    })
}

/// Makes `--model` (and `--gguf-file`) local: an existing path is used as it is (a local path
/// always wins over a Hub id of the same spelling); an `ORG/NAME[@REV]` that is not a path is
/// fetched into the Hugging Face cache and its snapshot folder (or the `.gguf` file in it) is
/// returned. Anything else is returned unchanged, for `ModelSource::open` to report.
pub fn resolve_model(model: &Path, gguf_file: Option<&str>) -> Result<ModelArg> {
    let given = model.display().to_string();
    if model.exists() {
        if let Some(g) = gguf_file {
            bail!(
                "--gguf-file {g} picks a file of a Hub repo, but --model {given} is a local path; \
                 give the .gguf file itself as --model"
            );
        }
        return Ok(ModelArg {
            path: model.to_path_buf(),
            name: given,
        });
    }
    let id = match model.to_str().and_then(parse_id) {
        Some(id) => id,
        None => {
            if let Some(g) = gguf_file {
                bail!("--gguf-file {g} needs --model ORG/NAME[@REVISION] (a Hub id); {given} is not one and does not exist");
            }
            return Ok(ModelArg {
                path: model.to_path_buf(),
                name: given,
            });
        }
    };
    if let Some(g) = gguf_file {
        check_file_name(g).with_context(|| format!("--gguf-file {g}"))?;
    }
    let hub = Hub::from_env()?;
    let path = hub.fetch(&id, gguf_file)?;
    Ok(ModelArg {
        path,
        name: id.repo,
    })
}

/// A repo file name must stay inside the snapshot: relative, no `..`, no empty segments.
fn check_file_name(f: &str) -> Result<()> {
    if f.is_empty()
        || f.starts_with('/')
        || f.contains('\\')
        || f.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        bail!("'{f}' is not a file name inside a repo");
    }
    Ok(())
}

/// Whether an environment flag is on the way `huggingface_hub` reads it (1, true, yes, on).
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The Hub client: endpoint, cache folder, token, offline switch (all from the environment).
pub struct Hub {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    offline: bool,
    agent: ureq::Agent,
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> Result<PathBuf> {
    if let Some(h) = env_nonempty("HF_HOME") {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("huggingface"));
    }
    let home = env_nonempty("HOME")
        .or_else(|| env_nonempty("USERPROFILE"))
        .ok_or_else(|| anyhow!("cannot find the Hugging Face cache: set HF_HOME"))?;
    Ok(PathBuf::from(home).join(".cache").join("huggingface"))
}

/// What one HTTP exchange ended as, for the messages.
enum Fail {
    /// The server answered with this status.
    Status(u16, Option<String>),
    /// No answer: connection refused, DNS, TLS, timeout.
    Unreachable(String),
}

impl Hub {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME`, `HF_TOKEN` (else the file
    /// `$HF_TOKEN_PATH`, default `$HF_HOME/token`, that `huggingface-cli login` writes) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Hub> {
        let home = hf_home()?;
        let cache = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = env_nonempty("HF_TOKEN")
            .or_else(|| {
                let path = env_nonempty("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home.join("token"));
                fs::read_to_string(path)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            })
            .map(|t| t.trim().to_string());
        let endpoint = env_nonempty("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        // Redirects are followed by hand (the token goes only to the endpoint's own host), and
        // statuses come back as responses so each gets its own message.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("tinytune/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Hub {
            endpoint,
            cache,
            token,
            offline: env_flag("HF_HUB_OFFLINE"),
            agent,
        })
    }

    /// `models--ORG--NAME` in the cache.
    fn repo_dir(&self, id: &HubId) -> PathBuf {
        self.cache
            .join(format!("models--{}", id.repo.replace('/', "--")))
    }

    /// Downloads what a run needs of `id` (or checks the cache when offline) and returns the
    /// snapshot folder, or the `.gguf` file in it with `gguf_file`.
    pub fn fetch(&self, id: &HubId, gguf_file: Option<&str>) -> Result<PathBuf> {
        if self.offline {
            return self.offline_snapshot(id, gguf_file);
        }
        let (commit, files) = self.revision_info(id)?;
        let dir = self.repo_dir(id);
        if commit != id.revision {
            let r = dir.join("refs").join(&id.revision);
            write_small(&r, &commit)?;
        }
        let snap = dir.join("snapshots").join(&commit);
        let names = |pred: &dyn Fn(&str) -> bool| -> Vec<String> {
            files.iter().filter(|f| pred(f)).cloned().collect()
        };
        if let Some(g) = gguf_file {
            if !files.contains(g) {
                let ggufs = names(&|f: &str| f.ends_with(".gguf"));
                bail!(
                    "{id} has no file {g} ({})",
                    if ggufs.is_empty() {
                        "and no .gguf files".to_string()
                    } else {
                        format!("its .gguf files: {}", ggufs.join(", "))
                    }
                );
            }
            self.download_all(id, &commit, &[g.to_string()])?;
            return Ok(snap.join(g));
        }
        if !files.contains("config.json") {
            bail!("{id} has no config.json: not a transformers model repo (for a GGUF repo give --gguf-file FILE)");
        }
        let mut want: Vec<String> = vec!["config.json".into()];
        want.extend(names(&|f: &str| COPIED_FILES.contains(&f)));
        if files.contains("model.safetensors") {
            want.push("model.safetensors".into());
            self.download_all(id, &commit, &want)?;
        } else if files.contains("model.safetensors.index.json") {
            want.push("model.safetensors.index.json".into());
            self.download_all(id, &commit, &want)?;
            let shards = shard_names(&snap.join("model.safetensors.index.json"))?;
            if let Some(missing) = shards.iter().find(|s| !files.contains(*s)) {
                bail!("{id}: model.safetensors.index.json names shard {missing}, which the repo does not have");
            }
            self.download_all(id, &commit, &shards.into_iter().collect::<Vec<_>>())?;
        } else {
            let ggufs = names(&|f: &str| f.ends_with(".gguf"));
            let bins = names(&|f: &str| f.ends_with(".bin"));
            let hint = if !ggufs.is_empty() {
                format!(
                    "; pick one of its .gguf files with --gguf-file ({})",
                    ggufs.join(", ")
                )
            } else if !bins.is_empty() {
                format!(
                    " (only PyTorch weights, {}, which tinytune does not read: convert them to \
                     safetensors)",
                    bins.join(", ")
                )
            } else {
                String::new()
            };
            bail!("{id} has no model.safetensors or model.safetensors.index.json{hint}");
        }
        Ok(snap)
    }

    /// The snapshot already in the cache, for `HF_HUB_OFFLINE=1`: every needed file must be there.
    fn offline_snapshot(&self, id: &HubId, gguf_file: Option<&str>) -> Result<PathBuf> {
        let dir = self.repo_dir(id);
        let hint = "unset HF_HUB_OFFLINE to download it";
        let ref_file = dir.join("refs").join(&id.revision);
        let commit = match fs::read_to_string(&ref_file) {
            Ok(c) => c.trim().to_string(),
            Err(_) if dir.join("snapshots").join(&id.revision).is_dir() => id.revision.clone(),
            Err(_) => bail!(
                "HF_HUB_OFFLINE=1 and {id} is not in the cache ({} is missing); {hint}",
                ref_file.display()
            ),
        };
        let snap = dir.join("snapshots").join(&commit);
        let need = |files: &[String]| -> Result<()> {
            let missing: Vec<&String> = files.iter().filter(|f| !snap.join(f).is_file()).collect();
            if !missing.is_empty() {
                bail!(
                    "HF_HUB_OFFLINE=1 and {id} (commit {commit}) lacks {} in the cache ({}); {hint}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    snap.display()
                );
            }
            Ok(())
        };
        if let Some(g) = gguf_file {
            need(&[g.to_string()])?;
            return Ok(snap.join(g));
        }
        need(&["config.json".to_string()])?;
        if snap.join("model.safetensors").is_file() {
            return Ok(snap);
        }
        let index = snap.join("model.safetensors.index.json");
        if !index.is_file() {
            need(&["model.safetensors".to_string()])?;
        }
        let shards: Vec<String> = shard_names(&index)?.into_iter().collect();
        need(&shards)?;
        Ok(snap)
    }

    /// The commit sha and file list of a revision (`/api/models/{repo}/revision/{rev}`).
    fn revision_info(&self, id: &HubId) -> Result<(String, BTreeSet<String>)> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint,
            id.repo,
            encode(&id.revision, false)
        );
        let mut resp = match self.send("GET", &url, None) {
            Ok(r) => r,
            Err(Fail::Unreachable(e)) => {
                let e = format!("{e}; no local path {} exists either", id.repo);
                return Err(self.unreachable(&url, &e));
            }
            Err(Fail::Status(code, err)) => return Err(self.status_error(id, None, code, err)),
        };
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.unreachable(&url, &e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{url}: the answer is not JSON"))?;
        let sha = v
            .get("sha")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| anyhow!("{url}: the answer has no commit \"sha\""))?;
        let files = v
            .get("siblings")
            .and_then(|s| s.as_array())
            .ok_or_else(|| anyhow!("{url}: the answer has no \"siblings\" file list"))?
            .iter()
            .filter_map(|f| f.get("rfilename").and_then(|n| n.as_str()))
            .map(str::to_string)
            .collect();
        Ok((sha.to_string(), files))
    }

    /// Sends one request, following redirects by hand: the token goes only to the endpoint's
    /// host (LFS files redirect to a CDN with a signed URL); `Range` goes everywhere. Returns the
    /// final response when its status is 2xx (or 416, which the caller handles).
    fn send(
        &self,
        method: &str,
        url: &str,
        range_from: Option<u64>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Fail> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let own = self.own(&url);
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            if let (true, Some(t)) = (own, &self.token) {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            if let Some(n) = range_from {
                req = req.header("Range", format!("bytes={n}-"));
            }
            let req = req
                .body(())
                .map_err(|e| Fail::Unreachable(format!("bad request to {url}: {e}")))?;
            let resp = self.agent.run(req).map_err(|e| match e {
                ureq::Error::StatusCode(c) => Fail::Status(c, None),
                e => Fail::Unreachable(e.to_string()),
            })?;
            let code = resp.status().as_u16();
            if (300..400).contains(&code) && code != 304 {
                let loc = header(&resp, "location")
                    .ok_or_else(|| Fail::Status(code, Some("redirect without Location".into())))?;
                url = absolute(&url, &loc);
                continue;
            }
            if (200..300).contains(&code) || code == 416 {
                return Ok(resp);
            }
            let err = header(&resp, "x-error-code").or_else(|| header(&resp, "x-error-message"));
            return Err(Fail::Status(code, err));
        }
        Err(Fail::Unreachable(format!("too many redirects from {url}")))
    }

    /// Whether `url` is on the endpoint itself (the only place the token is sent).
    fn own(&self, url: &str) -> bool {
        url.strip_prefix(&self.endpoint)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn unreachable(&self, url: &str, e: &str) -> anyhow::Error {
        anyhow!(
            "cannot reach the Hugging Face Hub at {} ({url}: {e}); check the network or HF_ENDPOINT, \
             or set HF_HUB_OFFLINE=1 to use the files already in the cache ({})",
            self.endpoint,
            self.cache.display()
        )
    }

    /// The message of an HTTP error status for `id` (and `file` when fetching one).
    fn status_error(
        &self,
        id: &HubId,
        file: Option<&str>,
        code: u16,
        err: Option<String>,
    ) -> anyhow::Error {
        let what = match file {
            Some(f) => format!("file {f} of {id}"),
            None => format!("{id}"),
        };
        let why = err.as_ref().map(|e| format!(", {e}")).unwrap_or_default();
        // The Hub answers an unknown repo with 401 to anonymous callers (it may be private).
        if file.is_none() && code == 401 && err.as_deref() == Some("RepoNotFound") {
            return anyhow!(
                "model repo {} not found on {} (HTTP 401{why}), and no local path {} exists; if \
                 it is private, set HF_TOKEN to a token that may read it",
                id.repo,
                self.endpoint,
                id.repo
            );
        }
        match code {
            401 | 403 => {
                let fix = if self.token.is_some() {
                    "HF_TOKEN is set but gives no access: use a token of an account that has \
                     accepted the model's terms (gated repos) or may read it (private repos)"
                } else {
                    "if the repo is gated or private, accept its terms on the Hub and set HF_TOKEN \
                     to an access token"
                };
                anyhow!("access to {what} denied (HTTP {code}{why}): {fix}")
            }
            404 => match (file, err.as_deref()) {
                (None, Some(e)) if e.contains("Revision") => anyhow!(
                    "revision {} of {} not found on {} (HTTP 404{why})",
                    id.revision,
                    id.repo,
                    self.endpoint
                ),
                (None, _) => anyhow!(
                    "model repo {} (revision {}) not found on {} (HTTP 404{why}), and no local path \
                     {} exists",
                    id.repo,
                    id.revision,
                    self.endpoint,
                    id.repo
                ),
                (Some(_), _) => anyhow!("{what} not found on {} (HTTP 404{why})", self.endpoint),
            },
            _ => anyhow!("{what}: HTTP {code} from {}{why}", self.endpoint),
        }
    }

    /// Downloads those of `files` the snapshot lacks, with a progress bar per file on a terminal.
    fn download_all(&self, id: &HubId, commit: &str, files: &[String]) -> Result<()> {
        let dir = self.repo_dir(id);
        let snap = dir.join("snapshots").join(commit);
        let missing: Vec<&String> = files.iter().filter(|f| !snap.join(f).is_file()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!(
            "hub: fetching {} file(s) of {id} (commit {}) into {}",
            missing.len(),
            &commit[..commit.len().min(12)],
            dir.display()
        );
        for f in missing {
            self.download(id, commit, f)?;
        }
        Ok(())
    }

    /// Fetches one file into `blobs/` (resuming a `.incomplete` one) and links it from the
    /// snapshot.
    fn download(&self, id: &HubId, commit: &str, file: &str) -> Result<()> {
        check_file_name(file)?;
        let dir = self.repo_dir(id);
        let url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            id.repo,
            commit,
            encode(file, true)
        );
        // HEAD without following the CDN redirect: the Hub's own answer carries the blob's name
        // (X-Linked-Etag for LFS files, ETag otherwise) and size.
        let (etag, size) = self.head(id, file, &url)?;
        let blobs = dir.join("blobs");
        fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
        let blob_name = etag.unwrap_or_else(|| format!("{commit}-{}", file.replace('/', "--")));
        let blob = blobs.join(&blob_name);
        let part = blobs.join(format!("{blob_name}.incomplete"));
        // Another process (a second tinytune, two runs of a sweep) may be fetching the same blob:
        // one appends to the .incomplete file at a time, the other waits and then finds the blob.
        let _lock = if blob.is_file() {
            None
        } else {
            Some(BlobLock::acquire(
                &blobs.join(format!("{blob_name}.lock")),
                &part,
                &format!("{file} of {id}"),
            )?)
        };
        if !blob.is_file() {
            let mut last = None;
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    // A dropped connection often comes back after a moment.
                    std::thread::sleep(Duration::from_millis(250 * attempt as u64));
                }
                match self.transfer(id, file, &url, &part, size) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(Transfer::Fatal(e)) => return Err(e),
                    Err(Transfer::Interrupted(e)) => last = Some(e),
                }
            }
            if let Some(e) = last {
                let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                bail!(
                    "download of {file} of {id} interrupted at {have}{} bytes ({e}); run the \
                     command again to resume it",
                    size.map(|s| format!(" of {s}")).unwrap_or_default()
                );
            }
            fs::rename(&part, &blob).with_context(|| {
                format!("cannot rename {} to {}", part.display(), blob.display())
            })?;
        }
        link(&blob, &dir.join("snapshots").join(commit).join(file), file)
    }

    /// The blob name and size of a file, from a HEAD on its resolve URL.
    fn head(&self, id: &HubId, file: &str, url: &str) -> Result<(Option<String>, Option<u64>)> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut req = ureq::http::Request::builder().method("HEAD").uri(&url);
            if let (true, Some(t)) = (self.own(&url), &self.token) {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let req = req.body(())?;
            let resp = self
                .agent
                .run(req)
                .map_err(|e| self.unreachable(&url, &e.to_string()))?;
            let code = resp.status().as_u16();
            let etag = header(&resp, "x-linked-etag")
                .or_else(|| header(&resp, "etag"))
                .map(|e| clean_etag(&e))
                .filter(|e| !e.is_empty());
            let size = header(&resp, "x-linked-size")
                .or_else(|| {
                    if (200..300).contains(&code) {
                        header(&resp, "content-length")
                    } else {
                        None
                    }
                })
                .and_then(|s| s.trim().parse::<u64>().ok());
            if (300..400).contains(&code) {
                let loc = header(&resp, "location")
                    .ok_or_else(|| anyhow!("{url}: redirect without Location"))?;
                // A relative redirect stays on the Hub (a renamed repo): follow it. An absolute
                // one goes to the CDN: what the Hub said is all we need.
                if loc.starts_with('/') && etag.is_none() {
                    url = absolute(&url, &loc);
                    continue;
                }
                return Ok((etag, size));
            }
            if (200..300).contains(&code) {
                return Ok((etag, size));
            }
            let err = header(&resp, "x-error-code");
            return Err(self.status_error(id, Some(file), code, err));
        }
        bail!("too many redirects from {url}")
    }

    /// One attempt at completing `part` from `url`, resuming from its current length.
    fn transfer(
        &self,
        id: &HubId,
        file: &str,
        url: &str,
        part: &Path,
        size: Option<u64>,
    ) -> std::result::Result<(), Transfer> {
        let fatal = |e: anyhow::Error| Transfer::Fatal(e);
        let io =
            |e: std::io::Error| Transfer::Fatal(anyhow!("cannot write {}: {e}", part.display()));
        let mut have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if size.is_some_and(|s| have > s) {
            have = 0;
        }
        if size == Some(have) && have > 0 {
            return Ok(());
        }
        let resp = match self.send("GET", url, (have > 0).then_some(have)) {
            Ok(r) => r,
            Err(Fail::Unreachable(e)) => return Err(Transfer::Interrupted(e)),
            Err(Fail::Status(code, err)) => {
                return Err(fatal(self.status_error(id, Some(file), code, err)))
            }
        };
        let code = resp.status().as_u16();
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(io)?;
        let start = match code {
            206 => {
                let from = header(&resp, "content-range").and_then(|r| {
                    r.strip_prefix("bytes ")
                        .and_then(|r| r.split('-').next())
                        .and_then(|n| n.trim().parse::<u64>().ok())
                });
                if from != Some(have) {
                    // Not the range asked for: start over.
                    out.set_len(0).map_err(io)?;
                    return Err(Transfer::Interrupted(format!(
                        "the server sent another range ({})",
                        header(&resp, "content-range").unwrap_or_default()
                    )));
                }
                have
            }
            416 => {
                // Nothing left past `have`: complete when the size agrees, else start over.
                if size.is_none() || size == Some(have) {
                    return Ok(());
                }
                out.set_len(0).map_err(io)?;
                return Err(Transfer::Interrupted("the range was refused".into()));
            }
            _ => {
                // A whole file (the server ignored Range, or none was sent).
                out.set_len(0).map_err(io)?;
                0
            }
        };
        let total = size.or_else(|| {
            header(&resp, "content-length")
                .and_then(|l| l.trim().parse::<u64>().ok())
                .map(|l| l + start)
        });
        let pb = progress(file, total, start);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = start;
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.write_all(&buf[..n]).map_err(io)?;
                    done += n as u64;
                    pb.set_position(done);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    pb.abandon();
                    out.flush().map_err(io)?;
                    return Err(Transfer::Interrupted(e.to_string()));
                }
            }
        }
        out.flush().map_err(io)?;
        out.sync_all().map_err(io)?;
        pb.finish_and_clear();
        if let Some(t) = total {
            if done < t {
                return Err(Transfer::Interrupted(format!(
                    "the connection closed at {done} of {t} bytes"
                )));
            }
            if done > t {
                out.set_len(0).map_err(io)?;
                return Err(fatal(anyhow!(
                    "{file} of {id}: got {done} bytes, the Hub announced {t}"
                )));
            }
        }
        Ok(())
    }
}

/// Holds `blobs/<etag>.lock` (this process's id) while the blob is fetched.
struct BlobLock {
    path: PathBuf,
}

/// How long a lock whose holder cannot be checked (no `/proc`) may show no download progress
/// before it is taken as left by a killed process.
const STALE_AFTER: Duration = Duration::from_secs(60);

impl BlobLock {
    /// Takes the lock, waiting while a live process holds it; a lock left by a process that is
    /// gone (or, where that cannot be told, one whose download has not grown for a minute) is
    /// taken over.
    fn acquire(path: &Path, part: &Path, what: &str) -> Result<BlobLock> {
        let me = std::process::id();
        let part_len = || fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut progress = (std::time::Instant::now(), part_len());
        let mut told = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    writeln!(f, "{me}")
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(BlobLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    let len = part_len();
                    if len != progress.1 {
                        progress = (std::time::Instant::now(), len);
                    }
                    let live = match holder {
                        Some(pid) if pid == me => Some(false),
                        Some(pid) => crate::lock::alive(pid),
                        None => None,
                    };
                    let stale = match live {
                        Some(alive) => !alive,
                        None => progress.0.elapsed() > STALE_AFTER,
                    };
                    if stale {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    if !told {
                        told = true;
                        eprintln!(
                            "hub: waiting for {} fetching {what} ({})",
                            holder
                                .map_or("another process".to_string(), |p| format!("process {p}")),
                            path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// How one transfer attempt failed.
enum Transfer {
    /// The connection dropped: retry (resuming).
    Interrupted(String),
    /// Retrying cannot help.
    Fatal(anyhow::Error),
}

/// A byte progress bar on a terminal; hidden otherwise (logs and tests).
fn progress(file: &str, total: Option<u64>, start: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(file.to_string());
    pb.set_position(start);
    pb
}

fn header<B>(resp: &ureq::http::Response<B>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `"abc"` / `W/"abc"` -> `abc`; only characters safe in a file name are kept.
fn clean_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

/// `loc` made absolute against `base` (the Hub answers renamed repos with a path).
fn absolute(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], loc)
}

/// Percent-encodes a revision (every `/` too: `refs/pr/1` is one path segment) or a file path
/// (keeping its `/`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The shard file names of a `model.safetensors.index.json`.
fn shard_names(index: &Path) -> Result<BTreeSet<String>> {
    let text =
        fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{}: no weight_map object", index.display()))?;
    let mut out = BTreeSet::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| anyhow!("{}: a weight_map entry is not a file name", index.display()))?;
        check_file_name(f).with_context(|| index.display().to_string())?;
        out.insert(f.to_string());
    }
    Ok(out)
}

/// Writes a small file atomically enough for a ref (write then rename).
fn write_small(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|t| t.trim() == text) {
        return Ok(());
    }
    let parent = path
        .parent()
        .ok_or_else(|| anyhow!("{}: no parent folder", path.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    tmp.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Points `snapshots/<commit>/<file>` at the blob: a relative symlink like `huggingface_hub`'s,
/// a copy where symlinks are not available.
fn link(blob: &Path, dest: &Path, file: &str) -> Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| anyhow!("{}: no parent folder", dest.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let _ = fs::remove_file(dest);
    #[cfg(unix)]
    {
        // snapshots/<commit>/<a/b/file> -> ../../(../)*blobs/<etag>
        let ups = 2 + file.matches('/').count();
        let mut target = PathBuf::new();
        for _ in 0..ups {
            target.push("..");
        }
        target.push("blobs");
        if let Some(name) = blob.file_name() {
            target.push(name);
        }
        if std::os::unix::fs::symlink(&target, dest).is_ok() {
            return Ok(());
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    fs::copy(blob, dest)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", blob.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        let id = parse_id("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(id.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(id.revision, "main");
        let id = parse_id("org/name@refs/pr/1").unwrap();
        assert_eq!(id.revision, "refs/pr/1");
        for not_id in [
            "model",
            "./a/b",
            "../a",
            "a/b/c",
            "/a/b",
            "a/",
            "/b",
            "a/b@",
            "a/b@x/../y",
            "C:/x",
            "a/b@has space",
            ".hidden/x",
        ] {
            assert!(parse_id(not_id).is_none(), "{not_id}");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("gguf/a b.gguf", true), "gguf/a%20b.gguf");
        assert_eq!(clean_etag("W/\"abc-12\""), "abc-12");
        assert_eq!(
            absolute("http://h:1/api/x?y", "/o/n/resolve/main/f"),
            "http://h:1/o/n/resolve/main/f"
        );
        assert!(check_file_name("../x").is_err());
        assert!(check_file_name("a//b").is_err());
        assert!(check_file_name("a/b.gguf").is_ok());
    }
}
