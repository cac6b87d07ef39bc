//! The host API is async for real: a call's future returns `Pending` while
//! its readback is in flight and is woken when the mapping resolves, rather
//! than blocking inside `poll`.

mod common;

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{assert_close, gpu, Rng};
use wgpu_loss::reference;

/// A waker that records that it was woken.
struct Flag(Mutex<bool>, Condvar);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        *self.0.lock().expect("flag") = true;
        self.1.notify_all();
    }
}

#[test]
fn a_host_op_awaits_its_readback_instead_of_blocking() {
    let Some(ctx) = gpu() else { return };
    // Large enough that the GPU work outlasts the first poll by far.
    let (rows, cols) = (1024, 4096);
    let x = Rng::new(7).vec_normal(rows * cols, 2.0);
    let flag = Arc::new(Flag(Mutex::new(false), Condvar::new()));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(ctx.softmax(&x, rows, cols));
    let mut pending_polls = 0;
    let result = loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(r) => break r,
            Poll::Pending => {
                pending_polls += 1;
                // Wait for the wake-up the mapping (or the poller) sends.
                let guard = flag.0.lock().expect("flag");
                let (mut woken, timeout) = flag
                    .1
                    .wait_timeout_while(guard, Duration::from_secs(120), |w| !*w)
                    .expect("flag");
                assert!(!timeout.timed_out(), "a pending host op was never woken");
                *woken = false;
            }
        }
    };
    assert!(
        pending_polls > 0,
        "the first poll returned the result: the call blocked until the GPU finished"
    );
    let y = result.expect("softmax");
    assert_close(
        "softmax",
        &y,
        &reference::softmax(&x, rows, cols).expect("ref"),
    );
}
