use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// write a temporary file beside it, fsync, rename over, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    // A bare file name has the parent "", which names no directory to sync.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = open_new(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Opens `path` for writing, created with `mode` if new, truncated.
#[cfg(unix)]
pub(crate) fn open_new(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)
}

#[cfg(not(unix))]
pub(crate) fn open_new(path: &Path, _mode: u32) -> std::io::Result<File> {
    fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)
}

/// Creates a directory (and parents) readable only by its owner.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| Error::io(path, e))
    }
    #[cfg(not(unix))]
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// What a file looked like: modification time, length and inode (a rewrite by [`write_atomic`]
/// renames a new inode over it), or `None` if it did not exist.
pub(crate) type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The stamp of `path` now.
pub(crate) fn file_stamp(path: &Path) -> FileStamp {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// Paces the checks a long-running reader makes for a changed file (the token store, the device
/// registry): [`FileWatch::changed`] looks at the file at most once a second, and then for one
/// caller only, so the hot path pays one atomic load and a clock read.
#[derive(Debug)]
pub(crate) struct FileWatch {
    checked_ms: std::sync::atomic::AtomicU64,
}

impl FileWatch {
    /// How often the file is looked at.
    pub(crate) const INTERVAL_MS: u64 = 1000;

    /// A watch whose first check is due a second from now.
    pub(crate) fn new() -> FileWatch {
        FileWatch { checked_ms: std::sync::atomic::AtomicU64::new(Self::now()) }
    }

    /// Milliseconds on a monotonic clock (since the first call in this process): a wall clock
    /// stepped back would stop the checks for as long.
    fn now() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The stamp of `path` if this caller is the one to look at it now and it differs from
    /// `seen` (the stamp taken before the copy in hand was read, so a change during that read
    /// is seen at the next look).
    pub(crate) fn changed(&self, path: &Path, seen: &FileStamp) -> Option<FileStamp> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Self::now();
        let last = self.checked_ms.load(Relaxed);
        if now.saturating_sub(last) < Self::INTERVAL_MS
            || self.checked_ms.compare_exchange(last, now, Relaxed, Relaxed).is_err()
        {
            return None;
        }
        Some(file_stamp(path)).filter(|current| current != seen)
    }
}

/// A JSON file's contents, or `T::default()` if there is no such file.
pub(crate) fn read_json<T: for<'de> serde::Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}
