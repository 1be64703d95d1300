//! A link's CA bundle (`caFile`) and how to tell that a mounted file changed. The transport re-reads
//! the bundle when its [`FileStamp`] changes, so that a CA rotation (a bundle with the old and the
//! new CA, later the new one alone) needs no restart; the node's serving certificate is watched the
//! same way.

use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("reading CA bundle {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA bundle {path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// What identifies one version of a file: modification time, length and inode. Read through
/// symlinks, so that kubelet's update of a mounted Secret (new files in a new folder, then the
/// `..data` symlink swapped) shows as a change even when times and lengths happen to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now, or `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
        })
    }
}

/// The certificates of a PEM bundle; a bundle without one is refused (trusting only the system
/// roots where a CA was meant is never what the operator wanted).
pub fn read(path: &Path) -> Result<Vec<reqwest::Certificate>, CaBundleError> {
    let pem = std::fs::read(path).map_err(|source| CaBundleError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&pem).map_err(|detail| CaBundleError::Invalid {
        path: path.display().to_string(),
        detail,
    })
}

/// Pure part of [`read`].
pub fn parse(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".to_string());
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_garbled_bundle_is_refused() {
        assert!(parse(b"").unwrap_err().contains("no PEM certificate"));
        assert!(parse(b"not a certificate\n").is_err());
        assert!(parse(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn a_stamp_changes_when_a_symlinked_file_is_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "same").unwrap();
        std::fs::write(&b, "same").unwrap();
        let link = dir.path().join("ca.crt");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = FileStamp::of(&link).unwrap();
        assert_eq!(FileStamp::of(&link), Some(before));
        // Swap as kubelet does: a new link renamed over the old one.
        let tmp = dir.path().join("ca.crt.tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(FileStamp::of(&link), Some(before));
        std::fs::remove_file(&link).unwrap();
        assert_eq!(FileStamp::of(&link), None);
    }
}
