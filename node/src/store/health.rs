//! Whether the storage takes writes. A write that fails for the storage's own reasons (disk full,
//! I/O error) marks it unwritable: writes are then refused at once with a clear error, reads go on,
//! and a probe write clears the mark once the storage recovers (see `node::watch_storage`).

use std::path::Path;
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

/// Room a file system must have before a failing probe counts as a wedged engine rather than a
/// full disk.
pub const ROOM_FOR_PROBES: u64 = 64 * 1024 * 1024;

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

    /// A probe failed: wedged when the file system has room all the same.
    pub fn probe_failed(&self, free_bytes: Option<u64>) {
        let wedged = free_bytes.is_some_and(|free| free >= ROOM_FOR_PROBES);
        if wedged && !self.wedged.swap(true, Ordering::Relaxed) {
            tracing::error!("storage refuses writes although the disk has room; liveness fails so that the node is restarted");
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
                disk_full: reason.contains("No space left") || reason.contains("storage full"),
                reason: reason.clone(),
                since_ms: *since_ms,
            })
    }

    pub fn writable(&self) -> bool {
        self.failure.lock().expect("storage health").is_none()
    }
}
