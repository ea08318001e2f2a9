//! What a query's filters allow: the time range, to skip shard groups
//! outside it, and the values of shard-key tags, to read only the shards
//! those values hash to.

use std::collections::BTreeSet;

use datafusion::logical_expr::Expr;
use strata_catalog::model::{shard_key_hash, ShardGroup};
pub use strata_storage::predicate::{tag_values, time_range};

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

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(Some(v), None))
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
                    filling: vec![],
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
}
