//! What strata's own SQL statements share: recognising one by its first
//! word, and parsing exactly one statement of it.

use datafusion::sql::sqlparser::ast::{Ident, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Whether `sql` starts with the keyword `word` (any case).
pub fn starts_with(sql: &str, word: &str) -> bool {
    sql.trim_start()
        .get(..word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// The name an identifier stands for, as DataFusion reads it: unquoted
/// names are lowercased, quoted ones kept as written.
pub fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The one statement `sql` holds; `verb` names it in errors.
pub fn parse_one(sql: &str, verb: &str) -> Result<Statement, String> {
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| format!("{verb}: {e}"))?;
    if statements.len() != 1 {
        return Err(format!("send one {verb} statement at a time"));
    }
    Ok(statements.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_statement_by_its_first_word() {
        assert!(starts_with("  insert into t", "INSERT"));
        assert!(!starts_with("ins", "INSERT"));
        assert!(!starts_with("é", "INSERT"));
        assert!(parse_one("SELECT 1", "SELECT").is_ok());
        let e = parse_one("SELECT 1; SELECT 2", "SELECT").unwrap_err();
        assert_eq!(e, "send one SELECT statement at a time");
        assert!(parse_one("SELEC", "SELECT")
            .unwrap_err()
            .starts_with("SELECT: "));
    }
}
