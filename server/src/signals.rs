//! SIGINT and SIGTERM, for the server and for long-running commands.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, caught from the moment they are listened for.
#[derive(Debug)]
pub struct Interrupts {
    term: Signal,
    int: Signal,
}

impl Interrupts {
    pub fn listen() -> Result<Interrupts> {
        Ok(Interrupts {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
