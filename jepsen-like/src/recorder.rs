//! The shared recorder that numbers, timestamps and appends history events
//! while clients and the nemesis run concurrently.
//!
//! Every event goes to `history.jsonl` at once (buffered, flushed at the
//! end) and to an in-memory copy for the checkers. Times are milliseconds
//! of the harness's monotonic clock since the recorder was created, so
//! clock skew of the nodes never shifts them. A write error is kept and
//! returned by [`Recorder::finish`], because a truncated history would
//! make the checkers report nonsense.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::history::{Event, HistoryWriter, Outcome};

/// Process name of the nemesis events.
pub const NEMESIS: &str = "nemesis";

/// Process name of the reads after the faults (`client-0`; workload
/// clients are `client-1` and up).
pub const FINAL_PROCESS: &str = "client-0";

/// Errors of the recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("cannot write the history file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

struct State {
    writer: HistoryWriter,
    events: Vec<Event>,
    next_op: u64,
    phase: String,
    error: Option<std::io::Error>,
}

/// Thread-safe history recorder of one run.
pub struct Recorder {
    path: String,
    started: Instant,
    state: Mutex<State>,
}

/// An operation that was invoked and awaits its completion.
#[derive(Clone, Debug)]
pub struct Pending {
    invoke: Event,
}

impl Pending {
    /// Returns the invoke event as recorded.
    pub fn invoke(&self) -> &Event {
        &self.invoke
    }
}

impl Recorder {
    /// Creates `path` and starts the run clock.
    pub fn create(path: &Path) -> Result<Recorder, RecorderError> {
        let writer = HistoryWriter::create(path).map_err(|source| RecorderError::Write {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Recorder {
            path: path.display().to_string(),
            started: Instant::now(),
            state: Mutex::new(State {
                writer,
                events: Vec::new(),
                next_op: 1,
                phase: "load".into(),
                error: None,
            }),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Returns the instant the run clock started.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the phase stamped on the following events: "load", "faults",
    /// "heal" or "final".
    pub fn set_phase(&self, phase: &str) {
        self.lock().phase = phase.to_string();
    }

    /// Returns the current phase.
    pub fn phase(&self) -> String {
        self.lock().phase.clone()
    }

    fn append(&self, state: &mut State, mut event: Event) -> Event {
        event.time_ms = self.now_ms();
        if event.phase.is_none() {
            event.phase = Some(state.phase.clone());
        }
        match state.writer.append(event.clone()) {
            Ok(numbered) => {
                state.events.push(numbered.clone());
                numbered
            }
            Err(error) => {
                tracing::error!(path = %self.path, %error, "cannot append to the history");
                event.index = state.events.len() as u64;
                state.events.push(event.clone());
                state.error.get_or_insert(error);
                event
            }
        }
    }

    /// Records the invoke of a client operation. `event` carries the
    /// process, op, key, value, node, context sent and covers; the recorder
    /// sets the index, time, op id, outcome and phase.
    pub fn invoke(&self, mut event: Event) -> Pending {
        let mut state = self.lock();
        event.op_id = state.next_op;
        state.next_op += 1;
        event.outcome = Some(Outcome::Invoke);
        let invoke = self.append(&mut state, event);
        Pending { invoke }
    }

    /// Records the completion of `pending` with `outcome`; `fill` sets the
    /// fields the completion adds (read values, context returned, error).
    pub fn complete(
        &self,
        pending: &Pending,
        outcome: Outcome,
        fill: impl FnOnce(&mut Event),
    ) -> Event {
        let invoke = &pending.invoke;
        let mut event = Event {
            process: invoke.process.clone(),
            op_id: invoke.op_id,
            outcome: Some(outcome),
            op: invoke.op,
            key: invoke.key.clone(),
            value: invoke.value.clone(),
            read: invoke.read.clone(),
            node: invoke.node.clone(),
            context_sent: invoke.context_sent.clone(),
            covers: invoke.covers.clone(),
            phase: invoke.phase.clone(),
            ..Event::default()
        };
        fill(&mut event);
        let mut state = self.lock();
        self.append(&mut state, event)
    }

    /// Records a nemesis event with its fault text.
    pub fn nemesis(&self, fault: String) -> Event {
        let event = Event {
            process: NEMESIS.into(),
            fault: Some(fault),
            ..Event::default()
        };
        let mut state = self.lock();
        self.append(&mut state, event)
    }

    /// Returns a copy of every event recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// Flushes the file and returns every event, or the first write error.
    pub fn finish(&self) -> Result<Vec<Event>, RecorderError> {
        let mut state = self.lock();
        let flushed = state.writer.flush();
        if let Some(source) = state.error.take() {
            return Err(RecorderError::Write {
                path: self.path.clone(),
                source,
            });
        }
        flushed.map_err(|source| RecorderError::Write {
            path: self.path.clone(),
            source,
        })?;
        Ok(state.events.clone())
    }
}
