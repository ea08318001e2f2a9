//! Settings a statement gives itself: a comment that opens the statement,
//! `/*+ key = value, ... */`, sets strata's options (`strata.*`, such as
//! `strata.last_value_cache = false`) for that statement only. DataFusion's
//! own options are not open to clients: some values (a batch size of 0,
//! millions of partitions) would break a query or the process.

/// The settings of `sql`'s leading hint comment, if it has one.
pub fn settings(sql: &str) -> Result<Vec<(String, String)>, String> {
    let Some(rest) = sql.trim_start().strip_prefix("/*+") else {
        return Ok(vec![]);
    };
    let Some(end) = rest.find("*/") else {
        return Err("the hint comment `/*+ ... */` is not closed".into());
    };
    rest[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (key, value) = s
                .split_once('=')
                .ok_or_else(|| format!("hint `{s}` is not `key = value`"))?;
            // Keys are case-insensitive, as SQL identifiers.
            let key = key.trim().to_ascii_lowercase();
            if !key.starts_with("strata.") {
                return Err(format!(
                    "hint `{s}`: only strata's options (`strata.*`) can be set in a hint"
                ));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            Ok((key, value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_hint_comments_give_settings() {
        assert_eq!(settings("SELECT 1").unwrap(), vec![]);
        assert_eq!(settings("/* plain */ SELECT 1").unwrap(), vec![]);
        assert_eq!(
            settings("  /*+ strata.last_value_cache = false, strata.other='x y' */ SELECT 1")
                .unwrap(),
            vec![
                ("strata.last_value_cache".to_string(), "false".to_string()),
                ("strata.other".to_string(), "x y".to_string()),
            ]
        );
        let refused = settings("/*+ datafusion.execution.batch_size = 0 */ SELECT 1");
        assert!(refused.unwrap_err().contains("only strata's options"));
        assert!(settings("/*+ strata.last_value_cache SELECT 1").is_err());
        assert!(settings("/*+ nonsense */ SELECT 1").is_err());
        // Only a comment that opens the statement counts.
        assert_eq!(settings("SELECT /*+ a = b */ 1").unwrap(), vec![]);
    }
}
