//! The Admin API key: from the config, or generated once into `data_dir`.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

use crate::fsutil::{at, durable_write, Existing};

/// File under `data_dir` holding a generated key.
pub const KEY_FILE: &str = "admin.key";

/// Where the key came from, for the start-up message.
#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `admin.key` in the config.
    Config,
    /// Generated just now into this file (the one start that prints the key).
    Generated(PathBuf),
    /// Read from the file an earlier start generated.
    File(PathBuf),
}

/// The key the Admin API compares `X-API-KEY` with, and where it came from.
pub fn admin_key(configured: Option<&str>, data_dir: &Path) -> io::Result<(String, KeySource)> {
    if let Some(k) = configured {
        return Ok((k.to_string(), KeySource::Config));
    }
    let path = data_dir.join(KEY_FILE);
    if let Some(k) = read_key(&path)? {
        return Ok((k, KeySource::File(path)));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| at(data_dir, "cannot create", e))?;
    let mut raw = [0u8; 24];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| io::Error::other("the system RNG failed"))?;
    let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    // Keep, not Replace: a racing start that placed its key first wins, and both read it.
    let placed = durable_write(&path, format!("{key}\n").as_bytes(), 0o600, Existing::Keep)?;
    if placed {
        return Ok((key, KeySource::Generated(path)));
    }
    match read_key(&path)? {
        Some(k) => Ok((k, KeySource::File(path))),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: vanished right after creation", path.display()),
        )),
    }
}

fn read_key(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => Ok(Some(s.trim().to_string())),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: holds no key of at least 16 characters; delete it to generate one",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(path, "cannot read", e)),
    }
}

/// Compare a presented key with the real one in time that depends on neither's content: both
/// are hashed first, so even their lengths are not compared early.
pub fn key_matches(presented: &[u8], key: &str) -> bool {
    use ring::digest::{digest, SHA256};
    let a = digest(&SHA256, presented);
    let b = digest(&SHA256, key.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_read_back() {
        let d = std::env::temp_dir().join(format!("portcullis-admin-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let (k1, s1) = admin_key(None, &d).unwrap();
        assert!(matches!(s1, KeySource::Generated(_)));
        let (k2, s2) = admin_key(None, &d).unwrap();
        assert_eq!(k1, k2);
        assert!(matches!(s2, KeySource::File(_)));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            admin_key(Some("configured-key-0123"), &d).unwrap(),
            ("configured-key-0123".into(), KeySource::Config)
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn racing_starts_agree_on_one_key() {
        let d =
            std::env::temp_dir().join(format!("portcullis-admin-key-race-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (d, barrier) = (d.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    admin_key(None, &d).unwrap()
                })
            })
            .collect();
        let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(got.iter().all(|(k, _)| k == &got[0].0));
        let generated = got
            .iter()
            .filter(|(_, s)| matches!(s, KeySource::Generated(_)))
            .count();
        assert!(
            generated <= 1,
            "{generated} starts say they generated the key"
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "temp files left");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(key_matches(b"0123456789abcdef", "0123456789abcdef"));
        assert!(!key_matches(b"0123456789abcdeF", "0123456789abcdef"));
        assert!(!key_matches(b"0123456789abcde", "0123456789abcdef"));
        assert!(!key_matches(b"", "0123456789abcdef"));
    }
}
