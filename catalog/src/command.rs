//! Catalog commands (the Raft log's payload) and how they change
//! [`CatalogData`]. Applying is deterministic: it reads nothing but the state
//! and the command.

use serde::{Deserialize, Serialize};

use crate::model::{
    CatalogData, Column, ColumnKind, Database, DatabaseOptions, Shard, ShardGroup, StorageNodeInfo,
    Table,
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
    DropTable {
        database: String,
        table: String,
        if_exists: bool,
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
    /// Adds a storage node or updates its address.
    RegisterNode {
        id: u64,
        flight_addr: String,
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
    ColumnsAdded { conflicts: Vec<ColumnConflict> },
    Rejected(Rejection),
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
    DatabaseExists { name: String },
    DatabaseNotFound { name: String },
    TableNotFound { database: String, table: String },
    NoStorageNodes,
    TimeOutOfRange { time_ns: i64 },
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
            } => {
                let removed = self
                    .databases
                    .get_mut(database)
                    .and_then(|db| db.tables.remove(table))
                    .is_some();
                if removed {
                    self.changed();
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
            // The state machine answers repeated ids; applied on its own,
            // the command inside is simply applied.
            Command::Once { command, .. } => self.apply(command),
            Command::RegisterNode { id, flight_addr } => {
                let info = StorageNodeInfo {
                    id: *id,
                    flight_addr: flight_addr.clone(),
                };
                if self.nodes.get(id) != Some(&info) {
                    self.nodes.insert(*id, info);
                    self.changed();
                }
                CommandResult::Done
            }
        }
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
        let node_ids: Vec<u64> = self.nodes.keys().copied().collect();
        let Some((start_ns, end_ns)) = db.window(time_ns) else {
            return CommandResult::Rejected(Rejection::TimeOutOfRange { time_ns });
        };
        let rf = (db.options.replication_factor.max(1) as usize).min(node_ids.len());
        let n_shards = db
            .options
            .shards_per_group
            .map(|n| n.max(1) as usize)
            .unwrap_or_else(|| (node_ids.len() / rf).max(1));

        let group_id = self.next_id;
        self.next_id += 1;
        // Rotate the starting node per group so that shards, and with them
        // load, spread over all nodes as groups come and go.
        let base = group_id as usize % node_ids.len();
        let mut shards = Vec::with_capacity(n_shards);
        for i in 0..n_shards {
            let owners = (0..rf)
                .map(|r| node_ids[(base + i * rf + r) % node_ids.len()])
                .collect();
            shards.push(Shard {
                id: self.next_id,
                owners,
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
            });
        }
        c
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
