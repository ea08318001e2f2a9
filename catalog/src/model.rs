//! The catalog's data: databases, tables and their columns, shard groups,
//! shards with their replica owners, and storage nodes.
//!
//! Everything here is plain data that the Raft state machine changes only
//! through [`CatalogData::apply`], so every voter computes the same result
//! from the same log.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Nanoseconds in one hour.
pub const HOUR_NS: i64 = 3_600_000_000_000;
/// Nanoseconds in one day.
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// Name of the time column every table has.
pub const TIME_COLUMN: &str = "time";

/// The Arrow type of tag columns.
pub fn tag_data_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow type of the time column: nanoseconds, UTC, no zone attached (as
/// InfluxDB 3 does), so that `date_bin`/`date_trunc` and string literals
/// compare without casts.
pub fn time_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

/// The whole catalog state, versioned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogData {
    /// Bumped by every applied command that changed something.
    pub version: u64,
    pub databases: BTreeMap<String, Database>,
    pub nodes: BTreeMap<u64, StorageNodeInfo>,
    /// Next id handed to a shard group or shard (ids are never reused).
    pub next_id: u64,
    /// Tables dropped recently, for the storage nodes to delete their rows
    /// (kept for [`DROP_RECORD_KEEP_MS`]). Dropped shards need no record:
    /// an id below `next_id` that no group holds was dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_tables: Vec<DroppedTable>,
    /// Storage nodes removed from the cluster: their ids may not register
    /// again (their data was moved to other nodes).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub removed_nodes: std::collections::BTreeSet<u64>,
    /// API tokens by name (hashes only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, crate::tokens::Token>,
}

/// How long the catalog remembers a dropped table for storage nodes that
/// were down when it was dropped.
pub const DROP_RECORD_KEEP_MS: i64 = 7 * 24 * 3_600_000;

/// A `DROP TABLE`: the rows of `table` in these shards, as they were when
/// the catalog reached `version`, are to be deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedTable {
    pub database: String,
    pub table: String,
    /// The catalog version the drop produced.
    pub version: u64,
    pub at_ms: i64,
    pub shard_ids: Vec<u64>,
}

/// A storage node as registered with the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNodeInfo {
    pub id: u64,
    /// Address of the node's Flight service, `host:port`.
    pub flight_addr: String,
    /// Whether the node heartbeats within its timeout, as the catalog
    /// leader last decided.
    #[serde(default)]
    pub state: NodeState,
    /// When `state` last changed (milliseconds since the Unix epoch, by the
    /// clock of the leader that decided it); 0 if never.
    #[serde(default)]
    pub state_changed_ms: i64,
    /// Names the node's data directory (empty for nodes registered before
    /// it was recorded): another directory may not take over the id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    #[default]
    Up,
    Down,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

impl CatalogData {
    /// Shards each storage node owns, over every database and group.
    pub fn shards_per_node(&self) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for db in self.databases.values() {
            for g in &db.shard_groups {
                for s in &g.shards {
                    for o in &s.owners {
                        *counts.entry(*o).or_default() += 1;
                    }
                }
            }
        }
        counts
    }

    /// Whether `shard_id` was created and has been dropped since (with its
    /// group, by retention, or with its database): ids are handed out once,
    /// so one below `next_id` that no group holds is gone for good.
    pub fn shard_dropped(&self, shard_id: u64) -> bool {
        shard_id < self.next_id && !self.shard_exists(shard_id)
    }

    pub fn shard_exists(&self, shard_id: u64) -> bool {
        self.databases.values().any(|d| {
            d.shard_groups
                .iter()
                .any(|g| g.shards.iter().any(|s| s.id == shard_id))
        })
    }

    /// Whether the catalog counts the node as up (unknown nodes are not).
    pub fn node_is_up(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.state == NodeState::Up)
    }
}

/// Options a database is created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseOptions {
    /// Rows older than this are rejected and eventually dropped; `None` keeps
    /// data forever.
    pub retention_ns: Option<i64>,
    /// Width of one shard group's time window.
    pub shard_group_duration_ns: i64,
    pub replication_factor: u32,
    /// Shards per shard group; `None` lets the catalog choose from the number
    /// of storage nodes at the time a group is created.
    pub shards_per_group: Option<u32>,
    /// Tags whose values pick a row's shard (rows with equal values share
    /// one); empty: the whole series key does. New shard groups take it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_key: Vec<String>,
    /// How many owners of a shard must take a write before it is
    /// acknowledged, when the request does not say.
    #[serde(default)]
    pub consistency: WriteConsistency,
}

/// How many owners of each shard must take a write before it is
/// acknowledged (InfluxDB Enterprise's levels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteConsistency {
    /// Durable anywhere: on an owner or queued for one (hinted handoff).
    Any,
    /// On one owner.
    #[default]
    One,
    /// On a majority of the owners.
    Quorum,
    /// On every owner.
    All,
}

impl WriteConsistency {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "any" => Some(Self::Any),
            "one" => Some(Self::One),
            "quorum" => Some(Self::Quorum),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::One => "one",
            Self::Quorum => "quorum",
            Self::All => "all",
        }
    }

    /// Owners that must hold the write itself (not a hint of it).
    pub fn required(self, owners: usize) -> usize {
        match self {
            Self::Any => 0,
            Self::One => 1.min(owners),
            Self::Quorum => owners / 2 + 1,
            Self::All => owners,
        }
    }
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self::with_retention(None)
    }
}

impl DatabaseOptions {
    /// Options for a retention period, with the shard-group duration InfluxDB
    /// would pick for it: 1h under two days, 1d under six months, else 7d.
    pub fn with_retention(retention_ns: Option<i64>) -> Self {
        Self {
            retention_ns,
            shard_group_duration_ns: default_shard_group_duration(retention_ns),
            replication_factor: 1,
            shards_per_group: None,
            shard_key: vec![],
            consistency: WriteConsistency::default(),
        }
    }
}

/// InfluxDB's rule for the shard-group duration of a retention period.
pub fn default_shard_group_duration(retention_ns: Option<i64>) -> i64 {
    match retention_ns {
        Some(r) if r < 2 * DAY_NS => HOUR_NS,
        Some(r) if r < 180 * DAY_NS => DAY_NS,
        _ => 7 * DAY_NS,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub options: DatabaseOptions,
    pub tables: BTreeMap<String, Table>,
    /// Ordered by `start_ns`.
    pub shard_groups: Vec<ShardGroup>,
}

impl Database {
    /// The `[start, end)` of the shard-group window that holds `time_ns`;
    /// `None` when the window would reach past the representable range of
    /// nanosecond timestamps.
    pub fn window(&self, time_ns: i64) -> Option<(i64, i64)> {
        let d = self.options.shard_group_duration_ns;
        let start = time_ns.div_euclid(d).checked_mul(d)?;
        Some((start, start.checked_add(d)?))
    }

    /// Whether all of `group` lies before `now_ns - retention`: its rows
    /// are past keeping and the group is dropped.
    pub fn group_expired(&self, group: &ShardGroup, now_ns: i64) -> bool {
        self.options
            .retention_ns
            .is_some_and(|r| group.end_ns <= now_ns.saturating_sub(r))
    }

    pub fn shard_group_for(&self, time_ns: i64) -> Option<&ShardGroup> {
        self.shard_groups
            .iter()
            .find(|g| g.start_ns <= time_ns && time_ns < g.end_ns)
    }

    /// Shard groups whose window overlaps `[min_ns, max_ns]` (inclusive).
    pub fn shard_groups_overlapping(
        &self,
        min_ns: i64,
        max_ns: i64,
    ) -> impl Iterator<Item = &ShardGroup> {
        self.shard_groups
            .iter()
            .filter(move |g| g.start_ns <= max_ns && min_ns < g.end_ns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldType {
    Float,
    Integer,
    UInteger,
    String,
    Boolean,
}

impl FieldType {
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::Float => DataType::Float64,
            FieldType::Integer => DataType::Int64,
            FieldType::UInteger => DataType::UInt64,
            FieldType::String => DataType::Utf8,
            FieldType::Boolean => DataType::Boolean,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::UInteger => "unsigned",
            FieldType::String => "string",
            FieldType::Boolean => "boolean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnKind {
    Time,
    Tag,
    Field(FieldType),
}

impl ColumnKind {
    pub fn data_type(self) -> DataType {
        match self {
            ColumnKind::Time => time_data_type(),
            ColumnKind::Tag => tag_data_type(),
            ColumnKind::Field(f) => f.data_type(),
        }
    }

    pub fn describe(self) -> String {
        match self {
            ColumnKind::Time => "time".to_string(),
            ColumnKind::Tag => "tag".to_string(),
            ColumnKind::Field(f) => format!("{} field", f.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// A table (InfluxDB: measurement). Columns keep the order they were added
/// in; `time` is always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            columns: vec![Column {
                name: TIME_COLUMN.to_string(),
                kind: ColumnKind::Time,
            }],
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema of this table. Only `time` is non-nullable.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.data_type(), c.kind != ColumnKind::Time))
            .collect();
        Arc::new(Schema::new(fields))
    }

    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.kind == ColumnKind::Tag)
            .map(|c| c.name.as_str())
    }
}

/// One time window of a database, split into shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGroup {
    pub id: u64,
    pub start_ns: i64,
    /// Exclusive.
    pub end_ns: i64,
    pub shards: Vec<Shard>,
    /// The database's shard key when the group was created: what
    /// [`shard_key_hash`] hashes to pick a shard (the series key if empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_key: Vec<String>,
}

impl ShardGroup {
    /// The shard a series with this hash goes to.
    pub fn shard_for_hash(&self, hash: u64) -> &Shard {
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }
}

/// FNV-1a over length-prefixed parts: stable across processes and
/// versions, so every coordinator routes a row to the same shard.
pub fn fnv_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for p in parts {
        eat(&(p.len() as u64).to_le_bytes());
        eat(p);
    }
    h
}

/// The hash of a row's shard-key values, in the key's order; a tag the row
/// lacks counts as the empty string (as InfluxDB reads a missing tag).
pub fn shard_key_hash<'a>(values: impl IntoIterator<Item = &'a str>) -> u64 {
    fnv_hash(values.into_iter().map(str::as_bytes))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: u64,
    /// Storage node ids holding a replica, first is preferred for reads.
    pub owners: Vec<u64>,
    /// Owners given the shard by a node's removal whose copy is still
    /// being filled from the other replicas: they take writes, and reads
    /// go to them only when no other replica answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filling: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_group_duration_follows_retention() {
        assert_eq!(default_shard_group_duration(None), 7 * DAY_NS);
        assert_eq!(default_shard_group_duration(Some(HOUR_NS)), HOUR_NS);
        assert_eq!(default_shard_group_duration(Some(3 * DAY_NS)), DAY_NS);
        assert_eq!(default_shard_group_duration(Some(365 * DAY_NS)), 7 * DAY_NS);
    }

    #[test]
    fn windows_handle_negative_and_extreme_times() {
        let db = Database {
            name: "db".into(),
            options: DatabaseOptions {
                shard_group_duration_ns: HOUR_NS,
                ..Default::default()
            },
            tables: BTreeMap::new(),
            shard_groups: vec![],
        };
        assert_eq!(db.window(HOUR_NS + 5), Some((HOUR_NS, 2 * HOUR_NS)));
        assert_eq!(db.window(-1), Some((-HOUR_NS, 0)));
        assert_eq!(db.window(i64::MAX), None);
        assert_eq!(db.window(i64::MIN + 1), None);
    }
}
