//! Watches: the stream of changes under a prefix, from a revision on.

use std::collections::VecDeque;
use std::sync::Weak;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::engine::state_machine::{Notice, Shared};
use crate::error::Error;
use crate::event::Event;

/// A stream of [`Event`]s for keys under a prefix, in revision order, with
/// no gaps and no repeats. Created by [`crate::Store::watch`].
#[derive(Debug)]
pub struct Watch {
    shared: Weak<Shared>,
    prefix: Vec<u8>,
    /// Every event at or below this revision has been queued or skipped.
    loaded_upto: u64,
    rx: broadcast::Receiver<Notice>,
    backlog: VecDeque<Event>,
}

fn gone() -> Error {
    Error::Shutdown("the store was closed".into())
}

impl Watch {
    /// Subscribes, then loads history from `from` (0: only new changes).
    pub(crate) fn start(
        shared: &std::sync::Arc<Shared>,
        prefix: Vec<u8>,
        from: u64,
    ) -> Result<Self, Error> {
        let rx = shared.notices.subscribe();
        let mut w = Watch {
            shared: std::sync::Arc::downgrade(shared),
            prefix,
            loaded_upto: 0,
            rx,
            backlog: VecDeque::new(),
        };
        if from == 0 {
            let st = shared.state.read().map_err(|_| gone())?;
            w.loaded_upto = st.index.revision;
        } else {
            w.reload(shared, from)?;
        }
        Ok(w)
    }

    /// Queues history from `from` up to the current revision.
    fn reload(&mut self, shared: &Shared, from: u64) -> Result<(), Error> {
        let st = shared.state.read().map_err(|_| gone())?;
        if from <= st.compacted {
            return Err(Error::Compacted {
                requested: from,
                oldest: st.compacted + 1,
            });
        }
        let upto = st.index.revision;
        for e in shared.history(from, &self.prefix)? {
            if e.revision <= upto {
                self.backlog.push_back(e);
            }
        }
        self.loaded_upto = upto.max(from.saturating_sub(1));
        Ok(())
    }

    /// The next event. Fails with `Compacted` if the watch fell so far
    /// behind that the history it needs is gone.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Ok(e);
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
                    let shared = self.shared.upgrade().ok_or_else(gone)?;
                    let from = self.loaded_upto + 1;
                    self.reload(&shared, from)?;
                }
                Err(RecvError::Closed) => return Err(gone()),
            }
        }
    }
}
