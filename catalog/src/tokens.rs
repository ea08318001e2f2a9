//! API tokens: what the catalog keeps of them (a name, a SHA-256 hash and
//! the permissions, never the token itself) and how a presented token is
//! checked.
//!
//! A token is `strata_` and 43 characters of URL-safe base64 (256 random
//! bits). High-entropy secrets need no slow hash: a plain SHA-256 cannot be
//! reversed and lets every coordinator look a token up in one step.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a grant allows on its databases; each level includes the ones
/// below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Queries.
    Read,
    /// Queries, writes and deletes.
    Write,
    /// All of that and DDL (create, alter and drop databases and tables).
    /// Admin on `*` also covers the system tables, `KILL QUERY` and
    /// databases not yet created.
    Admin,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Admin => "admin",
        })
    }
}

/// `database:level`; the database `*` stands for every database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub database: String,
    pub level: Level,
}

impl Grant {
    /// Parses `db:read`, `db:write`, `db:admin` or `*:level`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (database, level) = s
            .split_once(':')
            .ok_or_else(|| format!("permission '{s}': expected DATABASE:LEVEL (e.g. mydb:read)"))?;
        let level = match level.to_ascii_lowercase().as_str() {
            "read" => Level::Read,
            "write" => Level::Write,
            "admin" => Level::Admin,
            other => {
                return Err(format!(
                    "permission '{s}': level '{other}' is not read, write or admin"
                ))
            }
        };
        if database.is_empty() {
            return Err(format!(
                "permission '{s}': name a database, or * for all of them"
            ));
        }
        Ok(Self {
            database: database.to_string(),
            level,
        })
    }

    fn covers(&self, database: Option<&str>, level: Level) -> bool {
        let db_matches = match database {
            Some(db) => self.database == "*" || self.database == db,
            None => self.database == "*",
        };
        db_matches && self.level >= level
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.database, self.level)
    }
}

/// A token as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
    pub grants: Vec<Grant>,
    pub created_ms: i64,
}

impl Token {
    /// Whether the token may act at `level` on `database` (`None`: the
    /// cluster itself — system tables, KILL QUERY).
    pub fn allows(&self, database: Option<&str>, level: Level) -> bool {
        self.grants.iter().any(|g| g.covers(database, level))
    }
}

/// The prefix of every token strata makes.
pub const TOKEN_PREFIX: &str = "strata_";

/// A new random token.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What the catalog stores of `token`.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_cover_the_levels_below() {
        let g = Grant::parse("metrics:write").unwrap();
        assert!(g.covers(Some("metrics"), Level::Read));
        assert!(g.covers(Some("metrics"), Level::Write));
        assert!(!g.covers(Some("metrics"), Level::Admin));
        assert!(!g.covers(Some("other"), Level::Read));
        assert!(!g.covers(None, Level::Read));
        let all = Grant::parse("*:ADMIN").unwrap();
        assert!(all.covers(Some("anything"), Level::Admin));
        assert!(all.covers(None, Level::Admin));
        assert!(Grant::parse("metrics").is_err());
        assert!(Grant::parse(":read").is_err());
        assert!(Grant::parse("db:owner").unwrap_err().contains("owner"));
        // One colon: the level is what follows it.
        assert!(Grant::parse("b:read:admin")
            .unwrap_err()
            .contains("read:admin"));
    }

    #[test]
    fn tokens_are_random_and_stored_as_their_hash() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}
