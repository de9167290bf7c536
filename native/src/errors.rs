//! Errors of the native core and their mapping onto `nexusfs.errors`.
//!
//! Work runs with the GIL released, so it returns this `Send` enum; the Python exception
//! is built only once the GIL is held again ([`Error::into_pyerr`]).

use std::fmt::Write as _;
use std::io;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

pyo3::import_exception!(nexusfs.errors, NotFound);
pyo3::import_exception!(nexusfs.errors, StoreLocked);
pyo3::import_exception!(nexusfs.errors, CorruptStore);
pyo3::import_exception!(nexusfs.errors, StoreClosed);
pyo3::import_exception!(nexusfs.errors, Conflict);

#[derive(Debug)]
pub enum Error {
    /// The store was used after `close()`.
    Closed,
    /// A missing file or directory.
    NotFound(String),
    /// The file is open elsewhere (another process, or another handle in this one).
    Locked(String),
    /// The file failed redb's integrity checks or is not a redb file.
    Corrupt(String),
    /// A batch check failed.
    Conflict(String),
    /// A bad argument (e.g. a record too large for the log).
    Value(String),
    /// Any other I/O error (mapped to the matching `OSError` subclass).
    Io(io::Error),
    /// Anything else redb reported.
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The Python exception for this error. Needs the GIL.
    pub fn into_pyerr(self) -> PyErr {
        match self {
            Error::Closed => StoreClosed::new_err("metastore is closed"),
            Error::NotFound(m) => NotFound::new_err(m),
            Error::Locked(m) => StoreLocked::new_err(m),
            Error::Corrupt(m) => CorruptStore::new_err(m),
            Error::Conflict(m) => Conflict::new_err(m),
            Error::Value(m) => PyValueError::new_err(m),
            Error::Io(e) => PyErr::from(e),
            Error::Other(m) => PyOSError::new_err(m),
        }
    }

    /// Attach the store path to open-time errors.
    pub fn with_path(self, path: &str) -> Error {
        match self {
            Error::NotFound(m) => Error::NotFound(format!("{m}: {path}")),
            Error::Locked(m) => Error::Locked(format!("{m}: {path}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{m}: {path}")),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), format!("{e}: {path}"))),
            Error::Other(m) => Error::Other(format!("{m}: {path}")),
            other => other,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(e.to_string())
        } else {
            Error::Io(e)
        }
    }
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::DatabaseAlreadyOpen => {
                Error::Locked("store is already open (locked by another handle or process)".into())
            }
            redb::Error::LockProtocolMismatch => {
                Error::Locked("store is open by a process with another lock protocol".into())
            }
            redb::Error::Corrupted(m) => Error::Corrupt(format!("corrupt store: {m}")),
            redb::Error::UpgradeRequired(v) => {
                Error::Corrupt(format!("unsupported redb file format version {v}"))
            }
            redb::Error::RepairAborted => Error::Corrupt("store repair aborted".into()),
            redb::Error::DatabaseClosed => Error::Closed,
            redb::Error::ValueTooLarge(n) => Error::Value(format!("value too large: {n} bytes")),
            redb::Error::Io(e) => Error::from(e),
            other => Error::Other(other.to_string()),
        }
    }
}

macro_rules! via_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::from(redb::Error::from(e))
            }
        }
    )*};
}

via_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Render a key like Python's `repr(bytes)`, for error messages.
pub fn bytes_repr(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 3);
    s.push_str("b'");
    for &c in b.iter().take(200) {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s.push('\'');
    if b.len() > 200 {
        s.push_str("...");
    }
    s
}
