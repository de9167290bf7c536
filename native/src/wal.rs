//! The write-ahead log in front of redb.
//!
//! redb commits made with `Durability::None` live only in the memory of this process until
//! a later `Durability::Immediate` commit, so a process crash would lose them. Every
//! mutating commit therefore also appends one record to `<path>.wal` with `write(2)`:
//!
//! ```text
//! u32 LE  payload length (> 0; 0 marks the end of the log)
//! u32 LE  crc32 of (seq bytes ++ payload)
//! u64 LE  sequence number (consecutive, starting after the last checkpoint)
//! payload: ops, each  u8 tag (1 = put, 2 = delete), u32 LE key length, key,
//!                     [put only: u32 LE value length, value]
//! ```
//!
//! A record holds the *resolved* effects of one commit (a compare-and-swap is logged as
//! the put or delete it performed), so replaying a record twice is harmless: replay is
//! idempotent.
//!
//! Durability modes:
//!
//! * deferred: the record is written with `pwrite(2)` and no fsync. The bytes sit in the
//!   OS page cache, so they survive a crash of the process (not power loss). A checkpoint
//!   (a durable redb commit) makes them durable and then truncates the log.
//! * immediate: the record is written and `fdatasync`ed before the call returns. The file
//!   is preallocated with zeros in 4 MiB steps (synced once per step), so the per-commit
//!   `fdatasync` never has to update the file size. After a checkpoint the log is
//!   reused from offset 0 instead of being truncated; stale records past the live tail are
//!   rejected by the sequence-number chain (see [`parse`]).
//!
//! Recovery: [`parse`] walks records from offset 0 and stops at the first torn record
//! (short, bad crc, undecodable payload) or at the first break in the sequence chain.
//! Records whose sequence number is at most the durable sequence stored in redb (by the
//! last checkpoint) are skipped; the rest are applied in order.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes of the record header: length, crc32, sequence number.
pub const HEADER: usize = 16;
const OP_PUT: u8 = 1;
const OP_DEL: u8 = 2;
/// Immediate mode grows the preallocated log in steps of this many bytes.
const GROW_STEP: u64 = 4 << 20;

/// One effect of a logged commit, borrowing from the log's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Del(&'a [u8]),
}

/// A record being built in a reusable buffer.
#[derive(Default)]
pub struct RecordBuf {
    buf: Vec<u8>,
}

impl RecordBuf {
    /// Start a new record with sequence number `seq`, discarding any previous one.
    pub fn begin(&mut self, seq: u64) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.buf.reserve(9 + key.len() + value.len());
        self.buf.push(OP_PUT);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn del(&mut self, key: &[u8]) {
        self.buf.push(OP_DEL);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
    }

    /// Whether any op was added since `begin`.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER
    }

    /// Fill in length and checksum; return the encoded record, or `None` if the payload
    /// does not fit the 32-bit length field.
    pub fn finish(&mut self) -> Option<&[u8]> {
        let payload_len = u32::try_from(self.buf.len() - HEADER).ok()?;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Some(&self.buf)
    }

    /// Release memory after an unusually large record.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > (1 << 20) {
            self.buf = Vec::new();
        }
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Decode the ops of one payload; `None` if it is malformed.
pub fn decode_ops(payload: &[u8]) -> Option<Vec<Op<'_>>> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    while at < payload.len() {
        let tag = payload[at];
        at += 1;
        let klen = read_u32(payload, at)? as usize;
        at += 4;
        let key = payload.get(at..at.checked_add(klen)?)?;
        at += klen;
        match tag {
            OP_PUT => {
                let vlen = read_u32(payload, at)? as usize;
                at += 4;
                let value = payload.get(at..at.checked_add(vlen)?)?;
                at += vlen;
                ops.push(Op::Put(key, value));
            }
            OP_DEL => ops.push(Op::Del(key)),
            _ => return None,
        }
    }
    Some(ops)
}

/// Records of a log that must be replayed, plus what the walk saw.
pub struct Parsed<'a> {
    /// `(seq, ops)` of every record with `seq > durable_seq`, in order.
    pub records: Vec<(u64, Vec<Op<'a>>)>,
    /// Records skipped because a checkpoint already made them durable.
    pub skipped: u64,
    /// Offset where the walk stopped.
    pub end: usize,
}

/// Walk the log and return the records to replay on top of a store whose last checkpoint
/// covered sequence numbers up to `durable_seq`.
///
/// Stops at the first record that is torn (short, zero length, bad crc, undecodable
/// payload), that does not follow its predecessor's sequence number, or that would leave a
/// gap after `durable_seq`. Never fails: whatever follows the stop point is ignored.
pub fn parse(data: &[u8], durable_seq: u64) -> Parsed<'_> {
    let mut records = Vec::new();
    let mut skipped = 0u64;
    let mut at = 0usize;
    let mut prev: Option<u64> = None;
    let mut next_apply = durable_seq + 1;
    while let Some(len) = read_u32(data, at) {
        let len = len as usize;
        if len == 0 {
            break;
        }
        let Some(crc) = read_u32(data, at + 4) else {
            break;
        };
        let Some(body) = at
            .checked_add(HEADER + len)
            .and_then(|end| data.get(at + 8..end))
        else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        if prev.is_some_and(|p| p.checked_add(1) != Some(seq)) {
            break;
        }
        if seq > next_apply {
            break;
        }
        let Some(ops) = decode_ops(&body[8..]) else {
            break;
        };
        if seq == next_apply {
            records.push((seq, ops));
            next_apply += 1;
        } else {
            skipped += 1;
        }
        prev = Some(seq);
        at += HEADER + len;
    }
    Parsed {
        records,
        skipped,
        end: at,
    }
}

/// The open log file and its write position.
pub struct Wal {
    file: File,
    pos: u64,
    /// Immediate mode: bytes known to be allocated and written (zeros or records).
    alloc_end: u64,
    immediate: bool,
    /// Number of `fdatasync` calls made on the log.
    pub fsyncs: u64,
}

impl Wal {
    /// Open (creating if needed) the log at `path` and return it with its whole content.
    /// The write position is 0; call [`Wal::reset`] after replaying the content.
    pub fn open(path: &Path, immediate: bool) -> io::Result<(Wal, Vec<u8>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let alloc_end = data.len() as u64;
        Ok((
            Wal {
                file,
                pos: 0,
                alloc_end,
                immediate,
                fsyncs: 0,
            },
            data,
        ))
    }

    /// Bytes of live records in the log.
    pub fn len(&self) -> u64 {
        self.pos
    }

    fn grow(&mut self, needed: u64) -> io::Result<()> {
        let target = needed.div_ceil(GROW_STEP) * GROW_STEP;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.alloc_end;
        while at < target {
            let n = ((target - at) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.fsyncs += 1;
        self.alloc_end = target;
        Ok(())
    }

    /// Append an encoded record; in immediate mode it is on stable storage on return.
    /// On error the log position is unchanged (the caller must not commit).
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let end = self.pos + record.len() as u64;
        if self.immediate && end + HEADER as u64 > self.alloc_end {
            self.grow(end + HEADER as u64)?;
        }
        self.file.write_all_at(record, self.pos)?;
        if self.immediate {
            self.file.sync_data()?;
            self.fsyncs += 1;
        }
        self.pos = end;
        Ok(())
    }

    /// Undo the last append after its redb commit failed: mark `to` as the end of the log.
    pub fn rollback(&mut self, to: u64) -> io::Result<()> {
        self.pos = to;
        if self.immediate {
            self.file.write_all_at(&[0u8; HEADER], to)?;
            self.file.sync_data()?;
            self.fsyncs += 1;
            Ok(())
        } else {
            self.file.set_len(to)
        }
    }

    /// Empty the log after a checkpoint made every record durable in redb. Deferred mode
    /// truncates the file; immediate mode keeps the preallocated file and restarts at 0
    /// (the next record's sequence number tells it apart from stale ones).
    pub fn reset(&mut self) -> io::Result<()> {
        if !self.immediate {
            self.file.set_len(0)?;
        }
        self.pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, ops: &[Op<'_>]) -> Vec<u8> {
        let mut b = RecordBuf::default();
        b.begin(seq);
        for op in ops {
            match op {
                Op::Put(k, v) => b.put(k, v),
                Op::Del(k) => b.del(k),
            }
        }
        b.finish().unwrap().to_vec()
    }

    #[test]
    fn roundtrip_and_chain() {
        let mut log = rec(5, &[Op::Put(b"a", b"1"), Op::Del(b"b")]);
        log.extend(rec(6, &[Op::Put(b"", b"")]));
        log.extend(rec(7, &[Op::Del(b"\xff")]));
        let p = parse(&log, 4);
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[0].1, vec![Op::Put(b"a", b"1"), Op::Del(b"b")]);
        assert_eq!(p.end, log.len());
        // Already checkpointed up to 6: only 7 is replayed.
        let p = parse(&log, 6);
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.skipped, 2);
        // A gap after the durable sequence stops the walk.
        assert!(parse(&log, 2).records.is_empty());
    }

    #[test]
    fn torn_and_stale_tails() {
        let mut log = rec(1, &[Op::Put(b"a", b"1")]);
        let first = log.len();
        log.extend(rec(2, &[Op::Put(b"b", b"2")]));
        for cut in first..log.len() {
            let p = parse(&log[..cut], 0);
            assert_eq!(p.records.len(), 1, "cut at {cut}");
        }
        let mut garbled = log.clone();
        let last = garbled.len() - 1;
        garbled[last] ^= 0x55;
        assert_eq!(parse(&garbled, 0).records.len(), 1);
        // A stale record from an older generation after the live tail is not replayed.
        let mut stale = log.clone();
        stale.extend(rec(1, &[Op::Put(b"old", b"x")]));
        assert_eq!(parse(&stale, 0).records.len(), 2);
    }
}
