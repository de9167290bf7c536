//! The Python class `nexusfs._native.Metastore`.
//!
//! Every method releases the GIL around redb, overlay and log work; errors are raised as the typed
//! exceptions of `nexusfs.errors` (see `errors.rs`). The class is subclassable so that
//! `nexusfs.drivers.metastore.redb.RedbMetastore` can add the `MetastoreABC` base while
//! keeping native method dispatch.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::Error;
use crate::read::ScanArgs;
use crate::store::{Store, SPILL_BYTES, SPILL_ENTRIES};

/// An ordered, durable key-value store on one redb file plus a write-ahead log.
///
/// `Metastore(path, durability="deferred", flush_interval_ms=1000, create=True)`.
/// See `nexusfs.drivers.metastore.redb` for the full contract.
#[pyclass(subclass, module = "nexusfs._native", name = "Metastore")]
pub struct Metastore {
    store: Arc<Store>,
}

fn py_err(e: Error) -> PyErr {
    e.into_pyerr()
}

#[pymethods]
impl Metastore {
    #[new]
    /// `spill_entries` / `spill_bytes` (keyword-only, for tests and tuning): the size of
    /// the in-memory overlay of recent commits at which it is written into redb.
    #[pyo3(signature = (
        path,
        durability = "deferred",
        flush_interval_ms = 1000,
        create = true,
        *,
        spill_entries = SPILL_ENTRIES,
        spill_bytes = SPILL_BYTES,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        durability: &str,
        flush_interval_ms: u64,
        create: bool,
        spill_entries: usize,
        spill_bytes: usize,
    ) -> PyResult<Self> {
        let immediate = match durability {
            "immediate" => true,
            "deferred" => false,
            other => {
                return Err(PyValueError::new_err(format!(
                    "durability must be 'immediate' or 'deferred', not {other:?}"
                )))
            }
        };
        let store = py
            .detach(|| {
                Store::open(
                    path,
                    immediate,
                    flush_interval_ms,
                    create,
                    spill_entries,
                    spill_bytes,
                )
            })
            .map_err(py_err)?;
        Ok(Metastore { store })
    }

    /// `"immediate"` or `"deferred"`.
    #[getter]
    fn durability(&self) -> &'static str {
        if self.store.immediate {
            "immediate"
        } else {
            "deferred"
        }
    }

    /// Path of the redb file.
    #[getter]
    fn path(&self) -> &str {
        &self.store.path
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.store.is_closed()
    }

    fn get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = py.detach(|| self.store.get(key)).map_err(py_err)?;
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<PyBackedBytes>,
    ) -> PyResult<Bound<'py, PyList>> {
        let values = py.detach(|| self.store.get_many(&keys)).map_err(py_err)?;
        let items = values.into_iter().map(|v| match v {
            Some(v) => PyBytes::new(py, &v).into_any(),
            None => py.None().into_bound(py),
        });
        PyList::new(py, items)
    }

    fn put(&self, py: Python<'_>, key: &[u8], value: &[u8]) -> PyResult<()> {
        py.detach(|| self.store.put(key, value)).map_err(py_err)
    }

    fn delete(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        py.detach(|| self.store.delete(key)).map_err(py_err)
    }

    #[pyo3(signature = (key, expected, new))]
    fn cas(
        &self,
        py: Python<'_>,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> PyResult<bool> {
        py.detach(|| self.store.cas(key, expected, new))
            .map_err(py_err)
    }

    #[pyo3(signature = (prefix = None, *, start = None, end = None, after = None, limit = None, keys_only = false))]
    #[allow(clippy::too_many_arguments)]
    fn scan<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<&[u8]>,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: Option<i64>,
        keys_only: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let limit = match limit {
            Some(n) if n < 0 => return Err(PyValueError::new_err("limit must be >= 0")),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let args = ScanArgs {
            prefix: prefix.unwrap_or(b""),
            start,
            end,
            after,
            limit,
            keys_only,
        };
        let rows = py.detach(|| self.store.scan(&args)).map_err(py_err)?;
        let empty = PyBytes::new(py, b"");
        let items = rows
            .into_iter()
            .map(|(k, v)| {
                let value = if keys_only {
                    empty.clone()
                } else {
                    PyBytes::new(py, &v)
                };
                PyTuple::new(py, [PyBytes::new(py, &k), value])
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    #[pyo3(signature = (puts = Vec::new(), deletes = Vec::new(), checks = Vec::new()))]
    fn batch(
        &self,
        py: Python<'_>,
        puts: Vec<(PyBackedBytes, PyBackedBytes)>,
        deletes: Vec<PyBackedBytes>,
        checks: Vec<(PyBackedBytes, Option<PyBackedBytes>)>,
    ) -> PyResult<()> {
        py.detach(|| self.store.batch(&puts, &deletes, &checks))
            .map_err(py_err)
    }

    /// Checkpoint now: every mutation that returned is on stable storage afterwards.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.store.flush()).map_err(py_err)
    }

    /// Checkpoint, stop the background flusher and release the file. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.store.close()).map_err(py_err)
    }

    /// Counters of the store: log size, commits, checkpoints, replayed records.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.store.stats());
        let d = PyDict::new(py);
        d.set_item("durability", self.durability())?;
        d.set_item("wal_bytes", s.wal_bytes)?;
        d.set_item("wal_fsyncs", s.wal_fsyncs)?;
        d.set_item("commits", s.commits)?;
        d.set_item("checkpoints", s.checkpoints)?;
        d.set_item("spills", s.spills)?;
        d.set_item("overlay_entries", s.overlay_entries)?;
        d.set_item("replayed_records", s.replayed_records)?;
        d.set_item("replay_skipped", s.replay_skipped)?;
        d.set_item("replay_bytes", s.replay_bytes)?;
        d.set_item("checkpoint_errors", s.checkpoint_errors)?;
        d.set_item("seq", s.seq)?;
        d.set_item("durable_seq", s.durable_seq)?;
        d.set_item("last_error", s.last_error)?;
        d.set_item("closed", self.store.is_closed())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "<Metastore path={:?} durability={}{}>",
            self.store.path,
            self.durability(),
            if self.store.is_closed() {
                " closed"
            } else {
                ""
            }
        )
    }
}

impl Drop for Metastore {
    fn drop(&mut self) {
        // The flusher thread holds another reference to the store, so the store would
        // never be dropped on its own: close it (checkpoint + release the file lock).
        let _ = self.store.close();
    }
}
