//! Pinned objects in shared memory.
//!
//! A [`Store`] is a directory, by default `/dev/shm/stockade-UID` (memory-backed), with
//! one subdirectory per tenant and one file per object, named by its key (the BLAKE3
//! hash of its bytes, so a file is its own checksum). The layout of the bytes is defined
//! once, in `stockade_guest::archive`. A random id written into the directory when it
//! is created tells peers whether they share it: the scheduler, the workers and a
//! client on one machine normally do, so an object is written once per machine and
//! every process maps the same pages.
//!
//! Every holder of an object keeps the file open with a shared `flock` and maps it
//! read-only ([`Pinned`]). When a holder lets go and no one else holds the lock, it
//! removes the file, so memory is freed when the last holder (scheduler, workers,
//! Python children through their own mappings) is done. Writers create a temporary
//! file and link it into place only if no file of that key exists yet.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub mod stream;
use stockade_guest::archive::ArchivedObject;
pub use stockade_guest::archive::{Buffer, Scattered};

use crate::net::scheduler_file::uid;
use crate::proto::{ObjectHeader, ObjectKey, ObjectKind, StoreInfo};

/// Largest object: the archive format's 32-bit offsets bound it to 2 GiB.
pub const MAX_OBJECT_SIZE: u64 = (1 << 31) - 1;

/// Errors of the store. Each names the object and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory cannot be used.
    #[error("object store {dir}: {source}; hint: set STOCKADE_STORE_DIR (or --store-dir) to a writable directory, ideally on a memory file system such as /dev/shm")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing an object file failed.
    #[error("object {key}: {source}")]
    Io {
        /// The object's key (hex).
        key: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The object is not in the store (it was never written or was freed).
    #[error("object {key} is not in the store at {dir}")]
    Missing {
        /// The object's key (hex).
        key: String,
        /// The tenant directory looked in.
        dir: PathBuf,
    },
    /// The bytes do not match what was announced (size or hash), or do not have the
    /// layout of their kind.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The object's key (hex).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The object is larger than the format allows.
    #[error("object of {size} bytes exceeds the limit of {MAX_OBJECT_SIZE} bytes; hint: scatter smaller pieces")]
    TooLarge {
        /// Its size.
        size: u64,
    },
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    id: String,
}

impl Store {
    /// Opens (creating if needed) the store at `dir`, or at the default place:
    /// `$STOCKADE_STORE_DIR`, else `/dev/shm/stockade-UID`, else a directory under the
    /// system's temporary directory.
    pub fn open(dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let root = dir.or_else(|| std::env::var_os("STOCKADE_STORE_DIR").map(PathBuf::from)).unwrap_or_else(|| {
            let shm = Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            base.join(format!("stockade-{}", uid()))
        });
        let dir_err = |source| StoreError::Dir { dir: root.clone(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(dir_err)?;
        let meta = std::fs::metadata(&root).map_err(dir_err)?;
        if meta.uid() != uid() || meta.mode() & 0o077 != 0 {
            return Err(dir_err(std::io::Error::other(
                "the directory must belong to this user and be private (mode 0700)",
            )));
        }
        let id_path = root.join(".id");
        let id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let mut raw = [0u8; 16];
                getrandom::fill(&mut raw).map_err(|e| dir_err(std::io::Error::other(e.to_string())))?;
                let fresh = hex::encode(raw);
                let tmp = root.join(format!(".id.{}", hex::encode(&raw[..4])));
                std::fs::write(&tmp, &fresh).map_err(dir_err)?;
                // Two processes creating the store at once: the first link wins, both read it.
                let _ = std::fs::hard_link(&tmp, &id_path);
                let _ = std::fs::remove_file(&tmp);
                std::fs::read_to_string(&id_path).map_err(dir_err)?.trim().to_string()
            }
        };
        Ok(Self { root, id })
    }

    /// Opens the store another process describes, if this process can use it (same
    /// directory, same id): then objects written here are visible to that process.
    pub fn shared_with(info: &StoreInfo) -> Option<Self> {
        if info.id.is_empty() || info.dir.is_empty() {
            return None;
        }
        let root = PathBuf::from(&info.dir);
        let id = std::fs::read_to_string(root.join(".id")).ok()?;
        (id.trim() == info.id).then(|| Self { root, id: info.id.clone() })
    }

    /// What peers need to know to share this store.
    pub fn info(&self) -> StoreInfo {
        StoreInfo { id: self.id.clone(), dir: self.root.display().to_string() }
    }

    /// The store's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn tenant_dir(&self, tenant: &str) -> PathBuf {
        let hash = blake3::hash(tenant.as_bytes());
        self.root.join(format!("t-{}", &hash.to_hex()[..16]))
    }

    /// The file of an object.
    pub fn path(&self, tenant: &str, key: &ObjectKey) -> PathBuf {
        self.tenant_dir(tenant).join(hex::encode(key))
    }

    /// Pins an object that is in the store: opens it, takes a shared lock, maps it and
    /// checks its size and layout (not its hash: only this user can write here).
    pub fn pin(&self, tenant: &str, header: &ObjectHeader) -> Result<Pinned, StoreError> {
        let path = self.path(tenant, &header.key);
        let pinned = open_locked(&path, &header.key).map_err(|e| match e {
            StoreError::Io { source, key } if source.kind() == std::io::ErrorKind::NotFound => {
                StoreError::Missing { key, dir: self.tenant_dir(tenant) }
            }
            other => other,
        })?;
        let header = ObjectHeader { tenant: tenant.to_string(), ..header.clone() };
        Pinned::new(pinned, path, &header)
    }

    /// Starts writing an object. With `expected` (key and size), [`ObjectWriter::finish`]
    /// checks the bytes against it; without, the key is computed from the bytes.
    pub fn writer(&self, tenant: &str, expected: Option<(ObjectKey, u64)>) -> Result<ObjectWriter, StoreError> {
        if let Some((_, size)) = expected {
            if size > MAX_OBJECT_SIZE {
                return Err(StoreError::TooLarge { size });
            }
        }
        let dir = self.tenant_dir(tenant);
        let dir_err = |source| StoreError::Dir { dir: dir.clone(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(dir_err)?;
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| dir_err(std::io::Error::other(e.to_string())))?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(raw)));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(dir_err)?;
        Ok(ObjectWriter {
            store: self.clone(),
            tenant: tenant.to_string(),
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            hasher: blake3::Hasher::new(),
            written: 0,
            expected,
        })
    }
}

/// Opens a file and takes a shared lock on the inode the path names (retrying if the
/// last holder removed it in between).
fn open_locked(path: &Path, key: &ObjectKey) -> Result<File, StoreError> {
    let io = |source| StoreError::Io { key: hex::encode(key), source };
    loop {
        let file = File::open(path).map_err(io)?;
        flock(&file, libc::LOCK_SH).map_err(io)?;
        // The last holder may have removed the file after we opened it: check that the
        // path still names our inode, else look again.
        let ours = file.metadata().map_err(io)?.ino();
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == ours => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(e) => return Err(io(e)),
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes one object into the store (temporary file, hashed as written, linked into
/// place by [`Self::finish`]).
#[derive(Debug)]
pub struct ObjectWriter {
    store: Store,
    tenant: String,
    file: std::io::BufWriter<File>,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    written: u64,
    expected: Option<(ObjectKey, u64)>,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some((_, size)) = self.expected {
            if self.written + buf.len() as u64 > size {
                return Err(std::io::Error::other(format!("more than the announced {size} bytes")));
            }
        }
        if self.written + buf.len() as u64 > MAX_OBJECT_SIZE {
            return Err(std::io::Error::other(format!("object exceeds {MAX_OBJECT_SIZE} bytes")));
        }
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the bytes, links the file into place (keeping an existing file of the
    /// same key) and pins it.
    pub fn finish(mut self, kind: ObjectKind) -> Result<Pinned, StoreError> {
        let key: ObjectKey = *self.hasher.finalize().as_bytes();
        let hex_key = hex::encode(key);
        let io = |source| StoreError::Io { key: hex_key.clone(), source };
        self.file.flush().map_err(io)?;
        if let Some((want, size)) = self.expected {
            if self.written != size {
                return Err(StoreError::Corrupt {
                    key: hex::encode(want),
                    reason: format!("{} bytes arrived, {size} were announced", self.written),
                });
            }
            if want != key {
                return Err(StoreError::Corrupt {
                    key: hex::encode(want),
                    reason: format!("the bytes hash to {hex_key}"),
                });
            }
        }
        let header = ObjectHeader { key, size: self.written, kind, tenant: self.tenant.clone() };
        let path = self.store.path(&self.tenant, &key);
        loop {
            match std::fs::hard_link(&self.tmp, &path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // The same bytes are already there: use that file unless its last
                    // holder is removing it right now.
                    match self.store.pin(&self.tenant, &header) {
                        Ok(pinned) => return Ok(pinned),
                        Err(StoreError::Missing { .. }) => continue,
                        Err(other) => return Err(other),
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        self.store.pin(&self.tenant, &header)
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes a [`ObjectKind::Scattered`] archive straight into a store file (no copy of
/// the buffers in memory).
pub fn write_scattered(writer: &mut ObjectWriter, object: &Scattered<&[u8]>) -> std::io::Result<()> {
    let out = rkyv::ser::writer::IoWriter::new(writer);
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(object, out).map_err(std::io::Error::other)?;
    Ok(())
}

/// Byte ranges of a [`ObjectKind::Scattered`] object, relative to the file's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The pickle stream.
    pub pickle: (u64, u64),
    /// The out-of-band buffers, in order: offset and length.
    pub buffers: Vec<(u64, u64)>,
}

/// An object held by this process: an open, locked, read-only mapped file.
#[derive(Debug)]
pub struct Pinned {
    header: ObjectHeader,
    path: PathBuf,
    file: File,
    map: Mmap,
    layout: Option<Layout>,
}

impl Pinned {
    fn new(file: File, path: PathBuf, header: &ObjectHeader) -> Result<Self, StoreError> {
        let key = hex::encode(header.key);
        let corrupt = |reason: String| StoreError::Corrupt { key: key.clone(), reason };
        let len = file.metadata().map_err(|source| StoreError::Io { key: key.clone(), source })?.len();
        if len != header.size {
            return Err(corrupt(format!("the file has {len} bytes, {} were announced", header.size)));
        }
        if len == 0 {
            return Err(corrupt("empty object".into()));
        }
        // SAFETY: the file is private to this user, written once before being linked
        // into place and never modified afterwards; the mapping is read-only.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| StoreError::Io { key: key.clone(), source })?;
        let layout = match header.kind {
            ObjectKind::Raw => None,
            ObjectKind::Scattered => Some(layout(&map).map_err(corrupt)?),
        };
        Ok(Self { header: header.clone(), path, file, map, layout })
    }

    /// The object's description.
    pub fn header(&self) -> &ObjectHeader {
        &self.header
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte ranges of a scattered object (`None` for raw bytes).
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }
}

/// Validates a scattered archive and finds its blocks.
fn layout(bytes: &[u8]) -> Result<Layout, String> {
    let archived = rkyv::access::<ArchivedObject, rkyv::rancor::Error>(bytes).map_err(|e| e.to_string())?;
    let base = bytes.as_ptr() as u64;
    let range = |b: &[u8]| (b.as_ptr() as u64 - base, b.len() as u64);
    Ok(Layout {
        pickle: range(archived.pickle.as_slice()),
        buffers: archived.buffers.iter().map(|b| range(b.data.as_slice())).collect(),
    })
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // The last holder removes the file. Holding the exclusive lock, check that the
        // path still names this inode (a newer copy may have replaced a removed one).
        if flock(&self.file, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            let ours = self.file.metadata().map(|m| m.ino()).ok();
            let now = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            if ours.is_some() && ours == now {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove a pinned object");
                }
            }
        }
    }
}

/// Objects a process holds, shared between its tasks.
pub type SharedPinned = Arc<Pinned>;

#[cfg(test)]
mod tests;
