//! The stored form of a record: a fixed header, then the rkyv-archived value.
//!
//! ```text
//! offset  size  field
//! 0       1     format (1)
//! 1       1     flags: bit 0 deleted (tombstone, no body), bit 1 has expiry
//! 2       2     reserved (0)
//! 4       4     origin node id, u32 little-endian
//! 8       8     version, f64 little-endian (HLC ms since the epoch)
//! 16      8     expires at, f64 little-endian ms (0 when none)
//! 24      ..    archived `Value` (absent for tombstones)
//! ```

use super::StoreError;

pub const HEADER_BYTES: usize = 24;
const FORMAT: u8 = 1;
const FLAG_DELETED: u8 = 1;
const FLAG_EXPIRES: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub version: f64,
    pub expires_at: Option<f64>,
    pub deleted: bool,
    pub origin: u32,
}

impl Header {
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.deleted {
            flags |= FLAG_DELETED;
        }
        if self.expires_at.is_some() {
            flags |= FLAG_EXPIRES;
        }
        out.extend_from_slice(&[FORMAT, flags, 0, 0]);
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.expires_at.unwrap_or(0.0).to_le_bytes());
    }

    /// Splits a stored entry into its header and the archived body.
    pub fn read(entry: &[u8]) -> Result<(Header, &[u8]), StoreError> {
        if entry.len() < HEADER_BYTES || entry[0] != FORMAT {
            return Err(StoreError::Corrupt("record header".into()));
        }
        let flags = entry[1];
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&entry[at..at + 8]);
            f64::from_le_bytes(b)
        };
        let mut origin = [0u8; 4];
        origin.copy_from_slice(&entry[4..8]);
        let header = Header {
            version: word(8),
            expires_at: (flags & FLAG_EXPIRES != 0).then(|| word(16)),
            deleted: flags & FLAG_DELETED != 0,
            origin: u32::from_le_bytes(origin),
        };
        Ok((header, &entry[HEADER_BYTES..]))
    }

    /// Live means: not a tombstone and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: f64) -> bool {
        self.is_live_with(|| now_ms)
    }

    /// [`Header::is_live`] asking for the time only when the record has an expiry time.
    pub fn is_live_with(&self, now_ms: impl FnOnce() -> f64) -> bool {
        !self.deleted && self.expires_at.is_none_or(|t| t > now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for h in [
            Header {
                version: 1718000000123.5,
                expires_at: None,
                deleted: false,
                origin: 0,
            },
            Header {
                version: 1.0,
                expires_at: Some(2.5),
                deleted: true,
                origin: 7,
            },
        ] {
            let mut out = Vec::new();
            h.write(&mut out);
            out.extend_from_slice(b"body");
            let (back, body) = Header::read(&out).unwrap();
            assert_eq!(back, h);
            assert_eq!(body, b"body");
        }
        assert!(Header::read(b"short").is_err());
    }
}
