//! Durable file writes for the control plane's state under `data_dir` (Admin API objects, the
//! generated Admin API key, the session secret).
//!
//! A write goes to a uniquely named temp file in the same directory (O_EXCL, the given mode),
//! fsync'd, then moved to its name and the directory fsync'd: after a crash at any moment the
//! file is whole or absent, never a mix, and a write is only reported done once it would survive
//! a power cut. Imports nothing from the crate, so every layer may use it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Marks the name of a file being written (`<name>.tmp-<pid>-<n>`); whatever carries it in a
/// directory nobody is writing to is a crash's leftover.
pub const TEMP_MARK: &str = ".tmp-";

/// What to do when the file is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (rename(2)): readers see the old file or the new one.
    Replace,
    /// Keep it (link(2) never replaces): of racing writers, threads or processes, exactly one
    /// places its file, and only ever a complete one.
    Keep,
}

/// Distinguishes the temp files of concurrent writers in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Tries at a free temp name before giving up; a taken name is a leftover of a crashed process
/// that had our pid, or a writer in another pid namespace sharing the directory.
const TEMP_TRIES: u32 = 16;

/// Write `bytes` durably to `path` as a new file of `mode` (see the module comment). `Ok(true)`
/// when this call placed the file, `Ok(false)` when [`Existing::Keep`] found one there (it is
/// left as it is, and the directory is synced so it is durable too). Errors keep their
/// `io::ErrorKind` and name the path; no temp file is left behind.
pub fn durable_write(path: &Path, bytes: &[u8], mode: u32, existing: Existing) -> io::Result<bool> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => {
            return Err(at(
                path,
                "cannot write",
                io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
            ))
        }
    };
    let (tmp, mut f) =
        create_temp(dir, &name.to_string_lossy(), mode).map_err(|e| at(path, "cannot write", e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    let placed = written.and_then(|()| match existing {
        Existing::Replace => fs::rename(&tmp, path).map(|()| true),
        Existing::Keep => match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{e} (the file system must support hard links)"),
            )),
        },
    });
    // The temp name is still ours unless a rename took it (once free, another writer may take
    // it); after a link, won or lost, it is only a staging name.
    let removed = if existing == Existing::Replace && placed.is_ok() {
        Ok(())
    } else {
        fs::remove_file(&tmp)
    };
    let placed = placed.map_err(|e| at(path, "cannot write", e))?;
    removed.map_err(|e| at(&tmp, "cannot remove", e))?;
    sync_dir(dir)?;
    Ok(placed)
}

/// Make a rename, link or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at(dir, "cannot sync", e))
}

/// A new temp file next to `name` in `dir`, never one another writer holds.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{name}{TEMP_MARK}{}-{seq}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < TEMP_TRIES => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// `e` with the path and what was being done (`<path>: <doing>: <e>`), keeping its kind.
pub fn at(path: &Path, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {doing}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("portcullis-fsutil-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replace_overwrites_keep_does_not() {
        let d = temp_dir("modes");
        let p = d.join("f");
        assert!(durable_write(&p, b"one", 0o600, Existing::Replace).unwrap());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(durable_write(&p, b"two", 0o600, Existing::Replace).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!durable_write(&p, b"three", 0o600, Existing::Keep).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let q = d.join("g");
        assert!(durable_write(&q, b"new", 0o640, Existing::Keep).unwrap());
        assert_eq!(fs::read(&q).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&q).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(names(&d), ["f", "g"], "no temp file left");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_leftover_temp_name_is_stepped_over() {
        let d = temp_dir("leftover");
        let p = d.join("f");
        let next = TEMP_SEQ.load(Ordering::Relaxed);
        // Leftovers where this process's next few temp names would go.
        for s in next..next + 4 {
            fs::write(
                d.join(format!("f{TEMP_MARK}{}-{s}", std::process::id())),
                b"x",
            )
            .unwrap();
        }
        assert!(durable_write(&p, b"ok", 0o600, Existing::Replace).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"ok");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_path_and_keep_the_kind() {
        let d = temp_dir("errors");
        let p = d.join("missing-dir/f");
        let e = durable_write(&p, b"x", 0o600, Existing::Replace).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        // A directory where the file should be: rename fails, nothing is left.
        let p = d.join("taken");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), b"x").unwrap();
        let e = durable_write(&p, b"x", 0o600, Existing::Replace).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        assert_eq!(names(&d), ["taken"], "no temp file left");
        let _ = fs::remove_dir_all(&d);
    }
}
