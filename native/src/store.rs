//! The store: one redb table of `&[u8] -> &[u8]` behind a write-ahead log.
//!
//! Invariants:
//!
//! * Writers are serialised by `writer`; under that one lock a commit is applied to redb
//!   with `Durability::None` and its resolved effects are appended to the log, so the order
//!   of log records is the commit order. The record is written *before* the redb commit:
//!   if the log write fails, the transaction is aborted and nothing changed; if the commit
//!   fails, the record is rolled back.
//! * A checkpoint is a redb commit with `Durability::Immediate` (which makes every earlier
//!   non-durable commit durable) that also records the last logged sequence number in the
//!   meta table; only then is the log emptied.
//! * Lock order: `writer` -> `db` (read) -> `snap`. `close` takes `writer`, then `db` for
//!   writing, so no reader or writer is inside redb when the database is dropped.
//! * Readers never take `writer`. They share one cached read snapshot per commit
//!   generation; a writer bumps `generation` after each commit, so a call that starts after
//!   a mutation returned sees it.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, TableDefinition,
};

use crate::errors::{bytes_repr, Error, Result};
use crate::wal::{self, RecordBuf, Wal};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("nexusfs_meta");
const META_WAL_SEQ: &str = "wal_seq";
/// Checkpoint inline once the log grows past this many bytes.
const WAL_LIMIT: u64 = 64 << 20;

type Snapshot = Arc<ReadOnlyTable<&'static [u8], &'static [u8]>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Writer {
    wal: Wal,
    buf: RecordBuf,
    /// Sequence number of the last logged commit.
    seq: u64,
    /// Sequence number covered by the last checkpoint.
    durable_seq: u64,
    /// Whether a commit happened since the last checkpoint.
    dirty: bool,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    checkpoints: AtomicU64,
    replayed: AtomicU64,
    replay_skipped: AtomicU64,
    replay_bytes: AtomicU64,
    checkpoint_errors: AtomicU64,
}

/// Statistics returned by `stats()`.
pub struct Stats {
    pub wal_bytes: u64,
    pub wal_fsyncs: u64,
    pub commits: u64,
    pub checkpoints: u64,
    pub replayed_records: u64,
    pub replay_skipped: u64,
    pub replay_bytes: u64,
    pub checkpoint_errors: u64,
    pub seq: u64,
    pub durable_seq: u64,
    pub last_error: Option<String>,
}

pub struct Store {
    pub path: String,
    pub immediate: bool,
    interval: Duration,
    db: RwLock<Option<Database>>,
    snap: Mutex<Option<(u64, Snapshot)>>,
    generation: AtomicU64,
    writer: Mutex<Writer>,
    closed: AtomicBool,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
}

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
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last != 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

fn open_db(path: &Path, create: bool) -> Result<Database> {
    if !create && !path.exists() {
        return Err(Error::NotFound("metastore file does not exist".into()));
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            return Err(Error::NotFound("parent directory does not exist".into()));
        }
    }
    let path = path.to_path_buf();
    // redb may panic on some malformed files instead of returning `Corrupted`.
    let opened = std::panic::catch_unwind(move || {
        let builder = Database::builder();
        if create {
            builder.create(&path)
        } else {
            builder.open(&path)
        }
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() == std::io::ErrorKind::InvalidData
                || e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(Error::Corrupt(format!("not a valid store file: {e}")))
        }
        Ok(Err(e)) => Err(Error::from(e)),
        Err(_) => Err(Error::Corrupt(
            "not a valid store file (redb panicked on open)".into(),
        )),
    }
}

impl Store {
    /// Open or create the store at `path`, replaying its write-ahead log.
    pub fn open(
        path: PathBuf,
        immediate: bool,
        flush_interval_ms: u64,
        create: bool,
    ) -> Result<Arc<Store>> {
        let display = path.to_string_lossy().into_owned();
        // A log left next to a missing or empty database file belongs to a store that no
        // longer exists: never replay it into a new one.
        let fresh = std::fs::metadata(&path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let db = open_db(&path, create).map_err(|e| e.with_path(&display))?;
        let mut wal_path = path.clone().into_os_string();
        wal_path.push(".wal");
        let (mut log, data) = Wal::open(Path::new(&wal_path), immediate)?;

        // Replay: one durable commit applying every record after the last checkpoint.
        let txn = db.begin_write()?;
        let (replay, seq) = {
            let mut meta = txn.open_table(META)?;
            let durable_seq = meta.get(META_WAL_SEQ)?.map(|g| g.value()).unwrap_or(0);
            let parsed = wal::parse(if fresh { &[] } else { &data }, durable_seq);
            let mut table = txn.open_table(DATA)?;
            let mut seq = durable_seq;
            for (s, ops) in &parsed.records {
                for op in ops {
                    match op {
                        wal::Op::Put(k, v) => {
                            table.insert(*k, *v)?;
                        }
                        wal::Op::Del(k) => {
                            table.remove(*k)?;
                        }
                    }
                }
                seq = *s;
            }
            meta.insert(META_WAL_SEQ, seq)?;
            let replay = [
                parsed.records.len() as u64,
                parsed.skipped,
                parsed.end as u64,
            ];
            (replay, seq)
        };
        txn.commit()?;
        drop(data);
        log.reset()?;

        let store = Arc::new(Store {
            path: display,
            immediate,
            interval: Duration::from_millis(flush_interval_ms),
            db: RwLock::new(Some(db)),
            snap: Mutex::new(None),
            generation: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                wal: log,
                buf: RecordBuf::default(),
                seq,
                durable_seq: seq,
                dirty: false,
            }),
            closed: AtomicBool::new(false),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            flusher: Mutex::new(None),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        });
        store.counters.replayed.store(replay[0], Ordering::Relaxed);
        store
            .counters
            .replay_skipped
            .store(replay[1], Ordering::Relaxed);
        store
            .counters
            .replay_bytes
            .store(replay[2], Ordering::Relaxed);
        if flush_interval_ms > 0 {
            let bg = Arc::clone(&store);
            let handle = std::thread::Builder::new()
                .name("nexusfs-metastore-flusher".into())
                .spawn(move || bg.flusher_loop())?;
            *lock(&store.flusher) = Some(handle);
        }
        Ok(store)
    }

    fn flusher_loop(&self) {
        let mut stop = lock(&self.stop);
        loop {
            let (guard, _) = self
                .stop_cv
                .wait_timeout_while(stop, self.interval, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            stop = guard;
            if *stop {
                return;
            }
            drop(stop);
            if let Err(e) = self.checkpoint_if_dirty() {
                self.counters
                    .checkpoint_errors
                    .fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = Some(format!("background checkpoint: {e:?}"));
            }
            stop = lock(&self.stop);
        }
    }

    fn checkpoint_if_dirty(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        if !w.dirty {
            return Ok(());
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        match db.as_ref() {
            Some(db) => self.checkpoint_locked(&mut w, db),
            None => Ok(()),
        }
    }

    fn checkpoint_locked(&self, w: &mut Writer, db: &Database) -> Result<()> {
        if !w.dirty && w.wal.len() == 0 {
            return Ok(());
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_WAL_SEQ, w.seq)?;
        }
        txn.commit()?;
        w.durable_seq = w.seq;
        w.dirty = false;
        w.wal.reset()?;
        w.buf.shrink();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Make every returned mutation durable now.
    pub fn flush(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or(Error::Closed)?;
        self.checkpoint_locked(&mut w, db)
    }

    /// Stop the flusher, checkpoint and release the file. Idempotent. If the final
    /// checkpoint fails the file is still released and the log kept for the next open.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            *lock(&self.stop) = true;
            self.stop_cv.notify_all();
        }
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
        let mut w = lock(&self.writer);
        let mut dbw = self.db.write().unwrap_or_else(|e| e.into_inner());
        let result = match dbw.as_ref() {
            Some(db) => self.checkpoint_locked(&mut w, db),
            None => Ok(()),
        };
        *lock(&self.snap) = None;
        if let Some(db) = dbw.take() {
            drop(db);
        }
        result
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    // ------------------------------------------------------------------ reads

    fn snapshot(&self, db: &Database) -> Result<Snapshot> {
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

    fn read<R>(
        &self,
        f: impl FnOnce(&ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<R>,
    ) -> Result<R> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or(Error::Closed)?;
        let table = self.snapshot(db)?;
        f(&table)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|t| Ok(t.get(key)?.map(|g| g.value().to_vec())))
    }

    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|t| {
            keys.iter()
                .map(|k| Ok(t.get(k.as_ref())?.map(|g| g.value().to_vec())))
                .collect()
        })
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
        self.read(|t| {
            let mut out = Vec::new();
            for item in t.range::<&[u8]>((lo, hi))? {
                let (k, v) = item?;
                let value = if a.keys_only {
                    Vec::new()
                } else {
                    v.value().to_vec()
                };
                out.push((k.value().to_vec(), value));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    // ----------------------------------------------------------------- writes

    /// Run `f` in a write transaction. `f` applies its changes to the table and logs their
    /// effects into the record; if it logged nothing, nothing is committed.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut Table<'_, &'static [u8], &'static [u8]>, &mut RecordBuf) -> Result<R>,
    ) -> Result<R> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        let db = self.db.read().unwrap_or_else(|e| e.into_inner());
        let db = db.as_ref().ok_or(Error::Closed)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let seq = w.seq + 1;
        w.buf.begin(seq);
        let result = {
            let mut table = txn.open_table(DATA)?;
            f(&mut table, &mut w.buf)
        };
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                txn.abort()?;
                return Err(e);
            }
        };
        if w.buf.is_empty() {
            txn.abort()?;
            return Ok(value);
        }
        let Some(record) = w.buf.finish() else {
            txn.abort()?;
            return Err(Error::Value(
                "commit too large for the write-ahead log (4 GiB)".into(),
            ));
        };
        let at = w.wal.len();
        if let Err(e) = w.wal.append(record) {
            txn.abort()?;
            let _ = w.wal.rollback(at);
            return Err(e.into());
        }
        if let Err(e) = txn.commit() {
            let _ = w.wal.rollback(at);
            return Err(e.into());
        }
        w.seq = seq;
        w.dirty = true;
        self.generation.fetch_add(1, Ordering::AcqRel);
        *lock(&self.snap) = None;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if w.wal.len() > WAL_LIMIT {
            // The commit itself succeeded; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint_locked(w, db) {
                self.counters
                    .checkpoint_errors
                    .fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = Some(format!("size-triggered checkpoint: {e:?}"));
            }
        }
        Ok(value)
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(|t, rec| {
            t.insert(key, value)?;
            rec.put(key, value);
            Ok(())
        })
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.write(|t, rec| {
            let existed = t.remove(key)?.is_some();
            if existed {
                rec.del(key);
            }
            Ok(existed)
        })
    }

    pub fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
        self.write(|t, rec| {
            let matches = {
                let current = t.get(key)?;
                current.as_ref().map(|g| g.value()) == expected
            };
            if !matches {
                return Ok(false);
            }
            match new {
                Some(v) => {
                    t.insert(key, v)?;
                    rec.put(key, v);
                }
                None => {
                    if t.remove(key)?.is_some() {
                        rec.del(key);
                    }
                }
            }
            Ok(true)
        })
    }

    pub fn batch<K: AsRef<[u8]>>(
        &self,
        puts: &[(K, K)],
        deletes: &[K],
        checks: &[(K, Option<K>)],
    ) -> Result<()> {
        self.write(|t, rec| {
            for (key, expected) in checks {
                let key = key.as_ref();
                let ok = {
                    let current = t.get(key)?;
                    current.as_ref().map(|g| g.value()) == expected.as_ref().map(|e| e.as_ref())
                };
                if !ok {
                    return Err(Error::Conflict(format!(
                        "batch check failed for key {}",
                        bytes_repr(key)
                    )));
                }
            }
            for key in deletes {
                let key = key.as_ref();
                if t.remove(key)?.is_some() {
                    rec.del(key);
                }
            }
            for (key, value) in puts {
                let (key, value) = (key.as_ref(), value.as_ref());
                t.insert(key, value)?;
                rec.put(key, value);
            }
            Ok(())
        })
    }

    pub fn stats(&self) -> Stats {
        let w = lock(&self.writer);
        let c = &self.counters;
        Stats {
            wal_bytes: w.wal.len(),
            wal_fsyncs: w.wal.fsyncs,
            commits: c.commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            replayed_records: c.replayed.load(Ordering::Relaxed),
            replay_skipped: c.replay_skipped.load(Ordering::Relaxed),
            replay_bytes: c.replay_bytes.load(Ordering::Relaxed),
            checkpoint_errors: c.checkpoint_errors.load(Ordering::Relaxed),
            seq: w.seq,
            durable_seq: w.durable_seq,
            last_error: lock(&self.last_error).clone(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
