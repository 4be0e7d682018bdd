//! Durability: a snapshot file plus an append-only journal of JSON lines in a data directory.
//!
//! Opening a directory loads `snapshot.json`, replays `journal.jsonl` on top (a torn last line from
//! a crash is ignored), writes the result as a new snapshot atomically (temp file, fsync, rename)
//! and starts an empty journal. Every committed change then appends one line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::{self, ResourceId};
use crate::store::{ObjectKey, Table};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn resource_name(id: ResourceId) -> String {
    let r = registry::get(id);
    format!("{}/{}", r.api_version(), r.plural)
}

fn resource_by_name(name: &str) -> Option<ResourceId> {
    (0..registry::RESOURCES.len()).find(|id| resource_name(*id) == name)
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    rv: u64,
    objects: Vec<SnapshotObject>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotObject {
    resource: String,
    object: Value,
}

#[derive(Serialize, Deserialize)]
struct JournalLine<'a> {
    rv: u64,
    resource: String,
    namespace: std::borrow::Cow<'a, str>,
    name: std::borrow::Cow<'a, str>,
    object: Option<Value>,
}

/// The open journal file of a data directory.
pub struct Journal {
    file: BufWriter<File>,
}

impl Journal {
    pub fn append(
        &mut self,
        rv: u64,
        resource: ResourceId,
        key: &ObjectKey,
        object: Option<&Value>,
    ) -> io::Result<()> {
        let line = JournalLine {
            rv,
            resource: resource_name(resource),
            namespace: key.namespace.as_str().into(),
            name: key.name.as_str().into(),
            object: object.cloned(),
        };
        serde_json::to_writer(&mut self.file, &line)?;
        self.file.write_all(b"\n")?;
        self.file.flush()
    }
}

fn key_of(object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    ObjectKey::new(
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default(),
    )
}

/// Loads the state kept in `dir` (creating it if needed) and opens a fresh journal.
pub fn open(dir: &Path) -> Result<(u64, Vec<Table>, Journal), PersistError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let snapshot_path = dir.join("snapshot.json");
    let journal_path = dir.join("journal.jsonl");
    let mut tables: Vec<Table> = (0..registry::RESOURCES.len())
        .map(|_| Table::new())
        .collect();
    let mut rv = 1;
    match fs::read(&snapshot_path) {
        Ok(bytes) => {
            let snapshot: Snapshot =
                serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                    path: snapshot_path.clone(),
                    source,
                })?;
            rv = snapshot.rv;
            for obj in snapshot.objects {
                if let Some(id) = resource_by_name(&obj.resource) {
                    tables[id].insert(key_of(&obj.object), Arc::new(obj.object));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&snapshot_path)(e)),
    }
    match File::open(&journal_path) {
        Ok(file) => {
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io_err(&journal_path))?;
                // A torn final line (crash mid-write) ends the replay.
                let Ok(entry) = serde_json::from_str::<JournalLine>(&line) else {
                    break;
                };
                let Some(id) = resource_by_name(&entry.resource) else {
                    continue;
                };
                if entry.rv <= rv {
                    continue;
                }
                rv = entry.rv;
                let key = ObjectKey::new(entry.namespace.into_owned(), entry.name.into_owned());
                match entry.object {
                    Some(object) => {
                        tables[id].insert(key, Arc::new(object));
                    }
                    None => {
                        tables[id].remove(&key);
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&journal_path)(e)),
    }
    write_snapshot(dir, rv, &tables)?;
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&journal_path)
        .map_err(io_err(&journal_path))?;
    Ok((
        rv,
        tables,
        Journal {
            file: BufWriter::new(file),
        },
    ))
}

fn write_snapshot(dir: &Path, rv: u64, tables: &[Table]) -> Result<(), PersistError> {
    let snapshot = Snapshot {
        rv,
        objects: tables
            .iter()
            .enumerate()
            .flat_map(|(id, t)| {
                t.values().map(move |o| SnapshotObject {
                    resource: resource_name(id),
                    object: (**o).clone(),
                })
            })
            .collect(),
    };
    let tmp = dir.join("snapshot.json.tmp");
    let path = dir.join("snapshot.json");
    let mut file = BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
    serde_json::to_writer(&mut file, &snapshot).map_err(|e| io_err(&tmp)(e.into()))?;
    let file = file
        .into_inner()
        .map_err(|e| io_err(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(())
}
