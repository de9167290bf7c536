//! `nexusfs._native`: the Rust core of NexusFS.
//!
//! Exposes [`metastore::Metastore`], the redb-backed ordered key-value store with a
//! write-ahead log (see `store.rs` and `wal.rs` for the on-disk invariants).

mod errors;
mod locks;
mod metastore;
mod overlay;
mod read;
mod store;
mod wal;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<metastore::Metastore>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
