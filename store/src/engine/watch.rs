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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::engine::state_machine::{Notice, Shared};
use crate::error::Error;
use crate::event::{Event, EventKind};

/// Most events one page of disk history holds.
pub const HISTORY_PAGE_EVENTS: usize = 1024;
/// A page of disk history stops after the record that takes it past this
/// many bytes of keys and values.
pub const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// Which events a watch delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchFilter {
    #[default]
    All,
    /// Puts only (etcd's `NODELETE`).
    PutsOnly,
    /// Deletes only (etcd's `NOPUT`).
    DeletesOnly,
}

impl WatchFilter {
    fn passes(self, kind: EventKind) -> bool {
        match self {
            WatchFilter::All => true,
            WatchFilter::PutsOnly => kind == EventKind::Put,
            WatchFilter::DeletesOnly => kind == EventKind::Delete,
        }
    }
}

/// How a watch starts and what it delivers ([`crate::Store::watch_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchOptions {
    /// The first revision to deliver (inclusive); 0: only changes after
    /// the watch starts.
    pub from: u64,
    pub filter: WatchFilter,
    /// When no event was delivered for this long, deliver a
    /// [`WatchItem::Progress`]. `None`: never.
    pub progress_interval: Option<Duration>,
    /// Give each event the key as it was before it ([`Event::prev_kv`]).
    /// The versions this needs are kept for the store's last
    /// `Config::watch_history_revisions` revisions (and not before a
    /// compaction): a watch that needs an older one fails with `Compacted`.
    pub prev_kv: bool,
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Event(Event),
    /// Every matching change up to `revision` has been delivered: a
    /// watcher that saw nothing for a while learns how current it is
    /// (etcd's progress notification).
    Progress {
        revision: u64,
    },
}

/// A stream of changes to keys under a prefix, in revision order, with no
/// gaps and no repeats. Created by [`crate::Store::watch`] and
/// [`crate::Store::watch_with`]. [`Watch::next`] gives the next event;
/// as a [`Stream`] it yields [`WatchItem`]s (progress included) and ends
/// after an error that ends the watch (`Compacted`, a closed store).
/// Every method is cancel-safe: a `next` dropped before it finished loses
/// nothing.
pub struct Watch {
    cursor: Option<Cursor>,
    step: Option<Step>,
    done: bool,
}

type Step = Pin<Box<dyn Future<Output = (Cursor, Result<WatchItem, Error>)> + Send>>;

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("cursor", &self.cursor)
            .field("in_step", &self.step.is_some())
            .field("done", &self.done)
            .finish()
    }
}

/// The watch's position and buffers; moved into each step's future.
#[derive(Debug)]
struct Cursor {
    shared: Weak<Shared>,
    prefix: Arc<[u8]>,
    /// Every event at or below this revision has been queued or skipped.
    loaded_upto: u64,
    /// History up to this revision is still to be read from disk (none
    /// when it is at or below `loaded_upto`).
    disk_upto: u64,
    rx: broadcast::Receiver<Notice>,
    backlog: VecDeque<Event>,
    filter: WatchFilter,
    progress_interval: Option<Duration>,
    /// When the next progress notification is due.
    progress_due: Option<Instant>,
    prev_kv: bool,
}

fn gone() -> Error {
    Error::Stopped
}

impl Watch {
    /// Subscribes, then checks that history from `options.from` is still
    /// kept. Reads nothing from disk.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        prefix: Vec<u8>,
        options: WatchOptions,
    ) -> Result<Self, Error> {
        Ok(Watch {
            cursor: Some(Cursor::start(shared, prefix, options)?),
            step: None,
            done: false,
        })
    }

    /// The next event (progress notifications are skipped). Fails with
    /// `Compacted` if the watch fell so far behind that the history it
    /// needs is gone.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let WatchItem::Event(e) = self.next_item().await? {
                return Ok(e);
            }
        }
    }

    /// The next event or progress notification.
    pub async fn next_item(&mut self) -> Result<WatchItem, Error> {
        match futures::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await {
            Some(item) => item,
            None => Err(Error::Stopped),
        }
    }
}

impl Stream for Watch {
    type Item = Result<WatchItem, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.step.is_none() {
            let Some(mut cursor) = this.cursor.take() else {
                this.done = true;
                return Poll::Ready(None);
            };
            this.step = Some(Box::pin(async move {
                let item = cursor.next_item().await;
                (cursor, item)
            }));
        }
        let Some(step) = this.step.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((cursor, item)) => {
                this.step = None;
                this.cursor = Some(cursor);
                // A compacted history or a closed store ends the watch.
                this.done = item.is_err();
                Poll::Ready(Some(item))
            }
        }
    }
}

impl Cursor {
    fn start(shared: &Arc<Shared>, prefix: Vec<u8>, options: WatchOptions) -> Result<Self, Error> {
        let from = options.from;
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
        Ok(Cursor {
            shared: Arc::downgrade(shared),
            prefix: prefix.into(),
            loaded_upto,
            disk_upto: now,
            rx,
            backlog: VecDeque::new(),
            filter: options.filter,
            progress_interval: options.progress_interval,
            progress_due: options.progress_interval.map(|i| Instant::now() + i),
            prev_kv: options.prev_kv,
        })
    }

    /// With `prev_kv`, reads the previous versions of the backlog's events
    /// from `from` on (a blocking thread, one view for all of them).
    async fn fill_previous(&mut self, from: usize) -> Result<(), Error> {
        if !self.prev_kv || from >= self.backlog.len() {
            return Ok(());
        }
        let shared = self.shared.upgrade().ok_or_else(gone)?;
        let mut events: Vec<Event> = self.backlog.drain(from..).collect();
        let events =
            tokio::task::spawn_blocking(move || shared.fill_previous(&mut events).map(|()| events))
                .await
                .map_err(Error::from)??;
        self.backlog.extend(events);
        Ok(())
    }

    /// Whether the watch delivers `e`.
    fn wants(&self, e: &Event) -> bool {
        e.kv.key.starts_with(&self.prefix) && self.filter.passes(e.kind)
    }

    /// Something was delivered: the next progress is due an interval later.
    fn delivered(&mut self, item: WatchItem) -> Result<WatchItem, Error> {
        self.progress_due = self.progress_interval.map(|i| Instant::now() + i);
        Ok(item)
    }

    /// Reads the next page of disk history on a blocking thread.
    async fn read_page(&mut self) -> Result<(), Error> {
        let shared = self.shared.upgrade().ok_or_else(gone)?;
        let (from, upto, prefix) = (self.loaded_upto + 1, self.disk_upto, self.prefix.clone());
        let page = tokio::task::spawn_blocking(move || shared.history_page(from, upto, &prefix))
            .await
            .map_err(Error::from)??;
        let filter = self.filter;
        let from = self.backlog.len();
        self.backlog
            .extend(page.events.into_iter().filter(|e| filter.passes(e.kind)));
        self.loaded_upto = page.covered_upto;
        self.fill_previous(from).await
    }

    async fn next_item(&mut self) -> Result<WatchItem, Error> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return self.delivered(WatchItem::Event(e));
            }
            if self.disk_upto > self.loaded_upto {
                self.read_page().await?;
                continue;
            }
            let shared = self.shared.upgrade().ok_or_else(gone)?;
            if shared.stopped.load(std::sync::atomic::Ordering::Acquire) {
                return Err(gone());
            }
            drop(shared);
            let notice = match self.progress_due {
                None => self.rx.recv().await,
                Some(due) => tokio::select! {
                    // Notices already queued come first: a progress
                    // revision must cover every change this watch has
                    // been told of.
                    biased;
                    notice = self.rx.recv() => notice,
                    () = tokio::time::sleep_until(due) => {
                        let revision = self.loaded_upto;
                        return self.delivered(WatchItem::Progress { revision });
                    }
                },
            };
            match notice {
                Ok(Notice::Events(events)) => {
                    let from = self.backlog.len();
                    for e in events.iter() {
                        if e.revision > self.loaded_upto && self.wants(e) {
                            self.backlog.push_back(e.clone());
                        }
                    }
                    if let Some(last) = events.last() {
                        self.loaded_upto = self.loaded_upto.max(last.revision);
                    }
                    self.fill_previous(from).await?;
                }
                Ok(Notice::Stopped) => return Err(gone()),
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
