//! A core's spare byte buffers: connections give a buffer back when they have nothing in it and
//! take one when bytes arrive or are to be sent, so an idle connection holds none
//! (docs/design.md in the server, "Idle connections"). One pool per core and purpose, in a
//! `thread_local!` (each core is one thread; nothing here crosses cores).

use std::cell::RefCell;

/// At most `count_max` buffers of at most `bytes_max` capacity each; a larger one is freed.
pub struct Spares {
    buffers: RefCell<Vec<Vec<u8>>>,
    count_max: usize,
    bytes_max: usize,
}

impl Spares {
    pub const fn new(count_max: usize, bytes_max: usize) -> Self {
        Spares {
            buffers: RefCell::new(Vec::new()),
            count_max,
            bytes_max,
        }
    }

    /// An empty spare buffer, or a new one of `capacity`.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Keeps `buf` (emptied) for the next taker when it is within the size and there is room.
    pub fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.bytes_max {
            return;
        }
        let mut buffers = self.buffers.borrow_mut();
        if buffers.len() < self.count_max {
            buf.clear();
            buffers.push(buf);
        }
    }
}
