//! `strata admin`: operator commands. `admin catalog status|add|remove`
//! show the catalog's members and change them at run time.

use std::time::Duration;

use clap::{Args, Subcommand};
use strata_catalog::client::{survey, MemberRow, Members, REQUEST_TIMEOUT, RETRY_PATIENCE};
use strata_proto::catalog::v1::{AddLearnerRequest, ChangeMembershipRequest};

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
