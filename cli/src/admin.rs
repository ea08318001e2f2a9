//! `strata admin`: operator commands. `admin catalog status|add|remove`
//! show the catalog's members and change them at run time; `admin repair`
//! compares the replicas of shards and makes them equal.

use std::time::Duration;

use clap::{Args, Subcommand};
use strata_catalog::client::{survey, MemberRow, Members, REQUEST_TIMEOUT, RETRY_PATIENCE};
use strata_proto::catalog::v1::{AddLearnerRequest, ChangeMembershipRequest};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// The catalog's members and their membership.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Compares the replicas of every shard (or those named) by digest and
    /// copies rows a replica lacks from those that hold them.
    Repair(RepairArgs),
    /// Storage nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// API tokens: clients present one to coordinators that require
    /// authentication.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Makes a token and prints it (once: the catalog keeps only its hash).
    Create(TokenCreateArgs),
    /// The tokens' names, permissions and creation times.
    List(TokenListArgs),
    /// Removes a token: it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    /// A name for the token, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// What it may do, `DATABASE:LEVEL` with LEVEL read, write (includes
    /// read) or admin (includes write and DDL); `*` for every database
    /// (`*:admin` also covers the system tables and KILL QUERY).
    /// Repeatable.
    #[arg(long = "permission", required = true)]
    pub permissions: Vec<String>,
    /// `text` (the token alone) or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    #[arg(long)]
    pub name: String,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Takes a dead storage node out of the cluster: its shard replicas
    /// move to live nodes and are copied there from the other replicas.
    Remove(NodeRemoveArgs),
}

#[derive(Args)]
pub struct NodeRemoveArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    #[arg(long)]
    pub node_id: u64,
    /// Remove it even when it holds the only replica of some shards
    /// (their rows are lost).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    /// Only this database's shards.
    #[arg(long)]
    pub database: Option<String>,
    /// Only this shard.
    #[arg(long)]
    pub shard: Option<u64>,
    /// Width of the time buckets compared, e.g. `1h`.
    #[arg(long, default_value = "1h")]
    pub bucket: String,
    /// Compare and report; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A differing bucket of more rows than this is compared per series
    /// range first, and only the ranges that differ are read.
    #[arg(long, default_value_t = 10_000)]
    pub split_rows: u64,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Every member: id, address, role, term, last log index, leader.
    Status(StatusArgs),
    /// Adds a running catalog node as a voter (learner first, promoted once
    /// it caught up).
    Add(AddArgs),
    /// Removes a member (the leader too: another takes over).
    Remove(RemoveArgs),
}

#[derive(Args)]
pub struct CatalogAddrs {
    /// Catalog members to ask, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_CATALOG", default_value = "127.0.0.1:8090")]
    pub catalog: String,
    /// File holding the cluster secret, when the cluster has one (or the
    /// secret itself in STRATA_CLUSTER_SECRET).
    #[arg(long, env = "STRATA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) of a cluster whose roles serve TLS.
    #[arg(long, env = "STRATA_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    #[arg(long)]
    pub node_id: u64,
    /// The new member's address, as the others reach it.
    #[arg(long)]
    pub addr: String,
}

#[derive(Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub addrs: CatalogAddrs,
    #[arg(long)]
    pub node_id: u64,
}

fn cell(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

pub fn format_table(rows: &[MemberRow]) -> String {
    let header = [
        "node_id",
        "address",
        "role",
        "voter",
        "leader_id",
        "term",
        "last_log_index",
        "applied",
        "version",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            cell(r.node_id),
            r.address.clone(),
            r.role.clone(),
            cell(r.voter.map(|v| if v { "yes" } else { "no" })),
            cell(r.leader_id),
            cell(r.term),
            cell(r.last_log_index),
            cell(r.last_applied),
            cell(r.version),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows {
        if let Some(e) = &r.error {
            out.push_str(&format!("{}: {e}\n", r.address));
        }
    }
    out
}

fn addrs(command: &AdminCommand) -> &CatalogAddrs {
    match command {
        AdminCommand::Catalog(CatalogCommand::Status(a)) => &a.addrs,
        AdminCommand::Catalog(CatalogCommand::Add(a)) => &a.addrs,
        AdminCommand::Catalog(CatalogCommand::Remove(a)) => &a.addrs,
        AdminCommand::Repair(a) => &a.addrs,
        AdminCommand::Node(NodeCommand::Remove(a)) => &a.addrs,
        AdminCommand::Token(TokenCommand::Create(a)) => &a.addrs,
        AdminCommand::Token(TokenCommand::List(a)) => &a.addrs,
        AdminCommand::Token(TokenCommand::Revoke(a)) => &a.addrs,
    }
}

pub async fn run(command: AdminCommand) -> Result<(), String> {
    let secret = crate::cluster_auth::load_secret(addrs(&command).cluster_secret_file.as_deref())?;
    crate::cluster_auth::set_cluster_tls_ca(addrs(&command).cluster_tls_ca.as_deref())?;
    if let Some(secret) = secret {
        strata_proto::cluster::set_secret(Some(&secret))?;
    }
    let command = match command {
        AdminCommand::Catalog(c) => c,
        AdminCommand::Repair(a) => return repair(a).await,
        AdminCommand::Node(NodeCommand::Remove(a)) => return remove_node(a).await,
        AdminCommand::Token(t) => return token(t).await,
    };
    match command {
        CatalogCommand::Status(a) => {
            let members = Members::parse(&a.addrs.catalog).map_err(|e| e.to_string())?;
            let rows = survey(&members).await;
            match a.format.as_str() {
                "table" => print!("{}", format_table(&rows)),
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
                ),
                other => return Err(format!("--format must be table or json, not '{other}'")),
            }
            if rows.iter().all(|r| r.error.is_some()) {
                return Err("no catalog member answered".to_string());
            }
            Ok(())
        }
        CatalogCommand::Add(a) => {
            let members = Members::parse(&a.addrs.catalog).map_err(|e| e.to_string())?;
            let (node_id, addr) = (a.node_id, a.addr.clone());
            // Waits until the learner has the whole log.
            members
                .call(
                    "a request to add a learner",
                    Duration::from_secs(300),
                    RETRY_PATIENCE,
                    |mut c| {
                        let addr = addr.clone();
                        async move { c.add_learner(AddLearnerRequest { node_id, addr }).await }
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            println!("catalog member {node_id} at {addr} caught up as a learner");
            change(&members, node_id, true).await?;
            println!("catalog member {node_id} is a voter");
            Ok(())
        }
        CatalogCommand::Remove(a) => {
            let members = Members::parse(&a.addrs.catalog).map_err(|e| e.to_string())?;
            let rows = survey(&members).await;
            let ids: Vec<u64> = rows
                .iter()
                .filter(|r| r.voter.is_some() && r.role != "removed")
                .filter_map(|r| r.node_id)
                .collect();
            if !ids.is_empty() && !ids.contains(&a.node_id) {
                return Err(format!(
                    "catalog member {} is not in the cluster (members: {})",
                    a.node_id,
                    ids.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            change(&members, a.node_id, false).await?;
            println!("catalog member {} removed", a.node_id);
            Ok(())
        }
    }
}

async fn change(members: &Members, node_id: u64, add: bool) -> Result<(), String> {
    let request = if add {
        ChangeMembershipRequest {
            add_voters: vec![node_id],
            ..Default::default()
        }
    } else {
        ChangeMembershipRequest {
            remove_voters: vec![node_id],
            ..Default::default()
        }
    };
    members
        .call(
            "a membership change",
            REQUEST_TIMEOUT * 6,
            RETRY_PATIENCE,
            |mut c| {
                let request = request.clone();
                async move { c.change_membership(request).await }
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn repair(a: RepairArgs) -> Result<(), String> {
    use strata_coordinator::repair::{repair, RepairScope};
    let bucket_ns = match strata_coordinator::query::ddl::parse_duration(&a.bucket) {
        Ok(ns) if ns > 0 => ns,
        _ => {
            return Err(format!(
                "--bucket must be a duration like '1h', not '{}'",
                a.bucket
            ))
        }
    };
    if !matches!(a.format.as_str(), "table" | "json") {
        return Err(format!(
            "--format must be table or json, not '{}'",
            a.format
        ));
    }
    let catalog = strata_catalog::CatalogClient::connect(&a.addrs.catalog, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let state = catalog.state();
    if let Some(db) = &a.database {
        if !state.databases.contains_key(db) {
            return Err(format!("database '{db}' not found"));
        }
    }
    let scope = RepairScope {
        database: a.database.clone(),
        shard_id: a.shard,
        bucket_ns,
        dry_run: a.dry_run,
        split_rows: a.split_rows,
    };
    let in_scope = strata_coordinator::repair::shards_in(&state, &scope).len();
    if in_scope == 0 {
        let find = |id: u64| {
            state.databases.values().find_map(|d| {
                d.shard_groups
                    .iter()
                    .flat_map(|g| &g.shards)
                    .find(|s| s.id == id)
                    .map(|s| (d.name.as_str(), s.owners.len()))
            })
        };
        return Err(match (a.shard, &a.database) {
            (Some(s), db) => match (find(s), db) {
                (None, _) => format!("shard {s} does not exist (see system.shards)"),
                (Some((in_db, _)), Some(db)) if in_db != db => {
                    format!("shard {s} belongs to database '{in_db}', not '{db}'")
                }
                _ => format!("shard {s} has one replica: there is nothing to compare it with"),
            },
            _ => "no shard has more than one replica: nothing to compare".to_string(),
        });
    }
    let nodes = strata_coordinator::node_clients::NodeClients::default();
    let reports = repair(&state, &nodes, &scope).await;
    if !a.dry_run {
        mark_filled(&catalog, &state, &reports).await?;
    }
    if a.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "{:<16} {:>8} {:<10} {:>8} {:>10} {:<24} {:>9}  error",
            "database", "shard", "owners", "buckets", "differing", "rows written", "conflicts"
        );
        for r in &reports {
            let owners: Vec<String> = r.owners.iter().map(|o| o.to_string()).collect();
            let written: Vec<String> = r
                .rows_written
                .iter()
                .map(|(n, rows)| format!("{rows} to node {n}"))
                .collect();
            println!(
                "{:<16} {:>8} {:<10} {:>8} {:>10} {:<24} {:>9}  {}",
                r.database,
                r.shard_id,
                owners.join(","),
                r.buckets,
                r.differing,
                if written.is_empty() {
                    "-".to_string()
                } else {
                    written.join(", ")
                },
                r.conflicts,
                r.error.as_deref().unwrap_or("")
            );
        }
        let compared: usize = reports.iter().map(|r| r.ranges_compared).sum();
        if compared > 0 {
            let differing: usize = reports.iter().map(|r| r.ranges_differing).sum();
            println!(
                "large buckets compared per series range: {differing} of {compared} ranges differed and were read"
            );
        }
        let rows: u64 = reports.iter().flat_map(|r| r.rows_written.values()).sum();
        println!(
            "{} shards compared, {} with differences, {rows} rows {}, {} failed",
            reports.len(),
            reports.iter().filter(|r| r.differing > 0).count(),
            if a.dry_run {
                "to write (dry run)"
            } else {
                "written"
            },
            reports.iter().filter(|r| r.error.is_some()).count()
        );
    }
    if let Some(failed) = reports.iter().find(|r| r.error.is_some()) {
        return Err(format!(
            "shard {} could not be repaired: {}",
            failed.shard_id,
            failed.error.as_deref().unwrap_or_default()
        ));
    }
    Ok(())
}

/// Replicas being filled after a node's removal that a repair compared
/// without error hold what the others do: reads may use them.
async fn mark_filled(
    catalog: &strata_catalog::CatalogClient,
    state: &strata_catalog::CatalogData,
    reports: &[strata_coordinator::repair::ShardRepair],
) -> Result<(), String> {
    for r in reports.iter().filter(|r| r.error.is_none()) {
        let filling = state
            .databases
            .get(&r.database)
            .and_then(|d| {
                d.shard_groups
                    .iter()
                    .flat_map(|g| g.shards.iter())
                    .find(|s| s.id == r.shard_id)
            })
            .map(|s| s.filling.clone())
            .unwrap_or_default();
        for node_id in filling {
            catalog
                .execute(strata_catalog::Command::ReplicaFilled {
                    shard_id: r.shard_id,
                    node_id,
                })
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn remove_node(a: NodeRemoveArgs) -> Result<(), String> {
    use strata_catalog::command::CommandResult;
    use strata_coordinator::repair::{repair_shard, RepairScope};
    let catalog = strata_catalog::CatalogClient::connect(&a.addrs.catalog, Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    let result = catalog
        .execute(strata_catalog::Command::RemoveNode {
            id: a.node_id,
            force: a.force,
        })
        .await
        .map_err(|e| e.to_string())?;
    let CommandResult::NodeRemoved { moves } = result else {
        return Err(format!("unexpected answer from the catalog: {result:?}"));
    };
    println!(
        "storage node {} removed; {} shard replicas to move",
        a.node_id,
        moves.len()
    );
    let state = catalog.state();
    let nodes = strata_coordinator::node_clients::NodeClients::default();
    let mut reports = vec![];
    let mut failed = vec![];
    for m in &moves {
        let Some(to) = m.to else {
            println!(
                "  {} shard {}: no live node can take a replica; it has one fewer",
                m.database, m.shard_id
            );
            continue;
        };
        let found = state.databases.get(&m.database).and_then(|d| {
            d.shard_groups
                .iter()
                .flat_map(|g| g.shards.iter())
                .find(|s| s.id == m.shard_id)
                .map(|s| (d, s))
        });
        let Some((db, shard)) = found else {
            continue;
        };
        if shard.owners.len() < 2 {
            println!(
                "  {} shard {}: now on node {to} (no replica to copy from)",
                m.database, m.shard_id
            );
            continue;
        }
        let scope = RepairScope {
            shard_id: Some(shard.id),
            ..RepairScope::default()
        };
        let r = repair_shard(&state, &nodes, db, shard, &scope).await;
        match &r.error {
            None => println!(
                "  {} shard {}: now on node {to}, {} rows copied",
                m.database,
                m.shard_id,
                r.rows_written.get(&to).copied().unwrap_or(0)
            ),
            Some(e) => {
                println!(
                    "  {} shard {}: now on node {to}, copy failed: {e}",
                    m.database, m.shard_id
                );
                failed.push(m.shard_id);
            }
        }
        reports.push(r);
    }
    mark_filled(&catalog, &state, &reports).await?;
    if !failed.is_empty() {
        return Err(format!(
            "copies of shards {failed:?} failed; run `strata admin repair --shard ID` for each once \
             their other replicas answer (until then reads use those replicas)"
        ));
    }
    Ok(())
}

async fn token(command: TokenCommand) -> Result<(), String> {
    use strata_catalog::tokens::{self, Grant, Token};
    let connect = |addrs: &CatalogAddrs| {
        let catalog = addrs.catalog.clone();
        async move {
            strata_catalog::CatalogClient::connect(&catalog, Duration::from_secs(20))
                .await
                .map_err(|e| e.to_string())
        }
    };
    match command {
        TokenCommand::Create(a) => {
            if !matches!(a.format.as_str(), "text" | "json") {
                return Err(format!("--format must be text or json, not '{}'", a.format));
            }
            let name = a.name.trim();
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err("--name must be 1 to 128 printable characters".into());
            }
            let grants = a
                .permissions
                .iter()
                .map(|p| {
                    let g = Grant::parse(p)?;
                    if g.database != "*" {
                        strata_coordinator::query::ddl::validate_name(&g.database)
                            .map_err(|e| format!("permission '{p}': {e}"))?;
                    }
                    Ok(g)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let token = tokens::generate()?;
            let catalog = connect(&a.addrs).await?;
            catalog
                .execute(strata_catalog::Command::CreateToken {
                    token: Token {
                        name: name.to_string(),
                        hash: tokens::hash(&token),
                        grants: grants.clone(),
                        created_ms: chrono::Utc::now().timestamp_millis(),
                    },
                })
                .await
                .map_err(|e| e.to_string())?;
            match a.format.as_str() {
                "json" => println!(
                    "{}",
                    serde_json::json!({
                        "name": name,
                        "token": token,
                        "permissions": grants.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
                    })
                ),
                _ => println!("{token}"),
            }
            Ok(())
        }
        TokenCommand::List(a) => {
            if !matches!(a.format.as_str(), "table" | "json") {
                return Err(format!(
                    "--format must be table or json, not '{}'",
                    a.format
                ));
            }
            let catalog = connect(&a.addrs).await?;
            let state = catalog.state();
            let rows: Vec<_> = state
                .tokens
                .values()
                .map(|t| {
                    let created = chrono::DateTime::from_timestamp_millis(t.created_ms)
                        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default();
                    let grants = t.grants.iter().map(|g| g.to_string()).collect::<Vec<_>>();
                    (t.name.clone(), grants, created)
                })
                .collect();
            if a.format == "json" {
                let json: Vec<_> = rows
                    .iter()
                    .map(|(name, grants, created)| {
                        serde_json::json!({ "name": name, "permissions": grants, "created": created })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(json));
                return Ok(());
            }
            let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
            println!("{:width$}  {:20}  permissions", "name", "created");
            for (name, grants, created) in rows {
                println!("{name:width$}  {created:20}  {}", grants.join(" "));
            }
            Ok(())
        }
        TokenCommand::Revoke(a) => {
            let catalog = connect(&a.addrs).await?;
            catalog
                .execute(strata_catalog::Command::RevokeToken {
                    name: a.name.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            println!("token '{}' revoked", a.name);
            Ok(())
        }
    }
}
