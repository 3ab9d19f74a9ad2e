//! CRIU's `stats-dump` image, parsed by hand.
//!
//! Layout (criu/image.c, criu/include/magic.h, images/stats.proto of CRIU 4.1.1): a u32
//! `IMG_SERVICE_MAGIC` (0x55105940), a u32 `STATS_MAGIC` (0x57093306), then one entry: a u32
//! length followed by that many bytes of a protobuf `stats_entry`, whose field 1 is a
//! `dump_stats_entry`. All integers little-endian. Times are microseconds (criu/stats.c
//! `encode_time`: `tv_sec * USEC_PER_SEC + tv_usec`).

use std::path::Path;

/// Head magic of CRIU's service images (stats, irmap cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Magic of the stats images.
pub const STATS_MAGIC: u32 = 0x5709_3306;
/// File name of the dump statistics inside an image directory.
pub const STATS_DUMP_FILE: &str = "stats-dump";

/// Errors of reading `stats-dump`.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The file could not be read.
    #[error("failed to read CRIU statistics {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a stats image.
    #[error("failed to parse CRIU statistics: {0}")]
    Format(String),
}

impl StatsError {
    /// Stable category for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            StatsError::Read { .. } => "StatsRead",
            StatsError::Format(_) => "StatsFormat",
        }
    }
}

/// The fields of `dump_stats_entry` Lodger uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Microseconds spent freezing the tasks (field 1).
    pub freezing_time_us: u64,
    /// Microseconds the tasks stayed frozen (field 2).
    pub frozen_time_us: u64,
    /// Microseconds spent collecting memory (field 3).
    pub memdump_time_us: u64,
    /// Microseconds spent writing memory (field 4).
    pub memwrite_time_us: u64,
    /// Pages scanned (field 5).
    pub pages_scanned: u64,
    /// Pages skipped because the parent image has them (field 6).
    pub pages_skipped_parent: u64,
    /// Pages written to the image (field 7).
    pub pages_written: u64,
    /// Pages left for lazy transfer (field 9).
    pub pages_lazy: u64,
}

impl DumpStats {
    /// Milliseconds the job was stopped by the dump: freezing plus frozen time, rounded up.
    pub fn freeze_ms(&self) -> u64 {
        (self.freezing_time_us + self.frozen_time_us).div_ceil(1000)
    }
}

/// Reads `<dir>/stats-dump`.
pub fn read_dump_stats(dir: &Path) -> Result<DumpStats, StatsError> {
    let path = dir.join(STATS_DUMP_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StatsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_dump_stats(&bytes)
}

/// Parses the bytes of a `stats-dump` image.
pub fn parse_dump_stats(bytes: &[u8]) -> Result<DumpStats, StatsError> {
    let word = |at: usize| -> Result<u32, StatsError> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| StatsError::Format(format!("truncated at byte {at}")))
    };
    let head = word(0)?;
    if head != IMG_SERVICE_MAGIC {
        return Err(StatsError::Format(format!(
            "head magic {head:#x} is not CRIU's service magic {IMG_SERVICE_MAGIC:#x}"
        )));
    }
    let magic = word(4)?;
    if magic != STATS_MAGIC {
        return Err(StatsError::Format(format!(
            "magic {magic:#x} is not the stats magic {STATS_MAGIC:#x}"
        )));
    }
    let len = word(8)? as usize;
    let entry = bytes
        .get(12..12 + len)
        .ok_or_else(|| StatsError::Format(format!("entry of {len} bytes is truncated")))?;
    let mut dump = None;
    for field in Fields::new(entry) {
        let (number, value) = field?;
        if let (1, Value::Bytes(b)) = (number, value) {
            dump = Some(b);
        }
    }
    let dump = dump.ok_or_else(|| StatsError::Format("no dump statistics in entry".into()))?;
    let mut stats = DumpStats::default();
    for field in Fields::new(dump) {
        let (number, value) = field?;
        let Value::Varint(v) = value else { continue };
        match number {
            1 => stats.freezing_time_us = v,
            2 => stats.frozen_time_us = v,
            3 => stats.memdump_time_us = v,
            4 => stats.memwrite_time_us = v,
            5 => stats.pages_scanned = v,
            6 => stats.pages_skipped_parent = v,
            7 => stats.pages_written = v,
            9 => stats.pages_lazy = v,
            _ => {}
        }
    }
    Ok(stats)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterator over the (field number, value) pairs of a protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, StatsError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| StatsError::Format("truncated varint".into()))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StatsError::Format("varint longer than 10 bytes".into()))
    }

    fn next_field(&mut self) -> Result<(u64, Value<'a>), StatsError> {
        let key = self.varint()?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| StatsError::Format("length overflows".into()))?;
                let bytes = self
                    .buf
                    .get(self.pos..self.pos.saturating_add(len))
                    .ok_or_else(|| StatsError::Format("truncated field".into()))?;
                self.pos += len;
                Value::Bytes(bytes)
            }
            5 => self.skip(4)?,
            wire => {
                return Err(StatsError::Format(format!(
                    "unsupported protobuf wire type {wire}"
                )));
            }
        };
        Ok((number, value))
    }

    fn skip(&mut self, n: usize) -> Result<Value<'a>, StatsError> {
        if self.pos + n > self.buf.len() {
            return Err(StatsError::Format("truncated fixed field".into()));
        }
        self.pos += n;
        Ok(Value::Fixed)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), StatsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            self.pos = self.buf.len();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn image(dump: &[u8]) -> Vec<u8> {
        let mut entry = vec![0x0a];
        varint(dump.len() as u64, &mut entry);
        entry.extend_from_slice(dump);
        let mut out = Vec::new();
        out.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
        out.extend_from_slice(&STATS_MAGIC.to_le_bytes());
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry);
        out
    }

    /// Hand-encoded bytes in CRIU's layout decode to the right fields; if this breaks, freeze
    /// times in Checkpoint status are wrong.
    #[test]
    fn parses_hand_encoded_dump_stats() {
        let mut dump = Vec::new();
        for (field, value) in [
            (1u64, 1_500u64),
            (2, 250_000),
            (3, 7),
            (4, 8),
            (5, 300),
            (6, 0),
            (7, 65_536),
            (9, 12),
        ] {
            varint(field << 3, &mut dump);
            varint(value, &mut dump);
        }
        // An unknown fixed64 field must be skipped, not misread.
        varint((20 << 3) | 1, &mut dump);
        dump.extend_from_slice(&[0; 8]);
        let stats = parse_dump_stats(&image(&dump)).unwrap();
        assert_eq!(stats.freezing_time_us, 1_500);
        assert_eq!(stats.frozen_time_us, 250_000);
        assert_eq!(stats.pages_written, 65_536);
        assert_eq!(stats.pages_lazy, 12);
        assert_eq!(stats.freeze_ms(), 252);
    }

    /// Corrupt images are refused with a reason instead of yielding made-up numbers.
    #[test]
    fn refuses_wrong_magic_and_truncation() {
        let good = image(&[0x08, 0x01]);
        let mut bad_magic = good.clone();
        bad_magic[4] ^= 0xff;
        assert!(
            parse_dump_stats(&bad_magic)
                .unwrap_err()
                .to_string()
                .contains("stats magic")
        );
        assert!(parse_dump_stats(&good[..good.len() - 1]).is_err());
        assert!(parse_dump_stats(&good[..6]).is_err());
        // No dump entry at all (only restore statistics, field 2).
        assert!(parse_dump_stats(&image(&[])).is_ok());
        let restore_only = {
            let mut out = Vec::new();
            out.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
            out.extend_from_slice(&STATS_MAGIC.to_le_bytes());
            out.extend_from_slice(&2u32.to_le_bytes());
            out.extend_from_slice(&[0x12, 0x00]);
            out
        };
        assert!(
            parse_dump_stats(&restore_only)
                .unwrap_err()
                .to_string()
                .contains("no dump")
        );
    }
}
