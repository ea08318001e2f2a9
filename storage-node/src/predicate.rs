//! What a scan's or a query's filters (a conjunction of DataFusion logical
//! expressions) pin: the inclusive time range rows must fall into, and the
//! finite set of values a tag may take. The coordinator prunes shard groups
//! and shards with them; a storage node looks series up in its memtables.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use strata_catalog::model::TIME_COLUMN;

/// The values `filters` (a conjunction) allow for tag `tag`, when an `=`,
/// an `IN` list or an `OR` of those pins it to a finite set.
pub fn tag_values(filters: &[Expr], tag: &str) -> Option<BTreeSet<String>> {
    let mut allowed: Option<BTreeSet<String>> = None;
    let mut conjuncts = vec![];
    for f in filters {
        split_and(f, &mut conjuncts);
    }
    for c in conjuncts {
        if let Some(values) = pinned(c, tag) {
            allowed = Some(match allowed {
                Some(a) => a.intersection(&values).cloned().collect(),
                None => values,
            });
        }
    }
    allowed
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

/// Casting to these keeps a string's value as it is.
fn is_string_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string_type(v),
        _ => false,
    }
}

fn is_tag(e: &Expr, tag: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == tag,
        // A dictionary tag read as a string keeps its values; any other
        // cast (say, to a number and back) may not.
        Expr::Cast(c) if is_string_type(c.field.data_type()) => is_tag(&c.expr, tag),
        Expr::TryCast(c) if is_string_type(c.field.data_type()) => is_tag(&c.expr, tag),
        _ => false,
    }
}

fn string_literal(e: &Expr) -> Option<String> {
    fn of(v: &ScalarValue) -> Option<String> {
        match v {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
            ScalarValue::Dictionary(_, inner) => of(inner),
            _ => None,
        }
    }
    match e {
        Expr::Literal(v, _) => of(v),
        Expr::Cast(c) if is_string_type(c.field.data_type()) => string_literal(&c.expr),
        _ => None,
    }
}

/// The finite set of values one conjunct allows for `tag`, if it pins it.
fn pinned(e: &Expr, tag: &str) -> Option<BTreeSet<String>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let v = if is_tag(left, tag) {
                string_literal(right)
            } else if is_tag(right, tag) {
                string_literal(left)
            } else {
                None
            }?;
            Some(BTreeSet::from([v]))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut a = pinned(left, tag)?;
            a.extend(pinned(right, tag)?);
            Some(a)
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if is_tag(expr, tag) => list.iter().map(string_literal).collect(),
        _ => None,
    }
}

/// The inclusive `[min, max]` nanosecond range that rows must fall into to
/// pass all of `filters` (a conjunction); unbounded sides are `i64::MIN` /
/// `i64::MAX`.
pub fn time_range(filters: &[Expr]) -> (i64, i64) {
    let mut range = (i64::MIN, i64::MAX);
    for f in filters {
        narrow(f, &mut range);
    }
    range
}

fn is_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TIME_COLUMN)
}

fn literal_ns(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampMicrosecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn narrow(e: &Expr, range: &mut (i64, i64)) {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(left, range);
                narrow(right, range);
                return;
            }
            // normalize to `time <op> literal`
            let (op, lit) = if is_time(left) {
                (*op, right.as_ref())
            } else if is_time(right) {
                match op.swap() {
                    Some(swapped) => (swapped, left.as_ref()),
                    None => return,
                }
            } else {
                return;
            };
            let Some(v) = literal_ns(lit) else { return };
            match op {
                Operator::Eq => {
                    range.0 = range.0.max(v);
                    range.1 = range.1.min(v);
                }
                Operator::Gt => range.0 = range.0.max(v.saturating_add(1)),
                Operator::GtEq => range.0 = range.0.max(v),
                Operator::Lt => range.1 = range.1.min(v.saturating_sub(1)),
                Operator::LtEq => range.1 = range.1.min(v),
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time(expr) => {
            if let Some(lo) = literal_ns(low) {
                range.0 = range.0.max(lo);
            }
            if let Some(hi) = literal_ns(high) {
                range.1 = range.1.min(hi);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(Some(v), None))
    }

    #[test]
    fn bounds_from_comparisons_and_between() {
        let f = vec![col("time").gt_eq(ts(10)).and(col("time").lt(ts(20)))];
        assert_eq!(time_range(&f), (10, 19));
        let f = vec![ts(5).lt(col("time")), col("time").between(ts(0), ts(8))];
        assert_eq!(time_range(&f), (6, 8));
        let f = vec![col("host").eq(lit("a"))];
        assert_eq!(time_range(&f), (i64::MIN, i64::MAX));
    }

    #[test]
    fn disjunctions_do_not_narrow() {
        let f = vec![col("time").lt(ts(5)).or(col("time").gt(ts(100)))];
        assert_eq!(time_range(&f), (i64::MIN, i64::MAX));
    }

    #[test]
    fn tag_values_come_from_eq_in_and_or_through_string_casts() {
        let f = vec![col("host")
            .in_list(vec![lit("a"), lit("b")], false)
            .and(col("host").eq(lit("b")).or(col("host").eq(lit("c"))))];
        assert_eq!(
            tag_values(&f, "host"),
            Some(BTreeSet::from(["b".to_string()]))
        );
        assert_eq!(tag_values(&f, "region"), None);
        let cast = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("host")),
            DataType::Utf8,
        ));
        assert_eq!(
            tag_values(&[cast.eq(lit("x"))], "host"),
            Some(BTreeSet::from(["x".to_string()]))
        );
        assert_eq!(tag_values(&[col("host").not_eq(lit("x"))], "host"), None);
    }
}
