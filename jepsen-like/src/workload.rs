//! The client workloads: each client is a loop of operations that records
//! an invoke before and a completion after every request.
//!
//! - `set`: a client reads a key (a recorded read), unions the elements of
//!   every sibling, adds a new unique element and writes the result with
//!   the read's context (one recorded `add`). A set value is its elements,
//!   sorted and joined by commas ([`crate::checker::set_value`]); elements
//!   are `e<client>-<seq>` and never contain a comma.
//! - `register`: client `c` owns keys `reg-c<c>-<k>` and chains puts on
//!   them, each with the context of the client's previous read or write of
//!   that key. After an `info` or `fail` put it reads the key again before
//!   the next put.
//! - `delete`: client `c` walks keys `del-c<c>-<n>`: a blind write, a read,
//!   a delete with the read's context, then reads. A deleted key is never
//!   written again, so any value seen after the delete is a resurrection.
//!
//! Every written value is unique in the run (`v<client>-<seq>`), so a
//! value names the write that produced it. `covers` of a write, delete or
//! add lists exactly the values returned with the context it sends: the
//! values of the read that returned it, or the new value and siblings of
//! the put that returned it.
//!
//! Outcome rules: a read that fails is `fail` (a read changes nothing a
//! checker looks at). A write or delete is `fail` only when the request
//! certainly reached no coordinator: invalid arguments, the sibling cap,
//! rate limiting, or connection failures at every node tried. A quorum
//! failure, a timeout, a reset stream or any other error is `info`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_client::{Client, Context, ReadOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{set_elements, set_value};
use crate::history::{Event, OpKind, Outcome};
use crate::recorder::{Pending, Recorder};

/// The workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Set,
    Register,
    Delete,
}

impl WorkloadKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Set => "set",
            WorkloadKind::Register => "register",
            WorkloadKind::Delete => "delete",
        }
    }
}

/// Settings of the client loops.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub kind: WorkloadKind,
    /// Number of keys: shared keys for `set`, keys per client for
    /// `register`; `delete` uses fresh keys.
    pub keys: usize,
    /// Clients stop invoking operations at this instant.
    pub deadline: Instant,
    /// Maximum operations per client.
    pub max_ops: u64,
    /// Pause between two operations of one client.
    pub op_interval: Duration,
    /// Seed of the clients' random choices (key picks, read mix).
    pub seed: u64,
}

/// Name of a shared set key.
pub fn set_key(index: usize) -> String {
    format!("set-{index}")
}

/// Outcome of a failed write or delete; see the module documentation.
pub fn write_failure_outcome(error: &kv_client::Error) -> Outcome {
    use kv_client::Error as E;
    match error {
        E::InvalidArgument { .. }
        | E::FailedPrecondition { .. }
        | E::ResourceExhausted { .. }
        | E::InvalidEndpoint { .. } => Outcome::Fail,
        E::NoReachableNode { tried } if tried.iter().all(|reason| never_connected(reason)) => {
            Outcome::Fail
        }
        E::Unavailable { message, .. } if never_connected(message) => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// Returns true when a failure text shows that the TCP connection was
/// never made, so the request was not sent.
fn never_connected(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("connection refused")
        || text.contains("tcp connect error")
        || text.contains("no route to host")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn texts(values: &[Vec<u8>]) -> Vec<String> {
    values.iter().map(|value| text(value)).collect()
}

/// The context a client holds for a key and the values it covers.
#[derive(Clone, Debug, Default)]
struct Known {
    context: Context,
    covers: Vec<String>,
}

/// One workload client: its process name, its kv-client and the recorder.
pub struct Session {
    id: usize,
    process: String,
    client: Client,
    recorder: Arc<Recorder>,
    seq: u64,
}

impl Session {
    /// Creates client `id` (from 1).
    pub fn new(id: usize, client: Client, recorder: Arc<Recorder>) -> Session {
        Session {
            id,
            process: format!("client-{id}"),
            client,
            recorder,
            seq: 0,
        }
    }

    /// Creates the reader of the final phase, process `client-0`.
    pub fn final_reader(client: Client, recorder: Arc<Recorder>) -> Session {
        Session {
            id: 0,
            process: crate::recorder::FINAL_PROCESS.into(),
            client,
            recorder,
            seq: 0,
        }
    }

    fn next_unique(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}-{}", self.id, self.seq)
    }

    /// Address of the first node the client tries for `key`: the
    /// partition's owner, because the clients run without coordinator
    /// rotation.
    fn first_node(&self, key: &str) -> Option<String> {
        let snapshot = self.client.cached_ring()?;
        let owner = *snapshot
            .ring
            .preference_list_for_key(key.as_bytes())
            .first()?;
        snapshot.address_of(owner).map(str::to_string)
    }

    fn base_event(&self, op: OpKind, key: &str) -> Event {
        Event {
            process: self.process.clone(),
            op: Some(op),
            key: Some(key.to_string()),
            node: self.first_node(key),
            ..Event::default()
        }
    }

    /// Reads `key` at quorum `r` (`None`: the cluster default) and records
    /// the read.
    pub async fn read(
        &mut self,
        key: &str,
        r: Option<u32>,
    ) -> Result<kv_client::GetResult, kv_client::Error> {
        let pending = self.recorder.invoke(self.base_event(OpKind::Read, key));
        match self.client.get_with(key, ReadOptions { r }).await {
            Ok(result) => {
                self.recorder.complete(&pending, Outcome::Ok, |event| {
                    event.read = Some(texts(&result.values));
                    event.context_returned = Some(result.context.to_base64());
                });
                Ok(result)
            }
            Err(error) => {
                // A failed read changed nothing a checker looks at.
                self.complete_error(&pending, Outcome::Fail, &error);
                Err(error)
            }
        }
    }

    fn complete_error(&self, pending: &Pending, outcome: Outcome, error: &kv_client::Error) {
        self.recorder.complete(pending, outcome, |event| {
            event.error = Some(error.to_string());
        });
    }

    /// Puts `value` with `known`'s context and records it as `op` (write or
    /// add). Returns the client's new context and the values it covers, or `None`
    /// after a failure.
    async fn put(
        &mut self,
        op: OpKind,
        key: &str,
        value: &str,
        payload: String,
        known: Option<&Known>,
        read: Option<Vec<String>>,
    ) -> Option<Known> {
        let mut event = self.base_event(op, key);
        event.value = Some(value.to_string());
        event.read = read;
        event.context_sent = Some(known.map(|k| k.context.to_base64()).unwrap_or_default());
        event.covers = Some(known.map(|k| k.covers.clone()).unwrap_or_default());
        let pending = self.recorder.invoke(event);

        let context = known.map(|k| &k.context).filter(|c| !c.is_empty());
        match self.client.put(key, payload.clone(), context).await {
            Ok(result) => {
                self.recorder.complete(&pending, Outcome::Ok, |event| {
                    event.context_returned = Some(result.context.to_base64());
                });
                let mut covers = vec![payload];
                covers.extend(texts(&result.siblings));
                Some(Known {
                    context: result.context,
                    covers,
                })
            }
            Err(error) => {
                self.complete_error(&pending, write_failure_outcome(&error), &error);
                None
            }
        }
    }

    /// Deletes `key` with `known`'s context and records it.
    async fn delete(&mut self, key: &str, known: &Known) {
        let mut event = self.base_event(OpKind::Delete, key);
        event.context_sent = Some(known.context.to_base64());
        event.covers = Some(known.covers.clone());
        let pending = self.recorder.invoke(event);
        match self.client.delete(key, Some(&known.context)).await {
            Ok(result) => {
                self.recorder.complete(&pending, Outcome::Ok, |event| {
                    event.context_returned = Some(result.context.to_base64());
                });
            }
            Err(error) => {
                self.complete_error(&pending, write_failure_outcome(&error), &error);
            }
        }
    }
}

/// Runs one client's loop until the deadline or the operation cap.
pub async fn run_client(mut session: Session, config: WorkloadConfig) {
    let mut rng = ChaCha8Rng::seed_from_u64(
        config.seed ^ (session.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut ops = 0u64;
    let mut registers: Vec<Option<Known>> = vec![None; config.keys.max(1)];
    let mut delete_step = DeleteStep::Write;
    let mut delete_key_index = 0u64;

    while Instant::now() < config.deadline && ops < config.max_ops {
        match config.kind {
            WorkloadKind::Set => {
                let key = set_key(rng.random_range(0..config.keys.max(1)));
                set_add(&mut session, &key).await;
                ops += 2;
            }
            WorkloadKind::Register => {
                let index = rng.random_range(0..registers.len());
                let key = format!("reg-c{}-{index}", session.id);
                let slot = &mut registers[index];
                if slot.is_none() || rng.random_bool(0.25) {
                    // Reads refresh the context after a failed put, and
                    // otherwise add plain reads to the history.
                    if let Ok(result) = session.read(&key, None).await {
                        *slot = Some(Known {
                            covers: texts(&result.values),
                            context: result.context,
                        });
                    }
                } else {
                    let value = session.next_unique("v");
                    let known = slot.take();
                    *slot = session
                        .put(
                            OpKind::Write,
                            &key,
                            &value,
                            value.clone(),
                            known.as_ref(),
                            None,
                        )
                        .await;
                }
                ops += 1;
            }
            WorkloadKind::Delete => {
                let key = format!("del-c{}-{delete_key_index}", session.id);
                delete_step = delete_cycle(&mut session, &key, delete_step).await;
                if delete_step == DeleteStep::Done {
                    delete_key_index += 1;
                    delete_step = DeleteStep::Write;
                }
                ops += 1;
            }
        }
        tokio::time::sleep(config.op_interval).await;
    }
}

/// Runs one add of the set workload: a read, then a put of the union plus
/// a new element with the read's context.
async fn set_add(session: &mut Session, key: &str) {
    let Ok(result) = session.read(key, None).await else {
        return;
    };
    let read = texts(&result.values);
    let mut elements: BTreeSet<String> =
        read.iter().flat_map(|value| set_elements(value)).collect();
    let element = session.next_unique("e");
    elements.insert(element.clone());
    let known = Known {
        context: result.context,
        covers: read.clone(),
    };
    session
        .put(
            OpKind::Add,
            key,
            &element,
            set_value(elements.iter().map(String::as_str)),
            Some(&known),
            Some(read),
        )
        .await;
}

/// Step of a delete-workload key in its life cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DeleteStep {
    Write,
    /// Read and delete what the read returned; counts attempts.
    ReadAndDelete(u32),
    /// Reads after the delete; counts the ones left.
    Check(u32),
    Done,
}

/// Reads a deleted key this many times before moving to the next key.
const CHECK_READS: u32 = 2;
/// Gives up deleting a key after this many failed reads.
const READ_ATTEMPTS: u32 = 3;

async fn delete_cycle(session: &mut Session, key: &str, step: DeleteStep) -> DeleteStep {
    match step {
        DeleteStep::Write => {
            let value = session.next_unique("v");
            session
                .put(OpKind::Write, key, &value, value.clone(), None, None)
                .await;
            DeleteStep::ReadAndDelete(0)
        }
        DeleteStep::ReadAndDelete(attempt) => {
            let Ok(result) = session.read(key, None).await else {
                return if attempt + 1 >= READ_ATTEMPTS {
                    DeleteStep::Done
                } else {
                    DeleteStep::ReadAndDelete(attempt + 1)
                };
            };
            // A delete without values to cover would make the coordinator
            // read and delete on its own, and its covers would be unknown.
            if result.values.is_empty() || result.context.is_empty() {
                return DeleteStep::Done;
            }
            let known = Known {
                covers: texts(&result.values),
                context: result.context,
            };
            session.delete(key, &known).await;
            DeleteStep::Check(CHECK_READS)
        }
        DeleteStep::Check(left) => {
            let _ = session.read(key, None).await;
            if left <= 1 {
                DeleteStep::Done
            } else {
                DeleteStep::Check(left - 1)
            }
        }
        DeleteStep::Done => DeleteStep::Done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_value_round_trips_elements() {
        let elements: BTreeSet<String> = ["e1-2", "e2-1", "e1-10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let value = set_value(elements.iter().map(String::as_str));
        let parsed: BTreeSet<String> = set_elements(&value).into_iter().collect();
        assert_eq!(parsed, elements);
        assert!(set_elements("").is_empty());
    }

    #[test]
    fn write_failure_outcome_quorum_is_info() {
        let error = kv_client::Error::QuorumFailed {
            message: "1 of 2 acknowledgements".into(),
        };
        assert_eq!(write_failure_outcome(&error), Outcome::Info);
    }

    #[test]
    fn write_failure_outcome_refused_everywhere_is_fail() {
        let error = kv_client::Error::NoReachableNode {
            tried: vec!["127.0.0.1:1: tcp connect error: Connection refused (os error 111)".into()],
        };
        assert_eq!(write_failure_outcome(&error), Outcome::Fail);
    }

    #[test]
    fn write_failure_outcome_reset_stream_is_info() {
        let error = kv_client::Error::NoReachableNode {
            tried: vec![
                "127.0.0.1:1: tcp connect error: Connection refused".into(),
                "127.0.0.1:2: connection reset".into(),
            ],
        };
        assert_eq!(write_failure_outcome(&error), Outcome::Info);
        let timeout = kv_client::Error::DeadlineExceeded {
            timeout: Duration::from_secs(1),
            message: "no reply".into(),
        };
        assert_eq!(write_failure_outcome(&timeout), Outcome::Info);
    }
}
