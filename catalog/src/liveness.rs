//! Storage-node liveness, decided by the catalog leader: nodes heartbeat
//! (through any member, forwarded to the leader), the leader remembers when
//! it last heard from each, and proposes `SetNodeState` through Raft when a
//! node misses its timeout or comes back. Heartbeats themselves stay out of
//! the Raft log; only changes of state go in, with the leader's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::command::Command;
use crate::model::{CatalogData, NodeState};
use crate::raft::{NodeId, Raft};

/// The timeout of a node that has not said what its own is (one that has
/// not heartbeated to this leader yet).
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the leader looks for nodes past their timeout.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<u64, Seen>>,
}

#[derive(Clone)]
struct Seen {
    at: Instant,
    wall_ms: i64,
    timeout: Duration,
    instance: String,
    addr: String,
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Liveness {
    /// Takes note of a heartbeat, unless another instance (another data
    /// directory) holds `node_id` and is within its timeout: then answers
    /// with that one's address.
    pub fn record(
        &self,
        node_id: u64,
        timeout: Duration,
        instance: &str,
        addr: &str,
    ) -> Result<(), String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get(&node_id) {
            if s.instance != instance && s.at.elapsed() <= s.timeout {
                return Err(s.addr.clone());
            }
        }
        seen.insert(
            node_id,
            Seen {
                at: Instant::now(),
                wall_ms: now_ms(),
                timeout,
                instance: instance.to_string(),
                addr: addr.to_string(),
            },
        );
        Ok(())
    }

    /// `(node, last heartbeat in ms since the epoch, timeout)` as heard here.
    pub fn heard(&self) -> Vec<(u64, i64, Duration)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = seen
            .iter()
            .map(|(id, s)| (*id, s.wall_ms, s.timeout))
            .collect();
        v.sort();
        v
    }

    /// Nodes the state counts as up whose last heartbeat (or, if none came
    /// since, the moment this member became leader) is older than their
    /// timeout.
    fn overdue(&self, state: &CatalogData, leader_since: Instant) -> Vec<u64> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Up)
            .filter(|n| {
                let (last, timeout) = match seen.get(&n.id) {
                    Some(s) => (s.at.max(leader_since), s.timeout),
                    None => (leader_since, DEFAULT_NODE_TIMEOUT),
                };
                last.elapsed() > timeout
            })
            .map(|n| n.id)
            .collect()
    }
}

/// While this member leads, marks nodes down that missed their timeout.
pub async fn watch_nodes(
    raft: Raft,
    node_id: NodeId,
    liveness: Arc<Liveness>,
    state: tokio::sync::watch::Receiver<Arc<CatalogData>>,
) {
    let mut leading: Option<(u64, Instant)> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(node_id) {
            leading = None;
            continue;
        }
        // A new leader has heard from nobody yet: it gives every node its
        // whole timeout from the moment it took over.
        let since = match leading {
            Some((term, since)) if term == m.current_term => since,
            _ => {
                let now = Instant::now();
                leading = Some((m.current_term, now));
                now
            }
        };
        let current = state.borrow().clone();
        for id in liveness.overdue(&current, since) {
            tracing::warn!(
                node_id = id,
                "storage node missed its heartbeat timeout; marking it down"
            );
            let command = Command::SetNodeState {
                id,
                state: NodeState::Down,
                at_ms: now_ms(),
            };
            if let Err(e) = raft.client_write(command).await {
                tracing::debug!(error = %e, "could not mark a node down (leadership lost?)");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_of_a_node_id_is_refused_while_the_first_lives() {
        let l = Liveness::default();
        let t = Duration::from_millis(200);
        l.record(1, t, "dir-a", "h:1").unwrap();
        l.record(1, t, "dir-a", "h:2").unwrap();
        assert_eq!(l.record(1, t, "dir-b", "h:3"), Err("h:2".to_string()));
        l.record(2, t, "dir-b", "h:3").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        l.record(1, t, "dir-b", "h:3").unwrap();
    }
}
