//! `strata bench load`: streams a line-protocol file to an InfluxDB v1
//! `/write` endpoint with several concurrent workers, in batches of a given
//! number of lines, printing progress and a final summary. The file is read
//! as it goes; it is never held in memory whole.

use std::io::{BufRead, IsTerminal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snafu::Snafu;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub db: String,
    pub workers: usize,
    pub batch_size: usize,
    /// Precision of the file's timestamps (`ns`, `us`, `ms`, `s`).
    pub precision: String,
    /// Print progress to stderr every this often.
    pub progress_every: Option<Duration>,
    /// Size of the input in bytes, when known: the progress bar's 100 %.
    pub total_bytes: Option<u64>,
    /// `?consistency=` of every request (`any`, `one`, `quorum`, `all`);
    /// none leaves it to the server.
    pub consistency: Option<String>,
    /// Sent as `Authorization: Token <token>` with every request.
    pub token: Option<String>,
}

#[derive(Debug, Snafu)]
pub enum LoadError {
    #[snafu(display("reading the input: {source}"))]
    Read { source: std::io::Error },
    #[snafu(display("batch {batch} was refused ({status}): {body}"))]
    Refused {
        batch: u64,
        status: u16,
        body: String,
    },
    #[snafu(display("batch {batch} could not be sent to {url}: {reason}"))]
    Send {
        batch: u64,
        url: String,
        reason: String,
    },
}

/// What a load did.
#[derive(Debug, Clone, Copy)]
pub struct LoadSummary {
    pub rows: u64,
    pub metrics: u64,
    pub elapsed: Duration,
    /// Batches sent again after the server asked to slow down.
    pub retries: u64,
}

impl LoadSummary {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }

    pub fn metrics_per_sec(&self) -> f64 {
        self.metrics as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} rows, {} metrics in {:.2} s: {:.0} rows/s, {:.0} metrics/s",
            self.rows,
            self.metrics,
            self.elapsed.as_secs_f64(),
            self.rows_per_sec(),
            self.metrics_per_sec()
        )?;
        if self.retries > 0 {
            write!(f, " (retried {} times after \"slow down\")", self.retries)?;
        }
        Ok(())
    }
}

/// The number of fields of one line: unescaped, unquoted commas in the
/// field set plus one.
pub fn field_count(line: &str) -> u64 {
    let b = line.as_bytes();
    let mut i = 0;
    let mut section = 0; // 0 series, 1 fields
    let mut in_quotes = false;
    let mut fields = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' if section == 1 => in_quotes = !in_quotes,
            b' ' if !in_quotes => {
                if section == 1 {
                    break;
                }
                section = 1;
            }
            b',' if section == 1 && !in_quotes => fields += 1,
            _ => {}
        }
        i += 1;
    }
    if section == 0 {
        0
    } else {
        fields
    }
}

/// One progress report: a bar, percentage and time left when the input's
/// size is known, else just the count and rate.
pub fn progress_line(rows: u64, bytes: u64, total_bytes: Option<u64>, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = format!("{rows} rows, {:.0} rows/s", rows as f64 / secs);
    match total_bytes {
        Some(total) if total > 0 => {
            let fraction = (bytes as f64 / total as f64).min(1.0);
            let filled = (fraction * WIDTH as f64) as usize;
            let left = if fraction > 0.0 {
                format!("{:.0} s left", secs / fraction - secs)
            } else {
                "? s left".to_string()
            };
            format!(
                "[{}{}] {:5.1}%  {rate}  {left}",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                fraction * 100.0
            )
        }
        _ => format!("{rate} in {secs:.1} s"),
    }
}

/// Times one batch is sent again after a "slow down" answer.
const MAX_RETRIES: u32 = 60;

struct Batch {
    index: u64,
    body: String,
    /// Input bytes the batch covers, skipped lines included.
    bytes: u64,
    rows: u64,
    metrics: u64,
}

/// Loads `input` and returns the summary.
pub async fn load(
    config: &LoadConfig,
    input: impl BufRead + Send + 'static,
) -> Result<LoadSummary, LoadError> {
    let mut url = format!(
        "{}/write?db={}&precision={}",
        config.url.trim_end_matches('/'),
        config.db,
        config.precision
    );
    if let Some(c) = &config.consistency {
        url.push_str(&format!("&consistency={c}"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(config.workers * 2);
    let batch_size = config.batch_size.max(1);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), LoadError> {
        let mut body = String::new();
        let (mut rows, mut metrics, mut index, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        for line in input.lines() {
            let line = line.map_err(|source| LoadError::Read { source })?;
            bytes += line.len() as u64 + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            metrics += field_count(&line);
            rows += 1;
            body.push_str(&line);
            body.push('\n');
            if rows as usize == batch_size {
                let batch = Batch {
                    index,
                    body: std::mem::take(&mut body),
                    bytes: std::mem::take(&mut bytes),
                    rows,
                    metrics,
                };
                if tx.blocking_send(batch).is_err() {
                    return Ok(()); // a worker failed; its error is reported
                }
                index += 1;
                rows = 0;
                metrics = 0;
            }
        }
        if rows > 0 {
            let _ = tx.blocking_send(Batch {
                index,
                body,
                bytes,
                rows,
                metrics,
            });
        }
        Ok(())
    });

    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let rows_done = Arc::new(AtomicU64::new(0));
    let metrics_done = Arc::new(AtomicU64::new(0));
    let bytes_done = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut workers = vec![];
    for _ in 0..config.workers.max(1) {
        let (rx, client, url) = (rx.clone(), client.clone(), url.clone());
        let token = config.token.clone();
        let (rows_done, metrics_done, bytes_done, retries) = (
            rows_done.clone(),
            metrics_done.clone(),
            bytes_done.clone(),
            retries.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(batch) = rx.lock().await.recv().await else {
                    return Ok(());
                };
                let body = bytes::Bytes::from(batch.body);
                let mut attempt = 0;
                loop {
                    let mut request = client.post(&url);
                    if let Some(t) = &token {
                        request = request.header("Authorization", format!("Token {t}"));
                    }
                    let resp =
                        request
                            .body(body.clone())
                            .send()
                            .await
                            .map_err(|e| LoadError::Send {
                                batch: batch.index,
                                url: url.clone(),
                                reason: e.to_string(),
                            })?;
                    let status = resp.status().as_u16();
                    if (200..300).contains(&status) {
                        break;
                    }
                    // "Slow down": wait as asked and send the batch again.
                    if (status == 503 || status == 429) && attempt < MAX_RETRIES {
                        attempt += 1;
                        retries.fetch_add(1, Ordering::Relaxed);
                        let wait = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .map_or(Duration::from_millis(500), Duration::from_secs)
                            .min(Duration::from_secs(10));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let body = resp.text().await.unwrap_or_default();
                    return Err(LoadError::Refused {
                        batch: batch.index,
                        status,
                        body,
                    });
                }
                rows_done.fetch_add(batch.rows, Ordering::Relaxed);
                metrics_done.fetch_add(batch.metrics, Ordering::Relaxed);
                bytes_done.fetch_add(batch.bytes, Ordering::Relaxed);
            }
        }));
    }
    let total_bytes = config.total_bytes;
    let on_terminal = std::io::stderr().is_terminal();
    let progress = config.progress_every.map(|every| {
        let (rows_done, bytes_done) = (rows_done.clone(), bytes_done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = progress_line(
                    rows_done.load(Ordering::Relaxed),
                    bytes_done.load(Ordering::Relaxed),
                    total_bytes,
                    started.elapsed(),
                );
                if on_terminal {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    });

    let mut first_error = None;
    for w in workers {
        if let Err(e) = w.await.expect("load worker panicked") {
            first_error.get_or_insert(e);
            rx.lock().await.close();
        }
    }
    if let Some(p) = progress {
        p.abort();
        if on_terminal {
            eprintln!();
        }
    }
    reader.await.expect("reader panicked")?;
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(LoadSummary {
        rows: rows_done.load(Ordering::Relaxed),
        metrics: metrics_done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        retries: retries.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one HTTP request (headers and Content-Length body).
    async fn read_request(sock: &mut tokio::net::TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    return text;
                }
            }
        }
    }

    #[tokio::test]
    async fn slow_down_answers_are_retried_after_the_asked_wait() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut bodies = vec![];
            for i in 0..3 {
                let (mut sock, _) = listener.accept().await.unwrap();
                let req = read_request(&mut sock).await;
                bodies.push(req.split("\r\n\r\n").nth(1).unwrap_or_default().to_string());
                let answer: &[u8] = if i < 2 {
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                };
                sock.write_all(answer).await.unwrap();
            }
            bodies
        });
        let config = LoadConfig {
            url: format!("http://{addr}"),
            db: "db".into(),
            workers: 1,
            batch_size: 10,
            precision: "ns".into(),
            progress_every: None,
            total_bytes: None,
            consistency: None,
            token: None,
        };
        let summary = load(&config, std::io::Cursor::new("m v=1 1\nm v=2 2\n"))
            .await
            .unwrap();
        assert_eq!((summary.rows, summary.retries), (2, 2));
        assert!(summary
            .to_string()
            .ends_with("(retried 2 times after \"slow down\")"));
        // The same batch each time.
        assert_eq!(server.await.unwrap(), vec!["m v=1 1\nm v=2 2\n"; 3]);
    }

    #[test]
    fn progress_shows_a_bar_when_the_size_is_known() {
        let line = progress_line(500, 250, Some(1000), Duration::from_secs(10));
        assert_eq!(
            line,
            "[#######-----------------------]  25.0%  500 rows, 50 rows/s  30 s left"
        );
        let line = progress_line(500, 250, None, Duration::from_secs(10));
        assert_eq!(line, "500 rows, 50 rows/s in 10.0 s");
    }

    #[test]
    fn counts_fields_with_quotes_and_escapes() {
        assert_eq!(field_count("cpu,host=a u=1i,s=2i 10"), 2);
        assert_eq!(field_count(r#"m,t=a\ b s="x, y",n=1 5"#), 2);
        assert_eq!(field_count("m v=1"), 1);
        assert_eq!(field_count("garbage"), 0);
    }
}
