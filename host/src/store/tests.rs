use std::io::Write;

use stockade_guest::archive::{Buffer, Scattered};

use super::*;

fn temp_store() -> (tempdir::Dir, Store) {
    let dir = tempdir::Dir::new();
    let store = Store::open(Some(dir.path().join("store"))).unwrap();
    (dir, store)
}

/// A minimal self-removing temporary directory (no extra dependency).
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let mut raw = [0u8; 8];
            getrandom::fill(&mut raw).unwrap();
            let p = std::env::temp_dir().join(format!("stockade-store-test-{}", hex::encode(raw)));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scattered_bytes() -> Vec<u8> {
    let data: Vec<u8> = (0..4096u32).flat_map(|i| i.to_le_bytes()).collect();
    let obj = Scattered {
        pickle: &b"the pickle"[..],
        buffers: vec![Buffer { data: &data[..], dtype: "<u4".into(), shape: vec![4096] }],
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&obj).unwrap().to_vec()
}

fn write(store: &Store, bytes: &[u8], kind: ObjectKind) -> Pinned {
    let mut w = store.writer("t", None).unwrap();
    w.write_all(bytes).unwrap();
    w.finish(kind).unwrap()
}

#[test]
fn written_objects_are_keyed_by_hash_and_laid_out() {
    let (_d, store) = temp_store();
    let bytes = scattered_bytes();
    let pinned = write(&store, &bytes, ObjectKind::Scattered);
    assert_eq!(pinned.header().key, *blake3::hash(&bytes).as_bytes());
    assert_eq!(pinned.bytes(), &bytes[..]);
    let layout = pinned.layout().unwrap();
    let (off, len) = layout.pickle;
    assert_eq!(&bytes[off as usize..(off + len) as usize], b"the pickle");
    assert_eq!(layout.buffers.len(), 1);
    assert_eq!(layout.buffers[0].0 % 64, 0);
    assert_eq!(layout.buffers[0].1, 4096 * 4);
}

#[test]
fn the_last_holder_removes_the_file() {
    let (_d, store) = temp_store();
    let first = write(&store, b"raw bytes", ObjectKind::Raw);
    let path = first.path().to_path_buf();
    let second = store.pin("t", first.header()).unwrap();
    drop(first);
    assert!(path.exists(), "another holder still has it");
    drop(second);
    assert!(!path.exists(), "the last holder removes it");
    let err = store.pin("t", &ObjectHeader { key: [1; 32], size: 3, kind: ObjectKind::Raw, tenant: "t".into() });
    assert!(matches!(err, Err(StoreError::Missing { .. })), "{err:?}");
}

#[test]
fn a_second_writer_of_the_same_bytes_shares_the_file() {
    let (_d, store) = temp_store();
    let a = write(&store, b"same", ObjectKind::Raw);
    let b = write(&store, b"same", ObjectKind::Raw);
    assert_eq!(a.path(), b.path());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(a.file.metadata().unwrap().ino(), b.file.metadata().unwrap().ino());
}

#[test]
fn announced_hash_and_size_are_checked() {
    let (_d, store) = temp_store();
    let mut w = store.writer("t", Some(([9; 32], 4))).unwrap();
    w.write_all(b"abcd").unwrap();
    assert!(matches!(w.finish(ObjectKind::Raw), Err(StoreError::Corrupt { .. })));
    let key = *blake3::hash(b"abcd").as_bytes();
    let mut w = store.writer("t", Some((key, 5))).unwrap();
    w.write_all(b"abcd").unwrap();
    assert!(matches!(w.finish(ObjectKind::Raw), Err(StoreError::Corrupt { .. })));
    let mut w = store.writer("t", Some((key, 2))).unwrap();
    assert!(w.write_all(b"abcd").is_err(), "more bytes than announced");
    assert!(matches!(store.writer("t", Some((key, MAX_OBJECT_SIZE + 1))), Err(StoreError::TooLarge { .. })));
}

#[test]
fn a_scattered_object_with_a_bad_layout_is_refused() {
    let (_d, store) = temp_store();
    let mut w = store.writer("t", None).unwrap();
    w.write_all(&[0xffu8; 100]).unwrap();
    let err = w.finish(ObjectKind::Scattered).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn tenants_do_not_share_files() {
    let (_d, store) = temp_store();
    let pinned = write(&store, b"secret", ObjectKind::Raw);
    let other = store.pin("other", pinned.header());
    assert!(matches!(other, Err(StoreError::Missing { .. })));
}

#[test]
fn peers_recognise_a_shared_store() {
    let (_d, store) = temp_store();
    let again = Store::shared_with(&store.info()).unwrap();
    assert_eq!(again.id(), store.id());
    let mut info = store.info();
    info.id = "someone else's".into();
    assert!(Store::shared_with(&info).is_none());
    let reopened = Store::open(Some(store.root.clone())).unwrap();
    assert_eq!(reopened.id(), store.id(), "the id persists");
}
