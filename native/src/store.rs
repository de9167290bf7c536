//! The store: one redb table of `&[u8] -> &[u8]` behind a write-ahead log, with an
//! in-memory overlay (memtable) in front of redb.
//!
//! Invariants:
//!
//! * Writers are serialised by `writer`. Under that lock a commit validates its checks
//!   against the merged view (overlay over redb), appends its resolved effects to the log
//!   (and `fdatasync`s it in immediate mode), then applies them to the overlay. No redb
//!   transaction runs on the commit path. If the log append fails nothing changed.
//! * The overlay is an ordered map `key -> Some(value) | None (tombstone)` in two layers:
//!   `active` (written by commits) and `frozen` (an immutable map being spilled). Lookups
//!   go active -> frozen -> redb. A spill freezes `active`, writes the frozen map into redb
//!   in one `Durability::None` transaction (holding only `spill`, so commits continue),
//!   then drops the frozen layer. Every value a spill writes equals the overlay value that
//!   shadows it, so readers stay consistent whichever redb snapshot they pair it with.
//! * A checkpoint writes both layers plus the last logged sequence number into redb in one
//!   `Durability::Immediate` commit (which also makes every earlier spill durable), clears
//!   the overlay and empties the log. Until then the log is the source of truth: replay
//!   on open rebuilds everything after the last checkpoint.
//! * Readers never take `writer` or `spill`. Under the overlay read lock a reader does its
//!   overlay lookups (copying what it needs) and takes the redb read snapshot, then reads
//!   redb without the lock. The overlay write lock is taken only to apply a commit in
//!   memory and to drop a spilled layer, never across log I/O, so readers never wait for
//!   an fsync. Spills and checkpoints bump `generation` and drop the cached snapshot under
//!   the overlay write lock, so a reader that sees a layer gone also sees it in redb.
//! * Lock order: `writer` -> `spill` -> `db` -> `overlay` -> `snap`; `signal` is taken
//!   alone. `close` takes `writer`, then `spill`, then `db` for writing, so no reader or
//!   writer is inside redb when the database is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadOnlyTable, ReadableTable, TableDefinition};

use crate::errors::{bytes_repr, Error, Result};
use crate::locks::{lock, rlock, wlock};
use crate::overlay::{apply_map, Map, Overlay};
use crate::wal::{self, RecordBuf, Wal};

pub(crate) const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("nexusfs_meta");
const META_WAL_SEQ: &str = "wal_seq";
/// Checkpoint inline once the log grows past this many bytes.
const WAL_LIMIT: u64 = 64 << 20;
/// Default overlay size (entries / approximate bytes) that triggers a background spill.
pub const SPILL_ENTRIES: usize = 64 << 10;
pub const SPILL_BYTES: usize = 32 << 20;
/// A committing thread spills inline once the overlay is this many times over its limit
/// (the background spill is falling behind): back-pressure on writers.
const SPILL_HARD_FACTOR: usize = 4;
/// Approximate per-entry memory of the overlay beyond key and value bytes.
const ENTRY_OVERHEAD: usize = 64;

pub(crate) type Snapshot = Arc<ReadOnlyTable<&'static [u8], &'static [u8]>>;

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
    spills: AtomicU64,
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
    pub spills: u64,
    pub overlay_entries: u64,
    pub replayed_records: u64,
    pub replay_skipped: u64,
    pub replay_bytes: u64,
    pub checkpoint_errors: u64,
    pub seq: u64,
    pub durable_seq: u64,
    pub last_error: Option<String>,
}

/// Requests to the background thread.
#[derive(Default)]
struct Signal {
    stop: bool,
    spill: bool,
}

pub struct Store {
    pub path: String,
    pub immediate: bool,
    interval: Duration,
    spill_entries: usize,
    spill_bytes: usize,
    pub(crate) db: RwLock<Option<Database>>,
    pub(crate) overlay: RwLock<Overlay>,
    pub(crate) snap: Mutex<Option<(u64, Snapshot)>>,
    pub(crate) generation: AtomicU64,
    writer: Mutex<Writer>,
    /// Serialises redb write transactions (spills and checkpoints).
    spill: Mutex<()>,
    closed: AtomicBool,
    signal: Mutex<Signal>,
    signal_cv: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
}

/// A commit being built: its effects so far, readable through [`Txn::with_current`].
pub struct Txn<'s> {
    store: &'s Store,
    db: &'s Database,
    rec: &'s mut RecordBuf,
    pending: Map,
    bytes: usize,
}

impl Txn<'_> {
    /// Call `f` with the current value of `key` as this commit sees it.
    fn with_current<T>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> Result<T> {
        if let Some(v) = self.pending.get(key) {
            return Ok(f(v.as_deref()));
        }
        let snap = {
            let ov = rlock(&self.store.overlay);
            if let Some(v) = ov.lookup(key) {
                return Ok(f(v));
            }
            self.store.snapshot(self.db)?
        };
        let got = snap.get(key)?;
        Ok(f(got.as_ref().map(|g| g.value())))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.rec.put(key, value);
        self.bytes += key.len() + value.len() + ENTRY_OVERHEAD;
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Delete `key` if it exists; return whether it did.
    fn del(&mut self, key: &[u8]) -> Result<bool> {
        let existed = self.with_current(key, |v| v.is_some())?;
        if existed {
            self.rec.del(key);
            self.bytes += key.len() + ENTRY_OVERHEAD;
            self.pending.insert(key.to_vec(), None);
        }
        Ok(existed)
    }
}

/// What a committing thread must do after releasing `writer`.
#[derive(PartialEq, Eq)]
enum After {
    Nothing,
    SpillInline,
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
    /// Open or create the store at `path`, replaying its write-ahead log. The overlay is
    /// spilled into redb in the background once it holds `spill_entries` entries or about
    /// `spill_bytes` bytes.
    pub fn open(
        path: PathBuf,
        immediate: bool,
        flush_interval_ms: u64,
        create: bool,
        spill_entries: usize,
        spill_bytes: usize,
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
            spill_entries: spill_entries.max(1),
            spill_bytes: spill_bytes.max(1),
            db: RwLock::new(Some(db)),
            overlay: RwLock::new(Overlay::default()),
            snap: Mutex::new(None),
            generation: AtomicU64::new(0),
            writer: Mutex::new(Writer {
                wal: log,
                buf: RecordBuf::default(),
                seq,
                durable_seq: seq,
                dirty: false,
            }),
            spill: Mutex::new(()),
            closed: AtomicBool::new(false),
            signal: Mutex::new(Signal::default()),
            signal_cv: Condvar::new(),
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
        // The background thread spills the overlay on request and, if `flush_interval_ms`
        // is not 0, checkpoints on that interval.
        let bg = Arc::clone(&store);
        let handle = std::thread::Builder::new()
            .name("nexusfs-metastore-flusher".into())
            .spawn(move || bg.background_loop())?;
        *lock(&store.flusher) = Some(handle);
        Ok(store)
    }

    fn record_error(&self, what: &str, e: &Error) {
        self.counters
            .checkpoint_errors
            .fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(format!("{what}: {e:?}"));
    }

    fn background_loop(&self) {
        let mut last_checkpoint = Instant::now();
        let mut sig = lock(&self.signal);
        loop {
            if sig.stop {
                return;
            }
            if !sig.spill {
                sig = if self.interval.is_zero() {
                    self.signal_cv.wait(sig).unwrap_or_else(|e| e.into_inner())
                } else {
                    let wait = self.interval.saturating_sub(last_checkpoint.elapsed());
                    self.signal_cv
                        .wait_timeout(sig, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                };
                if sig.stop {
                    return;
                }
            }
            let spill = std::mem::take(&mut sig.spill);
            drop(sig);
            if spill {
                if let Err(e) = self.spill_overlay() {
                    self.record_error("background spill", &e);
                }
            }
            if !self.interval.is_zero() && last_checkpoint.elapsed() >= self.interval {
                last_checkpoint = Instant::now();
                if let Err(e) = self.checkpoint_if_dirty() {
                    self.record_error("background checkpoint", &e);
                }
            }
            sig = lock(&self.signal);
        }
    }

    fn checkpoint_if_dirty(&self) -> Result<()> {
        if !lock(&self.writer).dirty {
            return Ok(());
        }
        // Move the bulk of the overlay into redb without stopping writers, then
        // checkpoint the remainder under `writer`.
        self.spill_overlay()?;
        let mut w = lock(&self.writer);
        if !w.dirty {
            return Ok(());
        }
        match self.checkpoint_locked(&mut w) {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }

    /// Write the overlay into redb (non-durably) and drop it from memory. Commits go on
    /// meanwhile: they land in a fresh active layer.
    fn spill_overlay(&self) -> Result<()> {
        let _spill = lock(&self.spill);
        let db = rlock(&self.db);
        let Some(db) = db.as_ref() else {
            return Ok(());
        };
        let frozen = {
            let mut ov = wlock(&self.overlay);
            if ov.frozen.is_none() {
                if ov.active.is_empty() {
                    return Ok(());
                }
                let active = std::mem::take(&mut ov.active);
                ov.active_bytes = 0;
                ov.frozen = Some(Arc::new(active));
            }
            // A layer left by a failed spill is retried first.
            Arc::clone(ov.frozen.as_ref().expect("frozen layer"))
        };
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(DATA)?;
            apply_map(&mut table, &frozen)?;
        }
        txn.commit()?;
        let dropped = {
            let mut ov = wlock(&self.overlay);
            self.generation.fetch_add(1, Ordering::AcqRel);
            *lock(&self.snap) = None;
            ov.frozen.take()
        };
        drop(dropped);
        drop(frozen); // the last reference: freed outside the overlay lock
        self.counters.spills.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Checkpoint under `writer`: overlay and log sequence into redb in one durable
    /// commit, then clear the overlay and empty the log.
    fn checkpoint_locked(&self, w: &mut Writer) -> Result<()> {
        let _spill = lock(&self.spill);
        let db = rlock(&self.db);
        let db = db.as_ref().ok_or(Error::Closed)?;
        if !w.dirty && w.wal.len() == 0 {
            return Ok(());
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            // Only readers can hold the overlay meanwhile: `writer` and `spill` are ours.
            let ov = rlock(&self.overlay);
            let mut table = txn.open_table(DATA)?;
            if let Some(frozen) = ov.frozen.as_deref() {
                apply_map(&mut table, frozen)?;
            }
            apply_map(&mut table, &ov.active)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_WAL_SEQ, w.seq)?;
        }
        txn.commit()?;
        let dropped = {
            let mut ov = wlock(&self.overlay);
            self.generation.fetch_add(1, Ordering::AcqRel);
            *lock(&self.snap) = None;
            ov.active_bytes = 0;
            (std::mem::take(&mut ov.active), ov.frozen.take())
        };
        drop(dropped);
        w.durable_seq = w.seq;
        w.dirty = false;
        w.wal.reset()?;
        w.buf.shrink();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Make every returned mutation durable now.
    pub fn flush(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.spill_overlay()?;
        let mut w = lock(&self.writer);
        self.checkpoint_locked(&mut w)
    }

    /// Stop the background thread, checkpoint and release the file. Idempotent. If the
    /// final checkpoint fails the file is still released and the log kept for the next
    /// open.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            lock(&self.signal).stop = true;
            self.signal_cv.notify_all();
        }
        if let Some(handle) = lock(&self.flusher).take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        let mut w = lock(&self.writer);
        let result = match self.checkpoint_locked(&mut w) {
            Err(Error::Closed) => Ok(()),
            other => other,
        };
        let _spill = lock(&self.spill);
        let mut dbw = wlock(&self.db);
        let dropped = std::mem::take(&mut *wlock(&self.overlay));
        drop(dropped);
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

    /// Run `f` as one commit: `f` validates against the merged view and records its
    /// effects in the [`Txn`]; if it recorded nothing, nothing is committed. Otherwise the
    /// effects are logged, then applied to the overlay.
    fn write<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        let (value, after) = {
            let dbg = rlock(&self.db);
            let db = dbg.as_ref().ok_or(Error::Closed)?;
            let seq = w.seq + 1;
            w.buf.begin(seq);
            let mut txn = Txn {
                store: self,
                db,
                rec: &mut w.buf,
                pending: Map::new(),
                bytes: 0,
            };
            let value = f(&mut txn)?;
            let Txn { pending, bytes, .. } = txn;
            if w.buf.is_empty() {
                return Ok(value);
            }
            let Some(record) = w.buf.finish() else {
                return Err(Error::Value(
                    "commit too large for the write-ahead log (4 GiB)".into(),
                ));
            };
            let at = w.wal.len();
            if let Err(e) = w.wal.append(record) {
                let _ = w.wal.rollback(at);
                return Err(e.into());
            }
            // Logged: now visible. Nothing below can fail.
            let (entries, total) = {
                let mut ov = wlock(&self.overlay);
                if ov.active.is_empty() {
                    ov.active = pending;
                } else if pending.len() > ov.active.len() {
                    let older = std::mem::replace(&mut ov.active, pending);
                    for (k, v) in older {
                        ov.active.entry(k).or_insert(v);
                    }
                } else {
                    ov.active.extend(pending);
                }
                ov.active_bytes += bytes;
                (ov.active.len(), ov.active_bytes)
            };
            w.seq = seq;
            w.dirty = true;
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            let after = if entries >= self.spill_entries || total >= self.spill_bytes {
                if entries >= self.spill_entries * SPILL_HARD_FACTOR
                    || total >= self.spill_bytes.saturating_mul(SPILL_HARD_FACTOR)
                {
                    After::SpillInline
                } else {
                    lock(&self.signal).spill = true;
                    self.signal_cv.notify_all();
                    After::Nothing
                }
            } else {
                After::Nothing
            };
            (value, after)
        };
        if w.wal.len() > WAL_LIMIT {
            // The commit itself succeeded; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint_locked(w) {
                self.record_error("size-triggered checkpoint", &e);
            }
        }
        drop(guard);
        if after == After::SpillInline {
            if let Err(e) = self.spill_overlay() {
                self.record_error("inline spill", &e);
            }
        }
        Ok(value)
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(|t| {
            t.put(key, value);
            Ok(())
        })
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.write(|t| t.del(key))
    }

    pub fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool> {
        self.write(|t| {
            if !t.with_current(key, |cur| cur == expected)? {
                return Ok(false);
            }
            match new {
                Some(v) => t.put(key, v),
                None => {
                    t.del(key)?;
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
        self.write(|t| {
            for (key, expected) in checks {
                let key = key.as_ref();
                let expected = expected.as_ref().map(|e| e.as_ref());
                if !t.with_current(key, |cur| cur == expected)? {
                    return Err(Error::Conflict(format!(
                        "batch check failed for key {}",
                        bytes_repr(key)
                    )));
                }
            }
            for key in deletes {
                t.del(key.as_ref())?;
            }
            for (key, value) in puts {
                t.put(key.as_ref(), value.as_ref());
            }
            Ok(())
        })
    }

    pub fn stats(&self) -> Stats {
        let w = lock(&self.writer);
        let overlay_entries = rlock(&self.overlay).len() as u64;
        let c = &self.counters;
        Stats {
            wal_bytes: w.wal.len(),
            wal_fsyncs: w.wal.fsyncs,
            commits: c.commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            spills: c.spills.load(Ordering::Relaxed),
            overlay_entries,
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
