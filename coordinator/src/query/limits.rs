//! Bounds on the size of a SQL statement, checked before it is parsed.
//!
//! Parsing, planning and evaluating an expression recurse once per level
//! of its tree, and a left-deep chain such as `1+1+…+1` or `a OR b OR …`
//! is as deep as it has operators. Parentheses and function calls are
//! bounded by the parser's recursion limit; operator chains are not, so
//! their length is bounded here, by counting operator tokens (the
//! tokenizer does not recurse). The query threads' stacks
//! ([`crate::executor::QUERY_STACK_BYTES`]) hold chains far deeper than
//! this bound.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Longest statement accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 16 << 20;

/// Most operators (`+`, `=`, `AND`, `OR`, …) one statement may hold.
/// Planning cost grows with the square of a chain's length (expression
/// names and rewrites are rebuilt at every level: 1,000 terms plan in
/// 3.8 s in a debug build, 2,000 in 15 s), so the bound keeps one
/// statement from holding a query thread for long; a 2,000-value OR
/// chain of equalities still passes.
pub const MAX_OPERATORS: usize = 4_096;

/// Refuses a statement too long or with too many operators, saying which.
pub fn check_sql(sql: &str) -> Result<(), String> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!(
            "the statement is {} bytes long; statements are limited to {MAX_SQL_BYTES} bytes",
            sql.len()
        ));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| e.to_string())?;
    let operators = tokens.iter().filter(|t| is_operator(t)).count();
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the statement has {operators} operators; at most {MAX_OPERATORS} are allowed in \
             one statement (write long OR chains of equalities as IN lists)"
        ));
    }
    Ok(())
}

fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::WHEN
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::DIV
        ),
        Token::DoubleEq
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::DoubleColon
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk
        | Token::DoubleTilde
        | Token::DoubleTildeAsterisk
        | Token::ExclamationMarkDoubleTilde
        | Token::ExclamationMarkDoubleTildeAsterisk
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Arrow
        | Token::LongArrow
        | Token::HashArrow
        | Token::RArrow
        | Token::AtSign
        | Token::LBracket
        | Token::ExclamationMark => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, n: usize) -> String {
        let terms: Vec<&str> = std::iter::repeat_n("1", n).collect();
        format!("SELECT {}", terms.join(op))
    }

    #[test]
    fn long_operator_chains_are_refused_with_the_count() {
        assert!(check_sql(&chain("+", MAX_OPERATORS + 1)).is_ok());
        let e = check_sql(&chain("+", MAX_OPERATORS + 2)).unwrap_err();
        assert!(
            e.contains(&format!("{} operators", MAX_OPERATORS + 1)),
            "{e}"
        );
        let ors: Vec<String> = (0..MAX_OPERATORS + 5)
            .map(|i| format!("h = '{i}'"))
            .collect();
        let e = check_sql(&format!("SELECT * FROM t WHERE {}", ors.join(" OR "))).unwrap_err();
        assert!(e.contains("IN lists"), "{e}");
    }

    #[test]
    fn long_lists_without_operators_pass_and_huge_text_is_refused() {
        let values: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        assert!(check_sql(&format!(
            "SELECT * FROM t WHERE x IN ({})",
            values.join(",")
        ))
        .is_ok());
        let e = check_sql(&"x".repeat(MAX_SQL_BYTES + 1)).unwrap_err();
        assert!(e.contains("bytes"), "{e}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;
        use crate::executor::QueryExecutor;

        /// SQL expressions over a table `t(a double, s text)`: literals,
        /// columns, operators, functions, CASE, casts, nested a few deep.
        fn expr() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("a".to_string()),
                Just("s".to_string()),
                Just("NULL".to_string()),
                "-?[0-9]{1,20}(\\.[0-9]{1,3})?",
                "'[a-z%_]{0,5}'",
            ];
            leaf.prop_recursive(6, 64, 4, |inner| {
                let ops = prop_oneof![
                    Just("+"),
                    Just("-"),
                    Just("*"),
                    Just("/"),
                    Just("%"),
                    Just("="),
                    Just("<>"),
                    Just("<"),
                    Just(">="),
                    Just("AND"),
                    Just("OR"),
                    Just("||"),
                    Just("LIKE"),
                ];
                prop_oneof![
                    (inner.clone(), ops, inner.clone())
                        .prop_map(|(l, o, r)| format!("({l} {o} {r})")),
                    inner.clone().prop_map(|e| format!("NOT ({e})")),
                    inner.clone().prop_map(|e| format!("CAST({e} AS BIGINT)")),
                    inner.clone().prop_map(|e| format!("abs({e})")),
                    inner.clone().prop_map(|e| format!("coalesce({e}, 1)")),
                    (inner.clone(), inner.clone(), inner.clone())
                        .prop_map(|(c, x, y)| format!("CASE WHEN {c} THEN {x} ELSE {y} END")),
                ]
            })
        }

        /// An expression, or a left-deep chain: short enough to plan
        /// quickly in a debug build, or just past the operator bound.
        fn top() -> impl Strategy<Value = String> {
            let length = prop_oneof![1..200usize, (MAX_OPERATORS + 2)..(MAX_OPERATORS + 50)];
            prop_oneof![
                3 => expr(),
                1 => ("a|1|\\(a \\* 2\\)", "[+*]| OR | AND ", length)
                    .prop_map(|(e, op, n)| vec![e; n].join(&op)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(150))]

            /// Whatever expression a client sends, the front door bounds it
            /// or DataFusion plans and runs it or refuses it: no panic, no
            /// stack overflow.
            #[test]
            fn generated_expressions_never_crash(e in top(), filter in expr()) {
                let sql = format!("SELECT {e} FROM t WHERE {filter}");
                if check_sql(&sql).is_err() {
                    return Ok(());
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let outcome = rt.block_on(async {
                    let exec = QueryExecutor::new(1).unwrap();
                    exec.run(async move {
                        let ctx = datafusion::prelude::SessionContext::new();
                        ctx.sql("CREATE TABLE t (a DOUBLE, s VARCHAR) AS VALUES (1.5, 'x'), (NULL, 'y')")
                            .await?
                            .collect()
                            .await?;
                        ctx.sql(&sql).await?.collect().await
                    })
                    .await
                });
                prop_assert!(outcome.is_ok(), "the query thread died: {:?}", outcome.err());
            }
        }
    }
}
