//! Durable state of the embedded registry.
//!
//! Every change is one JSON line appended to `<data_dir>/schemas.log` and fsynced **before** the
//! in-memory state changes and before the HTTP answer leaves, so an id a client has seen is never
//! forgotten by a crash. On start the log is replayed; a torn last line (crash mid-append) is
//! cut off with a warning, any other corrupt line is a fatal error naming its line number.
//!
//! Invariants: ids are global, start at 1, are never reused and map to one canonical schema
//! text; versions of a subject only grow (a soft-deleted version's number is not reused).
//!
//! ```text
//!   <data_dir>/lock         held exclusively (flock) while a store is open: a second registry
//!                           on the same directory refuses to start (it would hand out the
//!                           same ids)
//!   <data_dir>/schemas.log  one JSON record per line; the directory is fsynced when the log
//!                           is created, so the file itself survives a crash
//!   a failed append         the log is cut back to its last good length and the store goes
//!                           read-only (reads served, writes refused with 50001) until a
//!                           restart replays the log: after a failed write or fsync the state
//!                           of the file is unknown, and a log that no longer replays would
//!                           lose every id
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::compat::Compatibility;

/// One log record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Schema {
        id: u32,
        schema: String,
    },
    Version {
        subject: String,
        version: u32,
        id: u32,
    },
    Config {
        subject: Option<String>,
        compatibility: Option<String>,
    },
    DeleteVersion {
        subject: String,
        version: u32,
        permanent: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    SubjectNotFound(String),
    VersionNotFound {
        subject: String,
        version: String,
    },
    SchemaNotFound,
    InvalidSchema(String),
    Incompatible(Vec<String>),
    InvalidVersion(String),
    InvalidCompatibility(String),
    SubjectConfigNotFound(String),
    Unsupported(String),
    /// A version must be soft-deleted before it can be deleted permanently.
    NotSoftDeleted {
        subject: String,
        version: u32,
    },
    Storage(String),
}

impl StoreError {
    /// Confluent error code (the HTTP status is its first three digits).
    pub fn code(&self) -> u32 {
        match self {
            StoreError::SubjectNotFound(_) => 40401,
            StoreError::VersionNotFound { .. } => 40402,
            StoreError::SchemaNotFound => 40403,
            StoreError::SubjectConfigNotFound(_) => 40408,
            StoreError::NotSoftDeleted { .. } => 40407,
            StoreError::Incompatible(_) => 409,
            StoreError::InvalidSchema(_) | StoreError::Unsupported(_) => 42201,
            StoreError::InvalidVersion(_) => 42202,
            StoreError::InvalidCompatibility(_) => 42203,
            StoreError::Storage(_) => 50001,
        }
    }

    pub fn message(&self) -> String {
        match self {
            StoreError::SubjectNotFound(s) => format!("Subject '{s}' not found."),
            StoreError::VersionNotFound { subject, version } => {
                format!("Version {version} not found for subject '{subject}'.")
            }
            StoreError::SchemaNotFound => "Schema not found".into(),
            StoreError::InvalidSchema(e) => format!("Invalid schema: {e}"),
            StoreError::Incompatible(reasons) => format!(
                "Schema being registered is incompatible with an earlier schema for subject: {}",
                reasons.join("; ")
            ),
            StoreError::InvalidVersion(v) => {
                format!("The specified version '{v}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")
            }
            StoreError::InvalidCompatibility(l) => format!("Invalid compatibility level: {l}"),
            StoreError::SubjectConfigNotFound(s) => {
                format!("Subject '{s}' does not have subject-level compatibility configured")
            }
            StoreError::Unsupported(what) => format!("Unsupported: {what}"),
            StoreError::NotSoftDeleted { subject, version } => format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
            StoreError::Storage(e) => format!("Error in the backend data store: {e}"),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone)]
struct StoredSchema {
    text: String,
    parsed: Schema,
}

#[derive(Debug, Clone, Copy)]
struct SubjectVersion {
    version: u32,
    id: u32,
    deleted: bool,
}

#[derive(Debug, Default)]
struct State {
    /// index = id - 1
    schemas: Vec<StoredSchema>,
    by_text: HashMap<String, u32>,
    subjects: BTreeMap<String, Vec<SubjectVersion>>,
    global: Option<Compatibility>,
    per_subject: HashMap<String, Compatibility>,
}

/// A version of a subject as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
}

/// How a client names a version: a number or `latest` (`-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(u32),
}

impl VersionRef {
    pub fn parse(s: &str) -> StoreResult<VersionRef> {
        if s == "latest" || s == "-1" {
            return Ok(VersionRef::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(VersionRef::Number(n)),
            _ => Err(StoreError::InvalidVersion(s.to_string())),
        }
    }
}

pub struct Store {
    path: PathBuf,
    default_compat: Compatibility,
    inner: Mutex<(State, Log)>,
    /// Held for the store's lifetime: the exclusive lock on `<data_dir>/lock`.
    _lock: File,
}

/// The append-only log file and what is known about it.
struct Log {
    file: File,
    /// Length of the log up to its last complete, fsynced record.
    len: u64,
    /// Set after a failed append: why the store refuses writes.
    broken: Option<String>,
    /// Tests: fail the next append after writing this many bytes of it.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl Log {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after.take() {
            self.file.write_all(&buf[..n.min(buf.len())])?;
            return Err(std::io::Error::other("injected write failure"));
        }
        self.file.write_all(buf)?;
        self.file.sync_data()
    }
}

/// Canonical text of a schema: its JSON with sorted object keys and no whitespace. Two
/// registrations of the same schema written differently get the same id.
pub fn canonical_text(schema: &str) -> StoreResult<(String, Schema)> {
    let value: serde_json::Value = serde_json::from_str(schema)
        .map_err(|e| StoreError::InvalidSchema(format!("not JSON: {e}")))?;
    let parsed = Schema::parse(&value).map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
    let text =
        serde_json::to_string(&value).map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
    Ok((text, parsed))
}

impl Store {
    /// Open (or create) the store in `dir`, replaying its log.
    pub fn open(dir: &Path, default_compat: Compatibility) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating registry data dir {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => format!(
                "registry data dir {} is in use by another registry process (it holds {}): two \
                 registries on one directory would hand out the same ids",
                dir.display(),
                lock_path.display()
            ),
            std::fs::TryLockError::Error(e) => {
                format!("locking {}: {e}", lock_path.display())
            }
        })?;
        let path = dir.join("schemas.log");
        let created = !path.exists();
        let mut state = State::default();
        let mut good_len: u64 = 0;
        if path.exists() {
            let raw =
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            // Every complete record ends with '\n'; a final segment without one is a torn append
            // (the client never got an answer for it) and is dropped.
            let mut segments: Vec<&[u8]> = raw.split(|b| *b == b'\n').collect();
            if let Some(tail) = segments.pop() {
                if !tail.is_empty() {
                    tracing::warn!(path = %path.display(), bytes = tail.len(), "dropping torn last line of registry log");
                }
            }
            for (i, line) in segments.iter().enumerate() {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    let rec: Record = serde_json::from_slice(line).map_err(|e| {
                        format!("{} line {} is corrupt: {e}", path.display(), i + 1)
                    })?;
                    apply(&mut state, rec)
                        .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
                }
                good_len += line.len() as u64 + 1;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let meta_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if meta_len > good_len {
            file.set_len(good_len)
                .map_err(|e| format!("truncating torn tail of {}: {e}", path.display()))?;
        }
        if created {
            // The new file's directory entry is durable only once the directory is synced.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("syncing registry data dir {}: {e}", dir.display()))?;
        }
        Ok(Store {
            path,
            default_compat,
            inner: Mutex::new((
                state,
                Log {
                    file,
                    len: good_len,
                    broken: None,
                    #[cfg(test)]
                    fail_after: None,
                },
            )),
            _lock: lock,
        })
    }

    /// Tests: make the next append fail after `n` bytes of it reached the file.
    #[cfg(test)]
    fn fail_next_append_after(&self, n: usize) {
        self.lock().1.fail_after = Some(n);
    }

    /// Why the store refuses writes, if it does (after a failed append).
    pub fn read_only_reason(&self) -> Option<String> {
        self.lock().1.broken.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append records durably, then apply them to memory.
    fn commit(state: &mut State, log: &mut Log, records: Vec<Record>) -> StoreResult<()> {
        if let Some(why) = &log.broken {
            return Err(StoreError::Storage(format!(
                "read-only since a failed write ({why}); restart the registry to replay its log"
            )));
        }
        let mut buf = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut buf, r).map_err(|e| StoreError::Storage(e.to_string()))?;
            buf.push(b'\n');
        }
        if let Err(e) = log.append(&buf) {
            // Cut the partial record off so the log still replays; stop writing either way.
            let cut = log.file.set_len(log.len).and_then(|_| log.file.sync_data());
            let why = match cut {
                Ok(()) => format!("{e}; log cut back to {} bytes", log.len),
                Err(c) => format!("{e}; cutting the log back also failed: {c}"),
            };
            tracing::error!(error = %why, "registry log append failed: the registry is read-only until restarted");
            log.broken = Some(why.clone());
            return Err(StoreError::Storage(format!(
                "writing the schema log failed ({why}); the registry is read-only until restarted"
            )));
        }
        log.len += buf.len() as u64;
        for r in records {
            apply(state, r).map_err(StoreError::Storage)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, Log)> {
        // A panic while holding the lock cannot leave state half-applied in a way that matters
        // more than refusing service; recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `schema` under `subject` (idempotent). Returns the global id and the version.
    pub fn register(&self, subject: &str, schema: &str) -> StoreResult<(u32, u32)> {
        let (text, parsed) = canonical_text(schema)?;
        let mut guard = self.lock();
        let (state, file) = &mut *guard;
        let live: Vec<SubjectVersion> = live_versions(state, subject);
        if let Some(id) = state.by_text.get(&text).copied() {
            if let Some(v) = live.iter().find(|v| v.id == id) {
                return Ok((id, v.version));
            }
        }
        let level = state
            .per_subject
            .get(subject)
            .copied()
            .or(state.global)
            .unwrap_or(self.default_compat);
        let existing: Vec<&Schema> = live
            .iter()
            .map(|v| &state.schemas[(v.id - 1) as usize].parsed)
            .collect();
        let reasons = level.check(&parsed, &existing);
        if !reasons.is_empty() {
            return Err(StoreError::Incompatible(reasons));
        }
        let mut records = Vec::new();
        let id = match state.by_text.get(&text) {
            Some(id) => *id,
            None => {
                let id = state.schemas.len() as u32 + 1;
                records.push(Record::Schema {
                    id,
                    schema: text.clone(),
                });
                id
            }
        };
        let version = state
            .subjects
            .get(subject)
            .and_then(|vs| vs.iter().map(|v| v.version).max())
            .unwrap_or(0)
            + 1;
        records.push(Record::Version {
            subject: subject.to_string(),
            version,
            id,
        });
        Self::commit(state, file, records)?;
        Ok((id, version))
    }

    /// Find `schema` among the live versions of `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> StoreResult<VersionInfo> {
        let (text, _) = canonical_text(schema)?;
        let guard = self.lock();
        let state = &guard.0;
        let live = live_versions(state, subject);
        if live.is_empty() {
            return Err(StoreError::SubjectNotFound(subject.into()));
        }
        let id = state.by_text.get(&text).ok_or(StoreError::SchemaNotFound)?;
        let v = live
            .iter()
            .find(|v| v.id == *id)
            .ok_or(StoreError::SchemaNotFound)?;
        Ok(info(state, subject, v))
    }

    pub fn schema_by_id(&self, id: u32) -> StoreResult<String> {
        let guard = self.lock();
        guard
            .0
            .schemas
            .get((id as usize).wrapping_sub(1))
            .map(|s| s.text.clone())
            .ok_or(StoreError::SchemaNotFound)
    }

    /// (subject, version) pairs using schema `id`.
    pub fn id_versions(&self, id: u32) -> StoreResult<Vec<(String, u32)>> {
        let guard = self.lock();
        let state = &guard.0;
        if id == 0 || id as usize > state.schemas.len() {
            return Err(StoreError::SchemaNotFound);
        }
        let mut out = Vec::new();
        for (s, vs) in &state.subjects {
            for v in vs.iter().filter(|v| !v.deleted && v.id == id) {
                out.push((s.clone(), v.version));
            }
        }
        Ok(out)
    }

    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        let guard = self.lock();
        guard
            .0
            .subjects
            .iter()
            .filter(|(_, vs)| include_deleted || vs.iter().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    pub fn versions(&self, subject: &str, include_deleted: bool) -> StoreResult<Vec<u32>> {
        version_numbers(&self.lock().0, subject, include_deleted)
    }

    pub fn version(&self, subject: &str, v: VersionRef) -> StoreResult<VersionInfo> {
        let guard = self.lock();
        let state = &guard.0;
        let sv = resolve(&live_versions(state, subject), subject, v)?;
        Ok(info(state, subject, &sv))
    }

    /// Would `schema` be accepted under `subject`? Against one version (`Some`) or against
    /// what registration would check (`None`: the subject's level over its live versions).
    pub fn check_compatibility(
        &self,
        subject: &str,
        version: Option<VersionRef>,
        schema: &str,
    ) -> StoreResult<Vec<String>> {
        let (_, parsed) = canonical_text(schema)?;
        let guard = self.lock();
        let state = &guard.0;
        let level = state
            .per_subject
            .get(subject)
            .copied()
            .or(state.global)
            .unwrap_or(self.default_compat);
        let live = live_versions(state, subject);
        let existing: Vec<&Schema> = match version {
            None => live
                .iter()
                .map(|v| &state.schemas[(v.id - 1) as usize].parsed)
                .collect(),
            Some(vr) => {
                let sv = resolve(&live, subject, vr)?;
                vec![&state.schemas[(sv.id - 1) as usize].parsed]
            }
        };
        Ok(level.check(&parsed, &existing))
    }

    pub fn global_compatibility(&self) -> Compatibility {
        self.lock().0.global.unwrap_or(self.default_compat)
    }

    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.lock().0.per_subject.get(subject).copied()
    }

    pub fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Option<Compatibility>,
    ) -> StoreResult<()> {
        let mut guard = self.lock();
        let (state, file) = &mut *guard;
        Self::commit(
            state,
            file,
            vec![Record::Config {
                subject: subject.map(String::from),
                compatibility: level.map(|l| l.as_str().to_string()),
            }],
        )
    }

    /// Delete one version (soft, or permanent after a soft delete). Returns the version.
    pub fn delete_version(
        &self,
        subject: &str,
        v: VersionRef,
        permanent: bool,
    ) -> StoreResult<u32> {
        let mut guard = self.lock();
        let (state, file) = &mut *guard;
        let vs = state
            .subjects
            .get(subject)
            .ok_or_else(|| StoreError::SubjectNotFound(subject.into()))?;
        let target = match v {
            VersionRef::Latest => vs.iter().rfind(|x| !x.deleted).copied(),
            VersionRef::Number(n) => vs.iter().find(|x| x.version == n).copied(),
        }
        .ok_or_else(|| StoreError::VersionNotFound {
            subject: subject.into(),
            version: format!("{v:?}"),
        })?;
        if permanent && !target.deleted {
            return Err(StoreError::NotSoftDeleted {
                subject: subject.into(),
                version: target.version,
            });
        }
        if !permanent && target.deleted {
            return Err(StoreError::VersionNotFound {
                subject: subject.into(),
                version: target.version.to_string(),
            });
        }
        Self::commit(
            state,
            file,
            vec![Record::DeleteVersion {
                subject: subject.into(),
                version: target.version,
                permanent,
            }],
        )?;
        Ok(target.version)
    }

    /// Delete every version of a subject. Returns the versions deleted.
    pub fn delete_subject(&self, subject: &str, permanent: bool) -> StoreResult<Vec<u32>> {
        let mut guard = self.lock();
        let (state, file) = &mut *guard;
        let targets = version_numbers(state, subject, permanent)?;
        if permanent {
            if let Some(v) = live_versions(state, subject).first() {
                return Err(StoreError::NotSoftDeleted {
                    subject: subject.into(),
                    version: v.version,
                });
            }
        }
        let records = targets
            .iter()
            .map(|v| Record::DeleteVersion {
                subject: subject.into(),
                version: *v,
                permanent,
            })
            .collect();
        Self::commit(state, file, records)?;
        Ok(targets)
    }
}

/// Version numbers of a subject (soft-deleted ones too if asked); a subject with none is
/// "not found", as in Confluent's registry.
fn version_numbers(state: &State, subject: &str, include_deleted: bool) -> StoreResult<Vec<u32>> {
    let out: Vec<u32> = state
        .subjects
        .get(subject)
        .map(|vs| {
            vs.iter()
                .filter(|v| include_deleted || !v.deleted)
                .map(|v| v.version)
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        return Err(StoreError::SubjectNotFound(subject.into()));
    }
    Ok(out)
}

/// Resolve `latest` or a number among the live versions of a subject.
fn resolve(live: &[SubjectVersion], subject: &str, v: VersionRef) -> StoreResult<SubjectVersion> {
    if live.is_empty() {
        return Err(StoreError::SubjectNotFound(subject.into()));
    }
    match v {
        VersionRef::Latest => live.last().copied(),
        VersionRef::Number(n) => live.iter().find(|x| x.version == n).copied(),
    }
    .ok_or_else(|| StoreError::VersionNotFound {
        subject: subject.into(),
        version: match v {
            VersionRef::Latest => "latest".into(),
            VersionRef::Number(n) => n.to_string(),
        },
    })
}

fn live_versions(state: &State, subject: &str) -> Vec<SubjectVersion> {
    state
        .subjects
        .get(subject)
        .map(|vs| vs.iter().filter(|v| !v.deleted).copied().collect())
        .unwrap_or_default()
}

fn info(state: &State, subject: &str, v: &SubjectVersion) -> VersionInfo {
    VersionInfo {
        subject: subject.to_string(),
        version: v.version,
        id: v.id,
        schema: state.schemas[(v.id - 1) as usize].text.clone(),
    }
}

/// Apply one record to memory. Errors mean the log is inconsistent.
fn apply(state: &mut State, rec: Record) -> Result<(), String> {
    match rec {
        Record::Schema { id, schema } => {
            if id as usize != state.schemas.len() + 1 {
                return Err(format!(
                    "schema id {id} out of sequence (expected {})",
                    state.schemas.len() + 1
                ));
            }
            let parsed = Schema::parse_str(&schema).map_err(|e| format!("schema {id}: {e}"))?;
            state.by_text.insert(schema.clone(), id);
            state.schemas.push(StoredSchema {
                text: schema,
                parsed,
            });
        }
        Record::Version {
            subject,
            version,
            id,
        } => {
            if id == 0 || id as usize > state.schemas.len() {
                return Err(format!("version {subject}/{version} names unknown id {id}"));
            }
            state
                .subjects
                .entry(subject)
                .or_default()
                .push(SubjectVersion {
                    version,
                    id,
                    deleted: false,
                });
        }
        Record::Config {
            subject,
            compatibility,
        } => {
            let level = match compatibility {
                Some(l) => {
                    Some(Compatibility::parse(&l).ok_or_else(|| format!("bad compatibility {l}"))?)
                }
                None => None,
            };
            match (subject, level) {
                (Some(s), Some(l)) => {
                    state.per_subject.insert(s, l);
                }
                (Some(s), None) => {
                    state.per_subject.remove(&s);
                }
                (None, l) => state.global = l,
            }
        }
        Record::DeleteVersion {
            subject,
            version,
            permanent,
        } => {
            if let Some(vs) = state.subjects.get_mut(&subject) {
                if permanent {
                    vs.retain(|v| v.version != version);
                    if vs.is_empty() {
                        state.subjects.remove(&subject);
                    }
                } else if let Some(v) = vs.iter_mut().find(|v| v.version == version) {
                    v.deleted = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
