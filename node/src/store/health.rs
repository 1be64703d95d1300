//! Whether the storage takes writes.
//!
//! - [`SpaceGuard`]: every local write first checks that the data directory's file system keeps
//!   `storage.minFreeBytes` free, and is refused (`DiskFull`, 507) otherwise — so that the engine
//!   itself never meets ENOSPC: sled 0.34 turns an I/O error in its log writer into a global error
//!   that fails every later read and write until the process restarts.
//! - [`StorageHealth`]: a write that failed for the storage's own reasons marks it unwritable;
//!   writes are then refused at once, reads go on, and a probe (`node::watch_storage`) clears the
//!   mark when there is room again — or, when the engine itself fails even reads, calls it wedged
//!   so that liveness fails and the orchestrator restarts the node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::StoreError;

#[derive(Default)]
pub struct StorageHealth {
    /// Why the storage is unwritable, and since when (ms); `None` while it is fine.
    failure: Mutex<Option<(String, i64)>>,
    /// Probes fail although the file system has room: only a restart recovers the engine.
    wedged: AtomicBool,
}

/// Refuses writes while the data directory's file system has less than `min_free` bytes free.
pub struct SpaceGuard {
    dir: PathBuf,
    min_free: u64,
}

impl SpaceGuard {
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        SpaceGuard { dir, min_free }
    }

    /// `Ok` when a write may go ahead (also when the free space cannot be read).
    pub fn check(&self) -> Result<(), StoreError> {
        match free_bytes(&self.dir) {
            Some(free) if free < self.min_free => Err(StoreError::DiskFull {
                free,
                min_free: self.min_free,
            }),
            _ => Ok(()),
        }
    }
}

/// Bytes an unprivileged writer can still use on the file system of `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// What `/status` and the probes report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    pub reason: String,
    pub disk_full: bool,
    pub since_ms: i64,
}

impl StorageHealth {
    /// Records `error` when it is a failure of the storage itself; true when it was one.
    pub fn note(&self, error: &StoreError, now_ms: i64) -> bool {
        if !error.is_storage_failure() {
            return false;
        }
        let mut failure = self.failure.lock().expect("storage health");
        if failure.is_none() {
            tracing::error!(error = %error, "storage refuses writes; refusing writes until a probe write succeeds");
            *failure = Some((error.to_string(), now_ms));
        }
        true
    }

    /// A probe failed; `wedged` when the engine fails reads (only a restart recovers it).
    pub fn probe_failed(&self, wedged: bool) {
        if wedged && !self.wedged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "the storage engine fails reads; liveness fails so that the node is restarted"
            );
        }
    }

    pub fn wedged(&self) -> bool {
        self.wedged.load(Ordering::Relaxed)
    }

    /// The storage took a write again.
    pub fn recovered(&self) {
        self.wedged.store(false, Ordering::Relaxed);
        if self
            .failure
            .lock()
            .expect("storage health")
            .take()
            .is_some()
        {
            tracing::info!("storage takes writes again");
        }
    }

    pub fn failure(&self) -> Option<StorageFailure> {
        self.failure
            .lock()
            .expect("storage health")
            .as_ref()
            .map(|(reason, since_ms)| StorageFailure {
                disk_full: reason.contains("No space left") || reason.contains("disk is full"),
                reason: reason.clone(),
                since_ms: *since_ms,
            })
    }

    pub fn writable(&self) -> bool {
        self.failure.lock().expect("storage health").is_none()
    }
}
