//! `strata admin`: operator commands. `admin catalog status|add|remove`
//! show the catalog's members and change them at run time.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use strata_catalog::client::{Members, REQUEST_TIMEOUT, RETRY_PATIENCE};
use strata_proto::catalog::v1::{AddLearnerRequest, ChangeMembershipRequest, StatusResponse};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// The catalog's members and their membership.
    #[command(subcommand)]
    Catalog(CatalogCommand),
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

/// One member as `admin catalog status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberRow {
    pub node_id: Option<u64>,
    pub address: String,
    /// leader, follower, candidate, learner, or `unreachable`.
    pub role: String,
    pub voter: Option<bool>,
    pub leader_id: Option<u64>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub version: Option<u64>,
    /// Why the member did not answer.
    pub error: Option<String>,
}

/// Asks every member the addresses lead to (and every member they name).
pub async fn catalog_status(addrs: &str) -> Result<Vec<MemberRow>, String> {
    let members = Members::parse(addrs).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(2);
    // The first round learns the members the given ones know of; the
    // second asks those too.
    members.statuses(timeout).await;
    let answers = members.statuses(timeout).await;
    // Membership as the member in the highest term sees it.
    let membership: BTreeMap<String, (u64, bool)> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .max_by_key(|s| (s.term, s.last_log_index))
        .map(|s| {
            s.members
                .iter()
                .map(|m| (m.addr.clone(), (m.node_id, m.voter)))
                .collect()
        })
        .unwrap_or_default();
    let mut rows: Vec<MemberRow> = answers
        .into_iter()
        .map(|(addr, answer)| match answer {
            Ok(s) => {
                let mut r = row(&addr, &s, membership.get(&addr).map(|m| m.1));
                if !membership.is_empty() && !membership.contains_key(&addr) {
                    // Still running, but no longer in the cluster.
                    r.role = "removed".to_string();
                    r.voter = Some(false);
                }
                r
            }
            Err(e) => MemberRow {
                node_id: membership.get(&addr).map(|m| m.0),
                address: addr.clone(),
                role: "unreachable".to_string(),
                voter: membership.get(&addr).map(|m| m.1),
                leader_id: None,
                term: None,
                last_log_index: None,
                last_applied: None,
                version: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    rows.sort_by_key(|r| (r.node_id.unwrap_or(u64::MAX), r.address.clone()));
    Ok(rows)
}

fn row(addr: &str, s: &StatusResponse, voter: Option<bool>) -> MemberRow {
    MemberRow {
        node_id: Some(s.node_id),
        address: addr.to_string(),
        role: s.role.clone(),
        voter,
        leader_id: s.leader_id,
        term: Some(s.term),
        last_log_index: Some(s.last_log_index),
        last_applied: Some(s.last_applied),
        version: Some(s.catalog_version),
        error: None,
    }
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

pub async fn run(command: AdminCommand) -> Result<(), String> {
    let AdminCommand::Catalog(command) = command;
    match command {
        CatalogCommand::Status(a) => {
            let rows = catalog_status(&a.addrs.catalog).await?;
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
