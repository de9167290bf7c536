//! The read path of [`Store`]: `get`, `get_many` and `scan`, merging the overlay over a
//! redb snapshot taken under the overlay read lock (see the invariants in `store.rs`), so
//! a reader never observes half of a commit and never waits for a writer's fsync.

use std::cmp::Ordering as Cmp;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockReadGuard};

use redb::{Database, ReadableDatabase};

use crate::errors::{Error, Result};
use crate::locks::{lock, rlock};
use crate::overlay::Overlay;
use crate::store::{Snapshot, Store, DATA};

/// Bounds of a scan, in the order they are applied.
pub struct ScanArgs<'a> {
    pub prefix: &'a [u8],
    pub start: Option<&'a [u8]>,
    pub end: Option<&'a [u8]>,
    pub after: Option<&'a [u8]>,
    pub limit: Option<usize>,
    pub keys_only: bool,
}

/// Smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last != 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

impl Store {
    /// The cached redb read snapshot of the current generation. Call it under the overlay
    /// read lock, so the snapshot is at least as new as the overlay state seen.
    pub(crate) fn snapshot(&self, db: &Database) -> Result<Snapshot> {
        let gen = self.generation.load(Ordering::Acquire);
        if let Some((g, t)) = lock(&self.snap).as_ref() {
            if *g == gen {
                return Ok(Arc::clone(t));
            }
        }
        let txn = db.begin_read()?;
        let table = Arc::new(txn.open_table(DATA)?);
        let mut slot = lock(&self.snap);
        if self.generation.load(Ordering::Acquire) == gen {
            *slot = Some((gen, Arc::clone(&table)));
        }
        Ok(table)
    }

    /// Run `f` on the overlay under its read lock, and take the matching redb snapshot.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&Overlay) -> R,
    ) -> Result<(R, Snapshot, RwLockReadGuard<'_, Option<Database>>)> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let dbg = rlock(&self.db);
        let db = dbg.as_ref().ok_or(Error::Closed)?;
        let (r, snap) = {
            let ov = rlock(&self.overlay);
            let r = f(&ov);
            (r, self.snapshot(db)?)
        };
        Ok((r, snap, dbg))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let dbg = rlock(&self.db);
        let db = dbg.as_ref().ok_or(Error::Closed)?;
        let snap = {
            let ov = rlock(&self.overlay);
            if !ov.is_empty() {
                if let Some(v) = ov.lookup(key) {
                    return Ok(v.map(<[u8]>::to_vec));
                }
            }
            self.snapshot(db)?
        };
        let got = snap.get(key)?;
        Ok(got.map(|g| g.value().to_vec()))
    }

    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        let (found, snap, _db) = self.read(|ov| {
            if ov.is_empty() {
                return Vec::new();
            }
            keys.iter()
                .map(|k| ov.lookup(k.as_ref()).map(|v| v.map(<[u8]>::to_vec)))
                .collect::<Vec<_>>()
        })?;
        let mut found = found.into_iter();
        keys.iter()
            .map(|k| match found.next().flatten() {
                Some(v) => Ok(v),
                None => Ok(snap.get(k.as_ref())?.map(|g| g.value().to_vec())),
            })
            .collect()
    }

    pub fn scan(&self, a: &ScanArgs<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // Lower bound: the greatest of prefix (incl.), start (incl.), after (excl.).
        let mut lower: (&[u8], bool) = (a.prefix, false); // (key, exclusive)
        if let Some(s) = a.start {
            if s > lower.0 {
                lower = (s, false);
            }
        }
        if let Some(x) = a.after {
            if x >= lower.0 {
                lower = (x, true);
            }
        }
        // Upper bound (exclusive): the least of end and the prefix successor.
        let succ = if a.prefix.is_empty() {
            None
        } else {
            prefix_successor(a.prefix)
        };
        let upper: Option<&[u8]> = match (a.end, succ.as_deref()) {
            (Some(e), Some(s)) => Some(e.min(s)),
            (Some(e), None) => Some(e),
            (None, s) => s,
        };
        if let Some(u) = upper {
            if lower.0 >= u {
                return Ok(Vec::new());
            }
        }
        let limit = a.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lo = if lower.1 {
            Bound::Excluded(lower.0)
        } else {
            Bound::Included(lower.0)
        };
        let hi = match upper {
            Some(u) => Bound::Excluded(u),
            None => Bound::Unbounded,
        };
        let (rows, snap, _db) = self.read(|ov| {
            if ov.is_empty() {
                Vec::new()
            } else {
                ov.range(lo, hi, limit, a.keys_only)
            }
        })?;
        // Merge: overlay rows win over redb rows with the same key; tombstones hide them.
        let mut over = rows.into_iter().peekable();
        let mut base = snap.range::<&[u8]>((lo, hi))?;
        let mut next_base = base.next().transpose()?;
        let mut out = Vec::new();
        while out.len() < limit {
            let ord = match (over.peek(), &next_base) {
                (None, None) => break,
                (Some(_), None) => Cmp::Less,
                (None, Some(_)) => Cmp::Greater,
                (Some((ko, _)), Some((kb, _))) => ko.as_slice().cmp(kb.value()),
            };
            if ord != Cmp::Less {
                let (k, v) = next_base.take().expect("base row");
                next_base = base.next().transpose()?;
                if ord == Cmp::Greater {
                    let value = if a.keys_only {
                        Vec::new()
                    } else {
                        v.value().to_vec()
                    };
                    out.push((k.value().to_vec(), value));
                    continue;
                }
            }
            let (k, v) = over.next().expect("overlay row");
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    // ----------------------------------------------------------------- writes
}
