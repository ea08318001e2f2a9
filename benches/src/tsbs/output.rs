//! Writers for generated cpu-only rows: InfluxDB line protocol byte for
//! byte as TSBS's influx serializer writes it, and Parquet (strata's column
//! layout: `time`, the tags, the fields), both streamed in bounded memory.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use snafu::{ResultExt, Snafu};

use super::cpu_only::{CpuOnlySimulator, FIELD_KEYS, TAG_KEYS};

/// Rows per Parquet record batch (and the most held in memory at once).
const PARQUET_BATCH_ROWS: usize = 65_536;

#[derive(Debug, Snafu)]
pub enum OutputError {
    #[snafu(display("writing the output: {source}"))]
    Write { source: std::io::Error },
    #[snafu(display("writing Parquet: {source}"))]
    Parquet {
        source: parquet::errors::ParquetError,
    },
    #[snafu(display("building a record batch: {source}"))]
    Batch { source: arrow::error::ArrowError },
}

/// Appends `v` in decimal to `buf`.
fn push_i64(buf: &mut Vec<u8>, v: i64) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Writes every row as a line of InfluxDB line protocol; returns the number
/// of rows written.
pub fn write_line_protocol<W: Write>(
    sim: &mut CpuOnlySimulator,
    out: &mut W,
) -> Result<u64, OutputError> {
    // Everything before the fields is fixed per host.
    let prefixes: Vec<Vec<u8>> = sim
        .hosts()
        .iter()
        .map(|h| {
            let mut p = b"cpu".to_vec();
            for (k, v) in TAG_KEYS.iter().zip(&h.tags) {
                p.push(b',');
                p.extend_from_slice(k.as_bytes());
                p.push(b'=');
                p.extend_from_slice(v.as_bytes());
            }
            p.push(b' ');
            p
        })
        .collect();
    let mut buf = Vec::with_capacity(1 << 16);
    let mut rows = 0u64;
    while let Some(row) = sim.next_row() {
        buf.extend_from_slice(&prefixes[row.host_index]);
        for (i, (k, v)) in FIELD_KEYS.iter().zip(row.host.values()).enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            buf.extend_from_slice(k.as_bytes());
            buf.push(b'=');
            push_i64(&mut buf, v);
            buf.push(b'i');
        }
        buf.push(b' ');
        push_i64(&mut buf, row.time_ns);
        buf.push(b'\n');
        rows += 1;
        if buf.len() >= (1 << 16) - 512 {
            out.write_all(&buf).context(WriteSnafu)?;
            buf.clear();
        }
    }
    out.write_all(&buf).context(WriteSnafu)?;
    out.flush().context(WriteSnafu)?;
    Ok(rows)
}

/// The Arrow schema of the cpu table as strata lays it out: `time` first
/// (nanoseconds, no zone), the ten tags as strings, the ten fields as i64.
pub fn cpu_schema() -> SchemaRef {
    let mut fields = vec![Field::new(
        "time",
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        false,
    )];
    fields.extend(
        TAG_KEYS
            .iter()
            .map(|k| Field::new(*k, DataType::Utf8, true)),
    );
    fields.extend(
        FIELD_KEYS
            .iter()
            .map(|k| Field::new(*k, DataType::Int64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// Writes every row to a zstd-compressed Parquet file, one record batch of
/// at most [`PARQUET_BATCH_ROWS`] rows at a time; returns the row count.
pub fn write_parquet<W: Write + Send>(
    sim: &mut CpuOnlySimulator,
    out: W,
) -> Result<u64, OutputError> {
    let schema = cpu_schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(out, schema.clone(), Some(props)).context(ParquetSnafu)?;
    let mut rows = 0u64;
    loop {
        let mut time = TimestampNanosecondBuilder::with_capacity(PARQUET_BATCH_ROWS);
        let mut tags: Vec<StringBuilder> =
            (0..TAG_KEYS.len()).map(|_| StringBuilder::new()).collect();
        let mut fields: Vec<Int64Builder> = (0..FIELD_KEYS.len())
            .map(|_| Int64Builder::with_capacity(PARQUET_BATCH_ROWS))
            .collect();
        let mut n = 0;
        while n < PARQUET_BATCH_ROWS {
            let Some(row) = sim.next_row() else { break };
            time.append_value(row.time_ns);
            for (b, v) in tags.iter_mut().zip(&row.host.tags) {
                b.append_value(v);
            }
            for (b, v) in fields.iter_mut().zip(row.host.values()) {
                b.append_value(v);
            }
            n += 1;
        }
        if n == 0 {
            break;
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(time.finish())];
        columns.extend(tags.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(fields.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let batch = RecordBatch::try_new(schema.clone(), columns).context(BatchSnafu)?;
        writer.write(&batch).context(ParquetSnafu)?;
        rows += n as u64;
    }
    writer.close().context(ParquetSnafu)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsbs::cpu_only::CpuOnlyConfig;

    #[test]
    fn integers_format_like_go() {
        for v in [
            0i64,
            7,
            -7,
            58,
            1_451_606_400_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = Vec::new();
            push_i64(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
        }
    }

    #[test]
    fn first_line_is_tsbs_seed_123() {
        let config = CpuOnlyConfig {
            seed: 123,
            scale: 3,
            initial_scale: 0,
            start_ns: 1_451_606_400_000_000_000,
            end_ns: 1_451_606_430_000_000_000,
            interval_ns: 10_000_000_000,
            max_points: 0,
        };
        let mut out = Vec::new();
        let rows = write_line_protocol(&mut CpuOnlySimulator::new(&config), &mut out).unwrap();
        assert_eq!(rows, 9);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "cpu,hostname=host_0,region=eu-central-1,datacenter=eu-central-1a,rack=6,\
             os=Ubuntu15.10,arch=x86,team=SF,service=19,service_version=1,\
             service_environment=test usage_user=58i,usage_system=2i,usage_idle=24i,\
             usage_nice=61i,usage_iowait=22i,usage_irq=63i,usage_softirq=6i,\
             usage_steal=44i,usage_guest=80i,usage_guest_nice=38i 1451606400000000000"
        );
        assert_eq!(text.lines().count(), 9);
    }

    #[test]
    fn parquet_holds_the_same_rows() {
        use arrow::array::{AsArray, Int64Array};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let config = CpuOnlyConfig {
            seed: 9,
            scale: 5,
            initial_scale: 0,
            start_ns: 0,
            end_ns: 200 * 10_000_000_000,
            interval_ns: 10_000_000_000,
            max_points: 0,
        };
        let mut file = Vec::new();
        let n = write_parquet(&mut CpuOnlySimulator::new(&config), &mut file).unwrap();
        assert_eq!(n, 1000);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file))
            .unwrap()
            .build()
            .unwrap();
        let mut sim = CpuOnlySimulator::new(&config);
        let mut seen = 0;
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.schema(), cpu_schema());
            let hosts = batch.column(1).as_string::<i32>();
            let idle = batch
                .column(13)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let row = sim.next_row().unwrap();
                assert_eq!(hosts.value(i), row.host.tags[0]);
                assert_eq!(idle.value(i), row.host.values()[2]);
                seen += 1;
            }
        }
        assert_eq!(seen, 1000);
        assert!(sim.next_row().is_none());
    }
}
