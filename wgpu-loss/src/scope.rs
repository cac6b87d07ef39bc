//! wgpu error scopes without blocking.
//!
//! Popping an error scope gives a future. The host API awaits it. The encode
//! API and pipeline creation must not wait, so they poll it once: on native
//! backends wgpu knows the error at once and the future is ready, so the
//! error comes back from that very call; where it is not ready (the browser's
//! WebGPU, which answers through its event loop) the future is kept and
//! reported by the next awaited call on the same context
//! ([`crate::GpuContext::check_errors`] or any host op).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// A popped error scope whose answer has not come yet.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type PendingPop = Pin<Box<dyn Future<Output = Option<wgpu::Error>> + Send>>;
/// A popped error scope whose answer has not come yet.
#[cfg(target_arch = "wasm32")]
pub(crate) type PendingPop = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// The error a popped scope holds, if it is known now; `Err` with the future
/// itself if it is not.
pub(crate) fn pop_now(
    popped: impl Future<Output = Option<wgpu::Error>> + wgpu::WasmNotSend + 'static,
) -> Result<Option<wgpu::Error>, PendingPop> {
    let mut popped: PendingPop = Box::pin(popped);
    let mut cx = Context::from_waker(Waker::noop());
    match popped.as_mut().poll(&mut cx) {
        Poll::Ready(error) => Ok(error),
        Poll::Pending => Err(popped),
    }
}

/// Error scopes popped without waiting, with what each guarded, kept until
/// an awaited call reports them.
#[derive(Default)]
pub(crate) struct Deferred {
    pending: Mutex<Vec<(String, PendingPop)>>,
}

impl Deferred {
    pub(crate) fn push(&self, what: String, popped: PendingPop) {
        match self.pending.lock() {
            Ok(mut p) => p.push((what, popped)),
            Err(poisoned) => poisoned.into_inner().push((what, popped)),
        }
    }

    /// Takes every pending scope, in the order they were popped.
    pub(crate) fn take(&self) -> Vec<(String, PendingPop)> {
        match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A popped scope that answers on its second poll, as the browser's do.
    struct AnswersLater(Option<wgpu::Error>, bool);

    impl Future for AnswersLater {
        type Output = Option<wgpu::Error>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.1 {
                Poll::Ready(self.0.take())
            } else {
                self.1 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn validation_error(what: &str) -> wgpu::Error {
        wgpu::Error::Validation {
            source: Box::new(std::io::Error::other(what.to_string())),
            description: what.to_string(),
        }
    }

    #[test]
    fn a_scope_known_now_is_answered_at_once() {
        assert!(matches!(pop_now(std::future::ready(None)), Ok(None)));
        let popped = pop_now(std::future::ready(Some(validation_error("bad"))));
        assert!(matches!(popped, Ok(Some(_))));
        assert!(
            pop_now(AnswersLater(None, false)).is_err(),
            "pending stays pending"
        );
    }

    /// The browser's path, on any adapter: an error an `encode_*` call could
    /// not read yet comes back from the next awaited call, naming what was
    /// recorded, once; later calls are clean.
    #[test]
    fn a_deferred_error_is_reported_by_the_next_awaited_call() {
        let ctx = match crate::block_on(crate::GpuContext::new()) {
            Ok(ctx) => ctx,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("CI=true but no GPU adapter: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED (no GPU adapter: {e})");
                return;
            }
        };
        let Err(pending) = pop_now(AnswersLater(Some(validation_error("late")), false)) else {
            panic!("the scope should not be answered on its first poll");
        };
        ctx.deferred.push("encode_cross_entropy".into(), pending);
        let err = crate::block_on(ctx.softmax(&[0.0, 1.0], 1, 2)).unwrap_err();
        match err {
            crate::Error::Gpu {
                kernel, message, ..
            } => {
                assert_eq!(kernel, "encode_cross_entropy");
                assert!(message.contains("late"), "{message}");
            }
            other => panic!("expected Error::Gpu, got {other}"),
        }
        crate::block_on(ctx.check_errors()).expect("reported once, then clean");
        let y = crate::block_on(ctx.softmax(&[0.0, 0.0], 1, 2)).expect("context still usable");
        assert_eq!(y, vec![0.5, 0.5]);
    }
}
