//! Drain on SIGTERM: phases and the signals that carry them to the workers.
//!
//! Phases: **running** → **draining** (set by [`Drain::start`]: `/readyz`
//! answers 503, new upgrades get 503 with `Retry-After`, every open session
//! is sent Close 1001 after the messages it has already read are echoed) →
//! **stopped** (each worker returns once its sessions are closed or
//! `--drain-timeout` has passed; the process exits 0).
//!
//! The listeners keep accepting while draining, so probes and scrapes see the
//! 503s instead of connection refusals.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Process-wide drain switch, shared by the workers and whoever handles signals.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: AtomicBool::new(false),
            tx: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// Enters the draining phase (idempotent).
    pub fn start(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.tx.send_replace(true);
        }
    }

    /// True once [`Drain::start`] has been called.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves when draining starts.
    pub async fn started(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which it cannot be while `self` lives.
        let _ = rx.wait_for(|&d| d).await;
    }
}
