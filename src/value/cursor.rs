//! The byte cursor under the binary body decoders (CBOR and MessagePack): bounded reads, the
//! value and depth limits, the trailing-bytes check and map-key conversion. Each format wraps it
//! and adds only its own grammar; it never decides what a byte means.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::{DecodeError, DecodeLimits, Problem, Value};

pub(crate) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
    pub limits: DecodeLimits,
    values: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`, refused when the body is over `bytes_max`.
    pub fn new(bytes: &'a [u8], limits: &DecodeLimits) -> Result<Cursor<'a>, DecodeError> {
        let limits = limits.clamped();
        if bytes.len() > limits.bytes_max {
            return Err(DecodeError::new(
                limits.bytes_max,
                Problem::BytesLimit {
                    bytes_max: limits.bytes_max,
                },
            ));
        }
        Ok(Cursor {
            bytes,
            pos: 0,
            limits,
            values: 0,
        })
    }

    /// The body must hold exactly one data item: `value` if nothing follows it.
    pub fn finish(&self, value: Value) -> Result<Value, DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(DecodeError::new(self.pos, Problem::TrailingBytes));
        }
        Ok(value)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let bytes = self.bytes;
        match self.pos.checked_add(n).filter(|&e| e <= bytes.len()) {
            Some(end) => {
                let slice = &bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => Err(DecodeError::new(bytes.len(), Problem::UnexpectedEnd)),
        }
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Bytes not yet read: every item takes at least one, so no count read from the body may
    /// reserve more than this.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Counts one more value against `values_max`.
    pub fn count_value(&mut self, at: usize) -> Result<(), DecodeError> {
        self.values += 1;
        if self.values > self.limits.values_max {
            return Err(DecodeError::new(
                at,
                Problem::ValuesLimit {
                    values_max: self.limits.values_max,
                },
            ));
        }
        Ok(())
    }

    /// Takes back one count: a CBOR tag and its content are one value.
    pub fn uncount_value(&mut self) {
        self.values = self.values.saturating_sub(1);
    }

    pub fn check_depth(&self, depth: usize, at: usize) -> Result<(), DecodeError> {
        if depth >= self.limits.depth_max {
            return Err(DecodeError::new(
                at,
                Problem::DepthLimit {
                    depth_max: self.limits.depth_max,
                },
            ));
        }
        Ok(())
    }
}

/// A decoded map key as the object key it becomes: text as is, integers in decimal.
pub(crate) fn map_key(key: Value, at: usize) -> Result<String, DecodeError> {
    match key {
        Value::String(s) => Ok(s),
        Value::Int(i) => Ok(itoa::Buffer::new().format(i).to_owned()),
        Value::BigInt(b) => {
            let mut text = Vec::new();
            b.as_ref().write_decimal(&mut text);
            Ok(String::from_utf8(text).unwrap_or_default())
        }
        _ => Err(DecodeError::new(
            at,
            Problem::Unsupported("map key that is not text or an integer"),
        )),
    }
}

/// A cursor read by format `F`'s grammar: each format writes `impl Grammar<'_, F>` with its
/// own methods and reaches the cursor's through `Deref`.
pub(crate) struct Grammar<'a, F>(Cursor<'a>, PhantomData<F>);

impl<'a, F> Grammar<'a, F> {
    pub fn new(cursor: Cursor<'a>) -> Self {
        Grammar(cursor, PhantomData)
    }
}

impl<'a, F> Deref for Grammar<'a, F> {
    type Target = Cursor<'a>;
    fn deref(&self) -> &Cursor<'a> {
        &self.0
    }
}

impl<F> DerefMut for Grammar<'_, F> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
