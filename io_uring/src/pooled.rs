//! A boxed future whose memory its core keeps for the next future of the same layout.
//!
//! An HTTP connection boxes the future that answers a batch of requests, so that a connection
//! waiting for its next request is small (docs/design.md in the server, "Idle connections").
//! That box is several KiB (the request's header slots live in it), past the allocator's
//! per-thread cache, so allocating and freeing it for every request cost a trip through the
//! allocator's bins. [`Pooled`] keeps freed blocks per core and per layout instead, at most
//! [`FREE_BLOCKS_MAX`] of them.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks a core keeps, over all layouts; past it, a freed block goes back to the allocator.
pub const FREE_BLOCKS_MAX: usize = 64;

/// One core's free blocks; given back to the allocator when the thread ends.
struct FreeBlocks(Vec<(Layout, NonNull<u8>)>);

impl Drop for FreeBlocks {
    fn drop(&mut self) {
        for (layout, block) in self.0.drain(..) {
            // SAFETY: every block here came from `std::alloc::alloc(layout)` and is not in use.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeBlocks> = const { RefCell::new(FreeBlocks(Vec::new())) };
}

/// A pinned, heap-allocated `F` (like `Pin<Box<F>>`) whose block is reused on this core. It
/// never leaves the thread that made it (it is neither `Send` nor `Sync`).
pub struct Pooled<F> {
    value: NonNull<F>,
    /// Owns an `F`; the raw pointer keeps it on its thread.
    _owns: PhantomData<(F, *const ())>,
}

impl<F> Pooled<F> {
    pub fn new(value: F) -> Pooled<F> {
        Self::new_with(|| value)
    }

    /// [`Pooled::new`] with the value made by `make` after the block is found, so the compiler
    /// can build it in place instead of building it on the stack and copying it over (an
    /// unstarted future is a few words, but a copy moves its whole size, every state's room).
    #[inline(always)]
    pub fn new_with(make: impl FnOnce() -> F) -> Pooled<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to allocate: a dangling, aligned pointer is a valid place for a ZST.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through an aligned non-null pointer.
            unsafe { ptr.as_ptr().write(make()) };
            return Pooled {
                value: ptr,
                _owns: PhantomData,
            };
        }
        let reused = FREE.with(|free| {
            let mut free = free.borrow_mut();
            let at = free.0.iter().rposition(|(l, _)| *l == layout)?;
            Some(free.0.swap_remove(at).1)
        });
        let block = reused.unwrap_or_else(|| {
            // SAFETY: `layout` has a non-zero size.
            let raw = unsafe { std::alloc::alloc(layout) };
            NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        });
        let ptr = block.cast::<F>();
        // SAFETY: the block is `layout` = Layout::new::<F>() bytes, unused, suitably aligned.
        unsafe { ptr.as_ptr().write(make()) };
        Pooled {
            value: ptr,
            _owns: PhantomData,
        }
    }
}

impl<F> Drop for Pooled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: `value` holds an initialized `F`, dropped exactly once, here, in place (it was
        // pinned: it never moved).
        unsafe { std::ptr::drop_in_place(self.value.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        let block = self.value.cast::<u8>();
        let kept = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.0.len() < FREE_BLOCKS_MAX {
                free.0.push((layout, block));
                true
            } else {
                false
            }
        });
        if kept != Ok(true) {
            // SAFETY: allocated with this layout by `Pooled::new` (or taken from the free list,
            // whose blocks were), and no longer used.
            unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the `F` lives at a fixed heap address until `drop` runs `drop_in_place` on it,
        // and nothing else hands out `&mut F`: it is pinned as `Pin<Box<F>>` would be.
        unsafe { Pin::new_unchecked(&mut *self.value.as_ptr()) }.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn blocks_are_reused_and_values_dropped_once() {
        let dropped = Rc::new(std::cell::Cell::new(0));
        struct Counted(Rc<std::cell::Cell<u32>>, [u8; 5000]);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let first = Pooled::new(Counted(dropped.clone(), [1; 5000]));
        let address = first.value.as_ptr() as usize;
        drop(first);
        assert_eq!(dropped.get(), 1);
        let second = Pooled::new(Counted(dropped.clone(), [2; 5000]));
        assert_eq!(
            second.value.as_ptr() as usize,
            address,
            "the freed block is reused"
        );
        // SAFETY (test): reading the live value.
        assert_eq!(unsafe { &*second.value.as_ptr() }.1[4999], 2);
        drop(second);
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn futures_run_to_completion() {
        let out = run_ready(Pooled::new(async { 6 * 7 }));
        assert_eq!(out, 42);
    }

    /// Polls a future that completes without waiting.
    fn run_ready<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }
}
