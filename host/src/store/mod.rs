//! Pinned data in shared memory; filled in by the scatter issue.
