//! InfluxDB line protocol parsing.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`
//! with InfluxDB's escaping rules: in measurements `\,` and `\ `; in tag
//! keys, tag values and field keys also `\=`; in string field values `\"`
//! and `\\`. Lines are parsed independently, so one bad line is reported
//! with its number and the good lines are kept.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    Integer(i64),
    UInteger(u64),
    String(Cow<'a, str>),
    Boolean(bool),
}

/// A line's series: its measurement and tags as written. Lines of a body
/// that repeat the same series text share one (parsed once, hashed once).
#[derive(Debug, PartialEq)]
pub struct SeriesKey<'a> {
    pub measurement: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// [`series_hash`] of the measurement and tags.
    pub hash: u64,
}

impl<'a> SeriesKey<'a> {
    pub fn new(measurement: Cow<'a, str>, tags: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Self {
        let hash = series_hash(&measurement, &tags);
        Self {
            measurement,
            tags,
            hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    /// 1-based line number in the request body.
    pub line_number: usize,
    pub series: Arc<SeriesKey<'a>>,
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// As written, in the request's precision.
    pub timestamp: Option<i64>,
    /// Lines of one body with the same `Some` shape name the same tags and
    /// fields in the same order, with the same field types; `None` (and
    /// different shapes) tell nothing.
    pub shape: Option<u32>,
}

impl<'a> ParsedLine<'a> {
    /// A line built outside the parser (SQL `INSERT`).
    pub fn new(
        line_number: usize,
        measurement: Cow<'a, str>,
        tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
        fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
        timestamp: Option<i64>,
    ) -> Self {
        Self {
            line_number,
            series: Arc::new(SeriesKey::new(measurement, tags)),
            fields,
            timestamp,
            shape: None,
        }
    }

    pub fn measurement(&self) -> &str {
        &self.series.measurement
    }

    pub fn tags(&self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        &self.series.tags
    }

    /// Whether two lines name the same tags and fields in the same order
    /// with the same field types.
    pub fn same_shape(&self, other: &ParsedLine) -> bool {
        if self.shape.is_some() && self.shape == other.shape {
            return true;
        }
        let (a, b) = (self.tags(), other.tags());
        a.len() == b.len()
            && self.fields.len() == other.fields.len()
            && a.iter().zip(b).all(|(x, y)| x.0 == y.0)
            && self.fields.iter().zip(&other.fields).all(|(x, y)| {
                x.0 == y.0 && std::mem::discriminant(&x.1) == std::mem::discriminant(&y.1)
            })
    }
}

/// Stable hash of a series key (measurement + tag set sorted by key, a key
/// written twice keeping its later value), FNV-1a, so that every
/// coordinator routes a series to the same shard.
pub fn series_hash(measurement: &str, tags: &[(Cow<'_, str>, Cow<'_, str>)]) -> u64 {
    let mut tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    // Writers usually send tags sorted already. A stable sort keeps write
    // order among equal keys, so the later value is the one kept.
    if !tags.is_sorted_by(|a, b| a.0 < b.0) {
        tags.sort_by(|a, b| a.0.cmp(b.0));
        let mut kept: Vec<(&str, &str)> = Vec::with_capacity(tags.len());
        for t in tags {
            match kept.last_mut() {
                Some(last) if last.0 == t.0 => *last = t,
                _ => kept.push(t),
            }
        }
        tags = kept;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(measurement.as_bytes());
    for (k, v) in tags {
        eat(b",");
        eat(k.as_bytes());
        eat(b"=");
        eat(v.as_bytes());
    }
    h
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line_number: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line_number, self.message)
    }
}

/// Parses every line of `body`; blank lines and `#` comments are skipped.
pub fn parse_lines(body: &str) -> (Vec<ParsedLine<'_>>, Vec<LineError>) {
    let (ok, errors, _) = parse_lines_keeping(body, usize::MAX);
    (ok, errors)
}

/// Like [`parse_lines`], but keeps only the first `max_errors` errors; the
/// third value counts them all. A body of millions of bad lines then costs
/// no more than its good lines.
pub fn parse_lines_keeping(
    body: &str,
    max_errors: usize,
) -> (Vec<ParsedLine<'_>>, Vec<LineError>, usize) {
    let mut ok: Vec<ParsedLine> = vec![];
    let mut errors = vec![];
    let mut rejected = 0;
    let mut seen = Seen::default();
    for (i, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, i + 1, &mut seen) {
            Ok(p) => ok.push(p),
            Err(message) => {
                rejected += 1;
                if errors.len() < max_errors {
                    errors.push(LineError {
                        line_number: i + 1,
                        message,
                    });
                }
            }
        }
    }
    (ok, errors, rejected)
}

/// The most recent tag-key lists and shapes a line is compared with, and
/// the most of each a body keeps; lines past them get no shape.
const SHAPES_SEARCHED: usize = 8;
const MAX_SHAPES: usize = 4_096;
/// Lines with more tags or fields than this get no shape: a shape copies
/// its keys, and a body of wide lines in many shapes would hold them all.
const MAX_SHAPE_WIDTH: usize = 64;

/// What parsing a body remembers from line to line. Bodies mostly repeat
/// a few thousand series in a handful of shapes: a repeated series text is
/// parsed and hashed once, a line shaped like an earlier one skips the
/// checks that depend only on its shape, and one shaped like the line
/// before it has its fields read without searching for their keys.
#[derive(Default)]
struct Seen<'a> {
    /// Each series text with its key and the id of its tag-key list
    /// (`u32::MAX`: none).
    series: HashMap<&'a str, (Arc<SeriesKey<'a>>, u32), foldhash::fast::RandomState>,
    tag_keys: Vec<Vec<Cow<'a, str>>>,
    shapes: Vec<Shape<'a>>,
    /// The shape of the last line parsed, if it has one.
    last_shape: Option<usize>,
}

type FieldKind<'a> = std::mem::Discriminant<FieldValue<'a>>;

/// The tag-key list id, field keys and field types of some lines.
struct Shape<'a> {
    tag_keys: u32,
    fields: Vec<(Cow<'a, str>, FieldKind<'a>)>,
    /// Whether every field key is written as it reads (no escapes) and
    /// has no quote.
    plain: bool,
}

impl<'a> Seen<'a> {
    /// The key of `text`, parsing it on first sight.
    fn series(&mut self, text: &'a str) -> Result<(Arc<SeriesKey<'a>>, u32), String> {
        if let Some((key, tag_keys)) = self.series.get(text) {
            return Ok((key.clone(), *tag_keys));
        }
        let key = Arc::new(parse_series(text)?);
        let keys = key.tags.iter().map(|(k, _)| k);
        let found = (self.tag_keys.len().saturating_sub(SHAPES_SEARCHED)..self.tag_keys.len())
            .rev()
            .find(|i| self.tag_keys[*i].iter().eq(keys.clone()));
        let id = match found {
            Some(i) => i as u32,
            None if self.tag_keys.len() < MAX_SHAPES && key.tags.len() <= MAX_SHAPE_WIDTH => {
                self.tag_keys.push(keys.cloned().collect());
                (self.tag_keys.len() - 1) as u32
            }
            None => u32::MAX,
        };
        self.series.insert(text, (key.clone(), id));
        Ok((key, id))
    }

    /// The shape of a line with these tag keys and fields, if one was
    /// seen; otherwise checks the fields and records their shape.
    fn shape(
        &mut self,
        tag_keys: u32,
        fields: &[(Cow<'a, str>, FieldValue<'a>)],
    ) -> Result<Option<u32>, String> {
        let same = |shape: &Shape<'a>| {
            shape.tag_keys == tag_keys
                && shape.fields.len() == fields.len()
                && shape
                    .fields
                    .iter()
                    .zip(fields)
                    .all(|(s, f)| s.0 == f.0 && s.1 == std::mem::discriminant(&f.1))
        };
        self.last_shape = None;
        if tag_keys != u32::MAX {
            let recent = self.shapes.len().saturating_sub(SHAPES_SEARCHED)..self.shapes.len();
            if let Some(i) = recent.rev().find(|i| same(&self.shapes[*i])) {
                self.last_shape = Some(i);
                return Ok(Some(i as u32));
            }
        }
        check_repeated_fields(fields)?;
        if tag_keys == u32::MAX || self.shapes.len() >= MAX_SHAPES || fields.len() > MAX_SHAPE_WIDTH
        {
            return Ok(None);
        }
        // A quote in a key changes where the full parser ends the fields.
        let plain = fields
            .iter()
            .all(|(k, _)| !k.bytes().any(|b| b == b'"' || KEY_ESCAPES.contains(&b)));
        let fields = fields
            .iter()
            .map(|(k, v)| (k.clone(), std::mem::discriminant(v)))
            .collect();
        self.shapes.push(Shape {
            tag_keys,
            fields,
            plain,
        });
        self.last_shape = Some(self.shapes.len() - 1);
        Ok(Some((self.shapes.len() - 1) as u32))
    }

    /// Reads the fields of a line (`text` runs from its first field to the
    /// end of the line) expecting the last line's shape: each key in turn,
    /// then a value up to the next comma, the last one up to a space or
    /// the end. Returns the fields and what follows them (`None` at the
    /// end of the line), or `None` at the first surprise, leaving the line
    /// to the full parser (which also reports any error).
    #[allow(clippy::type_complexity)]
    fn fields_like_last(
        &self,
        tag_keys: u32,
        text: &'a str,
    ) -> Option<(Vec<(Cow<'a, str>, FieldValue<'a>)>, Option<&'a str>)> {
        let shape = &self.shapes[self.last_shape?];
        if shape.tag_keys != tag_keys || !shape.plain {
            return None;
        }
        let bytes = text.as_bytes();
        let mut fields = Vec::with_capacity(shape.fields.len());
        let mut at = 0;
        for (i, (key, kind)) in shape.fields.iter().enumerate() {
            let end = at + key.len();
            if bytes.get(end) != Some(&b'=') || &bytes[at..end] != key.as_bytes() {
                return None;
            }
            let from = end + 1;
            let stop = bytes[from..]
                .iter()
                .position(|b| matches!(b, b',' | b' ' | b'"' | b'\\'))
                .map_or(bytes.len(), |p| from + p);
            let last = i + 1 == shape.fields.len();
            match bytes.get(stop) {
                Some(b',') if !last => {}
                None | Some(b' ') if last => {}
                _ => return None,
            }
            let value = parse_field_value(&text[from..stop]).ok()?;
            if std::mem::discriminant(&value) != *kind {
                return None;
            }
            fields.push((Cow::Borrowed(&text[at..end]), value));
            at = stop + 1;
        }
        Some((fields, text.get(at..)))
    }
}

/// Splits the first `key=value` pair off a comma-separated list in one
/// pass: (pair, key, value, rest). The key ends at the first unescaped `=`,
/// the value at the next unescaped comma (outside double quotes when
/// `quotes`, for field values). `Err(pair)` when the pair has no `=`.
fn split_pair(s: &str, quotes: bool) -> Result<(&str, &str, &str, &str), &str> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut eq = None;
    let mut in_quotes = false;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'"' if quotes && eq.is_some() => in_quotes = !in_quotes,
            b'=' if eq.is_none() => eq = Some(i),
            b',' if !in_quotes => break,
            _ => {}
        }
        i += 1;
    }
    // An escape as the last byte steps past the end.
    let end = i.min(b.len());
    let pair = &s[..end];
    let rest = s.get(end + 1..).unwrap_or("");
    match eq {
        Some(e) => Ok((pair, &s[..e], &s[e + 1..end], rest)),
        None => Err(pair),
    }
}

/// Splits `s` at the first unescaped, unquoted occurrence of one of `stops`.
/// Returns (before, the stop char, after).
fn split_unescaped<'a>(s: &'a str, stops: &[u8], quotes: bool) -> (&'a str, Option<u8>, &'a str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if quotes && c == b'"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && stops.contains(&c) {
            return (&s[..i], Some(c), &s[i + 1..]);
        }
        i += 1;
    }
    (s, None, "")
}

/// Removes backslashes before the characters in `escapable`.
fn unescape<'a>(s: &'a str, escapable: &[u8]) -> Cow<'a, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if n.is_ascii() && escapable.contains(&(n as u8)) {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    Cow::Owned(out)
}

const KEY_ESCAPES: &[u8] = b",= \\";

/// Longest measurement, tag key or field key, in bytes. Names become
/// catalog entries, column names and WAL record fields; a bound keeps
/// each of them small (InfluxDB 3 and GreptimeDB bound names too).
pub const MAX_NAME_BYTES: usize = 255;

/// Refuses a name longer than [`MAX_NAME_BYTES`].
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} '{}' is {} bytes long; names are limited to {MAX_NAME_BYTES} bytes",
            truncate(name),
            name.len()
        ));
    }
    Ok(())
}

/// A field written twice in one line with different types is an error
/// for the line (the same type twice keeps the later value).
fn check_repeated_fields(fields: &[(Cow<'_, str>, FieldValue<'_>)]) -> Result<(), String> {
    let clash =
        |a: &FieldValue, b: &FieldValue| std::mem::discriminant(a) != std::mem::discriminant(b);
    let report = |k: &str| {
        format!(
            "field '{}' is written twice with different types",
            truncate(k)
        )
    };
    if fields.len() <= 16 {
        for (i, (k, v)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(k2, v2)| k2 == k && clash(v, v2)) {
                return Err(report(k));
            }
        }
        return Ok(());
    }
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by(|a, b| fields[*a].0.cmp(&fields[*b].0));
    for w in order.windows(2) {
        let (a, b) = (&fields[w[0]], &fields[w[1]]);
        if a.0 == b.0 && clash(&a.1, &b.1) {
            return Err(report(&a.0));
        }
    }
    Ok(())
}
const MEASUREMENT_ESCAPES: &[u8] = b", \\";

/// Parses a measurement and its tags (the text before the first space).
fn parse_series(series: &str) -> Result<SeriesKey<'_>, String> {
    let (measurement, _, mut tag_str) = split_unescaped(series, b",", false);
    if measurement.is_empty() {
        return Err("missing measurement name".into());
    }
    let measurement = unescape(measurement, MEASUREMENT_ESCAPES);
    check_name("measurement", &measurement)?;
    let mut tags = vec![];
    while !tag_str.is_empty() {
        let (pair, k, v, more) = split_pair(tag_str, false)
            .map_err(|pair| format!("invalid tag '{}': expected key=value", truncate(pair)))?;
        tag_str = more;
        if k.is_empty() {
            return Err(format!(
                "invalid tag '{}': expected key=value",
                truncate(pair)
            ));
        }
        if v.is_empty() {
            return Err(format!("tag '{}' has no value", truncate(k)));
        }
        let key = unescape(k, KEY_ESCAPES);
        check_name("tag key", &key)?;
        tags.push((key, unescape(v, KEY_ESCAPES)));
    }
    Ok(SeriesKey::new(measurement, tags))
}

/// Parses the fields of a line (`rest` runs from its first field to the
/// end of the line): the fields, the stop after them, and what follows.
#[allow(clippy::type_complexity)]
fn parse_fields(
    rest: &str,
) -> Result<(Vec<(Cow<'_, str>, FieldValue<'_>)>, Option<u8>, &str), String> {
    let (field_str, stop, ts_str) = split_unescaped(rest, b" ", true);
    if field_str.is_empty() {
        return Err("missing fields: a line needs at least one field".into());
    }
    let mut fields = Vec::new();
    let mut fs = field_str;
    while !fs.is_empty() {
        let invalid = |pair| format!("invalid field '{}': expected key=value", truncate(pair));
        let (pair, k, v, more) = split_pair(fs, true).map_err(invalid)?;
        fs = more;
        if k.is_empty() {
            return Err(invalid(pair));
        }
        let key = unescape(k, KEY_ESCAPES);
        check_name("field key", &key)?;
        let value = parse_field_value(v).map_err(|e| format!("field '{}': {e}", truncate(&key)))?;
        fields.push((key, value));
    }
    Ok((fields, stop, ts_str))
}

/// Parses one line, with what the body's earlier lines left in `seen`.
fn parse_line<'a>(
    line: &'a str,
    line_number: usize,
    seen: &mut Seen<'a>,
) -> Result<ParsedLine<'a>, String> {
    // measurement and tags end at the first unescaped space
    let (series, stop, rest) = split_unescaped(line, b" ", false);
    if stop.is_none() {
        return Err(format!(
            "missing fields: expected 'measurement[,tags] field=value [timestamp]', got '{}'",
            truncate(line)
        ));
    }
    let (series, tag_keys) = seen.series(series)?;

    let rest = rest.trim_start_matches(' ');
    let (fields, shape, stop, ts_str) = match seen.fields_like_last(tag_keys, rest) {
        Some((fields, after)) => {
            let shape = seen.last_shape.map(|s| s as u32);
            (fields, shape, after.map(|_| b' '), after.unwrap_or(""))
        }
        None => {
            let (fields, stop, ts_str) = parse_fields(rest)?;
            let shape = seen.shape(tag_keys, &fields)?;
            (fields, shape, stop, ts_str)
        }
    };

    let timestamp = match stop {
        None => None,
        Some(_) => {
            let t = ts_str.trim();
            if t.is_empty() {
                None
            } else {
                Some(t.parse::<i64>().map_err(|_| {
                    format!("invalid timestamp '{}': expected an integer", truncate(t))
                })?)
            }
        }
    };
    Ok(ParsedLine {
        line_number,
        series,
        fields,
        timestamp,
        shape,
    })
}

fn parse_field_value(v: &str) -> Result<FieldValue<'_>, String> {
    if v.is_empty() {
        return Err("missing value".into());
    }
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| "unterminated string value".to_string())?;
        return Ok(FieldValue::String(unescape(inner, b"\"\\")));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Boolean(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Boolean(false)),
        _ => {}
    }
    if let Some(n) = v.strip_suffix('i') {
        return n
            .parse::<i64>()
            .map(FieldValue::Integer)
            .map_err(|_| format!("invalid integer '{}'", truncate(v)));
    }
    if let Some(n) = v.strip_suffix('u') {
        return n
            .parse::<u64>()
            .map(FieldValue::UInteger)
            .map_err(|_| format!("invalid unsigned integer '{}'", truncate(v)));
    }
    let f = v.parse::<f64>().map_err(|_| {
        format!(
            "invalid value '{}' (strings must be double-quoted)",
            truncate(v)
        )
    })?;
    if !f.is_finite() {
        return Err(format!(
            "invalid float '{}': NaN and infinity are not allowed",
            truncate(v)
        ));
    }
    Ok(FieldValue::Float(f))
}

fn truncate(s: &str) -> String {
    const MAX: usize = 60;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> ParsedLine<'_> {
        let (ok, errs) = parse_lines(line);
        assert!(errs.is_empty(), "{errs:?}");
        ok.into_iter().next().unwrap()
    }

    #[test]
    fn parses_all_field_types() {
        let p = one(
            r#"cpu,host=a,region=us f=1.5,i=-3i,u=7u,s="hi there",b=true,e=1e3 1700000000000000000"#,
        );
        assert_eq!(p.measurement(), "cpu");
        assert_eq!(p.tags().len(), 2);
        assert_eq!(p.tags()[1], ("region".into(), "us".into()));
        assert_eq!(
            p.fields,
            vec![
                ("f".into(), FieldValue::Float(1.5)),
                ("i".into(), FieldValue::Integer(-3)),
                ("u".into(), FieldValue::UInteger(7)),
                ("s".into(), FieldValue::String("hi there".into())),
                ("b".into(), FieldValue::Boolean(true)),
                ("e".into(), FieldValue::Float(1000.0)),
            ]
        );
        assert_eq!(p.timestamp, Some(1_700_000_000_000_000_000));
    }

    #[test]
    fn handles_escapes() {
        let p = one(r#"my\ meas\,ure,ta\ g=v\=1\,x field\=k="say \"hi\" \\o/" 5"#);
        assert_eq!(p.measurement(), "my meas,ure");
        assert_eq!(p.tags()[0], ("ta g".into(), "v=1,x".into()));
        assert_eq!(p.fields[0].0, "field=k");
        assert_eq!(p.fields[0].1, FieldValue::String(r#"say "hi" \o/"#.into()));
        assert_eq!(p.timestamp, Some(5));
    }

    #[test]
    fn string_values_may_hold_spaces_commas_and_equals() {
        let p = one(r#"log msg="a, b = c d",n=1i"#);
        assert_eq!(p.fields[0].1, FieldValue::String("a, b = c d".into()));
        assert_eq!(p.fields[1].1, FieldValue::Integer(1));
        assert_eq!(p.timestamp, None);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_good_lines_kept() {
        let body = "cpu v=1 1\n\n# comment\ncpu v=oops 2\ncpu\ncpu v=3i 3\ncpu,host v=1 4\n";
        let (ok, errs) = parse_lines(body);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].line_number, 6);
        let lines: Vec<usize> = errs.iter().map(|e| e.line_number).collect();
        assert_eq!(lines, vec![4, 5, 7]);
        assert!(errs[0].message.contains("field 'v'"), "{}", errs[0].message);
    }

    #[test]
    fn rejects_bad_numbers_and_timestamps() {
        for bad in [
            "m v=1.2.3",
            "m v=12ii",
            "m v=-1u",
            "m v=1 notatime",
            "m v=\"open",
        ] {
            let (ok, errs) = parse_lines(bad);
            assert!(ok.is_empty(), "{bad} parsed");
            assert_eq!(errs.len(), 1, "{bad}");
        }
    }

    /// Pairs split at the first `=`; pairs without a key or `=` name the
    /// pair; escapes at the very end or before multi-byte characters are
    /// taken as they are, never a panic.
    #[test]
    fn pair_edge_cases() {
        let p = one(r#"m,a=b=c,é\ü=ö v=1,s="x=1,y" 1"#);
        assert_eq!(p.tags()[0], ("a".into(), "b=c".into()));
        assert_eq!(p.tags()[1], (r"é\ü".into(), "ö".into()));
        assert_eq!(p.fields[1].1, FieldValue::String("x=1,y".into()));
        for (bad, says) in [
            ("m,=a v=1", "invalid tag '=a'"),
            ("m,a v=1", "invalid tag 'a'"),
            ("m,a=b,c v=1", "invalid tag 'c'"),
            ("m v=1,=2", "invalid field '=2'"),
            ("m v=1,w", "invalid field 'w'"),
            ("m,a= v=1", "tag 'a' has no value"),
        ] {
            let (ok, errs) = parse_lines(bad);
            assert!(ok.is_empty(), "{bad} parsed");
            assert!(errs[0].message.contains(says), "{bad}: {}", errs[0].message);
        }
        for odd in ["m,a=b\\ v=1", "m v=1\\", "m,a=\\é v=1", "m v=\"\\"] {
            let _ = parse_lines(odd);
        }
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let (ok, errs) = parse_lines("m v=1 1\r\nm v=2 2\r\n");
        assert!(errs.is_empty());
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].timestamp, Some(2));
    }

    /// Names longer than the limit are refused for their line only; the
    /// limit itself is accepted.
    #[test]
    fn long_names_are_refused_per_line() {
        let ok_name = "n".repeat(MAX_NAME_BYTES);
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let body = format!(
            "{ok_name},{ok_name}=v {ok_name}=1 1\n{long} v=1 2\nm,{long}=x v=1 3\nm {long}=1 4\nm v=2 5"
        );
        let (ok, errs) = parse_lines(&body);
        assert_eq!(ok.len(), 2);
        let lines: Vec<usize> = errs.iter().map(|e| e.line_number).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        for (e, what) in errs.iter().zip(["measurement", "tag key", "field key"]) {
            assert!(
                e.message.contains(what) && e.message.contains("255 bytes"),
                "{}",
                e.message
            );
        }
        let huge = format!("{} v=1 1", "m".repeat(64 * 1024));
        assert_eq!(parse_lines(&huge).1.len(), 1);
    }

    /// `v=1,v="s"` is an error for the line; `v=1,v=2` keeps both values
    /// (the later wins when the row is built); with many fields too.
    #[test]
    fn a_field_repeated_with_another_type_is_an_error() {
        let (ok, errs) = parse_lines("m v=1,v=\"s\" 1\nm v=1,v=2 2");
        assert_eq!(ok.len(), 1);
        assert_eq!(errs[0].line_number, 1);
        assert!(errs[0].message.contains("field 'v'"), "{}", errs[0].message);
        let many: Vec<String> = (0..40).map(|i| format!("f{i}=1")).collect();
        let body = format!("m {},f7=1i 1", many.join(","));
        let (ok, errs) = parse_lines(&body);
        assert!(ok.is_empty());
        assert!(
            errs[0].message.contains("field 'f7'"),
            "{}",
            errs[0].message
        );
        let body = format!("m {},f7=3 1", many.join(","));
        let (ok, _) = parse_lines(&body);
        assert_eq!(ok.len(), 1);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// Pieces line protocol is made of, including the escapes, quotes
        /// and separators that parsing is sensitive to.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(",".to_string()),
                Just("=".to_string()),
                Just(" ".to_string()),
                Just("\\".to_string()),
                Just("\"".to_string()),
                Just("\n".to_string()),
                Just("i".to_string()),
                Just("u".to_string()),
                Just("é".to_string()),
                "[a-z]{1,4}",
                "-?[0-9]{1,25}(\\.[0-9]{1,5})?",
                proptest::string::string_regex(".{0,8}").unwrap(),
            ]
        }

        /// Lines alike enough that many repeat their predecessor's shape,
        /// with the escapes, quotes, bad values and spacing that the
        /// shortcut for such lines must leave to the full parser.
        fn similar_line() -> impl Strategy<Value = String> {
            let series = prop::sample::select(vec!["m", "m,t=a", "m,t=b", "n,t=a", "m,t=a\\ b"]);
            let key = prop::sample::select(vec!["a", "b", "c\\ d", "x\"y", "é", "a"]);
            let value = prop::sample::select(vec![
                "1",
                "2",
                "2i",
                "3u",
                "t",
                "\"s,x y\"",
                "1\\,2",
                "",
                "1.5e3",
                "-7i",
                "nan",
                "1 ",
            ]);
            let field = (key, value).prop_map(|(k, v)| format!("{k}={v}"));
            let fields = prop::collection::vec(field, 1..4);
            let tail = prop::sample::select(vec!["", " 5", "  6", " ", ",", " x", " 7 "]);
            (series, fields, tail).prop_map(|(s, f, t)| format!("{s} {}{t}", f.join(",")))
        }

        /// Each line of a body as the parser sees it alone: its series,
        /// fields and time, or its error.
        #[allow(clippy::type_complexity)]
        fn alone(
            line: &str,
        ) -> Option<Result<(String, Vec<(String, String)>, String, Option<i64>), String>> {
            let (ok, errs) = parse_lines(line);
            if let Some(e) = errs.first() {
                return Some(Err(e.message.clone()));
            }
            ok.first().map(|l| Ok(summary(l)))
        }

        fn summary(l: &ParsedLine) -> (String, Vec<(String, String)>, String, Option<i64>) {
            let tags = l
                .tags()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (
                l.measurement().to_string(),
                tags,
                format!("{:?}", l.fields),
                l.timestamp,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// A line parses the same in a body, after lines that may share
            /// its series and shape, as it does on its own.
            #[test]
            fn lines_parse_in_a_body_as_they_do_alone(lines in proptest::collection::vec(similar_line(), 1..12)) {
                let body = lines.join("\n");
                let (ok, errs) = parse_lines(&body);
                let mut got: Vec<(usize, Result<_, String>)> = ok.iter().map(|l| (l.line_number, Ok(summary(l)))).collect();
                got.extend(errs.iter().map(|e| (e.line_number, Err(e.message.clone()))));
                got.sort_by_key(|(n, _)| *n);
                let want: Vec<(usize, Result<_, String>)> = lines
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| alone(l).map(|r| (i + 1, r)))
                    .collect();
                prop_assert_eq!(got, want);
            }

            /// Any body parses without a panic; every line is either kept
            /// or reported once, and kept lines respect the name limit.
            #[test]
            fn any_body_parses_without_a_panic(pieces in proptest::collection::vec(piece(), 0..60)) {
                let body = pieces.concat();
                let (ok, errs) = parse_lines(&body);
                let lines = body.split('\n').filter(|l| {
                    let t = l.strip_suffix('\r').unwrap_or(l).trim_start();
                    !t.is_empty() && !t.starts_with('#')
                }).count();
                prop_assert_eq!(ok.len() + errs.len(), lines);
                for l in &ok {
                    prop_assert!(l.measurement().len() <= MAX_NAME_BYTES);
                    prop_assert!(!l.fields.is_empty());
                }
            }
        }
    }
}
