//! What the catalog leader does on its own: drops shard groups past their
//! database's retention, and creates the next window's shard group of every
//! database written to now, ahead of time, so that writes crossing a window
//! boundary do not wait on Raft.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::Command;
use crate::liveness::now_ms;
use crate::model::{CatalogData, NodeState, DROP_RECORD_KEEP_MS};
use crate::raft::{NodeId, Raft};

/// How often the leader looks for windows to pre-create.
const TICK: Duration = Duration::from_secs(1);

/// The next window's group is created this long before it starts (at most
/// half a window ahead).
pub const PRECREATE_AHEAD_NS: i64 = 30 * 60 * 1_000_000_000;

/// Databases whose current window has a group (they are being written to)
/// and whose next window, starting within the pre-creation lead, has none:
/// `(database, start of the next window)`.
pub fn windows_to_precreate(state: &CatalogData, now_ns: i64) -> Vec<(String, i64)> {
    let mut out = vec![];
    // With no node up the catalog refuses new groups; asking every second
    // would only grow the log.
    if !state.nodes.values().any(|n| n.state == NodeState::Up) {
        return out;
    }
    for db in state.databases.values() {
        let Some(current) = db.shard_group_for(now_ns) else {
            continue;
        };
        let lead = PRECREATE_AHEAD_NS.min(db.options.shard_group_duration_ns / 2);
        let next = current.end_ns;
        if next - now_ns <= lead && db.shard_group_for(next).is_none() {
            out.push((db.name.clone(), next));
        }
    }
    out
}

/// Whether an `ExpireShardGroups` would change anything now.
pub fn anything_expired(state: &CatalogData, now_ms: i64) -> bool {
    let now_ns = now_ms.saturating_mul(1_000_000);
    state
        .databases
        .values()
        .any(|d| d.shard_groups.iter().any(|g| d.group_expired(g, now_ns)))
        || state
            .dropped_tables
            .iter()
            .any(|d| d.at_ms < now_ms.saturating_sub(DROP_RECORD_KEEP_MS))
}

/// While this member leads: retention every `retention_check`, window
/// pre-creation every second.
pub async fn run(
    raft: Raft,
    node_id: NodeId,
    state: tokio::sync::watch::Receiver<Arc<CatalogData>>,
    retention_check: Duration,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_retention = Instant::now();
    loop {
        tick.tick().await;
        if raft.metrics().borrow().current_leader != Some(node_id) {
            continue;
        }
        let current = state.borrow().clone();
        let now = now_ms();
        if last_retention.elapsed() >= retention_check {
            last_retention = Instant::now();
            if anything_expired(&current, now) {
                tracing::info!("dropping shard groups past their retention");
                if let Err(e) = raft
                    .client_write(Command::ExpireShardGroups { now_ms: now })
                    .await
                {
                    tracing::warn!(error = %e, "retention check could not drop expired groups");
                }
            }
        }
        for (database, start_ns) in windows_to_precreate(&current, now.saturating_mul(1_000_000)) {
            tracing::debug!(%database, start_ns, "creating the next window's shard group");
            let command = Command::CreateShardGroup {
                database,
                time_ns: start_ns,
            };
            if let Err(e) = raft.client_write(command).await {
                tracing::debug!(error = %e, "could not pre-create a shard group");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandResult;
    use crate::model::{DatabaseOptions, HOUR_NS};

    fn catalog(retention_ns: Option<i64>) -> CatalogData {
        let mut c = CatalogData::default();
        c.apply(&Command::RegisterNode {
            id: 1,
            flight_addr: "n1:1".into(),
            at_ms: 0,
            instance: String::new(),
        });
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions {
                retention_ns,
                shard_group_duration_ns: HOUR_NS,
                ..Default::default()
            },
            if_not_exists: false,
        });
        c
    }

    fn create(c: &mut CatalogData, time_ns: i64) {
        let r = c.apply(&Command::CreateShardGroup {
            database: "db".into(),
            time_ns,
        });
        assert!(matches!(r, CommandResult::ShardGroup(_)), "{r:?}");
    }

    #[test]
    fn the_next_window_is_precreated_only_near_its_start_and_only_once() {
        let mut c = catalog(None);
        let now = 10 * HOUR_NS + 5 * 60 * 1_000_000_000;
        assert!(
            windows_to_precreate(&c, now).is_empty(),
            "no group now: idle"
        );
        create(&mut c, now);
        assert!(windows_to_precreate(&c, now).is_empty(), "55 minutes ahead");
        let late = 11 * HOUR_NS - 10 * 60 * 1_000_000_000;
        assert_eq!(
            windows_to_precreate(&c, late),
            vec![("db".to_string(), 11 * HOUR_NS)]
        );
        c.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Down,
            at_ms: 1,
        });
        assert!(
            windows_to_precreate(&c, late).is_empty(),
            "no node is up to hold a group"
        );
        c.apply(&Command::RegisterNode {
            id: 1,
            flight_addr: "n1:1".into(),
            at_ms: 2,
            instance: String::new(),
        });
        create(&mut c, 11 * HOUR_NS);
        assert!(windows_to_precreate(&c, late).is_empty());
    }

    #[test]
    fn expired_groups_are_dropped_and_their_shards_count_as_dropped() {
        let mut c = catalog(Some(2 * HOUR_NS));
        for h in 0..5 {
            create(&mut c, h * HOUR_NS);
        }
        let first_shard = c.databases["db"].shard_groups[0].shards[0].id;
        let now_ms = 5 * HOUR_NS / 1_000_000;
        assert!(anything_expired(&c, now_ms));
        let version = c.version;
        c.apply(&Command::ExpireShardGroups { now_ms });
        // Windows ending at or before 3h are gone: 0-1h, 1-2h, 2-3h.
        let starts: Vec<i64> = c.databases["db"]
            .shard_groups
            .iter()
            .map(|g| g.start_ns / HOUR_NS)
            .collect();
        assert_eq!(starts, vec![3, 4]);
        assert!(c.version > version);
        assert!(c.shard_dropped(first_shard));
        assert!(!c.shard_dropped(c.databases["db"].shard_groups[0].shards[0].id));
        assert!(!c.shard_dropped(c.next_id + 10), "not created yet");
        assert!(!anything_expired(&c, now_ms));
        let version = c.version;
        c.apply(&Command::ExpireShardGroups { now_ms });
        assert_eq!(c.version, version, "nothing to drop, no new version");
    }
}
