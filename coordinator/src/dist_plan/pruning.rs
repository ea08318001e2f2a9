//! Extracting the time range a query's filters allow, to skip shard groups
//! outside it.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use strata_catalog::model::TIME_COLUMN;

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
}
