//! A worker-local stop signal that idle connections wait on alongside their socket.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Set once when the worker starts draining; wakes every waiter.
#[derive(Default)]
pub struct Shutdown {
    started: Cell<bool>,
    // Slots are reused so that millions of keep-alive waits never grow the list.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// Whether draining has begun.
    pub fn started(&self) -> bool {
        self.started.get()
    }

    /// Begin draining and wake every waiter.
    pub fn trigger(&self) {
        self.started.set(true);
        for w in self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
        {
            w.wake();
        }
    }

    /// Resolves once draining has begun.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            shutdown: self,
            slot: None,
        }
    }
}

/// Future returned by [`Shutdown::wait`].
pub struct Wait<'a> {
    shutdown: &'a Shutdown,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.started() {
            return Poll::Ready(());
        }
        let mut waiters = self.shutdown.waiters.borrow_mut();
        match self.slot {
            Some(i) => waiters[i] = Some(cx.waker().clone()),
            None => {
                let i = match self.shutdown.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.shutdown.waiters.borrow_mut()[i] = None;
            self.shutdown.free.borrow_mut().push(i);
        }
    }
}
