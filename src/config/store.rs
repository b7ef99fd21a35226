//! Where Admin API objects persist: one JSON file per object under `<data_dir>/admin/<kind>/`.
//!
//! A write is [`durable_write`] replacing the object's file: after a crash at any moment the file
//! is the old object or the new one, never a mix, and a change is only reported done once it
//! would survive a power cut. Leftover temp files are removed at start; a file that does not
//! read is named in a log line and left out, never stopping the start.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::{at, durable_write, sync_dir, Existing, TEMP_MARK};

/// The object kinds the Admin API keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `/apisix/admin/routes`.
    Routes,
    /// `/apisix/admin/upstreams`.
    Upstreams,
    /// `/apisix/admin/ssls`.
    Ssls,
}

impl Kind {
    /// The kind's name in paths and keys (`routes`, `upstreams`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Upstreams => "upstreams",
            Kind::Ssls => "ssls",
        }
    }

    /// One object of the kind, in words (`route`, `upstream`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Upstreams => "upstream",
            Kind::Ssls => "SSL object",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Routes, Kind::Upstreams, Kind::Ssls];
}

/// One stored object: what was written, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The object as the client sent it (its `id` included), without the times below.
    pub value: Value,
    /// First written, unix seconds.
    pub create_time: i64,
    /// Last written, unix seconds.
    pub update_time: i64,
}

impl Stored {
    /// The object as the Admin API answers it: its value with the two times in it.
    pub fn answer(&self) -> Value {
        let mut v = self.value.clone();
        if let Value::Object(m) = &mut v {
            m.insert("create_time".into(), self.create_time.into());
            m.insert("update_time".into(), self.update_time.into());
        }
        v
    }
}

/// The objects of every kind, by id.
pub type Objects = BTreeMap<Kind, BTreeMap<String, Stored>>;

/// The store on disk.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store under `data_dir`, its directories created (mode 0700) when missing.
    pub fn open(data_dir: &Path) -> io::Result<Store> {
        let root = data_dir.join("admin");
        for kind in Kind::ALL {
            let dir = root.join(kind.name());
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| at(&dir, "cannot create", e))?;
        }
        Ok(Store { root })
    }

    /// Read every stored object. Unreadable files are logged and left out.
    pub fn load(&self) -> io::Result<Objects> {
        let mut all = Objects::new();
        for kind in Kind::ALL {
            let dir = self.root.join(kind.name());
            let objects = all.entry(kind).or_default();
            let entries = fs::read_dir(&dir).map_err(|e| at(&dir, "cannot list", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| at(&dir, "cannot list", e))?;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.contains(TEMP_MARK) {
                    // A write that never reached its rename: never acknowledged.
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove an unfinished write");
                    }
                    continue;
                }
                let Some(id) = name.strip_suffix(".json") else {
                    continue;
                };
                match read_object(&path) {
                    Ok(stored) => {
                        objects.insert(id.to_string(), stored);
                    }
                    Err(e) => tracing::error!(
                        file = %path.display(),
                        "stored {} `{id}` left out: {e}",
                        kind.singular()
                    ),
                }
            }
        }
        Ok(all)
    }

    /// Write an object durably (see the module comment).
    pub fn put(&self, kind: Kind, id: &str, stored: &Stored) -> io::Result<()> {
        let path = self.root.join(kind.name()).join(format!("{id}.json"));
        let text = serde_json::to_vec_pretty(stored)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        durable_write(&path, &text, 0o600, Existing::Replace)?;
        Ok(())
    }

    /// Remove an object durably; removing one that is not there is not an error.
    pub fn delete(&self, kind: Kind, id: &str) -> io::Result<()> {
        let dir = self.root.join(kind.name());
        let path = dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(at(&path, "cannot remove", e)),
        }
    }
}

fn read_object(path: &Path) -> Result<Stored, String> {
    let text = fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("not a stored object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("portcullis-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn stored(v: Value) -> Stored {
        Stored {
            value: v,
            create_time: 1,
            update_time: 2,
        }
    }

    #[test]
    fn put_load_delete_round_trip() {
        let d = temp_dir("round-trip");
        let s = Store::open(&d).unwrap();
        s.put(Kind::Routes, "1", &stored(json!({"id": "1", "uri": "/a"})))
            .unwrap();
        s.put(Kind::Upstreams, "u", &stored(json!({"id": "u"})))
            .unwrap();
        s.put(Kind::Routes, "1", &stored(json!({"id": "1", "uri": "/b"})))
            .unwrap();
        let all = Store::open(&d).unwrap().load().unwrap();
        assert_eq!(all[&Kind::Routes]["1"].value["uri"], "/b");
        assert_eq!(all[&Kind::Upstreams].len(), 1);
        s.delete(Kind::Routes, "1").unwrap();
        s.delete(Kind::Routes, "1").unwrap();
        assert!(s.load().unwrap()[&Kind::Routes].is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn leftovers_and_garbage_never_stop_a_load() {
        let d = temp_dir("garbage");
        let s = Store::open(&d).unwrap();
        s.put(Kind::Routes, "ok", &stored(json!({"id": "ok"})))
            .unwrap();
        let dir = d.join("admin/routes");
        fs::write(dir.join("half.json.tmp-1-1"), b"{\"value\": {\"id\"").unwrap();
        fs::write(dir.join("bad.json"), b"not json").unwrap();
        let all = s.load().unwrap();
        assert_eq!(all[&Kind::Routes].keys().collect::<Vec<_>>(), vec!["ok"]);
        assert!(!dir.join("half.json.tmp-1-1").exists());
        let _ = fs::remove_dir_all(&d);
    }
}
