//! The objects a worker holds, counted against its pinned-memory limit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::proto::{ErrorKind, ObjectHeader, ObjectKey, PinOutcome, PinReply, TaskError};
use crate::store::{Pinned, SharedPinned};

/// Pinned objects by tenant and key, with the bytes they (and pins being received)
/// take.
#[derive(Debug)]
pub struct PinTable {
    name: String,
    limit: Option<u64>,
    used: u64,
    /// By tenant, then key (lookups by `&str`: no allocation per task).
    pins: HashMap<String, HashMap<ObjectKey, SharedPinned>>,
}

impl PinTable {
    /// An empty table for the worker `name`, with an optional limit in bytes.
    pub fn new(name: String, limit: Option<u64>) -> Self {
        Self { name, limit, used: 0, pins: HashMap::new() }
    }

    /// Whether the object is held.
    fn holds(&self, header: &ObjectHeader) -> bool {
        self.pins.get(&header.tenant).is_some_and(|t| t.contains_key(&header.key))
    }

    /// Reserves room for an object about to be pinned, or says why there is none.
    /// An object already held needs no room.
    pub fn reserve(&mut self, header: &ObjectHeader) -> Result<(), TaskError> {
        if self.holds(header) {
            return Ok(());
        }
        if let Some(limit) = self.limit {
            if self.used.saturating_add(header.size) > limit {
                return Err(TaskError {
                    kind: ErrorKind::PinnedMemoryExceeded,
                    message: format!(
                        "pinning {} would exceed the pinned-memory limit of worker {} ({} of {} in use); hint: start workers with a larger --memory-limit, or scatter less",
                        human(header.size),
                        self.name,
                        human(self.used),
                        human(limit)
                    ),
                    detail: Vec::new(),
                });
            }
        }
        self.used += header.size;
        Ok(())
    }

    /// Gives back a reservation whose pin failed.
    pub fn unreserve(&mut self, header: &ObjectHeader) {
        if !self.holds(header) {
            self.used = self.used.saturating_sub(header.size);
        }
    }

    /// Holds a pinned object (its room reserved before) and says so.
    pub fn insert(&mut self, pinned: Pinned) -> PinReply {
        let (tenant, key) = (pinned.header().tenant.clone(), pinned.header().key);
        // Held already: the reservation was not taken, and this handle is not needed.
        self.pins.entry(tenant).or_default().entry(key).or_insert_with(|| Arc::new(pinned));
        PinReply { key, outcome: PinOutcome::Pinned(1) }
    }

    /// Drops an object; returns whether it was held.
    pub fn remove(&mut self, tenant: &str, key: &ObjectKey) -> bool {
        match self.pins.get_mut(tenant).and_then(|t| t.remove(key)) {
            Some(p) => {
                self.used = self.used.saturating_sub(p.header().size);
                true
            }
            None => false,
        }
    }

    /// The object `tenant` holds under `key`, if any.
    pub fn get(&self, tenant: &str, key: &ObjectKey) -> Option<SharedPinned> {
        self.pins.get(tenant).and_then(|t| t.get(key)).cloned()
    }

    /// The objects a task needs, or a `DataLost` error naming the first one missing.
    pub fn resolve(&self, tenant: &str, needs: &[ObjectKey]) -> Result<Vec<SharedPinned>, TaskError> {
        let held = self.pins.get(tenant);
        needs
            .iter()
            .map(|key| {
                held.and_then(|t| t.get(key)).cloned().ok_or_else(|| TaskError {
                    kind: ErrorKind::DataLost,
                    message: format!("object {} is not pinned on worker {}", hex::encode(key), self.name),
                    detail: Vec::new(),
                })
            })
            .collect()
    }

    /// Bytes held or reserved.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// A byte count for people.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ObjectKind;

    fn header(key: u8, size: u64) -> ObjectHeader {
        ObjectHeader { key: [key; 32], size, kind: ObjectKind::Raw, tenant: "t".into() }
    }

    #[test]
    fn the_limit_counts_reservations() {
        let mut table = PinTable::new("w".into(), Some(100));
        table.reserve(&header(1, 60)).unwrap();
        let err = table.reserve(&header(2, 60)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PinnedMemoryExceeded);
        assert!(err.message.contains("--memory-limit"), "{}", err.message);
        table.unreserve(&header(1, 60));
        table.reserve(&header(2, 60)).unwrap();
        assert_eq!(table.used(), 60);
    }

    #[test]
    fn missing_objects_are_data_lost() {
        let table = PinTable::new("w".into(), None);
        let err = table.resolve("t", &[[3; 32]]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::DataLost);
        assert!(table.resolve("t", &[]).unwrap().is_empty());
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(12), "12 B");
    }
}
