//! The in-memory overlay (memtable) of recent commits in front of redb: two ordered
//! layers of `key -> Some(value) | None (tombstone)`, `active` over `frozen`. See the
//! invariants in `store.rs`; this module only holds the data structure and its merges.

use std::cmp::Ordering as Cmp;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::Table;

use crate::errors::Result;

pub(crate) type Map = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// Overlay rows of a scan: `(key, Some(value) | None (tombstone))`.
pub(crate) type Rows = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Recent commits not yet written into redb.
#[derive(Default)]
pub(crate) struct Overlay {
    /// Written by commits (under `writer` and the overlay write lock).
    pub(crate) active: Map,
    /// Approximate bytes of `active` (a spill trigger, not an exact figure).
    pub(crate) active_bytes: usize,
    /// An immutable layer being written into redb by a spill; shadowed by `active`.
    pub(crate) frozen: Option<Arc<Map>>,
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty() && self.frozen.is_none()
    }

    pub(crate) fn len(&self) -> usize {
        self.active.len() + self.frozen.as_ref().map_or(0, |f| f.len())
    }

    /// `Some(Some(v))`: the overlay holds `v`; `Some(None)`: deleted; `None`: ask redb.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some(v) = self.active.get(key) {
            return Some(v.as_deref());
        }
        self.frozen.as_ref()?.get(key).map(|v| v.as_deref())
    }

    /// The merged overlay rows in `(lo, hi)`, ascending, tombstones included, stopping
    /// after `limit` live rows (a scan can never need more of them).
    pub(crate) fn range(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Rows {
        let empty = Map::new();
        let frozen = self.frozen.as_deref().unwrap_or(&empty);
        let mut a = self.active.range::<[u8], _>((lo, hi)).peekable();
        let mut f = frozen.range::<[u8], _>((lo, hi)).peekable();
        let mut out = Vec::new();
        let mut live = 0usize;
        while live < limit {
            let ord = match (a.peek(), f.peek()) {
                (None, None) => break,
                (Some(_), None) => Cmp::Less,
                (None, Some(_)) => Cmp::Greater,
                (Some((ka, _)), Some((kf, _))) => ka.cmp(kf),
            };
            let next = match ord {
                Cmp::Less => a.next(),
                Cmp::Equal => {
                    f.next();
                    a.next()
                }
                Cmp::Greater => f.next(),
            };
            let Some((k, v)) = next else { break };
            let v = v
                .as_ref()
                .map(|v| if keys_only { Vec::new() } else { v.clone() });
            live += usize::from(v.is_some());
            out.push((k.clone(), v));
        }
        out
    }
}

/// Write `map` into `table`: puts and removes (tombstones).
pub(crate) fn apply_map(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    map: &Map,
) -> Result<()> {
    for (k, v) in map {
        match v {
            Some(v) => {
                table.insert(k.as_slice(), v.as_slice())?;
            }
            None => {
                table.remove(k.as_slice())?;
            }
        }
    }
    Ok(())
}
