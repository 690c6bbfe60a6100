//! The layout of pinned objects: the one place it is defined.
//!
//! A pinned ("scattered") object is a file of bytes named by its key, the BLAKE3 hash
//! of those bytes (see [`Key`]). Two kinds exist:
//!
//! - **Scattered** Python objects: an rkyv 0.8 archive (bytecheck-validated, 32-bit
//!   relative pointers, root at the end, as `rkyv::to_bytes` writes it) of
//!   [`Scattered`]: the object's pickle (protocol 5) and its out-of-band buffers, in the
//!   order the pickler produced them. Every buffer (and the pickle) starts at a 64-byte
//!   aligned offset of the file, so a mapping of the file (page aligned) gives aligned
//!   data. A buffer that holds a numpy array carries its `dtype` (numpy's `dtype.str`,
//!   e.g. `"<f8"`) and `shape` (empty when the buffer is not an array). Python rebuilds
//!   the object with `pickle.loads(pickle, buffers=...)` over read-only views of the
//!   mapping; a WebAssembly guest reads the buffers in place (`stockade_guest::pinned`).
//!   The 32-bit offsets bound one archive to 2 GiB.
//! - **Raw** bytes (a WebAssembly module): no structure; the key is still their hash.
//!
//! The same type serves writers (with borrowed buffers, `Scattered<&[u8]>`) and readers
//! (`ArchivedScattered<Vec<u8>>`; the archived type does not depend on `B`).

use rkyv::rancor::Fallible;
use rkyv::ser::{Positional, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{ArchiveWith, SerializeWith};
use rkyv::{Archive, Place, Serialize};

/// Alignment of every byte block in a [`Scattered`] archive.
pub const ALIGN: usize = 64;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// The key of a pinned object: the BLAKE3 hash of its bytes.
pub type Key = [u8; KEY_LEN];

/// A pickled Python object with its out-of-band buffers.
#[derive(Archive, Serialize, Debug)]

pub struct Scattered<B: AsRef<[u8]>> {
    /// The pickle stream (protocol 5); out-of-band buffers are referenced in order.
    #[rkyv(with = Aligned)]
    pub pickle: B,
    /// The out-of-band buffers.
    pub buffers: Vec<Buffer<B>>,
}

/// One out-of-band buffer of a [`Scattered`] object.
#[derive(Archive, Serialize, Debug)]

pub struct Buffer<B: AsRef<[u8]>> {
    /// The bytes, 64-byte aligned in the archive.
    #[rkyv(with = Aligned)]
    pub data: B,
    /// numpy's `dtype.str` of the array these bytes hold, or empty.
    pub dtype: String,
    /// The array's shape (C order), or empty.
    pub shape: Vec<u64>,
}

/// The archived form of a [`Scattered`] object as readers see it.
pub type ArchivedObject = ArchivedScattered<Vec<u8>>;

/// Archives any byte container as an `ArchivedVec<u8>` whose data starts at an
/// [`ALIGN`]-byte boundary of the archive.
#[derive(Debug)]
pub struct Aligned;

impl<B: AsRef<[u8]>> ArchiveWith<B> for Aligned {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve_with(field: &B, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(field.as_ref().len(), resolver, out);
    }
}

impl<B, S> SerializeWith<B, S> for Aligned
where
    B: AsRef<[u8]>,
    S: Fallible + Writer + Positional + ?Sized,
{
    fn serialize_with(field: &B, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        // `WriterExt::align` pads at most 16 bytes at a time; pad to 64 here.
        let padding = (ALIGN - serializer.pos() % ALIGN) % ALIGN;
        serializer.write(&[0u8; ALIGN][..padding])?;
        let pos = serializer.pos();
        serializer.write(field.as_ref())?;
        Ok(VecResolver::from_pos(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_readable() {
        let floats: Vec<u8> = (0..100u32).flat_map(|i| f64::from(i).to_le_bytes()).collect();
        let obj = Scattered {
            pickle: &b"pickle"[..],
            buffers: vec![
                Buffer { data: &b"xyz"[..], dtype: String::new(), shape: vec![] },
                Buffer { data: &floats[..], dtype: "<f8".into(), shape: vec![10, 10] },
            ],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&obj).unwrap();
        let archived = rkyv::access::<ArchivedObject, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(archived.pickle.as_slice(), b"pickle");
        assert_eq!(archived.buffers.len(), 2);
        assert_eq!(archived.buffers[1].data.as_slice(), &floats[..]);
        assert_eq!(archived.buffers[1].dtype.as_str(), "<f8");
        assert_eq!(archived.buffers[1].shape.iter().map(|d| d.to_native()).collect::<Vec<_>>(), vec![10, 10]);
        for block in
            [archived.pickle.as_slice(), archived.buffers[0].data.as_slice(), archived.buffers[1].data.as_slice()]
        {
            let offset = block.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(offset % ALIGN, 0, "block at offset {offset} is not aligned");
        }
    }

    #[test]
    fn corrupt_archives_are_refused() {
        let obj = Scattered { pickle: vec![1u8; 10], buffers: vec![] };
        let mut bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&obj).unwrap().to_vec();
        let n = bytes.len();
        bytes[n - 4] = 0xff; // the pickle's length points past the end
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        assert!(rkyv::access::<ArchivedObject, rkyv::rancor::Error>(&aligned).is_err());
    }
}
