//! Whether a query may answer without some shards: `strict` (the default:
//! a shard with no readable replica fails the query, naming the shards
//! and the nodes tried) or `best_effort` (`/*+ strata.completeness =
//! 'best_effort' */`: the query answers from the shards it could read and
//! the front door names the missing ones — Flight `app_metadata` on a
//! last message, HTTP headers — never a silently partial answer).

use parking_lot::Mutex;
use serde::Serialize;

/// The setting's values.
pub const STRICT: &str = "strict";
pub const BEST_EFFORT: &str = "best_effort";

/// Checks a `strata.completeness` value.
pub fn parse(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "" | STRICT => Ok(false),
        BEST_EFFORT => Ok(true),
        other => Err(format!(
            "strata.completeness = '{other}': use '{STRICT}' or '{BEST_EFFORT}'"
        )),
    }
}

/// Shards a best-effort query answered without. One per query, in its
/// session (`SessionConfig` extension).
#[derive(Debug, Default)]
pub struct MissingShards(Mutex<Vec<Missing>>);

/// Shards one task could not read from any replica, and what each
/// replica answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub shard_ids: Vec<u64>,
    pub reason: String,
}

impl MissingShards {
    pub fn note(&self, shard_ids: &[u64], reason: String) {
        self.0.lock().push(Missing {
            shard_ids: shard_ids.to_vec(),
            reason,
        });
    }

    pub fn list(&self) -> Vec<Missing> {
        self.0.lock().clone()
    }

    /// The missing shard ids, sorted.
    pub fn shard_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .0
            .lock()
            .iter()
            .flat_map(|m| m.shard_ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// One line for people: which shards, and why.
    pub fn warning(&self) -> Option<String> {
        let list = self.list();
        if list.is_empty() {
            return None;
        }
        let ids = self.shard_ids();
        let reasons: Vec<String> = list
            .iter()
            .map(|m| format!("shards {:?}: {}", m.shard_ids, m.reason))
            .collect();
        Some(format!(
            "incomplete answer (strata.completeness = 'best_effort'): {} shard(s) could not be \
             read and are left out: {}; {}",
            ids.len(),
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reasons.join("; ")
        ))
    }

    /// What the Flight front door sends as the `app_metadata` of a last,
    /// empty message.
    pub fn app_metadata(&self) -> Option<Vec<u8>> {
        let warning = self.warning()?;
        let body = serde_json::json!({
            "strata_missing_shards": self.shard_ids(),
            "warning": warning,
            "missing": self.list(),
        });
        Some(body.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_the_warning() {
        assert_eq!(parse(""), Ok(false));
        assert_eq!(parse("STRICT"), Ok(false));
        assert_eq!(parse("best_effort"), Ok(true));
        assert!(parse("partial").unwrap_err().contains("best_effort"));
        let m = MissingShards::default();
        assert_eq!(m.warning(), None);
        m.note(&[7, 3], "node 2 at a:1: connection refused".into());
        m.note(&[3], "node 3 at b:1: down".into());
        assert_eq!(m.shard_ids(), vec![3, 7]);
        let w = m.warning().unwrap();
        assert!(
            w.contains("2 shard(s) could not be read and are left out: 3, 7"),
            "{w}"
        );
        assert!(w.contains("connection refused"), "{w}");
        let meta: serde_json::Value = serde_json::from_slice(&m.app_metadata().unwrap()).unwrap();
        assert_eq!(meta["strata_missing_shards"], serde_json::json!([3, 7]));
    }
}
