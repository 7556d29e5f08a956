//! Writing keys and certificates: a private file is created with mode 0600 (never chmod-ed
//! after, so it is never readable by others, not even for an instant), written to a
//! temporary name in the same directory, fsync-ed and renamed into place.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of key files (and of the certificates an agent writes for itself).
pub const PRIVATE: u32 = 0o600;
/// Mode of certificates meant to be handed out (CA, server certificates).
pub const PUBLIC: u32 = 0o644;

/// Writes `bytes` to `path` with `mode`, atomically; `replace` false refuses an existing
/// file (`AlreadyExists`), so a key is never overwritten by accident.
pub fn write(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> std::io::Result<()> {
    if !replace && path.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists; not replaced", path.display()),
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_and_not_replaced_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write(&p, b"secret", PRIVATE, false).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = write(&p, b"other", PRIVATE, false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        write(&p, b"new", PRIVATE, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let e = write(Path::new("/nonexistent-dir/key.pem"), b"x", PRIVATE, false);
        assert!(e.is_err());
    }
}
