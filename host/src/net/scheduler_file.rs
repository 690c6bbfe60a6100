//! The scheduler file: a JSON document with everything a client needs to connect.
//!
//! ```json
//! {"address": "127.0.0.1:8786", "fingerprint": "sha256:…", "token": "…", "pid": 1234}
//! ```
//!
//! The scheduler writes it where `--scheduler-file` says and also to a per-user default
//! location keyed by port ([`SchedulerFile::default_path`]), so that on the scheduler's
//! machine `HOST:PORT` alone is enough. Files are created readable by the owner only,
//! since they hold a token.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::NetError;

/// Contents of a scheduler file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchedulerFile {
    /// `HOST:PORT` the scheduler listens on.
    pub address: String,
    /// `sha256:<hex>` of its certificate.
    pub fingerprint: String,
    /// Token of the default tenant ("" when the scheduler runs without tokens).
    pub token: String,
    /// Process id of the scheduler.
    pub pid: u32,
}

impl SchedulerFile {
    /// The per-user default location for a scheduler on `port`:
    /// `$XDG_RUNTIME_DIR/stockade/scheduler-PORT.json`, else
    /// `$HOME/.stockade/scheduler-PORT.json`, else under the temp directory.
    pub fn default_path(port: u16) -> PathBuf {
        let base = std::env::var_os("STOCKADE_RUNTIME_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("stockade")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".stockade")))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("stockade-{}", uid())));
        base.join(format!("scheduler-{port}.json"))
    }

    /// Writes the file atomically (write to a temporary, then rename), mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), NetError> {
        let err =
            |e: std::io::Error| NetError::SchedulerFile(format!("cannot write scheduler file {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| NetError::SchedulerFile(e.to_string()))?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            f.write_all(&json).map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Reads a scheduler file.
    pub fn read(path: &Path) -> Result<Self, NetError> {
        let bytes = std::fs::read(path).map_err(|e| {
            NetError::SchedulerFile(format!(
                "cannot read scheduler file {}: {e}; hint: start the scheduler with --scheduler-file {} or pass its address",
                path.display(),
                path.display()
            ))
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| NetError::SchedulerFile(format!("scheduler file {} is not valid: {e}", path.display())))
    }

    /// Removes `path` if it still describes this process's scheduler.
    pub fn remove_if_ours(path: &Path) {
        if let Ok(file) = Self::read(path) {
            if file.pid == std::process::id() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_private() {
        let dir = std::env::temp_dir().join(format!("stockade-sf-{}", std::process::id()));
        let path = dir.join("s.json");
        let file =
            SchedulerFile { address: "127.0.0.1:1".into(), fingerprint: "sha256:00".into(), token: "t".into(), pid: 5 };
        file.write(&path).unwrap();
        assert_eq!(SchedulerFile::read(&path).unwrap(), file);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
