//! Zero-copy access to pinned rkyv archives.
//!
//! The host copies a pinned archive into guest memory once per task (the first time the
//! task asks for it), into a buffer aligned to [`PINNED_ALIGN`](crate::abi::PINNED_ALIGN)
//! bytes that lives as long as the instance; later requests for the same key borrow the
//! same buffer. Every access validates the archive (`rkyv::access` with bytecheck): the
//! bytes came from another tenant's client as far as the guest knows.

use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::Archive;

use crate::Key;

/// Why a pinned archive cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Nothing is pinned under this key on the worker (or the code is not running in the
    /// sandbox). Pin the object in the same session before running the task.
    #[error("nothing is pinned under key {key}")]
    NotPinned {
        /// The key asked for.
        key: Key,
    },
    /// The archive does not validate as the requested type: the type differs from the
    /// one the object was archived as, or the bytes are corrupt. Retrying does not help.
    #[error("the object pinned under key {key} is not a valid archive of the requested type: {reason}")]
    Invalid {
        /// The key asked for.
        key: Key,
        /// What validation found.
        reason: String,
    },
}

/// The archived value of type `T` pinned under `key`, validated, borrowed from the
/// instance's copy of the archive.
///
/// # Errors
///
/// [`PinError::NotPinned`] when nothing is pinned under `key`; [`PinError::Invalid`] when
/// the bytes are not an archive of `T`.
pub fn pinned<T>(key: &Key) -> Result<&'static T::Archived, PinError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let bytes = pinned_bytes(key)?;
    rkyv::access::<T::Archived, rancor::Error>(bytes)
        .map_err(|err| PinError::Invalid { key: *key, reason: err.to_string() })
}

/// The raw bytes pinned under `key`, in a buffer aligned to
/// [`PINNED_ALIGN`](crate::abi::PINNED_ALIGN) bytes.
///
/// # Errors
///
/// [`PinError::NotPinned`] when nothing is pinned under `key`.
pub fn pinned_bytes(key: &Key) -> Result<&'static [u8], PinError> {
    imp::pinned_bytes(key)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::alloc::Layout;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::PinError;
    use crate::abi::PINNED_ALIGN;
    use crate::{rt, Key};

    /// The archives this instance has copied in, by key.
    static COPIES: Mutex<BTreeMap<Key, &'static [u8]>> = Mutex::new(BTreeMap::new());

    pub(super) fn pinned_bytes(key: &Key) -> Result<&'static [u8], PinError> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        let mut copies = COPIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bytes) = copies.get(key) {
            return Ok(bytes);
        }
        let not_pinned = || PinError::NotPinned { key: *key };
        let len = rt::pinned_len(key).ok_or_else(not_pinned)?;
        let buffer = leaked_aligned_zeroed(len);
        if !rt::pinned_read(key, buffer) {
            return Err(not_pinned());
        }
        let bytes: &'static [u8] = buffer;
        copies.insert(*key, bytes);
        Ok(bytes)
    }

    /// A zeroed buffer of `len` bytes aligned to `PINNED_ALIGN`, never freed: it lives as
    /// long as the instance, which ends with the task.
    fn leaked_aligned_zeroed(len: usize) -> &'static mut [u8] {
        if len == 0 {
            return &mut [];
        }
        let Ok(layout) = Layout::from_size_align(len, PINNED_ALIGN) else {
            // Only for lengths near usize::MAX, which no 32-bit memory could hold.
            std::process::abort();
        };
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `ptr` points to `len` zeroed bytes that nothing else references and that
        // are never deallocated.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::PinError;
    use crate::Key;

    /// Outside the sandbox nothing is pinned.
    pub(super) fn pinned_bytes(key: &Key) -> Result<&'static [u8], PinError> {
        Err(PinError::NotPinned { key: *key })
    }
}
