//! `--verify`: the same SQL run by an in-process DataFusion over a Parquet
//! copy of the loaded data, and a comparison of the two answers. A line
//! protocol file is first converted to Parquet (in a temporary directory)
//! with strata's own line-protocol parser, one chunk at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::ArrowWriter;
use snafu::{ResultExt, Snafu};
use strata_coordinator::line_protocol::{parse_lines, FieldValue, ParsedLine};

/// Lines converted per record batch.
const CHUNK_LINES: usize = 50_000;

#[derive(Debug, Snafu)]
pub enum VerifyError {
    #[snafu(display("cannot read {}: {source}", path.display()))]
    ReadData {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("{}: line {line}: {message}", path.display()))]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[snafu(display("{}: no rows", path.display()))]
    Empty { path: PathBuf },
    #[snafu(display("writing the reference Parquet file: {source}"))]
    WriteParquet {
        source: parquet::errors::ParquetError,
    },
    #[snafu(display("building the reference data: {source}"))]
    Arrow { source: arrow::error::ArrowError },
    #[snafu(display("the reference engine: {source}"))]
    Reference {
        source: datafusion::error::DataFusionError,
    },
}

/// An in-process DataFusion holding the reference copy of the data.
pub struct Reference {
    ctx: SessionContext,
    /// Keeps the converted Parquet file alive as long as the context.
    _dir: Option<tempfile::TempDir>,
}

impl Reference {
    /// Opens `path`: a Parquet file (as `bench generate --format parquet`
    /// writes) or InfluxDB line protocol with nanosecond timestamps.
    pub async fn open(path: &Path) -> Result<Self, VerifyError> {
        let mut magic = [0u8; 4];
        let is_parquet = File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map(|_| &magic == b"PAR1")
            .unwrap_or(false);
        let (parquet_path, table, dir) = if is_parquet {
            (path.to_path_buf(), "cpu".to_string(), None)
        } else {
            let dir = tempfile::tempdir().context(ReadDataSnafu { path })?;
            let out = dir.path().join("reference.parquet");
            let table = line_protocol_to_parquet(path, &out)?;
            (out, table, Some(dir))
        };
        let ctx = SessionContext::new();
        ctx.register_parquet(
            &table,
            parquet_path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .context(ReferenceSnafu)?;
        Ok(Reference { ctx, _dir: dir })
    }

    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, VerifyError> {
        self.ctx
            .sql(sql)
            .await
            .context(ReferenceSnafu)?
            .collect()
            .await
            .context(ReferenceSnafu)
    }
}

/// One column being built from parsed lines.
enum ColumnBuilder {
    Tag(StringBuilder),
    Float(Float64Builder),
    Integer(Int64Builder),
    UInteger(UInt64Builder),
    Text(StringBuilder),
    Boolean(BooleanBuilder),
}

impl ColumnBuilder {
    fn for_field(v: &FieldValue<'_>) -> (Self, DataType) {
        match v {
            FieldValue::Float(_) => (Self::Float(Float64Builder::new()), DataType::Float64),
            FieldValue::Integer(_) => (Self::Integer(Int64Builder::new()), DataType::Int64),
            FieldValue::UInteger(_) => (Self::UInteger(UInt64Builder::new()), DataType::UInt64),
            FieldValue::String(_) => (Self::Text(StringBuilder::new()), DataType::Utf8),
            FieldValue::Boolean(_) => (Self::Boolean(BooleanBuilder::new()), DataType::Boolean),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Tag(b) | Self::Text(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Integer(b) => b.append_null(),
            Self::UInteger(b) => b.append_null(),
            Self::Boolean(b) => b.append_null(),
        }
    }

    /// Appends a field value; false when its type is not the column's.
    fn append_field(&mut self, v: &FieldValue<'_>) -> bool {
        match (self, v) {
            (Self::Float(b), FieldValue::Float(x)) => b.append_value(*x),
            (Self::Integer(b), FieldValue::Integer(x)) => b.append_value(*x),
            (Self::UInteger(b), FieldValue::UInteger(x)) => b.append_value(*x),
            (Self::Text(b), FieldValue::String(x)) => b.append_value(x),
            (Self::Boolean(b), FieldValue::Boolean(x)) => b.append_value(*x),
            _ => return false,
        }
        true
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Tag(b) | Self::Text(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Integer(b) => Arc::new(b.finish()),
            Self::UInteger(b) => Arc::new(b.finish()),
            Self::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

/// The columns of the single table a line-protocol file holds, laid out
/// as strata lays them out: `time`, then tags and fields in the order of
/// the first line.
struct TableBuilder {
    measurement: String,
    schema: SchemaRef,
    index: HashMap<String, usize>,
    time: TimestampNanosecondBuilder,
    columns: Vec<ColumnBuilder>,
}

impl TableBuilder {
    fn new(first: &ParsedLine<'_>) -> Self {
        let mut fields = vec![Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )];
        let mut columns = Vec::new();
        let mut index = HashMap::new();
        for (k, _) in first.tags() {
            index.insert(k.to_string(), columns.len());
            columns.push(ColumnBuilder::Tag(StringBuilder::new()));
            fields.push(Field::new(k.as_ref(), DataType::Utf8, true));
        }
        for (k, v) in &first.fields {
            let (builder, data_type) = ColumnBuilder::for_field(v);
            index.insert(k.to_string(), columns.len());
            columns.push(builder);
            fields.push(Field::new(k.as_ref(), data_type, true));
        }
        TableBuilder {
            measurement: first.measurement().to_string(),
            schema: Arc::new(Schema::new(fields)),
            index,
            time: TimestampNanosecondBuilder::new(),
            columns,
        }
    }

    fn append(&mut self, line: &ParsedLine<'_>) -> Result<(), String> {
        if line.measurement() != self.measurement {
            return Err(format!(
                "table '{}' differs from the file's first table '{}'; --verify takes one table",
                line.measurement(),
                self.measurement
            ));
        }
        let Some(ts) = line.timestamp else {
            return Err("no timestamp".to_string());
        };
        let mut set = vec![false; self.columns.len()];
        for (k, v) in line.tags() {
            let i = *self
                .index
                .get(k.as_ref())
                .ok_or_else(|| format!("tag '{k}' is not in the file's first line"))?;
            match &mut self.columns[i] {
                ColumnBuilder::Tag(b) => b.append_value(v),
                _ => return Err(format!("'{k}' is a field in the first line, a tag here")),
            }
            set[i] = true;
        }
        for (k, v) in &line.fields {
            let i = *self
                .index
                .get(k.as_ref())
                .ok_or_else(|| format!("field '{k}' is not in the file's first line"))?;
            if !self.columns[i].append_field(v) {
                return Err(format!(
                    "field '{k}' has another type than in the first line"
                ));
            }
            set[i] = true;
        }
        for (i, was_set) in set.into_iter().enumerate() {
            if !was_set {
                self.columns[i].append_null();
            }
        }
        self.time.append_value(ts);
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(self.time.finish())];
        arrays.extend(self.columns.iter_mut().map(|c| c.finish()));
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// Converts a line-protocol file to Parquet; returns the table's name.
fn line_protocol_to_parquet(path: &Path, out: &Path) -> Result<String, VerifyError> {
    let reader =
        BufReader::with_capacity(1 << 20, File::open(path).context(ReadDataSnafu { path })?);
    let mut lines = reader.lines();
    let mut table: Option<TableBuilder> = None;
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut line_base = 0usize;
    loop {
        let mut chunk = String::new();
        let mut n = 0;
        for line in lines.by_ref() {
            let line = line.context(ReadDataSnafu { path })?;
            chunk.push_str(&line);
            chunk.push('\n');
            n += 1;
            if n == CHUNK_LINES {
                break;
            }
        }
        if n == 0 {
            break;
        }
        let (parsed, errors) = parse_lines(&chunk);
        if let Some(e) = errors.first() {
            return BadLineSnafu {
                path,
                line: line_base + e.line_number,
                message: e.message.clone(),
            }
            .fail();
        }
        for p in &parsed {
            let t = table.get_or_insert_with(|| TableBuilder::new(p));
            t.append(p).map_err(|message| VerifyError::BadLine {
                path: path.to_path_buf(),
                line: line_base + p.line_number,
                message,
            })?;
        }
        if let Some(t) = table.as_mut() {
            let batch = t.finish().context(ArrowSnafu)?;
            if writer.is_none() {
                let file = File::create(out).context(ReadDataSnafu { path: out })?;
                writer = Some(
                    ArrowWriter::try_new(file, t.schema.clone(), None)
                        .context(WriteParquetSnafu)?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&batch).context(WriteParquetSnafu)?;
            }
        }
        line_base += n;
    }
    let (Some(t), Some(w)) = (table, writer) else {
        return EmptySnafu { path }.fail();
    };
    w.close().context(WriteParquetSnafu)?;
    Ok(t.measurement)
}

/// One value of an answer, comparable across engines.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i128),
    Float(f64),
    Text(String),
}

impl Cell {
    fn matches(&self, other: &Cell) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        match (self, other) {
            (Cell::Float(a), Cell::Float(b)) => close(*a, *b) || (a.is_nan() && b.is_nan()),
            (Cell::Float(a), Cell::Int(b)) | (Cell::Int(b), Cell::Float(a)) => close(*a, *b as f64),
            _ => self == other,
        }
    }

    fn display(&self) -> String {
        match self {
            Cell::Null => "NULL".into(),
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) => v.to_string(),
            Cell::Text(v) => format!("'{v}'"),
        }
    }
}

fn cell(array: &dyn Array, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell::Null;
    }
    use arrow::datatypes::*;
    match array.data_type() {
        DataType::Int8 => Cell::Int(array.as_primitive::<Int8Type>().value(row) as i128),
        DataType::Int16 => Cell::Int(array.as_primitive::<Int16Type>().value(row) as i128),
        DataType::Int32 => Cell::Int(array.as_primitive::<Int32Type>().value(row) as i128),
        DataType::Int64 => Cell::Int(array.as_primitive::<Int64Type>().value(row) as i128),
        DataType::UInt8 => Cell::Int(array.as_primitive::<UInt8Type>().value(row) as i128),
        DataType::UInt16 => Cell::Int(array.as_primitive::<UInt16Type>().value(row) as i128),
        DataType::UInt32 => Cell::Int(array.as_primitive::<UInt32Type>().value(row) as i128),
        DataType::UInt64 => Cell::Int(array.as_primitive::<UInt64Type>().value(row) as i128),
        DataType::Float32 => Cell::Float(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => Cell::Float(array.as_primitive::<Float64Type>().value(row)),
        _ => Cell::Text(
            array_value_to_string(array, row).unwrap_or_else(|e| format!("<unprintable: {e}>")),
        ),
    }
}

/// The rows of an answer with columns in `order` (indexes into its schema).
fn rows(batches: &[RecordBatch], order: &[usize]) -> Vec<Vec<Cell>> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(
                order
                    .iter()
                    .map(|&c| cell(b.column(c).as_ref(), r))
                    .collect(),
            );
        }
    }
    out
}

fn column_names(batches: &[RecordBatch]) -> Option<Vec<String>> {
    batches.first().map(|b| {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().rsplit('.').next().unwrap_or(f.name()).to_string())
            .collect()
    })
}

/// Compares an engine's answer with the reference's. Columns are matched by
/// name when both answers have the same names, else by position; rows in
/// order when the query has ORDER BY (TSBS's orders are total), else as
/// multisets. Floats may differ by a relative 1e-9 (summation order).
pub fn compare(sql: &str, got: &[RecordBatch], want: &[RecordBatch]) -> Result<(), String> {
    let got_rows_n: usize = got.iter().map(|b| b.num_rows()).sum();
    let want_rows_n: usize = want.iter().map(|b| b.num_rows()).sum();
    if got_rows_n != want_rows_n {
        return Err(format!(
            "{got_rows_n} rows, the reference has {want_rows_n}"
        ));
    }
    if got_rows_n == 0 {
        return Ok(());
    }
    let got_names = column_names(got).unwrap_or_default();
    let want_names = column_names(want).unwrap_or_default();
    if got_names.len() != want_names.len() {
        return Err(format!(
            "columns {got_names:?}, the reference has {want_names:?}"
        ));
    }
    let got_order: Vec<usize> = (0..got_names.len()).collect();
    let mut sorted_got = got_names.clone();
    let mut sorted_want = want_names.clone();
    sorted_got.sort();
    sorted_want.sort();
    let want_order: Vec<usize> = if sorted_got == sorted_want {
        got_names
            .iter()
            .map(|n| want_names.iter().position(|w| w == n).unwrap_or(0))
            .collect()
    } else {
        (0..want_names.len()).collect()
    };
    let mut g = rows(got, &got_order);
    let mut w = rows(want, &want_order);
    if !sql.to_ascii_uppercase().contains("ORDER BY") {
        let key = |r: &Vec<Cell>| r.iter().map(Cell::display).collect::<Vec<_>>().join("|");
        g.sort_by_key(key);
        w.sort_by_key(key);
    }
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if a.len() != b.len() || !a.iter().zip(b).all(|(x, y)| x.matches(y)) {
            let show = |r: &Vec<Cell>| r.iter().map(Cell::display).collect::<Vec<_>>().join(", ");
            return Err(format!(
                "row {i} of {got_rows_n} differs:\n    got:       {}\n    reference: {}",
                show(a),
                show(b)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    fn batch(names: &[&str], cols: Vec<ArrayRef>) -> RecordBatch {
        let fields: Vec<Field> = names
            .iter()
            .zip(&cols)
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    #[test]
    fn equal_answers_match_and_differences_are_shown() {
        let a = batch(
            &["host", "v"],
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Float64Array::from(vec![1.5, 2.0])),
            ],
        );
        // Same rows, other column order and other row order.
        let b = batch(
            &["v", "host"],
            vec![
                Arc::new(Float64Array::from(vec![2.0, 1.5 + 1e-12])),
                Arc::new(StringArray::from(vec!["b", "a"])),
            ],
        );
        compare(
            "SELECT * FROM cpu",
            std::slice::from_ref(&a),
            std::slice::from_ref(&b),
        )
        .unwrap();
        // With ORDER BY the row order counts.
        let e = compare(
            "SELECT * FROM cpu ORDER BY v",
            std::slice::from_ref(&a),
            &[b],
        )
        .unwrap_err();
        assert!(e.contains("row 0 of 2 differs"), "{e}");
        let c = batch(
            &["host", "v"],
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Float64Array::from(vec![1.5, 2.1])),
            ],
        );
        let e = compare("SELECT 1", std::slice::from_ref(&a), &[c]).unwrap_err();
        assert!(e.contains("2.1"), "{e}");
        let e = compare("SELECT 1", &[a], &[]).unwrap_err();
        assert!(e.contains("2 rows, the reference has 0"), "{e}");
    }

    #[test]
    fn integers_and_floats_compare_by_value() {
        let a = batch(&["v"], vec![Arc::new(Int64Array::from(vec![3]))]);
        let b = batch(&["v"], vec![Arc::new(Float64Array::from(vec![3.0]))]);
        compare("SELECT 1", &[a], &[b]).unwrap();
    }

    #[tokio::test]
    async fn line_protocol_becomes_a_queryable_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.lp");
        std::fs::write(
            &path,
            "cpu,hostname=a usage_user=1i,usage_idle=2i 10\n\
             cpu,hostname=b usage_user=5i 20\n\
             cpu,hostname=a usage_user=3i,usage_idle=4i 30\n",
        )
        .unwrap();
        let r = Reference::open(&path).await.unwrap();
        let got = r
            .query("SELECT hostname, sum(usage_user) AS s, count(usage_idle) AS c FROM cpu GROUP BY hostname ORDER BY hostname")
            .await
            .unwrap();
        let want = batch(
            &["hostname", "s", "c"],
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![4, 5])),
                Arc::new(Int64Array::from(vec![2, 0])),
            ],
        );
        compare("ORDER BY", &got, &[want]).unwrap();

        std::fs::write(&path, "cpu,hostname=a usage_user=1i 10\ncpu usage_user=\n").unwrap();
        let e = Reference::open(&path).await.err().unwrap().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
