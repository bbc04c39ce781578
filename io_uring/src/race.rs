//! Waiting on the first of two futures (a read against shutdown, a timer against a queue).

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
