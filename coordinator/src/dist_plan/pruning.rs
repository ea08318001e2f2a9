//! What a query's filters allow: the time range, to skip shard groups
//! outside it, and the values of shard-key tags, to read only the shards
//! those values hash to.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use strata_catalog::model::{shard_key_hash, ShardGroup, TIME_COLUMN};

/// Most shard-key value combinations worth hashing; a query allowing more
/// reads every shard.
const MAX_KEY_COMBINATIONS: usize = 4096;

/// The indices of `group`'s shards that can hold rows passing `filters`
/// (a conjunction): those the allowed shard-key values hash to, or all of
/// them when the group has no shard key, a key column is not a tag of the
/// table (`is_tag`; rows are routed by their tags only), or a key tag is
/// not pinned to a finite set of values.
pub fn shards_for_key(
    group: &ShardGroup,
    filters: &[Expr],
    is_tag: impl Fn(&str) -> bool,
) -> Vec<usize> {
    let all: Vec<usize> = (0..group.shards.len()).collect();
    if group.shard_key.is_empty()
        || group.shards.len() < 2
        || !group.shard_key.iter().all(|k| is_tag(k))
    {
        return all;
    }
    let mut sets = vec![];
    for tag in &group.shard_key {
        match tag_values(filters, tag) {
            Some(values) => sets.push(values.into_iter().collect::<Vec<_>>()),
            None => return all,
        }
    }
    let combinations = sets.iter().try_fold(1usize, |n, s| n.checked_mul(s.len()));
    if combinations.is_none_or(|n| n > MAX_KEY_COMBINATIONS) {
        return all;
    }
    let mut kept = BTreeSet::new();
    let mut combo = vec![0usize; sets.len()];
    'outer: loop {
        if sets.iter().any(|s| s.is_empty()) {
            break;
        }
        let hash = shard_key_hash(combo.iter().zip(&sets).map(|(i, s)| s[*i].as_str()));
        kept.insert((hash % group.shards.len() as u64) as usize);
        for d in (0..combo.len()).rev() {
            combo[d] += 1;
            if combo[d] < sets[d].len() {
                continue 'outer;
            }
            combo[d] = 0;
        }
        break;
    }
    kept.into_iter().collect()
}

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

    fn group(key: &[&str], shards: usize) -> ShardGroup {
        ShardGroup {
            id: 1,
            start_ns: 0,
            end_ns: 10,
            shards: (0..shards as u64)
                .map(|id| strata_catalog::model::Shard {
                    id,
                    owners: vec![1],
                })
                .collect(),
            shard_key: key.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn shard_of(g: &ShardGroup, values: &[&str]) -> usize {
        (shard_key_hash(values.iter().copied()) % g.shards.len() as u64) as usize
    }

    #[test]
    fn shard_key_values_pick_shards() {
        let g = group(&["host"], 8);
        let eq = vec![col("host").eq(lit("a")).and(col("time").gt(ts(1)))];
        assert_eq!(
            shards_for_key(&g, &eq, |_| true),
            vec![shard_of(&g, &["a"])]
        );
        let dict = lit(ScalarValue::Dictionary(
            Box::new(datafusion::arrow::datatypes::DataType::Int32),
            Box::new(ScalarValue::from("b")),
        ));
        assert_eq!(
            shards_for_key(&g, &[col("host").eq(dict)], |_| true),
            vec![shard_of(&g, &["b"])]
        );
        let or = vec![col("host").eq(lit("a")).or(col("host").eq(lit("b")))];
        let inl = vec![col("host").in_list(vec![lit("a"), lit("b")], false)];
        let mut want = vec![shard_of(&g, &["a"]), shard_of(&g, &["b"])];
        want.sort();
        want.dedup();
        assert_eq!(shards_for_key(&g, &or, |_| true), want);
        assert_eq!(shards_for_key(&g, &inl, |_| true), want);
        // Not pinned: every shard.
        for f in [
            vec![col("host").not_eq(lit("a"))],
            vec![col("host").eq(lit("a")).or(col("region").eq(lit("x")))],
            vec![col("host").in_list(vec![lit("a")], true)],
            vec![],
        ] {
            assert_eq!(shards_for_key(&g, &f, |_| true).len(), 8, "{f:?}");
        }
        // Contradictions read nothing.
        let none = vec![col("host").eq(lit("a")), col("host").eq(lit("b"))];
        assert!(shards_for_key(&g, &none, |_| true).is_empty());
        // A two-tag key needs both.
        let g2 = group(&["host", "region"], 8);
        assert_eq!(shards_for_key(&g2, &eq, |_| true).len(), 8);
        let both = vec![col("host").eq(lit("a")), col("region").eq(lit("x"))];
        assert_eq!(
            shards_for_key(&g2, &both, |_| true),
            vec![shard_of(&g2, &["a", "x"])]
        );
        // A key column that is a field of this table routes nothing.
        assert_eq!(shards_for_key(&g, &eq, |_| false).len(), 8);
        // A cast that may change the value pins nothing.
        let through_int = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("host")),
            DataType::Int64,
        ));
        let round_trip = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(through_int),
            DataType::Utf8,
        ));
        assert_eq!(
            shards_for_key(&g, &[round_trip.eq(lit("1"))], |_| true).len(),
            8
        );
        // Without a key, the series key routes: no pruning.
        assert_eq!(shards_for_key(&group(&[], 8), &eq, |_| true).len(), 8);
    }

    #[test]
    fn disjunctions_do_not_narrow() {
        let f = vec![col("time").lt(ts(5)).or(col("time").gt(ts(100)))];
        assert_eq!(time_range(&f), (i64::MIN, i64::MAX));
    }
}
