//! Settings a statement gives itself: a comment that opens the statement,
//! `/*+ key = value, ... */`, sets DataFusion and strata options (such as
//! `strata.last_value_cache = false`) for that statement only.

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
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(value);
            Ok((key.trim().to_string(), value.to_string()))
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
            settings("  /*+ strata.last_value_cache = false, datafusion.execution.batch_size='100' */ SELECT 1")
                .unwrap(),
            vec![
                ("strata.last_value_cache".to_string(), "false".to_string()),
                ("datafusion.execution.batch_size".to_string(), "100".to_string()),
            ]
        );
        assert!(settings("/*+ strata.last_value_cache SELECT 1").is_err());
        assert!(settings("/*+ nonsense */ SELECT 1").is_err());
        // Only a comment that opens the statement counts.
        assert_eq!(settings("SELECT /*+ a = b */ 1").unwrap(), vec![]);
    }
}
