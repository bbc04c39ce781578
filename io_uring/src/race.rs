//! Waiting on the first of two futures (a read against shutdown, a timer against a queue), or on
//! both (a connection's reading and writing in one task).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls `left` first, then `right`; completes with whichever finishes first and drops the other
/// (dropping a pending read cancels it).
///
/// A plain future rather than an `async fn`: an `async fn` keeps its arguments beside the pinned
/// copies it polls, twice the size of the two futures, and an idle connection waits in nested
/// races (docs/design.md, "Idle connections").
pub fn race<A: Future, B: Future>(left: A, right: B) -> Race<A, B> {
    Race { left, right }
}

pin_project_lite::pin_project! {
    /// The future of [`race`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Race<A, B> {
        #[pin]
        left: A,
        #[pin]
        right: B,
    }
}

impl<A: Future, B: Future> Future for Race<A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.left.poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        if let Poll::Ready(out) = this.right.poll(cx) {
            return Poll::Ready(Either::Right(out));
        }
        Poll::Pending
    }
}

/// Runs `left` and `right` in the task that awaits it, both at once, until both have finished:
/// every wake of the task polls each unfinished one (`left` first). Two halves of one
/// connection so share one task instead of paying for a second (docs/design.md, "Idle
/// connections"); the price is that a wake meant for one also polls the other.
pub fn join<A: Future<Output = ()>, B: Future<Output = ()>>(left: A, right: B) -> Join<A, B> {
    Join {
        left,
        right,
        left_done: false,
        right_done: false,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`join`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Join<A, B> {
        #[pin]
        left: A,
        #[pin]
        right: B,
        left_done: bool,
        right_done: bool,
    }
}

impl<A: Future<Output = ()>, B: Future<Output = ()>> Future for Join<A, B> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // A finished future is never polled again.
        if !*this.left_done && this.left.poll(cx).is_ready() {
            *this.left_done = true;
        }
        if !*this.right_done && this.right.poll(cx).is_ready() {
            *this.right_done = true;
        }
        if *this.left_done && *this.right_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Each side runs to its end, however the other's waits interleave, and `join` ends only
    /// when both have.
    #[test]
    fn join_runs_both_sides_to_their_end() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let steps = Rc::new(Cell::new(0u32));
        let (a, b) = (steps.clone(), steps.clone());
        rt.block_on(join(
            async move {
                for _ in 0..3 {
                    crate::sleep(std::time::Duration::from_millis(1)).await;
                    a.set(a.get() + 1);
                }
            },
            async move {
                b.set(b.get() + 10);
            },
        ));
        assert_eq!(steps.get(), 13);
    }
}
