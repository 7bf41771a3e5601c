//! Helpers shared by the causality test files: an in-memory epoch counter
//! and the coordinator with some of its dot rules switched off, so a test can
//! show that a history loses a write without a rule.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use kv_cluster::causality::{coordinate_put, EpochSource, EpochUnavailable, LocalCopy, PutOutcome};
use kv_cluster::version::{Value, VersionVector};
use kv_cluster::NodeId;

/// An epoch counter in memory. It never goes back, like the node's fsynced
/// counter; a restart may only raise it to the next reserved block.
#[derive(Clone, Debug, Default)]
pub struct MemoryEpochs {
    pub counter: u64,
}

impl EpochSource for MemoryEpochs {
    fn current(&self) -> u64 {
        self.counter
    }

    fn fresh_epoch(&mut self) -> Result<u64, EpochUnavailable> {
        self.counter += 1;
        Ok(self.counter)
    }
}

/// Which dot rules the coordinator applies. Only `All` is the real rule set;
/// the others exist to show that the tests catch a missing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// [`coordinate_put`] as it is.
    All,
    /// Ignores the copy's `gen`.
    WithoutGen,
    /// Ignores the restart mark.
    WithoutRestartMark,
    /// Ignores the check that the client context is ahead of the local copy
    /// on one of the node's actors.
    WithoutBehindCheck,
    /// Ignores `gen` and the behind check.
    WithoutGenAndBehindCheck,
}

/// Runs [`coordinate_put`] with the rules that `rules` switches off
/// neutralised in its inputs. The gen rule gets `gen` 0 and the restart mark
/// gets mark 0. For the behind check, the client context is clamped to the
/// local context on the node's own actors. Clamping changes no kept value,
/// because local dots never lie beyond the local context, and the real
/// client context is joined back into the result.
pub fn put_with_rules(
    rules: Rules,
    node: NodeId,
    local: &LocalCopy,
    client_context: &VersionVector,
    value: Value,
    epochs: &mut dyn EpochSource,
    restart_mark: u64,
) -> Result<PutOutcome, EpochUnavailable> {
    let skip_gen = matches!(rules, Rules::WithoutGen | Rules::WithoutGenAndBehindCheck);
    let skip_mark = rules == Rules::WithoutRestartMark;
    let skip_behind = matches!(
        rules,
        Rules::WithoutBehindCheck | Rules::WithoutGenAndBehindCheck
    );

    let (effective_local, real_gen) = match local {
        LocalCopy::Present { state, gen } if skip_gen => (
            LocalCopy::Present {
                state: state.clone(),
                gen: 0,
            },
            Some(*gen),
        ),
        _ => (local.clone(), None),
    };
    let effective_mark = if skip_mark { 0 } else { restart_mark };
    let effective_context = if skip_behind {
        clamp_own_actors(node, local, client_context)
    } else {
        client_context.clone()
    };

    let mut outcome = coordinate_put(
        node,
        &effective_local,
        &effective_context,
        value,
        epochs,
        effective_mark,
    )?;
    if let Some(gen) = real_gen {
        outcome.gen = gen;
    }
    outcome.state.context.join(client_context);
    Ok(outcome)
}

fn clamp_own_actors(node: NodeId, local: &LocalCopy, context: &VersionVector) -> VersionVector {
    let LocalCopy::Present { state, .. } = local else {
        return context.clone();
    };
    let mut clamped = VersionVector::new();
    for (actor, &counter) in &context.entries {
        let counter = if actor.node == node {
            counter.min(state.context.get(actor))
        } else {
            counter
        };
        clamped.raise(*actor, counter);
    }
    clamped
}
