//! DELETE on a storage node. A delete removes the rows of one table in one
//! shard whose time is in a range and whose tags meet some conditions.
//! Rows in memory are removed at once; rows already in Parquet files are
//! covered by a [`Tombstone`] in the manifest, which names the files it
//! applies to: scans drop the rows it matches, and compaction removes them
//! for good and retires the tombstone. Files written after the delete are
//! never covered, so a point written again after a delete is visible.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use strata_catalog::model::TIME_COLUMN;
use strata_proto::storage::v1 as pb;

/// `tag IN (values)`, or `NOT IN` when negated; a missing tag reads as the
/// empty string (InfluxDB: `tag = ''` selects series without the tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagCondition {
    pub tag: String,
    pub values: Vec<String>,
    pub negated: bool,
}

/// Which rows a delete removes: `min_time <= time <= max_time` and every
/// tag condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePredicate {
    pub min_time: i64,
    pub max_time: i64,
    pub tags: Vec<TagCondition>,
}

/// A delete waiting to be applied to Parquet files: the files of
/// `(shard_id, table)` that existed when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The WAL sequence number of the delete.
    pub seq: u64,
    pub shard_id: u64,
    pub table: String,
    pub predicate: DeletePredicate,
    /// Ids of the files it still applies to; it is dropped when empty.
    pub file_ids: Vec<u64>,
}

impl From<pb::DeletePredicate> for DeletePredicate {
    fn from(p: pb::DeletePredicate) -> Self {
        DeletePredicate {
            min_time: p.min_time,
            max_time: p.max_time,
            tags: p
                .tags
                .into_iter()
                .map(|t| TagCondition {
                    tag: t.tag,
                    values: t.values,
                    negated: t.negated,
                })
                .collect(),
        }
    }
}

impl From<&DeletePredicate> for pb::DeletePredicate {
    fn from(p: &DeletePredicate) -> Self {
        pb::DeletePredicate {
            min_time: p.min_time,
            max_time: p.max_time,
            tags: p
                .tags
                .iter()
                .map(|t| pb::TagCondition {
                    tag: t.tag.clone(),
                    values: t.values.clone(),
                    negated: t.negated,
                })
                .collect(),
        }
    }
}

impl DeletePredicate {
    /// Whether rows in `[min, max]` may match.
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        self.min_time <= max && min <= self.max_time
    }

    /// One flag per row of `batch`: true where the delete removes it. A
    /// batch without a `time` column matches nothing.
    pub fn matches(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let n = batch.num_rows();
        let Some(time) = batch.column_by_name(TIME_COLUMN) else {
            return Ok(BooleanArray::from(vec![false; n]));
        };
        let time = cast(time, &DataType::Int64)?;
        let time = time.as_primitive::<arrow::datatypes::Int64Type>();
        let mut hit: Vec<bool> = (0..n)
            .map(|i| time.is_valid(i) && (self.min_time..=self.max_time).contains(&time.value(i)))
            .collect();
        for cond in &self.tags {
            let values: Option<ArrayRef> = match batch.column_by_name(&cond.tag) {
                Some(c) => Some(cast(c, &DataType::Utf8)?),
                None => None,
            };
            let strings = values.as_ref().map(|v| v.as_string::<i32>());
            for (i, h) in hit.iter_mut().enumerate() {
                if !*h {
                    continue;
                }
                let v = match strings {
                    Some(s) if s.is_valid(i) => s.value(i),
                    _ => "",
                };
                *h = cond.values.iter().any(|x| x == v) != cond.negated;
            }
        }
        Ok(BooleanArray::from(hit))
    }

    /// `batch` without the rows this delete removes.
    pub fn retain(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let hit = self.matches(batch)?;
        if hit.true_count() == 0 {
            return Ok(batch.clone());
        }
        let keep = arrow::compute::not(&hit)?;
        filter_record_batch(batch, &keep)
    }
}

/// `batch` without the rows any of `deletes` removes.
pub fn retain_all(
    deletes: &[Arc<DeletePredicate>],
    batch: RecordBatch,
) -> Result<RecordBatch, ArrowError> {
    deletes.iter().try_fold(batch, |b, d| d.retain(&b))
}

#[cfg(test)]
mod tests {
    use arrow::array::{StringArray, StringDictionaryBuilder, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Int32Type, Schema, TimeUnit};

    use super::*;

    fn batch() -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        for h in [Some("a"), Some("b"), None, Some("a")] {
            match h {
                Some(h) => host.append_value(h),
                None => host.append_null(),
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("region", DataType::Utf8, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(host.finish()),
                Arc::new(StringArray::from(vec!["eu", "eu", "us", "us"])),
                Arc::new(TimestampNanosecondArray::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap()
    }

    fn hits(p: &DeletePredicate) -> Vec<bool> {
        p.matches(&batch())
            .unwrap()
            .iter()
            .map(|b| b.unwrap())
            .collect()
    }

    fn tag(tag: &str, values: &[&str], negated: bool) -> TagCondition {
        TagCondition {
            tag: tag.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            negated,
        }
    }

    #[test]
    fn time_range_is_inclusive() {
        let p = DeletePredicate {
            min_time: 20,
            max_time: 30,
            tags: vec![],
        };
        assert_eq!(hits(&p), vec![false, true, true, false]);
    }

    #[test]
    fn tag_conditions_are_anded_and_missing_tags_are_empty() {
        let all = |tags| DeletePredicate {
            min_time: i64::MIN,
            max_time: i64::MAX,
            tags,
        };
        assert_eq!(
            hits(&all(vec![tag("host", &["a"], false)])),
            vec![true, false, false, true]
        );
        assert_eq!(
            hits(&all(vec![tag("host", &["a"], true)])),
            vec![false, true, true, false]
        );
        assert_eq!(
            hits(&all(vec![tag("host", &[""], false)])),
            vec![false, false, true, false]
        );
        assert_eq!(
            hits(&all(vec![
                tag("host", &["a", "b"], false),
                tag("region", &["eu"], false)
            ])),
            vec![true, true, false, false]
        );
        // A tag the batch does not have is empty on every row.
        assert_eq!(
            hits(&all(vec![tag("rack", &["r1"], false)])),
            vec![false; 4]
        );
        assert_eq!(hits(&all(vec![tag("rack", &["r1"], true)])), vec![true; 4]);
    }

    #[test]
    fn retain_keeps_the_other_rows() {
        let p = DeletePredicate {
            min_time: 0,
            max_time: 25,
            tags: vec![tag("region", &["eu"], false)],
        };
        let kept = p.retain(&batch()).unwrap();
        assert_eq!(kept.num_rows(), 2);
        let proto: pb::DeletePredicate = (&p).into();
        assert_eq!(DeletePredicate::from(proto), p);
    }
}
