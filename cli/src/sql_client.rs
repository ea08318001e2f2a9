//! `strata sql`: a psql-like client over Flight SQL. Statements end with
//! `;` and may span lines; backslash commands: `\l` databases, `\dt`
//! tables, `\d TABLE` columns, `\c DB` switch database, `\timing`, `\x`
//! expanded output, `\q` quit.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Aligned,
    Csv,
    Json,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aligned" | "table" => Some(Self::Aligned),
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

pub struct SqlClient {
    client: FlightSqlServiceClient<Channel>,
    /// What the server said of the last answer (an incomplete one names
    /// the shards it lacks).
    warning: Option<String>,
    host: String,
    database: Option<String>,
}

/// A client-side failure, worded for the person at the prompt.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn describe(e: FlightError) -> ClientError {
    // Show a gRPC status by its message, not its debug form.
    match e {
        FlightError::Tonic(status) => ClientError(format!("ERROR: {}", status.message())),
        other => ClientError(format!("ERROR: {other}")),
    }
}

impl SqlClient {
    pub async fn connect(host: &str, database: Option<String>) -> Result<Self, ClientError> {
        Self::connect_with(host, database, None).await
    }

    /// Connects to `host` (`HOST:PORT`, `grpc://`, or over TLS
    /// `grpc+tls://` / `https://`, trusting `tls_ca`, a PEM CA
    /// certificate).
    pub async fn connect_with(
        host: &str,
        database: Option<String>,
        tls_ca: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let (tls, rest) = match host.split_once("://") {
            Some(("grpc+tls" | "https", rest)) => (true, rest),
            Some(("grpc" | "grpc+tcp" | "http", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(ClientError(format!(
                    "unknown scheme '{scheme}' in '{host}': use grpc:// or grpc+tls://"
                )))
            }
            None => (tls_ca.is_some(), host),
        };
        let url = format!("{}://{rest}", if tls { "https" } else { "http" });
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| ClientError(format!("invalid host '{host}': {e}")))?
            .connect_timeout(Duration::from_secs(5));
        if tls {
            let ca = tls_ca.ok_or_else(|| {
                ClientError(format!(
                    "{host} is TLS: give the CA certificate to trust with --tls-ca"
                ))
            })?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .map_err(|e| ClientError(format!("TLS for {host}: {e}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError(format!("cannot connect to strata at {host}: {e}")))?;
        let mut client = FlightSqlServiceClient::new(channel);
        if let Some(db) = &database {
            client.set_header("database", db);
        }
        Ok(Self {
            client,
            warning: None,
            host: host.to_string(),
            database,
        })
    }

    /// The server's warning about the last answer, if any.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Sends `token` (as `authorization: Bearer`) with every call.
    pub fn set_token(&mut self, token: &str) {
        self.client.set_token(token.to_string());
    }

    pub fn set_database(&mut self, db: &str) {
        self.client.set_header("database", db);
        self.database = Some(db.to_string());
    }

    /// Runs one statement and returns all result batches.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>, ClientError> {
        Ok(self.query_with_schema(sql).await?.1)
    }

    /// Runs one statement; returns the result schema the server announced
    /// (known even when no rows come back) and the batches.
    pub async fn query_with_schema(
        &mut self,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
        let info = self
            .client
            .execute(sql.to_string(), None)
            .await
            .map_err(describe)?;
        let schema = info
            .clone()
            .try_decode_schema()
            .map_err(|e| ClientError(format!("server sent an unreadable schema: {e}")))?;
        let mut out = vec![];
        self.warning = None;
        for ep in info.endpoint {
            let Some(ticket) = ep.ticket else { continue };
            let stream = self.client.do_get(ticket).await.map_err(describe)?;
            // Read message by message: a best-effort answer without some
            // shards ends with a message whose app_metadata names them.
            let mut messages = stream.into_inner();
            while let Some(message) = messages.try_next().await.map_err(describe)? {
                let meta = message.app_metadata();
                if !meta.is_empty() {
                    if let Ok(note) = serde_json::from_slice::<serde_json::Value>(&meta) {
                        if let Some(w) = note["warning"].as_str() {
                            self.warning = Some(w.to_string());
                        }
                    }
                }
                if let arrow_flight::decode::DecodedPayload::RecordBatch(b) = message.payload {
                    out.push(b);
                }
            }
        }
        Ok((Arc::new(schema), out))
    }
}

/// Formats batches for the terminal or a script.
pub fn render(
    batches: &[RecordBatch],
    format: OutputFormat,
    expanded: bool,
) -> Result<String, ClientError> {
    let err = |e: arrow::error::ArrowError| ClientError(format!("cannot format the result: {e}"));
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match format {
        OutputFormat::Aligned if expanded => {
            let mut out = String::new();
            let mut n = 0;
            for b in batches {
                let schema = b.schema();
                let width = schema
                    .fields()
                    .iter()
                    .map(|f| f.name().len())
                    .max()
                    .unwrap_or(0);
                let formatters: Vec<_> = b
                    .columns()
                    .iter()
                    .map(|c| {
                        arrow::util::display::ArrayFormatter::try_new(
                            c.as_ref(),
                            &Default::default(),
                        )
                    })
                    .collect::<Result<_, _>>()
                    .map_err(err)?;
                for row in 0..b.num_rows() {
                    n += 1;
                    out.push_str(&format!(
                        "-[ RECORD {n} ]{}\n",
                        "-".repeat(width.saturating_sub(8))
                    ));
                    for (f, fmt) in schema.fields().iter().zip(&formatters) {
                        out.push_str(&format!("{:width$} | {}\n", f.name(), fmt.value(row)));
                    }
                }
            }
            out.push_str(&format!(
                "({rows} row{})\n",
                if rows == 1 { "" } else { "s" }
            ));
            Ok(out)
        }
        OutputFormat::Aligned => {
            if batches.iter().all(|b| b.num_columns() == 0) {
                return Ok("OK\n".to_string());
            }
            let table = arrow::util::pretty::pretty_format_batches(batches).map_err(err)?;
            Ok(format!(
                "{table}\n({rows} row{})\n",
                if rows == 1 { "" } else { "s" }
            ))
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for b in batches {
                w.write(b).map_err(err)?;
            }
            Ok(String::from_utf8_lossy(&w.into_inner()).into_owned())
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(err)?;
            w.finish().map_err(err)?;
            Ok(String::from_utf8_lossy(&w.into_inner()).into_owned())
        }
    }
}

/// Splits input into complete statements (ending in `;` outside quotes);
/// returns the statements and the unfinished rest.
pub fn split_statements(input: &str) -> (Vec<String>, String) {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && chars.peek() == Some(&'-') => {
                // a comment runs to the end of the line
                for n in chars.by_ref() {
                    if n == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
                continue;
            }
            None if c == ';' => {
                let s = cur.trim().to_string();
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
                continue;
            }
            None => {}
        }
        cur.push(c);
    }
    (out, cur)
}

enum Meta {
    Quit,
    Done,
    Sql(String),
}

pub struct Session {
    pub client: SqlClient,
    pub format: OutputFormat,
    pub timing: bool,
    pub expanded: bool,
    /// `SET` settings, sent with each query as a leading hint (the server
    /// keeps no session between requests).
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Settings `SET` accepts without the `strata.` prefix.
const SHORT_SETTINGS: [&str; 4] = [
    "statement_timeout",
    "memory_limit_mib",
    "last_value_cache",
    "completeness",
];

/// `SET name = value` / `SET name TO value` / `RESET name` / `RESET ALL`:
/// the setting and its new value (`None`: reset; name `all`: every one).
fn parse_set(input: &str) -> Option<Result<(String, Option<String>), ClientError>> {
    let s = input.trim().trim_end_matches(';').trim();
    let (word, rest) = s.split_once(char::is_whitespace)?;
    let name_of = |n: &str| {
        let n = n.trim().to_ascii_lowercase();
        match n.strip_prefix("strata.") {
            Some(_) => Ok(n),
            None if SHORT_SETTINGS.contains(&n.as_str()) => Ok(format!("strata.{n}")),
            None if n == "all" => Ok(n),
            None => Err(ClientError(format!(
                "ERROR: unknown setting '{n}'; strata sql knows {} (or strata.*)",
                SHORT_SETTINGS.join(", ")
            ))),
        }
    };
    if word.eq_ignore_ascii_case("reset") {
        return Some(name_of(rest).map(|n| (n, None)));
    }
    if !word.eq_ignore_ascii_case("set") {
        return None;
    }
    let (name, value) = match rest.split_once('=') {
        Some(p) => p,
        None => {
            let (n, v) = rest.trim().split_once(char::is_whitespace)?;
            let v = v.trim();
            let v = v
                .strip_prefix("to ")
                .or_else(|| v.strip_prefix("TO "))
                .unwrap_or(v);
            (n, v)
        }
    };
    let value = value.trim().trim_matches('\'').to_string();
    if value.is_empty() || value.contains(['\'', ',', '*']) {
        return Some(Err(ClientError(format!(
            "ERROR: SET {} needs a plain value, e.g. SET statement_timeout = '30s'",
            name.trim()
        ))));
    }
    Some(name_of(name).map(|n| (n, Some(value))))
}

/// `sql` with `settings` as its leading hint (merged into one it has),
/// when it is a query; other statements go as they are.
fn with_settings(sql: &str, settings: &std::collections::BTreeMap<String, String>) -> String {
    if settings.is_empty() {
        return sql.to_string();
    }
    let hint: Vec<String> = settings
        .iter()
        .map(|(k, v)| format!("{k} = '{v}'"))
        .collect();
    let hint = hint.join(", ");
    let trimmed = sql.trim_start();
    if let Some(rest) = trimmed.strip_prefix("/*+") {
        // The statement's own settings come after, and win.
        return format!("/*+ {hint}, {}", rest.trim_start());
    }
    let first = trimmed
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_query = trimmed.starts_with('(')
        || ["select", "with", "explain", "values"].contains(&first.as_str());
    match is_query {
        true => format!("/*+ {hint} */ {trimmed}"),
        false => sql.to_string(),
    }
}

impl Session {
    /// Runs one statement or backslash command, printing its result.
    /// Returns false when the user asked to quit.
    pub async fn run(&mut self, input: &str, out: &mut impl Write) -> Result<bool, ClientError> {
        let input = input.trim();
        let sql = match input.strip_prefix('\\') {
            Some(cmd) => match self.meta(cmd, out)? {
                Meta::Quit => return Ok(false),
                Meta::Done => return Ok(true),
                Meta::Sql(sql) => sql,
            },
            None => input.to_string(),
        };
        match parse_set(&sql) {
            Some(Ok((name, value))) => {
                match (name.as_str(), value) {
                    ("all", None) => self.settings.clear(),
                    (_, None) => {
                        self.settings.remove(&name);
                    }
                    (_, Some(v)) => {
                        self.settings.insert(name, v);
                    }
                }
                let _ = writeln!(out, "SET");
                return Ok(true);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        let sql = with_settings(&sql, &self.settings);
        let input = sql.as_str();
        let started = Instant::now();
        let batches = self.client.query(input).await?;
        let text = render(&batches, self.format, self.expanded)?;
        let _ = out.write_all(text.as_bytes());
        if let Some(w) = self.client.warning() {
            eprintln!("WARNING: {w}");
        }
        if self.timing {
            let _ = writeln!(
                out,
                "Time: {:.3} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        Ok(true)
    }

    fn meta(&mut self, cmd: &str, out: &mut impl Write) -> Result<Meta, ClientError> {
        let mut parts = cmd.split_whitespace();
        let name = parts.next().unwrap_or("");
        let arg = parts.next();
        let sql = match (name, arg) {
            ("q", _) => return Ok(Meta::Quit),
            ("l", _) => "SHOW DATABASES".to_string(),
            ("dt", _) => "SHOW TABLES".to_string(),
            ("d", Some(t)) => format!("SHOW COLUMNS FROM {t}"),
            ("d", None) => "SHOW TABLES".to_string(),
            ("c", Some(db)) => {
                self.client.set_database(db);
                let _ = writeln!(out, "You are now using database \"{db}\".");
                return Ok(Meta::Done);
            }
            ("timing", _) => {
                self.timing = !self.timing;
                let _ = writeln!(out, "Timing is {}.", if self.timing { "on" } else { "off" });
                return Ok(Meta::Done);
            }
            ("x", _) => {
                self.expanded = !self.expanded;
                let _ = writeln!(
                    out,
                    "Expanded display is {}.",
                    if self.expanded { "on" } else { "off" }
                );
                return Ok(Meta::Done);
            }
            ("?", _) | ("h", _) => {
                let _ = writeln!(
                    out,
                    "\\l  databases   \\dt  tables   \\d TABLE  columns   \\c DB  use database\n\
                     \\timing  toggle timing   \\x  toggle expanded output   \\q  quit"
                );
                return Ok(Meta::Done);
            }
            _ => {
                return Err(ClientError(format!(
                    "unknown command \\{name}; \\? lists the commands"
                )))
            }
        };
        Ok(Meta::Sql(sql))
    }

    /// Reads statements from a script (stdin or file) and runs them in
    /// order; stops at the first error.
    pub async fn run_script(
        &mut self,
        script: &str,
        out: &mut impl Write,
    ) -> Result<(), ClientError> {
        let mut pending = String::new();
        for line in script.lines() {
            if pending.trim().is_empty() && line.trim_start().starts_with('\\') {
                if !self.run(line, out).await? {
                    return Ok(());
                }
                continue;
            }
            pending.push_str(line);
            pending.push('\n');
            let (stmts, rest) = split_statements(&pending);
            for s in stmts {
                self.run(&s, out).await?;
            }
            pending = rest;
        }
        if !pending.trim().is_empty() {
            self.run(&pending, out).await?;
        }
        Ok(())
    }

    /// The interactive prompt, with history in `~/.strata_history`.
    pub async fn interactive(&mut self) -> Result<(), ClientError> {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| ClientError(format!("cannot start the line editor: {e}")))?;
        let history =
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".strata_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!(
            "strata sql — connected to {}. \\? for help, \\q to quit.",
            self.client.host
        );
        let mut pending = String::new();
        let mut stdout = std::io::stdout();
        loop {
            let db = self
                .client
                .database
                .clone()
                .unwrap_or_else(|| "strata".into());
            let prompt = if pending.is_empty() {
                format!("{db}=> ")
            } else {
                format!("{db}-> ")
            };
            let line = match editor.readline(&prompt) {
                Ok(l) => l,
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    pending.clear();
                    continue;
                }
                Err(_) => break,
            };
            if pending.is_empty() && line.trim_start().starts_with('\\') {
                let _ = editor.add_history_entry(line.as_str());
                match self.run(&line, &mut stdout).await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => eprintln!("{e}"),
                }
                continue;
            }
            pending.push_str(&line);
            pending.push('\n');
            let (stmts, rest) = split_statements(&pending);
            for s in stmts {
                let _ = editor.add_history_entry(format!("{s};"));
                if let Err(e) = self.run(&s, &mut stdout).await {
                    eprintln!("{e}");
                }
            }
            pending = rest;
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }
}

/// Whether input comes from a person at a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Reads all of stdin.
pub fn read_stdin() -> std::io::Result<String> {
    let mut s = String::new();
    for line in std::io::stdin().lock().lines() {
        s.push_str(&line?);
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_remembered_and_sent_as_a_hint_with_queries() {
        let (name, value) = parse_set("SET statement_timeout = '5s';").unwrap().unwrap();
        assert_eq!(
            (name.as_str(), value.as_deref()),
            ("strata.statement_timeout", Some("5s"))
        );
        let (name, value) = parse_set("set memory_limit_mib to 64").unwrap().unwrap();
        assert_eq!(
            (name.as_str(), value.as_deref()),
            ("strata.memory_limit_mib", Some("64"))
        );
        assert_eq!(
            parse_set("RESET ALL").unwrap().unwrap(),
            ("all".into(), None)
        );
        assert!(parse_set("SET work_mem = 4").unwrap().is_err());
        assert!(parse_set("SET statement_timeout = 'a*/ DROP'")
            .unwrap()
            .is_err());
        assert!(parse_set("SELECT 1").is_none());
        let settings = [("strata.statement_timeout".to_string(), "5s".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            with_settings("SELECT 1", &settings),
            "/*+ strata.statement_timeout = '5s' */ SELECT 1"
        );
        assert_eq!(
            with_settings("/*+ strata.memory_limit_mib = 9 */ SELECT 1", &settings),
            "/*+ strata.statement_timeout = '5s', strata.memory_limit_mib = 9 */ SELECT 1"
        );
        assert_eq!(with_settings("SHOW DATABASES", &settings), "SHOW DATABASES");
    }

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        let (s, rest) = split_statements("select 'a;b' from t;\nselect 2\n;select -- x;\n3");
        assert_eq!(s, vec!["select 'a;b' from t", "select 2"]);
        assert_eq!(rest.trim(), "select \n3");
    }
}
