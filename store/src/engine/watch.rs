//! Watches: the stream of changes under a prefix, from a revision on.
//!
//! ```text
//!            start ──► disk history, one bounded page at a time ──┐
//!                       (blocking thread, no state lock held)     │ caught up
//!                                ▲                                ▼
//!                 lagged or reset│◄──────────── live notices (broadcast)
//! ```
//!
//! A watch subscribes to live notices before it reads anything, so every
//! change after its start is either in the history it reads or in a notice
//! it will receive; events at or below what it already delivered are
//! skipped. What a watch holds in memory is bounded: one page of history
//! ([`HISTORY_PAGE_EVENTS`] events or about [`HISTORY_PAGE_BYTES`]), plus its
//! share of the live channel ([`super::state_machine::NOTICES_MAX`] notices
//! of one events record each). A watcher that stops polling is dropped from
//! the channel's window (`Lagged`) and later reads what it missed from
//! disk, as long as that history is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::state_machine::{Notice, Shared};
use crate::error::Error;
use crate::event::Event;

/// Most events one page of disk history holds.
pub const HISTORY_PAGE_EVENTS: usize = 1024;
/// A page of disk history stops after the record that takes it past this
/// many bytes of keys and values.
pub const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// A stream of [`Event`]s for keys under a prefix, in revision order, with
/// no gaps and no repeats. Created by [`crate::Store::watch`].
#[derive(Debug)]
pub struct Watch {
    shared: Weak<Shared>,
    prefix: Arc<[u8]>,
    /// Every event at or below this revision has been queued or skipped.
    loaded_upto: u64,
    /// History up to this revision is still to be read from disk (none
    /// when it is at or below `loaded_upto`).
    disk_upto: u64,
    rx: broadcast::Receiver<Notice>,
    backlog: VecDeque<Event>,
}

fn gone() -> Error {
    Error::Shutdown("the store was closed".into())
}

impl Watch {
    /// Subscribes, then checks that history from `from` (0: only new
    /// changes) is still kept. Reads nothing from disk.
    pub(crate) fn start(shared: &Arc<Shared>, prefix: Vec<u8>, from: u64) -> Result<Self, Error> {
        let rx = shared.notices.subscribe();
        let st = shared.state.read().map_err(|_| gone())?;
        let now = st.index.revision;
        let loaded_upto = if from == 0 {
            now
        } else if from <= st.compacted {
            return Err(Error::Compacted {
                requested: from,
                oldest: st.compacted + 1,
            });
        } else {
            from - 1
        };
        drop(st);
        Ok(Watch {
            shared: Arc::downgrade(shared),
            prefix: prefix.into(),
            loaded_upto,
            disk_upto: now,
            rx,
            backlog: VecDeque::new(),
        })
    }

    /// Reads the next page of disk history on a blocking thread.
    async fn read_page(&mut self) -> Result<(), Error> {
        let shared = self.shared.upgrade().ok_or_else(gone)?;
        let (from, upto, prefix) = (self.loaded_upto + 1, self.disk_upto, self.prefix.clone());
        let page = tokio::task::spawn_blocking(move || shared.history_page(from, upto, &prefix))
            .await
            .map_err(|e| Error::Shutdown(format!("history reader stopped: {e}")))??;
        self.backlog.extend(page.events);
        self.loaded_upto = page.covered_upto;
        Ok(())
    }

    /// The next event. Fails with `Compacted` if the watch fell so far
    /// behind that the history it needs is gone.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Ok(e);
            }
            if self.disk_upto > self.loaded_upto {
                self.read_page().await?;
                continue;
            }
            match self.rx.recv().await {
                Ok(Notice::Events(events)) => {
                    for e in events.iter() {
                        if e.revision > self.loaded_upto && e.kv.key.starts_with(&self.prefix) {
                            self.backlog.push_back(e.clone());
                        }
                    }
                    if let Some(last) = events.last() {
                        self.loaded_upto = self.loaded_upto.max(last.revision);
                    }
                }
                Ok(Notice::Reset) => {
                    let shared = self.shared.upgrade().ok_or_else(gone)?;
                    let st = shared.state.read().map_err(|_| gone())?;
                    if self.loaded_upto < st.compacted {
                        return Err(Error::Compacted {
                            requested: self.loaded_upto + 1,
                            oldest: st.compacted + 1,
                        });
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Notices were dropped: read what they held from disk.
                    let shared = self.shared.upgrade().ok_or_else(gone)?;
                    self.disk_upto = shared.state.read().map_err(|_| gone())?.index.revision;
                }
                Err(RecvError::Closed) => return Err(gone()),
            }
        }
    }
}
