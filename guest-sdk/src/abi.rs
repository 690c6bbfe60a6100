//! The guest ABI: what a Stockade guest module imports from the host and exports to it.
//!
//! This module is the one definition of that contract. The SDK's runtime uses it to
//! declare its imports and name its exports; the host (`stockade::sandbox::wasm`) uses
//! the same constants to link and to find tasks. A change here that an older host or an
//! older guest would misread bumps [`ABI_VERSION`].
//!
//! # Version
//!
//! A module exports `stockade_abi_version: () -> i32` ([`ABI_VERSION_EXPORT`]) returning
//! [`ABI_VERSION`]. The host calls it once when it loads the module and refuses a module
//! whose version differs, or that has no such export, as a bad module.
//!
//! # Exports
//!
//! - `memory` ([`MEMORY_EXPORT`]): the linear memory every pointer below points into.
//! - `stockade_abi_version() -> i32`: see above.
//! - `stockade_task_<name>() -> i32` ([`TASK_EXPORT_PREFIX`]): one per task. It reads its
//!   input with the imports below, then either writes its output and returns [`TASK_OK`]
//!   or writes an error message and returns [`TASK_FAILED`].
//! - `_initialize` ([`INITIALIZE_EXPORT`], optional): a WASI reactor's constructor; the
//!   host calls it before the task when the module has it.
//!
//! Each task runs in a fresh instance: nothing survives from one task to the next.
//!
//! # Imports
//!
//! From the import module `"stockade"` ([`IMPORT_MODULE`]); pointers are offsets into
//! `memory` and lengths are byte counts, both `i32` read as unsigned. A pointer range
//! outside `memory` traps. The names and signatures are the `*` constants below.
//! The module may also import `wasi_snapshot_preview1` (WASI preview 1), which the host
//! provides with nothing granted: no files, no environment, no arguments, no sockets;
//! stdout and stderr are captured, size-capped, and only logged or quoted in errors.
//!
//! # Encoding of inputs and outputs
//!
//! A task takes one value and returns one value, both as JSON text (UTF-8), as written by
//! `serde_json` in the guest and by `json.dumps` on the Python side: the call's one
//! positional argument, or its keyword arguments as one object (a task that wants several
//! values takes a struct, or a tuple sent as a list). Pinned data is named by its [`Key`],
//! written in JSON as 64 hexadecimal digits (what Python sends for a `stockade.Pinned`).
//! The error message of a failed task is plain UTF-8 text.
//!
//! # Pinned archives
//!
//! Pinned objects are rkyv archives (rkyv 0.8 defaults: little-endian, 32-bit relative
//! pointers, aligned). The guest asks for the length ([`PINNED_LEN`]), allocates a buffer
//! aligned to [`PINNED_ALIGN`] bytes and has the host copy the archive into it
//! ([`PINNED_READ`]); it validates the bytes before use.

use std::fmt;
use std::str::FromStr;

/// The version of this ABI; a guest and a host must agree on it exactly.
pub const ABI_VERSION: i32 = 1;

/// The export through which the host reads a guest's [`ABI_VERSION`].
pub const ABI_VERSION_EXPORT: &str = abi_version_export!();

/// The prefix of a task's export name: task `fit` is exported as `stockade_task_fit`.
pub const TASK_EXPORT_PREFIX: &str = task_export_prefix!();

/// The guest's linear memory.
pub const MEMORY_EXPORT: &str = "memory";

/// A WASI reactor's constructor, called before the task when the module exports it.
pub const INITIALIZE_EXPORT: &str = "_initialize";

/// What a task export returns when it wrote its output.
pub const TASK_OK: i32 = 0;

/// What a task export returns when it wrote an error message.
pub const TASK_FAILED: i32 = 1;

/// What [`PINNED_LEN`] and [`PINNED_READ`] return for a key that is not pinned.
pub const PINNED_ABSENT: i64 = -1;

/// The alignment, in bytes, of the guest buffer that receives a pinned archive: the
/// alignment of the blocks inside scattered archives, which therefore stay aligned.
pub const PINNED_ALIGN: usize = crate::archive::ALIGN;

/// The size of a [`Key`] in guest memory and on the wire.
pub const KEY_BYTES: usize = crate::archive::KEY_LEN;

/// The export name of task `task`.
pub fn task_export_name(task: &str) -> String {
    format!("{TASK_EXPORT_PREFIX}{task}")
}

/// The task name of an export, if the export is a task.
pub fn task_name(export: &str) -> Option<&str> {
    export.strip_prefix(TASK_EXPORT_PREFIX).filter(|name| !name.is_empty())
}

/// The literal behind [`TASK_EXPORT_PREFIX`], for `concat!` in generated export names.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_export_prefix {
    () => {
        "stockade_task_"
    };
}
use __task_export_prefix as task_export_prefix;

/// The literal behind [`ABI_VERSION_EXPORT`].
#[doc(hidden)]
#[macro_export]
macro_rules! __abi_version_export {
    () => {
        "stockade_abi_version"
    };
}
use __abi_version_export as abi_version_export;

/// Declares the host imports once: a name constant (for the host's linker) and, on
/// wasm32, the `extern` declaration the SDK calls.
macro_rules! host_imports {
    (module $module:literal; $(
        $(#[$doc:meta])*
        $constant:ident = fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;
    )*) => {
        /// The import module of the host functions.
        pub const IMPORT_MODULE: &str = $module;

        $(
            $(#[$doc])*
            #[doc = concat!("\n\nGuest signature: `", stringify!($name), "(",
                stringify!($($arg: $ty),*), ")", $(" -> ", stringify!($ret),)? "`.")]
            pub const $constant: &str = stringify!($name);
        )*

        /// The host functions, as the guest calls them.
        #[cfg(target_arch = "wasm32")]
        pub(crate) mod sys {
            #[link(wasm_import_module = $module)]
            unsafe extern "C" {
                $(pub(crate) fn $name($($arg: $ty),*) $(-> $ret)?;)*
            }
        }
    };
}

host_imports! {
    module "stockade";
    /// The length in bytes of the task's input.
    INPUT_LEN = fn input_len() -> i32;
    /// Copies the task's input to `dst`; `len` must equal the input's length, or the call
    /// traps.
    INPUT_READ = fn input_read(dst: *mut u8, len: i32);
    /// Sets the task's output (replacing an earlier one). Traps when `len` exceeds the
    /// host's output limit.
    OUTPUT_WRITE = fn output_write(src: *const u8, len: i32);
    /// Sets the task's error message (UTF-8; replacing an earlier one; the host keeps at
    /// most its output limit).
    ERROR_WRITE = fn error_write(src: *const u8, len: i32);
    /// Records a panic message (UTF-8) just before the guest aborts; the host reports it
    /// as the message of the trap.
    PANIC_WRITE = fn panic_write(src: *const u8, len: i32);
    /// The length of the pinned archive named by the 32-byte key at `key`, or
    /// [`PINNED_ABSENT`].
    PINNED_LEN = fn pinned_len(key: *const u8) -> i64;
    /// Copies the pinned archive named by the key at `key` to `dst`; `len` must equal its
    /// length, or the call traps. Returns 0, or [`PINNED_ABSENT`] (as i32).
    PINNED_READ = fn pinned_read(key: *const u8, dst: *mut u8, len: i32) -> i32;
}

/// A content hash (blake3, 32 bytes) naming a pinned object or a module: the bytes of
/// [`archive::Key`](crate::archive::Key) with a text form.
///
/// Written as 64 hexadecimal digits in text and JSON.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; KEY_BYTES]);

/// Why text is not a [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text does not have exactly 64 characters.
    #[error("a key has 64 hexadecimal digits, this one has {0} characters")]
    Length(usize),
    /// A character is not a hexadecimal digit.
    #[error("a key has only hexadecimal digits, found {0:?}")]
    NotHex(char),
}

impl FromStr for Key {
    type Err = KeyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(c) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(KeyParseError::NotHex(c));
        }
        if text.len() != 2 * KEY_BYTES {
            return Err(KeyParseError::Length(text.len()));
        }
        let mut key = [0u8; KEY_BYTES];
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Key(key))
    }
}

/// The value of an ASCII hexadecimal digit (the caller checked that it is one).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_hex_and_json() {
        let key = Key(std::array::from_fn(|i| (i * 7) as u8));
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Key>(), Ok(key));
        assert_eq!(text.to_uppercase().parse::<Key>(), Ok(key));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        assert_eq!("abc".parse::<Key>(), Err(KeyParseError::Length(3)));
        let bad = format!("{}g", "0".repeat(63));
        assert_eq!(bad.parse::<Key>(), Err(KeyParseError::NotHex('g')));
        let err = serde_json::from_str::<Key>("\"00\"").unwrap_err();
        assert!(err.to_string().contains("64 hexadecimal digits"), "{err}");
    }

    #[test]
    fn task_names_map_to_exports_and_back() {
        assert_eq!(task_export_name("fit"), "stockade_task_fit");
        assert_eq!(task_name("stockade_task_fit"), Some("fit"));
        assert_eq!(task_name("stockade_task_"), None);
        assert_eq!(task_name("memory"), None);
        assert_eq!(ABI_VERSION_EXPORT, "stockade_abi_version");
        assert_eq!(INPUT_LEN, "input_len");
        assert_eq!(PINNED_READ, "pinned_read");
    }
}
