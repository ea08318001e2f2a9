//! strata's own statements, handled before DataFusion sees the SQL:
//!
//! - `CREATE DATABASE [IF NOT EXISTS] name [WITH] [RETENTION <dur>|INF]
//!   [SHARD DURATION <dur>] [SHARD KEY (<tag>, ...)] [REPLICATION <n>] [SHARDS <n>]
//!   [CONSISTENCY any|one|quorum|all]`
//! - `ALTER DATABASE name SHARD KEY (<tag>, ...)` (for new shard groups)
//! - `ALTER DATABASE name CONSISTENCY any|one|quorum|all` (writes that do
//!   not name a level)
//! - `DROP DATABASE [IF EXISTS] name`
//! - `DROP TABLE [IF EXISTS] [db.]name` (InfluxQL: `DROP MEASUREMENT name`):
//!   the table's rows are deleted from the storage nodes
//! - `SHOW DATABASES`
//!
//! (`DELETE` is also strata's own; see [`super::delete`].)
//!
//! Durations are an integer and a unit: `ns us ms s m h d w`
//! (e.g. `30d`, `1h`); `INF` means keep forever.

use strata_catalog::model::{default_shard_group_duration, DatabaseOptions, WriteConsistency};

#[derive(Debug, Clone, PartialEq)]
pub enum OwnStatement {
    CreateDatabase {
        name: String,
        options: DatabaseOptions,
        if_not_exists: bool,
    },
    DropDatabase {
        name: String,
        if_exists: bool,
    },
    DropTable {
        database: String,
        table: String,
        if_exists: bool,
    },
    /// `ALTER DATABASE name SHARD KEY (...)`: for shard groups created
    /// from now on.
    AlterDatabase {
        name: String,
        shard_key: Vec<String>,
    },
    /// `ALTER DATABASE name CONSISTENCY level`.
    SetConsistency {
        name: String,
        consistency: WriteConsistency,
    },
    ShowDatabases,
    /// Handled by [`super::delete`].
    Delete(super::delete::DeleteStatement),
    /// Handled by [`super::insert`].
    Insert(super::insert::InsertStatement),
    /// `KILL [QUERY] '<id>'`: cancels a running query (its id as
    /// `system.queries` shows it).
    KillQuery {
        query_id: String,
    },
}

fn tokens(sql: &str) -> Vec<String> {
    sql.trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn is(tok: Option<&String>, word: &str) -> bool {
    tok.is_some_and(|t| t.eq_ignore_ascii_case(word))
}

/// `sql` without the comments (`-- ...` lines, `/* ... */`, hints) in
/// front of its first word: strata's own statements are recognised by
/// their first words.
pub fn strip_leading_comments(sql: &str) -> &str {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest
                .split_once('\n')
                .map_or("", |(_, after)| after)
                .trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            match rest.split_once("*/") {
                Some((_, after)) => s = after.trim_start(),
                None => return s,
            }
        } else {
            return s;
        }
    }
}

/// Longest query id `KILL QUERY` takes (ids are UUIDs, 36 characters).
const MAX_QUERY_ID: usize = 128;

/// `KILL [QUERY] '<id>'` (or a bare id), the id a SQL string literal
/// (`''` is a quote).
fn parse_kill(sql: &str) -> Result<OwnStatement, String> {
    let usage = "KILL QUERY needs the query's id: KILL QUERY '<query_id>' (see system.queries)";
    let word = |s: &str, w: &str| -> Option<usize> {
        let head = s.get(..w.len())?;
        let boundary = s[w.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        (head.eq_ignore_ascii_case(w) && boundary).then_some(w.len())
    };
    let s = sql.trim().trim_end_matches(';').trim_end();
    let mut rest = s[word(s, "kill").ok_or(usage)?..].trim_start();
    if let Some(n) = word(rest, "query") {
        rest = rest[n..].trim_start();
    } else if word(rest, "connection").is_some() {
        return Err("only KILL QUERY '<query_id>' is supported".into());
    }
    let (id, after) = match rest.strip_prefix('\'') {
        Some(quoted) => {
            let mut id = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c != '\'' {
                    id.push(c);
                } else if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    id.push('\'');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            }
            let end = end.ok_or("the query id's quote is not closed")?;
            (id, quoted[end..].trim())
        }
        None => match rest.split_once(char::is_whitespace) {
            Some((id, after)) => (id.to_string(), after.trim()),
            None => (rest.to_string(), ""),
        },
    };
    if !after.is_empty() && !after.starts_with("--") {
        return Err("unexpected text after the query id; KILL QUERY takes one id".into());
    }
    if id.is_empty() {
        return Err(usage.into());
    }
    if id.chars().count() > MAX_QUERY_ID {
        return Err(format!(
            "a query id is at most {MAX_QUERY_ID} characters (see system.queries)"
        ));
    }
    Ok(OwnStatement::KillQuery { query_id: id })
}

fn unquote(name: &str) -> String {
    let n = name.trim_matches('"').trim_matches('`');
    n.to_string()
}

/// Parses `DROP TABLE [IF EXISTS] [db.]name` or `DROP MEASUREMENT name`,
/// resolving the database from the name or the session's `database`. Names
/// follow SQL: unquoted ones are lower-cased (as `SELECT` reads them),
/// `"quoted"` ones are kept, `""` inside quotes is a quote; InfluxQL's
/// `DROP MEASUREMENT` keeps case as InfluxDB does.
pub fn parse_drop_table(sql: &str, database: Option<&str>) -> Result<Option<OwnStatement>, String> {
    let mut rest = sql.trim().trim_end_matches(';').trim_end();
    let mut word = |w: &str| -> bool {
        let r = rest.trim_start();
        let n = w.len();
        let matches = r.len() >= n
            && r[..n].eq_ignore_ascii_case(w)
            && r[n..].chars().next().is_none_or(|c| c.is_whitespace());
        if matches {
            rest = &r[n..];
        }
        matches
    };
    if !word("drop") {
        return Ok(None);
    }
    let measurement = if word("table") {
        false
    } else if word("measurement") {
        true
    } else {
        return Ok(None);
    };
    let what = if measurement { "MEASUREMENT" } else { "TABLE" };
    let if_exists = if word("if") {
        if !word("exists") {
            return Err(format!("DROP {what} IF needs EXISTS"));
        }
        true
    } else {
        false
    };
    let parts =
        identifier_path(rest.trim(), !measurement).map_err(|e| format!("DROP {what}: {e}"))?;
    let (db, table) = match parts.as_slice() {
        [table] => (
            database
                .ok_or_else(|| {
                    if measurement {
                        format!("DROP MEASUREMENT {table}: give the database as ?db=")
                    } else {
                        format!(
                            "DROP TABLE {table}: name the database (database.{table}) or choose one for the session"
                        )
                    }
                })?
                .to_string(),
            table.clone(),
        ),
        [db, table] => (db.clone(), table.clone()),
        [] => return Err(format!("DROP {what} needs a table name")),
        _ => return Err(format!("DROP {what}: a name is [database.]table")),
    };
    if db == "system" || db == "information_schema" {
        return Err(format!(
            "{db}.{table} describes the cluster and cannot be dropped"
        ));
    }
    Ok(Some(OwnStatement::DropTable {
        database: db,
        table,
        if_exists,
    }))
}

/// `a.b`, `"a"."b c"`, `"x""y"`: the parts of a dotted name. Unquoted parts
/// are lower-cased when `fold`.
fn identifier_path(text: &str, fold: bool) -> Result<Vec<String>, String> {
    let mut parts = vec![];
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        match chars.peek() {
            None => break,
            Some('"') => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err("a quoted name is not closed".into()),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
            }
            Some(_) => {
                while let Some(&c) = chars.peek() {
                    if c == '.' || c.is_whitespace() || c == '"' {
                        break;
                    }
                    part.push(c);
                    chars.next();
                }
                if fold {
                    part = part.to_lowercase();
                }
            }
        }
        if part.is_empty() {
            return Err("an empty name".into());
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(c) => {
                let after: String = std::iter::once(c).chain(chars).collect();
                return Err(format!("unexpected '{}' after the name", after.trim()));
            }
        }
    }
    Ok(parts)
}

/// Shortest shard-group window: each window is a catalog entry with its
/// shards, and writes wait on the catalog to create one.
pub const MIN_SHARD_GROUP_DURATION_NS: i64 = 60_000_000_000;

/// Most shards per group: each is a catalog entry, a set of files on its
/// nodes and a task of every query reading the group.
pub const MAX_SHARDS_PER_GROUP: u32 = 256;

/// Parses `sql` as one of strata's own statements. `Ok(None)` means it is
/// not one (DataFusion takes it); `Err` means it is one but malformed.
pub fn parse(sql: &str) -> Result<Option<OwnStatement>, String> {
    let t = tokens(sql);
    let at = |i: usize| t.get(i);
    if is(at(0), "show") && is(at(1), "databases") && t.len() == 2 {
        return Ok(Some(OwnStatement::ShowDatabases));
    }
    if is(at(0), "set") || is(at(0), "reset") {
        return Err(
            "settings last for one statement here (each request is its own session): give them \
             to the statement in a leading hint, e.g. `/*+ strata.statement_timeout = '30s', \
             strata.memory_limit_mib = 2048 */ SELECT ...`; `strata sql` remembers SET for its \
             session and sends it this way"
                .into(),
        );
    }
    if is(at(0), "kill") {
        return parse_kill(sql).map(Some);
    }
    if is(at(0), "drop") && is(at(1), "database") {
        let (if_exists, i) = if is(at(2), "if") && is(at(3), "exists") {
            (true, 4)
        } else {
            (false, 2)
        };
        let name = at(i).ok_or("DROP DATABASE needs a database name")?;
        if t.len() > i + 1 {
            return Err(format!("unexpected '{}' after the database name", t[i + 1]));
        }
        return Ok(Some(OwnStatement::DropDatabase {
            name: unquote(name),
            if_exists,
        }));
    }
    if is(at(0), "alter") && is(at(1), "database") {
        let name = unquote(at(2).ok_or("ALTER DATABASE needs a database name")?);
        if is(at(3), "consistency") {
            let consistency = parse_consistency(at(4))?;
            if let Some(extra) = at(5) {
                return Err(format!("unexpected '{extra}' after the consistency level"));
            }
            return Ok(Some(OwnStatement::SetConsistency { name, consistency }));
        }
        if !is(at(3), "shard") || !at(4).is_some_and(|k| is_key_keyword(k)) {
            return Err(
                "ALTER DATABASE changes the SHARD KEY (...) of new shard groups or the \
                 CONSISTENCY of writes; other options cannot be changed yet"
                    .into(),
            );
        }
        let (shard_key, next) = parse_key_list(&t, 4)?;
        if next < t.len() {
            return Err(format!("unexpected '{}' after the shard key", t[next]));
        }
        return Ok(Some(OwnStatement::AlterDatabase { name, shard_key }));
    }
    if !(is(at(0), "create") && is(at(1), "database")) {
        return Ok(None);
    }
    let (if_not_exists, mut i) = if is(at(2), "if") && is(at(3), "not") && is(at(4), "exists") {
        (true, 5)
    } else {
        (false, 2)
    };
    let name = unquote(at(i).ok_or("CREATE DATABASE needs a database name")?);
    validate_name(&name)?;
    i += 1;
    let mut retention = None;
    let mut shard_duration = None;
    let mut options = DatabaseOptions::default();
    let mut t = t.clone();
    // `WITH (...)`, however the spaces fall, becomes the words of the
    // other shape.
    let glued = t.get(i).is_some_and(|w| {
        w.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("with")) && w[4..].starts_with('(')
    });
    if glued {
        t[i] = t[i][4..].to_string();
        t.insert(i, "with".into());
    }
    if is(t.get(i), "with") {
        i += 1;
        if t.get(i).is_some_and(|w| w.starts_with('(')) {
            let words = with_list_words(&t[i..].join(" "))?;
            t.truncate(i);
            t.extend(words);
        }
    }
    let at = |i: usize| t.get(i);
    let mut seen = std::collections::BTreeSet::new();
    while i < t.len() {
        let word = t[i].to_ascii_lowercase();
        let option = match word.as_str() {
            "shard" if at(i + 1).is_some_and(|k| is_key_keyword(k)) => "SHARD KEY".to_string(),
            "shard" => "SHARD DURATION".to_string(),
            w => w.to_uppercase(),
        };
        if !seen.insert(option.clone()) {
            return Err(format!("{option} is given twice"));
        }
        let value = |k: usize| {
            t.get(k)
                .ok_or_else(|| format!("{} needs a value", word.to_uppercase()))
        };
        match word.as_str() {
            "retention" => {
                let v = value(i + 1)?;
                retention = Some(if v.eq_ignore_ascii_case("inf") { None } else { Some(parse_duration(v)?) });
                i += 2;
            }
            "shard"
                if at(i + 1).is_some_and(|k| is_key_keyword(k)) =>
            {
                let (key, next) = parse_key_list(&t, i + 1)?;
                options.shard_key = key;
                i = next;
            }
            "shard" if is(at(i + 1), "duration") => {
                let d = parse_duration(value(i + 2)?)?;
                if d < MIN_SHARD_GROUP_DURATION_NS {
                    return Err(format!(
                        "SHARD DURATION {} is shorter than the shortest allowed, {}: every \
                         window is a shard group in the catalog",
                        format_duration(d),
                        format_duration(MIN_SHARD_GROUP_DURATION_NS)
                    ));
                }
                shard_duration = Some(d);
                i += 3;
            }
            "replication" => {
                options.replication_factor = value(i + 1)?
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or("REPLICATION needs a whole number of at least 1")?;
                i += 2;
            }
            "consistency" => {
                options.consistency = parse_consistency(at(i + 1))?;
                i += 2;
            }
            "shards" => {
                options.shards_per_group = Some(
                    value(i + 1)?
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_SHARDS_PER_GROUP).contains(n))
                        .ok_or_else(|| {
                            format!("SHARDS needs a whole number from 1 to {MAX_SHARDS_PER_GROUP}")
                        })?,
                );
                i += 2;
            }
            other => {
                return Err(format!(
                    "unknown database option '{other}'; expected RETENTION, SHARD DURATION, SHARD KEY, REPLICATION, SHARDS or CONSISTENCY"
                ))
            }
        }
    }
    options.retention_ns = retention.flatten();
    options.shard_group_duration_ns =
        shard_duration.unwrap_or_else(|| default_shard_group_duration(options.retention_ns));
    // As InfluxDB: a shard group longer than the retention would keep data
    // well past it (groups are dropped whole).
    if let Some(r) = options.retention_ns {
        if r < options.shard_group_duration_ns {
            return Err(format!(
                "RETENTION {} is shorter than SHARD DURATION {}; give a shorter shard duration",
                format_duration(r),
                format_duration(options.shard_group_duration_ns)
            ));
        }
    }
    Ok(Some(OwnStatement::CreateDatabase {
        name,
        options,
        if_not_exists,
    }))
}

/// A write consistency level named in a statement.
fn parse_consistency(word: Option<&String>) -> Result<WriteConsistency, String> {
    let word = word.ok_or("CONSISTENCY needs a level: any, one, quorum or all")?;
    WriteConsistency::parse(word.trim_matches('\''))
        .ok_or_else(|| format!("'{word}' is not a consistency level: any, one, quorum or all"))
}

/// Whether a token is `KEY`, maybe with the list glued on (`KEY(a,b)`).
fn is_key_keyword(token: &str) -> bool {
    token
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case("key"))
        && !token[3..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

/// `KEY (a, b, ...)` starting at token `i` (however the spaces fall);
/// returns the names and the index after the list.
fn parse_key_list(t: &[String], i: usize) -> Result<(Vec<String>, usize), String> {
    let bad = || "SHARD KEY needs a list of tag names, e.g. SHARD KEY (hostname)".to_string();
    let mut text = String::new();
    let mut j = i;
    while j < t.len() {
        let token = if j == i { &t[j][3..] } else { &t[j][..] };
        text.push_str(token);
        text.push(' ');
        j += 1;
        if token.contains(')') {
            break;
        }
    }
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?;
    let names: Vec<String> = inner.split(',').map(|n| unquote(n.trim())).collect();
    if names.iter().any(|n| n.is_empty() || n.contains(['(', ')'])) {
        return Err(bad());
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(format!("SHARD KEY names tag '{dup}' twice"));
    }
    if names
        .iter()
        .any(|n| n == strata_catalog::model::TIME_COLUMN)
    {
        return Err("SHARD KEY takes tags; time picks the shard group".into());
    }
    Ok((names, j))
}

/// `(name = value, ...)`, the shape GreptimeDB and InfluxDB 3 users write
/// options in, as the words of strata's own shape (`retention = '30d'` is
/// `RETENTION 30d`). Names: `retention` (or `ttl`), `shard_duration` (or
/// `shard_group_duration`), `replication` (or `replication_factor`),
/// `shards` (or `shards_per_group`), `shard_key` (`'a, b'` or `(a, b)`).
fn with_list_words(text: &str) -> Result<Vec<String>, String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens: Vec<Token> = Tokenizer::new(&GenericDialect {}, text)
        .tokenize()
        .map_err(|e| format!("WITH (...): {e}"))?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let bad = |why: &str| format!("WITH (name = value, ...): {why}");
    let mut it = tokens.into_iter().peekable();
    if it.next() != Some(Token::LParen) {
        return Err(bad("expected '('"));
    }
    let mut words = vec![];
    loop {
        let name = match it.next() {
            Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
            Some(Token::RParen) if words.is_empty() => break,
            _ => return Err(bad("expected an option name")),
        };
        if it.next() != Some(Token::Eq) {
            return Err(bad(&format!("expected '=' after {name}")));
        }
        let counted = matches!(
            name.as_str(),
            "replication" | "replication_factor" | "shards" | "shards_per_group"
        );
        let value = match it.next() {
            Some(Token::Number(v, _)) => v,
            Some(Token::SingleQuotedString(_)) if counted => {
                return Err(bad(&format!("{name} takes a number, not a string")))
            }
            Some(Token::SingleQuotedString(v)) => v,
            Some(Token::Word(w)) => w.value,
            Some(Token::LParen) if name == "shard_key" => {
                let mut list = vec![];
                loop {
                    match it.next() {
                        Some(Token::Word(w)) => list.push(w.value),
                        Some(Token::SingleQuotedString(v)) => list.push(v),
                        Some(Token::Comma) => {}
                        Some(Token::RParen) => break,
                        _ => return Err(bad("shard_key takes a list of tag names")),
                    }
                }
                list.join(",")
            }
            _ => return Err(bad(&format!("expected a value for {name}"))),
        };
        match name.as_str() {
            "retention" | "ttl" => words.extend(["retention".into(), value]),
            "shard_duration" | "shard_group_duration" => {
                words.extend(["shard".into(), "duration".into(), value])
            }
            "replication" | "replication_factor" => words.extend(["replication".into(), value]),
            "shards" | "shards_per_group" => words.extend(["shards".into(), value]),
            "consistency" => words.extend(["consistency".into(), value]),
            "shard_key" => {
                let names: Vec<&str> = value.split(',').map(str::trim).collect();
                words.extend(["shard".into(), format!("key({})", names.join(","))]);
            }
            other => {
                return Err(format!(
                    "unknown database option '{other}'; expected retention (ttl), \
                     shard_duration, replication, shards, shard_key or consistency"
                ))
            }
        }
        match it.next() {
            Some(Token::Comma) => {}
            Some(Token::RParen) => break,
            _ => return Err(bad("expected ',' or ')'")),
        }
    }
    if let Some(extra) = it.next() {
        return Err(bad(&format!("unexpected '{extra}' after ')'")));
    }
    Ok(words)
}

pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a database name needs 1 to 64 characters".into());
    }
    if ["system", "information_schema"]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
    {
        return Err(format!(
            "'{name}' is reserved for the tables that describe the cluster; pick another database name"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "database name '{name}' may only hold letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// Parses `30d`, `1h`, `500ms`, ... into nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected a number and a unit, like 30d"))?;
    let mult: i64 = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        "w" => 7 * 86_400_000_000_000,
        _ => {
            return Err(format!(
                "invalid duration unit in '{s}': use ns, us, ms, s, m, h, d or w"
            ))
        }
    };
    let ns = n
        .checked_mul(mult)
        .ok_or_else(|| format!("duration '{s}' is too long"))?;
    if ns <= 0 {
        return Err(format!("duration '{s}' must be positive"));
    }
    Ok(ns)
}

/// Formats nanoseconds the way [`parse_duration`] reads them, in the largest
/// exact unit.
pub fn format_duration(ns: i64) -> String {
    for (unit, size) in [
        ("w", 7 * 86_400_000_000_000),
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns % size == 0 {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod drop_table_tests {
    use super::*;

    #[test]
    fn drop_table_resolves_its_database() {
        assert_eq!(
            parse_drop_table("DROP TABLE cpu", Some("db")).unwrap(),
            Some(OwnStatement::DropTable {
                database: "db".into(),
                table: "cpu".into(),
                if_exists: false
            })
        );
        assert_eq!(
            parse_drop_table("drop measurement if exists \"a.b\";", Some("db")).unwrap(),
            Some(OwnStatement::DropTable {
                database: "db".into(),
                table: "a.b".into(),
                if_exists: true
            })
        );
        let table = |sql: &str| match parse_drop_table(sql, Some("db")).unwrap() {
            Some(OwnStatement::DropTable { table, .. }) => table,
            other => panic!("{other:?}"),
        };
        assert_eq!(table("DROP TABLE \"my table\""), "my table");
        assert_eq!(table("DROP TABLE \"\"\"quoted\"\"\""), "\"quoted\"");
        assert_eq!(table("DROP TABLE Upper"), "upper");
        assert_eq!(table("DROP TABLE \"Upper\""), "Upper");
        assert_eq!(table("DROP MEASUREMENT Upper"), "Upper");
        assert!(parse_drop_table("DROP TABLE system.nodes", None)
            .unwrap_err()
            .contains("cannot be dropped"));
        assert!(parse_drop_table("DROP TABLE \"open", Some("db")).is_err());
        assert!(parse_drop_table("DROP TABLE a.b.c", Some("db")).is_err());
        assert_eq!(
            parse_drop_table("DROP TABLESPACE x", Some("db")).unwrap(),
            None
        );
        assert_eq!(
            parse_drop_table("DROP TABLE other.cpu", None).unwrap(),
            Some(OwnStatement::DropTable {
                database: "other".into(),
                table: "cpu".into(),
                if_exists: false
            })
        );
        assert!(parse_drop_table("DROP TABLE cpu", None)
            .unwrap_err()
            .contains("name the database"));
        assert!(parse_drop_table("DROP TABLE", Some("db")).is_err());
        assert!(parse_drop_table("DROP TABLE a b", Some("db")).is_err());
        assert_eq!(parse_drop_table("DROP DATABASE x", None).unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use strata_catalog::model::{DAY_NS, HOUR_NS};

    use super::*;

    #[test]
    fn kill_takes_one_id_as_a_string_literal() {
        let id = |sql: &str| match parse(sql) {
            Ok(Some(OwnStatement::KillQuery { query_id })) => Ok(query_id),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(id("KILL QUERY 'abc'").unwrap(), "abc");
        assert_eq!(id("kill 'abc';").unwrap(), "abc");
        assert_eq!(id("KILL QUERY abc -- why").unwrap(), "abc");
        assert_eq!(id("KILL QUERY 'a b'").unwrap(), "a b");
        assert_eq!(id("KILL QUERY 'it''s'").unwrap(), "it's");
        assert!(id("KILL QUERY 'x'' OR 1=1 --'").unwrap().contains("OR 1=1"));
        assert!(id("KILL QUERY ''")
            .unwrap_err()
            .contains("needs the query's id"));
        assert!(id("KILL QUERY")
            .unwrap_err()
            .contains("needs the query's id"));
        assert!(id("KILL QUERY 'a' 'b'").unwrap_err().contains("one id"));
        assert!(id("KILL QUERY 'abc").unwrap_err().contains("not closed"));
        assert!(id("KILL CONNECTION 'abc'")
            .unwrap_err()
            .contains("only KILL QUERY"));
        assert!(id(&format!("KILL QUERY '{}'", "x".repeat(5000)))
            .unwrap_err()
            .contains("at most 128"));
        assert_eq!(
            strip_leading_comments("/*+ strata.x = 1 */ -- c\n /* d */ KILL 'q'"),
            "KILL 'q'"
        );
    }

    #[test]
    fn create_database_with_an_option_list() {
        let s = parse(
            "CREATE DATABASE m WITH (ttl = '30d', shard_duration = '1h', replication = 2, \
             shards = 4, shard_key = 'hostname, region');",
        )
        .unwrap()
        .unwrap();
        let OwnStatement::CreateDatabase { name, options, .. } = s else {
            panic!()
        };
        assert_eq!(name, "m");
        assert_eq!(options.retention_ns, Some(30 * DAY_NS));
        assert_eq!(options.shard_group_duration_ns, HOUR_NS);
        assert_eq!(options.replication_factor, 2);
        assert_eq!(options.shards_per_group, Some(4));
        assert_eq!(options.shard_key, ["hostname", "region"]);
        let Some(OwnStatement::CreateDatabase { options, .. }) =
            parse("create database m with(shard_key=(host), retention='INF')").unwrap()
        else {
            panic!()
        };
        assert_eq!(options.shard_key, ["host"]);
        assert_eq!(options.retention_ns, None);
        for (sql, says) in [
            (
                "CREATE DATABASE m WITH (colour = 'red')",
                "unknown database option 'colour'",
            ),
            (
                "CREATE DATABASE m WITH (ttl '1d')",
                "expected '=' after ttl",
            ),
            ("CREATE DATABASE m WITH (ttl = '1d'", "expected ',' or ')'"),
            (
                "CREATE DATABASE m WITH (ttl = '1d') shards 2",
                "unexpected 'shards'",
            ),
            ("CREATE DATABASE m WITH (ttl = 'soon')", "invalid duration"),
            ("CREATE DATABASE m abcé(", "unknown database option"),
            (
                "CREATE DATABASE m WITH (ttl = '1d', retention = '2d')",
                "RETENTION is given twice",
            ),
            (
                "CREATE DATABASE m SHARDS 2 SHARDS 3",
                "SHARDS is given twice",
            ),
            ("CREATE DATABASE m WITH (shards = 1000000)", "from 1 to 256"),
            (
                "CREATE DATABASE m WITH (shards = '3')",
                "takes a number, not a string",
            ),
            (
                "CREATE DATABASE m RETENTION 1h SHARD DURATION 1w",
                "RETENTION 1h is shorter than SHARD DURATION 1w",
            ),
            (
                "CREATE DATABASE m SHARD DURATION 1ns",
                "shorter than the shortest allowed, 1m",
            ),
        ] {
            let e = parse(sql).unwrap_err();
            assert!(e.contains(says), "{sql}: {e}");
        }
    }

    #[test]
    fn create_database_with_options() {
        let s = parse("create database if not exists metrics with retention 30d shard duration 1h replication 2 shards 4;")
            .unwrap()
            .unwrap();
        let OwnStatement::CreateDatabase {
            name,
            options,
            if_not_exists,
        } = s
        else {
            panic!()
        };
        assert_eq!(name, "metrics");
        assert!(if_not_exists);
        assert_eq!(options.retention_ns, Some(30 * DAY_NS));
        assert_eq!(options.shard_group_duration_ns, HOUR_NS);
        assert_eq!(options.replication_factor, 2);
        assert_eq!(options.shards_per_group, Some(4));
        for sql in [
            "CREATE DATABASE k SHARD KEY (hostname, region) SHARDS 3",
            "CREATE DATABASE k SHARD KEY(hostname,region) SHARDS 3",
            "CREATE DATABASE k SHARD KEY ( hostname , \"region\" ) SHARDS 3",
        ] {
            let Some(OwnStatement::CreateDatabase { options, .. }) = parse(sql).unwrap() else {
                panic!("{sql}")
            };
            assert_eq!(options.shard_key, vec!["hostname", "region"], "{sql}");
            assert_eq!(options.shards_per_group, Some(3), "{sql}");
        }
        assert_eq!(
            parse("ALTER DATABASE k SHARD KEY (host)").unwrap(),
            Some(OwnStatement::AlterDatabase {
                name: "k".into(),
                shard_key: vec!["host".into()]
            })
        );
        for (sql, says) in [
            ("ALTER DATABASE k RETENTION 1d", "cannot be changed yet"),
            ("ALTER DATABASE k SHARD ñé (a)", "cannot be changed yet"),
            ("CREATE DATABASE k SHARD k€", "unknown database option"),
            (
                "CREATE DATABASE k SHARD keys (a)",
                "unknown database option",
            ),
            ("ALTER DATABASE k SHARD KEY (a) x", "unexpected 'x'"),
            ("CREATE DATABASE k SHARD KEY hostname", "list of tag names"),
            ("CREATE DATABASE k SHARD KEY (a, a)", "twice"),
            ("CREATE DATABASE k SHARD KEY (time)", "takes tags"),
            ("CREATE DATABASE k SHARD KEY ()", "list of tag names"),
        ] {
            let e = parse(sql).unwrap_err();
            assert!(e.contains(says), "{sql}: {e}");
        }
    }

    #[test]
    fn shard_duration_defaults_from_retention() {
        let Some(OwnStatement::CreateDatabase { options, .. }) =
            parse("CREATE DATABASE m RETENTION 1d").unwrap()
        else {
            panic!()
        };
        assert_eq!(options.shard_group_duration_ns, HOUR_NS);
    }

    #[test]
    fn other_sql_is_not_ours_and_bad_options_are_named() {
        assert_eq!(parse("SELECT 1").unwrap(), None);
        assert_eq!(parse("show tables").unwrap(), None);
        let e = parse("CREATE DATABASE m RETENTION soon").unwrap_err();
        assert!(e.contains("soon"), "{e}");
        let e = parse("CREATE DATABASE m COLOR blue").unwrap_err();
        assert!(e.contains("color"), "{e}");
        assert!(parse("CREATE DATABASE").is_err());
        assert!(parse("CREATE DATABASE a.b").is_err());
    }

    #[test]
    fn durations_round_trip() {
        for s in ["1h", "30d", "2w", "90s", "15m", "250ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
