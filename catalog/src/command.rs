//! Catalog commands (the Raft log's payload) and how they change
//! [`CatalogData`]. Applying is deterministic: it reads nothing but the state
//! and the command.

use serde::{Deserialize, Serialize};

use crate::model::{
    CatalogData, Column, ColumnKind, Database, DatabaseOptions, DroppedTable, NodeState, Shard,
    ShardGroup, StorageNodeInfo, Table, DROP_RECORD_KEEP_MS,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateDatabase {
        name: String,
        options: DatabaseOptions,
        if_not_exists: bool,
    },
    DropDatabase {
        name: String,
        if_exists: bool,
    },
    /// Creates the database (default options) and table when absent and adds
    /// the columns not yet there. Columns whose name exists with another kind
    /// are reported as conflicts and left alone.
    AddColumns {
        database: String,
        table: String,
        columns: Vec<Column>,
    },
    /// Removes a table; its rows are deleted from the storage nodes, which
    /// learn of it from [`CatalogData::dropped_tables`].
    DropTable {
        database: String,
        table: String,
        if_exists: bool,
        #[serde(default)]
        at_ms: i64,
    },
    /// Drops every shard group that lies wholly before `now_ms` minus its
    /// database's retention (proposed by the catalog leader's retention
    /// check); storage nodes then delete the groups' shards.
    ExpireShardGroups {
        now_ms: i64,
    },
    /// Creates the shard group holding `time_ns` unless it exists already;
    /// either way answers with the group.
    CreateShardGroup {
        database: String,
        time_ns: i64,
    },
    /// Sets the shard key that shard groups created from now on take;
    /// existing groups keep theirs.
    SetShardKey {
        database: String,
        shard_key: Vec<String>,
    },
    /// Takes a storage node out of the cluster: each shard replica it held
    /// moves to a live node that holds none of that shard (the fewest
    /// shards first), marked as filling until copied; the id may not
    /// register again. Refused while the node is up, and when a shard
    /// would be left with no replica unless `force`.
    RemoveNode {
        id: u64,
        #[serde(default)]
        force: bool,
    },
    /// The replica of `shard_id` on `node_id` holds what the others do:
    /// reads may use it.
    ReplicaFilled {
        shard_id: u64,
        node_id: u64,
    },
    /// Sets the consistency level of writes to the database that do not
    /// name one.
    SetWriteConsistency {
        database: String,
        consistency: crate::model::WriteConsistency,
    },
    /// Adds a storage node or updates its address; the node counts as up.
    RegisterNode {
        id: u64,
        flight_addr: String,
        /// The proposer's clock (ms since the epoch) for `state_changed_ms`.
        #[serde(default)]
        at_ms: i64,
        /// The node's data directory id; refused when the id is registered
        /// with another one.
        #[serde(default)]
        instance: String,
    },
    /// Marks a storage node up or down (proposed by the catalog leader when
    /// its heartbeats stop or start again).
    SetNodeState {
        id: u64,
        state: NodeState,
        at_ms: i64,
    },
    /// Adds an API token (its hash); refused when the name is taken.
    CreateToken {
        token: crate::tokens::Token,
    },
    /// Removes an API token: it stops working as soon as coordinators see
    /// the change.
    RevokeToken {
        name: String,
    },
    /// A client's command tagged with an id the client picked, so that a
    /// retry of a command whose answer was lost (its member died, the
    /// leader changed) is applied once: the state machine answers a repeated
    /// id with the result it gave the first time.
    Once {
        request_id: String,
        command: Box<Command>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    ShardGroup(ShardGroup),
    ColumnsAdded {
        conflicts: Vec<ColumnConflict>,
    },
    /// What a node's removal moved.
    NodeRemoved {
        moves: Vec<ReplicaMove>,
    },
    Rejected(Rejection),
}

/// One shard replica of a removed node: where it went (`None`: no live
/// node could take it, the shard has one replica fewer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    pub database: String,
    pub shard_id: u64,
    pub to: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnConflict {
    pub column: String,
    pub existing: ColumnKind,
    pub requested: ColumnKind,
}

/// Why the catalog refused a command; shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    DatabaseExists {
        name: String,
    },
    DatabaseNotFound {
        name: String,
    },
    TableNotFound {
        database: String,
        table: String,
    },
    NoStorageNodes,
    /// Another data directory registered this storage node id.
    NodeIdTaken {
        id: u64,
        addr: String,
    },
    /// Storage nodes are registered, but none is up.
    NoLiveStorageNodes {
        down: Vec<u64>,
    },
    NodeNotFound {
        id: u64,
    },
    TimeOutOfRange {
        time_ns: i64,
    },
    /// A node to remove is still up.
    NodeUp {
        id: u64,
    },
    /// Removing the node would leave these shards with no replica.
    ShardsWouldBeLost {
        id: u64,
        shard_ids: Vec<u64>,
    },
    /// The id belonged to a node removed from the cluster.
    NodeRemoved {
        id: u64,
    },
    TokenExists {
        name: String,
    },
    TokenNotFound {
        name: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::DatabaseExists { name } => write!(f, "database '{name}' already exists"),
            Rejection::DatabaseNotFound { name } => write!(f, "database '{name}' not found"),
            Rejection::TableNotFound { database, table } => {
                write!(f, "table '{database}.{table}' not found")
            }
            Rejection::TimeOutOfRange { time_ns } => write!(
                f,
                "time {time_ns} is too close to the limits of nanosecond timestamps"
            ),
            Rejection::NoLiveStorageNodes { down } => write!(
                f,
                "no storage node is up to place new shards on (down: {})",
                down.iter()
                    .map(|d| format!("node {d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Rejection::NodeNotFound { id } => write!(f, "storage node {id} is not registered"),
            Rejection::NodeIdTaken { id, addr } => write!(
                f,
                "storage node id {id} belongs to another data directory (last at {addr}); \
                 a node whose data is lost joins under a new --node-id"
            ),
            Rejection::NodeUp { id } => write!(
                f,
                "storage node {id} is up; stop it before removing it (its replicas are copied \
                 from the other owners)"
            ),
            Rejection::ShardsWouldBeLost { id, shard_ids } => write!(
                f,
                "storage node {id} holds the only replica of shards {}; removing it loses \
                 their rows (--force to remove it anyway)",
                shard_ids
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Rejection::NodeRemoved { id } => write!(
                f,
                "storage node id {id} was removed from the cluster; a node joins under a new \
                 --node-id"
            ),
            Rejection::TokenExists { name } => write!(f, "a token named '{name}' exists"),
            Rejection::TokenNotFound { name } => write!(f, "no token named '{name}'"),
            Rejection::NoStorageNodes => write!(
                f,
                "no storage nodes are registered with the catalog; start a storage node first"
            ),
        }
    }
}

impl CatalogData {
    fn changed(&mut self) {
        self.version += 1;
    }

    /// Applies one command, bumping the version when the state changed.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::CreateDatabase {
                name,
                options,
                if_not_exists,
            } => {
                if self.databases.contains_key(name) {
                    return if *if_not_exists {
                        CommandResult::Done
                    } else {
                        CommandResult::Rejected(Rejection::DatabaseExists { name: name.clone() })
                    };
                }
                self.databases
                    .insert(name.clone(), new_database(name, options.clone()));
                self.changed();
                CommandResult::Done
            }
            Command::DropDatabase { name, if_exists } => {
                if self.databases.remove(name).is_some() {
                    self.changed();
                    CommandResult::Done
                } else if *if_exists {
                    CommandResult::Done
                } else {
                    CommandResult::Rejected(Rejection::DatabaseNotFound { name: name.clone() })
                }
            }
            Command::AddColumns {
                database,
                table,
                columns,
            } => self.add_columns(database, table, columns),
            Command::DropTable {
                database,
                table,
                if_exists,
                at_ms,
            } => {
                let removed = self.databases.get_mut(database).and_then(|db| {
                    db.tables.remove(table)?;
                    Some(
                        db.shard_groups
                            .iter()
                            .flat_map(|g| g.shards.iter().map(|s| s.id))
                            .collect::<Vec<u64>>(),
                    )
                });
                if let Some(shard_ids) = removed {
                    self.changed();
                    self.dropped_tables.push(DroppedTable {
                        database: database.clone(),
                        table: table.clone(),
                        version: self.version,
                        at_ms: *at_ms,
                        shard_ids,
                    });
                    CommandResult::Done
                } else if *if_exists {
                    CommandResult::Done
                } else {
                    CommandResult::Rejected(Rejection::TableNotFound {
                        database: database.clone(),
                        table: table.clone(),
                    })
                }
            }
            Command::CreateShardGroup { database, time_ns } => {
                self.create_shard_group(database, *time_ns)
            }
            Command::ExpireShardGroups { now_ms } => self.expire(*now_ms),
            Command::SetShardKey {
                database,
                shard_key,
            } => match self.databases.get_mut(database) {
                Some(db) => {
                    if db.options.shard_key != *shard_key {
                        db.options.shard_key = shard_key.clone();
                        self.changed();
                    }
                    CommandResult::Done
                }
                None => CommandResult::Rejected(Rejection::DatabaseNotFound {
                    name: database.clone(),
                }),
            },
            Command::SetWriteConsistency {
                database,
                consistency,
            } => match self.databases.get_mut(database) {
                Some(db) => {
                    if db.options.consistency != *consistency {
                        db.options.consistency = *consistency;
                        self.changed();
                    }
                    CommandResult::Done
                }
                None => CommandResult::Rejected(Rejection::DatabaseNotFound {
                    name: database.clone(),
                }),
            },
            // The state machine answers repeated ids; applied on its own,
            // the command inside is simply applied.
            Command::Once { command, .. } => self.apply(command),
            Command::CreateToken { token } => {
                if self.tokens.contains_key(&token.name) {
                    return CommandResult::Rejected(Rejection::TokenExists {
                        name: token.name.clone(),
                    });
                }
                self.tokens.insert(token.name.clone(), token.clone());
                self.changed();
                CommandResult::Done
            }
            Command::RevokeToken { name } => match self.tokens.remove(name) {
                Some(_) => {
                    self.changed();
                    CommandResult::Done
                }
                None => CommandResult::Rejected(Rejection::TokenNotFound { name: name.clone() }),
            },
            Command::RegisterNode {
                id,
                flight_addr,
                at_ms,
                instance,
            } => {
                if self.removed_nodes.contains(id) {
                    return CommandResult::Rejected(Rejection::NodeRemoved { id: *id });
                }
                if let Some(n) = self.nodes.get(id) {
                    if !n.instance.is_empty() && !instance.is_empty() && n.instance != *instance {
                        return CommandResult::Rejected(Rejection::NodeIdTaken {
                            id: *id,
                            addr: n.flight_addr.clone(),
                        });
                    }
                }
                let node = self.nodes.entry(*id).or_insert_with(|| StorageNodeInfo {
                    id: *id,
                    flight_addr: String::new(),
                    state: NodeState::Down,
                    state_changed_ms: 0,
                    instance: String::new(),
                });
                let before = node.clone();
                node.flight_addr = flight_addr.clone();
                if !instance.is_empty() {
                    node.instance = instance.clone();
                }
                if node.state != NodeState::Up {
                    node.state = NodeState::Up;
                    node.state_changed_ms = *at_ms;
                }
                if *node != before {
                    self.changed();
                }
                CommandResult::Done
            }
            Command::RemoveNode { id, force } => self.remove_node(*id, *force),
            Command::ReplicaFilled { shard_id, node_id } => {
                let shard = self
                    .databases
                    .values_mut()
                    .flat_map(|d| d.shard_groups.iter_mut())
                    .flat_map(|g| g.shards.iter_mut())
                    .find(|s| s.id == *shard_id);
                if let Some(s) = shard {
                    if s.filling.contains(node_id) {
                        s.filling.retain(|n| n != node_id);
                        self.changed();
                    }
                }
                CommandResult::Done
            }
            Command::SetNodeState { id, state, at_ms } => match self.nodes.get_mut(id) {
                Some(node) if node.state != *state => {
                    node.state = *state;
                    node.state_changed_ms = *at_ms;
                    self.changed();
                    CommandResult::Done
                }
                Some(_) => CommandResult::Done,
                None => CommandResult::Rejected(Rejection::NodeNotFound { id: *id }),
            },
        }
    }

    fn remove_node(&mut self, id: u64, force: bool) -> CommandResult {
        match self.nodes.get(&id) {
            None if self.removed_nodes.contains(&id) => {
                return CommandResult::Rejected(Rejection::NodeRemoved { id })
            }
            None => return CommandResult::Rejected(Rejection::NodeNotFound { id }),
            Some(n) if n.state == NodeState::Up => {
                return CommandResult::Rejected(Rejection::NodeUp { id })
            }
            Some(_) => {}
        }
        let alone: Vec<u64> = self
            .databases
            .values()
            .flat_map(|d| d.shard_groups.iter())
            .flat_map(|g| g.shards.iter())
            .filter(|s| s.owners == [id])
            .map(|s| s.id)
            .collect();
        if !alone.is_empty() && !force {
            return CommandResult::Rejected(Rejection::ShardsWouldBeLost {
                id,
                shard_ids: alone,
            });
        }
        let live: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Up && n.id != id)
            .map(|n| n.id)
            .collect();
        let mut load = self.shards_per_node();
        let mut moves = vec![];
        for db in self.databases.values_mut() {
            for g in &mut db.shard_groups {
                for s in &mut g.shards {
                    let Some(at) = s.owners.iter().position(|o| *o == id) else {
                        continue;
                    };
                    let to = live
                        .iter()
                        .filter(|n| !s.owners.contains(n))
                        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))
                        .copied();
                    s.filling.retain(|n| *n != id);
                    match to {
                        Some(to) => {
                            *load.entry(to).or_default() += 1;
                            s.owners.remove(at);
                            s.owners.push(to);
                            // With no other owner there is nothing to copy.
                            if s.owners.len() > 1 {
                                s.filling.push(to);
                            }
                        }
                        None => {
                            s.owners.remove(at);
                        }
                    }
                    moves.push(ReplicaMove {
                        database: db.name.clone(),
                        shard_id: s.id,
                        to,
                    });
                }
            }
        }
        self.nodes.remove(&id);
        self.removed_nodes.insert(id);
        self.changed();
        CommandResult::NodeRemoved { moves }
    }

    fn expire(&mut self, now_ms: i64) -> CommandResult {
        let now_ns = now_ms.saturating_mul(1_000_000);
        let mut changed = false;
        for db in self.databases.values_mut() {
            let before = db.shard_groups.len();
            let expired: Vec<bool> = db
                .shard_groups
                .iter()
                .map(|g| db.group_expired(g, now_ns))
                .collect();
            let mut flags = expired.into_iter();
            db.shard_groups.retain(|_| !flags.next().unwrap_or(false));
            changed |= db.shard_groups.len() != before;
        }
        let keep_from = now_ms.saturating_sub(DROP_RECORD_KEEP_MS);
        let records = self.dropped_tables.len();
        self.dropped_tables.retain(|d| d.at_ms >= keep_from);
        changed |= self.dropped_tables.len() != records;
        if changed {
            self.changed();
        }
        CommandResult::Done
    }

    fn add_columns(&mut self, database: &str, table: &str, columns: &[Column]) -> CommandResult {
        let mut changed = false;
        let db = self
            .databases
            .entry(database.to_string())
            .or_insert_with(|| {
                changed = true;
                new_database(database, DatabaseOptions::default())
            });
        let t = db.tables.entry(table.to_string()).or_insert_with(|| {
            changed = true;
            Table::new(table)
        });
        let mut conflicts = vec![];
        for c in columns {
            match t.column(&c.name) {
                Some(existing) if existing.kind == c.kind => {}
                Some(existing) => conflicts.push(ColumnConflict {
                    column: c.name.clone(),
                    existing: existing.kind,
                    requested: c.kind,
                }),
                None => {
                    t.columns.push(c.clone());
                    changed = true;
                }
            }
        }
        if changed {
            self.changed();
        }
        CommandResult::ColumnsAdded { conflicts }
    }

    fn create_shard_group(&mut self, database: &str, time_ns: i64) -> CommandResult {
        let Some(db) = self.databases.get(database) else {
            return CommandResult::Rejected(Rejection::DatabaseNotFound {
                name: database.to_string(),
            });
        };
        if let Some(g) = db.shard_group_for(time_ns) {
            return CommandResult::ShardGroup(g.clone());
        }
        if self.nodes.is_empty() {
            return CommandResult::Rejected(Rejection::NoStorageNodes);
        }
        let live: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.id)
            .collect();
        if live.is_empty() {
            return CommandResult::Rejected(Rejection::NoLiveStorageNodes {
                down: self.nodes.keys().copied().collect(),
            });
        }
        let Some((start_ns, end_ns)) = db.window(time_ns) else {
            return CommandResult::Rejected(Rejection::TimeOutOfRange { time_ns });
        };
        let down: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Down)
            .map(|n| n.id)
            .collect();
        // Replicas a live node cannot take go to down nodes, which receive
        // their writes through hinted handoff once back: a node's outage
        // does not lower the replication factor of the data written
        // meanwhile.
        let rf = (db.options.replication_factor.max(1) as usize).min(self.nodes.len());
        let n_shards = db
            .options
            .shards_per_group
            .map(|n| n.max(1) as usize)
            .unwrap_or_else(|| (live.len() / rf).max(1));

        // Live nodes first, each shard's replicas on distinct nodes, every
        // replica on the node that holds the fewest of this group's
        // replicas, so a window's shards (and the work of writing and
        // querying it) spread over every node; among those, the node that
        // owns the fewest shards overall, so that nodes added later or back
        // from an outage fill up first. Ties go round the nodes starting at
        // a place that moves with each group, so a shard key's rows do not
        // land on one node in every window.
        let mut load = self.shards_per_node();
        let mut in_group: std::collections::BTreeMap<u64, usize> = Default::default();
        let group_id = self.next_id;
        self.next_id += 1;
        let start = group_id as usize % live.len();
        let turn = |n: &u64| {
            let i = live.iter().position(|l| l == n).unwrap_or(0);
            (i + live.len() - start) % live.len()
        };
        let mut shards = Vec::with_capacity(n_shards);
        for _ in 0..n_shards {
            let mut owners: Vec<u64> = Vec::with_capacity(rf);
            for _ in 0..rf {
                let pick = [&live, &down]
                    .into_iter()
                    .find_map(|nodes| {
                        nodes
                            .iter()
                            .filter(|n| !owners.contains(n))
                            .min_by_key(|n| {
                                (
                                    in_group.get(n).copied().unwrap_or(0),
                                    load.get(n).copied().unwrap_or(0),
                                    turn(n),
                                )
                            })
                    })
                    .copied()
                    .expect("rf is at most the number of nodes");
                *load.entry(pick).or_default() += 1;
                *in_group.entry(pick).or_default() += 1;
                owners.push(pick);
            }
            shards.push(Shard {
                id: self.next_id,
                owners,
                filling: vec![],
            });
            self.next_id += 1;
        }
        let db = self.databases.get_mut(database).expect("checked above");
        let group = ShardGroup {
            id: group_id,
            start_ns,
            end_ns,
            shards,
            shard_key: db.options.shard_key.clone(),
        };
        let pos = db
            .shard_groups
            .partition_point(|g| g.start_ns < group.start_ns);
        db.shard_groups.insert(pos, group.clone());
        self.changed();
        CommandResult::ShardGroup(group)
    }
}

fn new_database(name: &str, options: DatabaseOptions) -> Database {
    Database {
        name: name.to_string(),
        options,
        tables: Default::default(),
        shard_groups: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldType, HOUR_NS};

    fn with_nodes(n: u64) -> CatalogData {
        let mut c = CatalogData::default();
        for id in 1..=n {
            c.apply(&Command::RegisterNode {
                id,
                flight_addr: format!("127.0.0.1:{}", 9000 + id),
                at_ms: 0,
                instance: String::new(),
            });
        }
        c
    }

    #[test]
    fn tokens_are_created_once_by_name_and_revoked() {
        use crate::tokens::{hash, Grant, Token};
        let mut c = CatalogData::default();
        let token = Token {
            name: "reader".into(),
            hash: hash("t"),
            grants: vec![Grant::parse("db:read").unwrap()],
            created_ms: 1,
        };
        let create = Command::CreateToken {
            token: token.clone(),
        };
        assert_eq!(c.apply(&create), CommandResult::Done);
        let version = c.version;
        assert_eq!(
            c.apply(&create),
            CommandResult::Rejected(Rejection::TokenExists {
                name: "reader".into()
            })
        );
        assert_eq!(c.version, version);
        assert_eq!(c.tokens["reader"], token);
        // Only the hash travels in the state.
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(&hash("t")));
        let revoke = Command::RevokeToken {
            name: "reader".into(),
        };
        assert_eq!(c.apply(&revoke), CommandResult::Done);
        assert!(c.tokens.is_empty());
        assert_eq!(
            c.apply(&revoke),
            CommandResult::Rejected(Rejection::TokenNotFound {
                name: "reader".into()
            })
        );
    }

    #[test]
    fn removing_a_node_moves_its_replicas_to_live_nodes_and_retires_its_id() {
        let mut c = with_nodes(4);
        for (name, rf) in [("two", 2), ("one", 1)] {
            c.apply(&Command::CreateDatabase {
                name: name.into(),
                options: DatabaseOptions {
                    shard_group_duration_ns: HOUR_NS,
                    replication_factor: rf,
                    shards_per_group: Some(4),
                    ..Default::default()
                },
                if_not_exists: false,
            });
            c.apply(&Command::CreateShardGroup {
                database: name.into(),
                time_ns: 0,
            });
        }
        let remove = Command::RemoveNode {
            id: 4,
            force: false,
        };
        assert_eq!(
            c.apply(&remove),
            CommandResult::Rejected(Rejection::NodeUp { id: 4 })
        );
        c.apply(&Command::SetNodeState {
            id: 4,
            state: NodeState::Down,
            at_ms: 1,
        });
        // Node 4 holds the only replica of one shard of `one`.
        let CommandResult::Rejected(Rejection::ShardsWouldBeLost { shard_ids, .. }) =
            c.apply(&remove)
        else {
            panic!("expected a refusal");
        };
        assert_eq!(shard_ids.len(), 1);
        let CommandResult::NodeRemoved { moves } =
            c.apply(&Command::RemoveNode { id: 4, force: true })
        else {
            panic!("expected moves");
        };
        assert_eq!(
            moves.len(),
            3,
            "two replicas of `two`, one of `one`: {moves:?}"
        );
        assert!(!c.nodes.contains_key(&4));
        for db in c.databases.values() {
            for s in &db.shard_groups[0].shards {
                assert!(!s.owners.contains(&4), "{s:?}");
                assert_eq!(s.owners.len(), db.options.replication_factor as usize);
                let unique: std::collections::BTreeSet<_> = s.owners.iter().collect();
                assert_eq!(unique.len(), s.owners.len());
                // A moved replica of `two` fills from the other; `one`'s
                // shard had no other replica to copy from.
                match db.name.as_str() {
                    "one" => assert!(s.filling.is_empty()),
                    _ => assert!(s.filling.iter().all(|f| s.owners.contains(f))),
                }
            }
        }
        let filling: Vec<(u64, u64)> = c.databases["two"].shard_groups[0]
            .shards
            .iter()
            .flat_map(|s| s.filling.iter().map(move |n| (s.id, *n)))
            .collect();
        assert_eq!(filling.len(), 2);
        for (shard_id, node_id) in filling {
            c.apply(&Command::ReplicaFilled { shard_id, node_id });
        }
        assert!(c.databases["two"].shard_groups[0]
            .shards
            .iter()
            .all(|s| s.filling.is_empty()));
        // The id may not come back.
        assert_eq!(
            c.apply(&Command::RegisterNode {
                id: 4,
                flight_addr: "127.0.0.1:9004".into(),
                at_ms: 2,
                instance: String::new(),
            }),
            CommandResult::Rejected(Rejection::NodeRemoved { id: 4 })
        );
    }

    #[test]
    fn shard_group_creation_is_idempotent_and_spreads_shards() {
        let mut c = with_nodes(3);
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions {
                shard_group_duration_ns: HOUR_NS,
                ..Default::default()
            },
            if_not_exists: false,
        });
        let CommandResult::ShardGroup(g1) = c.apply(&Command::CreateShardGroup {
            database: "db".into(),
            time_ns: 10,
        }) else {
            panic!("expected a group")
        };
        let version = c.version;
        let CommandResult::ShardGroup(again) = c.apply(&Command::CreateShardGroup {
            database: "db".into(),
            time_ns: HOUR_NS - 1,
        }) else {
            panic!("expected a group")
        };
        assert_eq!(g1, again);
        assert_eq!(c.version, version, "no change, no new version");
        assert_eq!(g1.shards.len(), 3);
        let mut owners: Vec<u64> = g1.shards.iter().map(|s| s.owners[0]).collect();
        owners.sort();
        assert_eq!(owners, vec![1, 2, 3]);
        assert_eq!((g1.start_ns, g1.end_ns), (0, HOUR_NS));
    }

    #[test]
    fn replicas_land_on_distinct_nodes() {
        let mut c = with_nodes(3);
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions {
                replication_factor: 2,
                shards_per_group: Some(3),
                ..Default::default()
            },
            if_not_exists: false,
        });
        let CommandResult::ShardGroup(g) = c.apply(&Command::CreateShardGroup {
            database: "db".into(),
            time_ns: 0,
        }) else {
            panic!("expected a group")
        };
        for s in &g.shards {
            assert_eq!(s.owners.len(), 2);
            assert_ne!(s.owners[0], s.owners[1]);
        }
    }

    fn group(c: &mut CatalogData, time_ns: i64) -> ShardGroup {
        match c.apply(&Command::CreateShardGroup {
            database: "db".into(),
            time_ns,
        }) {
            CommandResult::ShardGroup(g) => g,
            other => panic!("expected a group, got {other:?}"),
        }
    }

    #[test]
    fn a_new_node_takes_its_share_of_a_group_not_all_of_it() {
        let mut c = with_nodes(2);
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions {
                shard_group_duration_ns: HOUR_NS,
                replication_factor: 1,
                shards_per_group: Some(3),
                ..Default::default()
            },
            if_not_exists: false,
        });
        for h in 0..4 {
            group(&mut c, h * HOUR_NS);
        }
        c.apply(&Command::RegisterNode {
            id: 3,
            flight_addr: "127.0.0.1:9003".into(),
            at_ms: 1,
            instance: String::new(),
        });
        let g = group(&mut c, 4 * HOUR_NS);
        let mut owners: Vec<u64> = g.shards.iter().map(|s| s.owners[0]).collect();
        assert_eq!(owners[0], 3, "the empty node goes first: {g:?}");
        owners.sort();
        assert_eq!(owners, vec![1, 2, 3], "{g:?}");
    }

    #[test]
    fn placement_skips_down_nodes_and_fills_the_emptiest_first() {
        let mut c = with_nodes(3);
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions {
                shard_group_duration_ns: HOUR_NS,
                replication_factor: 2,
                shards_per_group: Some(3),
                ..Default::default()
            },
            if_not_exists: false,
        });
        let g = group(&mut c, 0);
        assert_eq!(
            c.shards_per_node().values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
        assert!(g.shards.iter().all(|s| s.owners[0] != s.owners[1]));

        c.apply(&Command::SetNodeState {
            id: 2,
            state: NodeState::Down,
            at_ms: 5,
        });
        assert_eq!(c.nodes[&2].state_changed_ms, 5);
        let g = group(&mut c, HOUR_NS);
        for s in &g.shards {
            assert!(!s.owners.contains(&2), "{g:?}");
            assert_eq!(s.owners.len(), 2);
        }
        c.apply(&Command::RegisterNode {
            id: 2,
            flight_addr: "127.0.0.1:9002".into(),
            at_ms: 9,
            instance: String::new(),
        });
        assert!(c.node_is_up(2));
        assert_eq!(c.nodes[&2].state_changed_ms, 9);
        // Back up, node 2 owns the fewest shards: it takes the group's first
        // replica, and the group still spreads evenly over the three nodes.
        let g = group(&mut c, 2 * HOUR_NS);
        assert_eq!(g.shards[0].owners[0], 2, "{g:?}");
        for id in 1..=3 {
            let held = g.shards.iter().filter(|s| s.owners.contains(&id)).count();
            assert_eq!(held, 2, "node {id}: {g:?}");
        }

        // Replicas no live node can take go to a down node (it receives
        // them through hinted handoff): the factor does not drop.
        c.databases
            .get_mut("db")
            .unwrap()
            .options
            .replication_factor = 3;
        c.apply(&Command::SetNodeState {
            id: 3,
            state: NodeState::Down,
            at_ms: 11,
        });
        let g = group(&mut c, 5 * HOUR_NS);
        for s in &g.shards {
            assert_eq!(s.owners.len(), 3, "{g:?}");
            assert_eq!(s.owners[2], 3, "the down node comes last: {g:?}");
        }
        c.apply(&Command::RegisterNode {
            id: 3,
            flight_addr: "127.0.0.1:9003".into(),
            at_ms: 12,
            instance: String::new(),
        });
        c.databases
            .get_mut("db")
            .unwrap()
            .options
            .replication_factor = 2;

        for id in 1..=3 {
            c.apply(&Command::SetNodeState {
                id,
                state: NodeState::Down,
                at_ms: 10,
            });
        }
        assert_eq!(
            c.apply(&Command::CreateShardGroup {
                database: "db".into(),
                time_ns: 3 * HOUR_NS
            }),
            CommandResult::Rejected(Rejection::NoLiveStorageNodes {
                down: vec![1, 2, 3]
            })
        );
        // An existing window is still answered.
        assert_eq!(group(&mut c, 0).start_ns, 0);
    }

    #[test]
    fn add_columns_reports_type_conflicts() {
        let mut c = CatalogData::default();
        let float = |n: &str| Column {
            name: n.into(),
            kind: ColumnKind::Field(FieldType::Float),
        };
        c.apply(&Command::AddColumns {
            database: "db".into(),
            table: "cpu".into(),
            columns: vec![float("usage")],
        });
        let r = c.apply(&Command::AddColumns {
            database: "db".into(),
            table: "cpu".into(),
            columns: vec![
                Column {
                    name: "usage".into(),
                    kind: ColumnKind::Field(FieldType::Integer),
                },
                float("idle"),
            ],
        });
        assert_eq!(
            r,
            CommandResult::ColumnsAdded {
                conflicts: vec![ColumnConflict {
                    column: "usage".into(),
                    existing: ColumnKind::Field(FieldType::Float),
                    requested: ColumnKind::Field(FieldType::Integer),
                }]
            }
        );
        let t = &c.databases["db"].tables["cpu"];
        let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["time", "usage", "idle"]);
    }

    #[test]
    fn shard_group_needs_nodes() {
        let mut c = CatalogData::default();
        c.apply(&Command::CreateDatabase {
            name: "db".into(),
            options: DatabaseOptions::default(),
            if_not_exists: false,
        });
        assert_eq!(
            c.apply(&Command::CreateShardGroup {
                database: "db".into(),
                time_ns: 0
            }),
            CommandResult::Rejected(Rejection::NoStorageNodes)
        );
    }
}
