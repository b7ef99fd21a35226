//! The Admin API key: from the config, or generated once into `data_dir`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

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
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        // link(2) never replaces: a racing start that linked first wins, and both read it.
        fs::hard_link(&tmp, &path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| at(data_dir, "cannot sync", e))?;
            Ok((key, KeySource::Generated(path)))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_key(&path)? {
            Some(k) => Ok((k, KeySource::File(path))),
            None => Err(at(&path, "is empty", e)),
        },
        Err(e) => Err(at(&path, "cannot write", e)),
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

fn at(path: &Path, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {doing}: {e}", path.display()))
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
    fn keys_compare_whole() {
        assert!(key_matches(b"0123456789abcdef", "0123456789abcdef"));
        assert!(!key_matches(b"0123456789abcdeF", "0123456789abcdef"));
        assert!(!key_matches(b"0123456789abcde", "0123456789abcdef"));
        assert!(!key_matches(b"", "0123456789abcdef"));
    }
}
