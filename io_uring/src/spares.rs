//! A core's spare byte buffers: connections give a buffer back when they have nothing in it and
//! take one when bytes arrive or are to be sent, so an idle connection holds none
//! (docs/design.md in the server, "Idle connections"). One pool per core and purpose, in a
//! `thread_local!` (each core is one thread; nothing here crosses cores).
//!
//! The pool is bounded by the bytes it holds, not only by a count: a core whose connections are
//! all busy at once (a hundred QoS 1 publishers each waiting for its commit with a buffer in
//! hand) gives back as many buffers as it took, and a count of a few dozen would free and
//! allocate the rest on every round (bench/README.md, "QoS 1 without the disk").

use std::cell::{Cell, RefCell};

/// At most `count_max` buffers of at most `bytes_max` capacity each, holding at most
/// `held_max` bytes of capacity together; a buffer past any of these is freed.
pub struct Spares {
    buffers: RefCell<Vec<Vec<u8>>>,
    count_max: usize,
    bytes_max: usize,
    held: Cell<usize>,
    held_max: usize,
}

impl Spares {
    pub const fn new(count_max: usize, bytes_max: usize, held_max: usize) -> Self {
        Spares {
            buffers: RefCell::new(Vec::new()),
            count_max,
            bytes_max,
            held: Cell::new(0),
            held_max,
        }
    }

    /// An empty spare buffer, or a new one of `capacity`.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        match self.buffers.borrow_mut().pop() {
            Some(buf) => {
                self.held
                    .set(self.held.get().saturating_sub(buf.capacity()));
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buf` (emptied) for the next taker when it is within the size and there is room.
    pub fn give_back(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity == 0 || capacity > self.bytes_max {
            return;
        }
        let held = self.held.get() + capacity;
        let mut buffers = self.buffers.borrow_mut();
        if buffers.len() < self.count_max && held <= self.held_max {
            buf.clear();
            buffers.push(buf);
            self.held.set(held);
        }
    }

    /// Bytes of capacity the spare buffers hold now.
    pub fn held_bytes(&self) -> usize {
        self.held.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_buffers_within_its_count_and_byte_bounds() {
        let spares = Spares::new(3, 1024, 2048);
        spares.give_back(Vec::with_capacity(2048)); // over the size of one: freed
        assert_eq!(spares.held_bytes(), 0);
        for _ in 0..4 {
            spares.give_back(Vec::with_capacity(1024));
        }
        // Two fit the byte bound although the count allows three.
        assert_eq!(spares.held_bytes(), 2048);
        let taken = spares.take(16);
        assert_eq!(taken.capacity(), 1024);
        assert_eq!(spares.held_bytes(), 1024);
        let _ = spares.take(16);
        assert_eq!(spares.held_bytes(), 0);
        // Empty: a new buffer of the capacity asked for.
        assert_eq!(spares.take(16).capacity(), 16);
    }
}
