//! The 15 TSBS cpu-only query types with TSBS's random parameters, written
//! in strata's SQL. Parameters follow `tsbs_generate_queries` (its code,
//! not its README): each type's file reseeds Go's generator; a window is
//! `start + Int63n(end - window - start)`; hosts are drawn with `Intn(scale)`
//! until unseen; single-groupby and cpu-max-all draw the window before the
//! hosts, high-cpu draws the hosts first (TSBS's SQL targets), the rest
//! draw only a window or nothing. See `shared/TSBS.md` §2.

use std::collections::HashSet;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use snafu::Snafu;

use super::cpu_only::FIELD_KEYS;
use super::gorand::GoRand;

const NS_PER_SEC: i64 = 1_000_000_000;
const HOUR_NS: i64 = 3600 * NS_PER_SEC;

/// What a query type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// max of the first `metrics` fields per minute for `hosts` random hosts
    /// over a random window of `hours`.
    SingleGroupby {
        metrics: usize,
        hosts: usize,
        hours: i64,
    },
    /// max of all ten fields per hour for `hosts` random hosts over 8 h.
    CpuMaxAll { hosts: usize },
    /// mean of the first `metrics` fields per hour and host over 12 h.
    DoubleGroupby { metrics: usize },
    /// rows with usage_user > 90 over 12 h, for `hosts` hosts (0 = all).
    HighCpu { hosts: usize },
    /// the latest row of every host.
    Lastpoint,
    /// max(usage_user) of the last 5 minutes before a random time.
    GroupbyOrderbyLimit,
}

/// The cpu-only query types, in TSBS's order.
pub const QUERY_TYPES: [(&str, QueryKind); 15] = [
    (
        "single-groupby-1-1-1",
        QueryKind::SingleGroupby {
            metrics: 1,
            hosts: 1,
            hours: 1,
        },
    ),
    (
        "single-groupby-1-1-12",
        QueryKind::SingleGroupby {
            metrics: 1,
            hosts: 1,
            hours: 12,
        },
    ),
    (
        "single-groupby-1-8-1",
        QueryKind::SingleGroupby {
            metrics: 1,
            hosts: 8,
            hours: 1,
        },
    ),
    (
        "single-groupby-5-1-1",
        QueryKind::SingleGroupby {
            metrics: 5,
            hosts: 1,
            hours: 1,
        },
    ),
    (
        "single-groupby-5-1-12",
        QueryKind::SingleGroupby {
            metrics: 5,
            hosts: 1,
            hours: 12,
        },
    ),
    (
        "single-groupby-5-8-1",
        QueryKind::SingleGroupby {
            metrics: 5,
            hosts: 8,
            hours: 1,
        },
    ),
    ("cpu-max-all-1", QueryKind::CpuMaxAll { hosts: 1 }),
    ("cpu-max-all-8", QueryKind::CpuMaxAll { hosts: 8 }),
    ("double-groupby-1", QueryKind::DoubleGroupby { metrics: 1 }),
    ("double-groupby-5", QueryKind::DoubleGroupby { metrics: 5 }),
    (
        "double-groupby-all",
        QueryKind::DoubleGroupby { metrics: 10 },
    ),
    ("high-cpu-all", QueryKind::HighCpu { hosts: 0 }),
    ("high-cpu-1", QueryKind::HighCpu { hosts: 1 }),
    ("lastpoint", QueryKind::Lastpoint),
    ("groupby-orderby-limit", QueryKind::GroupbyOrderbyLimit),
];

/// The kind of a query type by its TSBS name.
pub fn query_kind(name: &str) -> Option<QueryKind> {
    QUERY_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
}

#[derive(Debug, Snafu)]
pub enum QueryGenError {
    #[snafu(display(
        "a {window_hours} h window does not fit in the data's time range of {range_secs} s; \
         generate more data or pick other query types"
    ))]
    WindowTooLarge { window_hours: i64, range_secs: i64 },
    #[snafu(display("{query_type} needs {hosts} hosts but the scale is {scale}"))]
    TooFewHosts {
        query_type: String,
        hosts: usize,
        scale: u64,
    },
    #[snafu(display(
        "unknown query type '{name}'; the cpu-only types are: {}",
        QUERY_TYPES.map(|(n, _)| n).join(", ")
    ))]
    UnknownType { name: String },
}

/// One generated query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub query_type: &'static str,
    pub sql: String,
}

/// Generates queries over a data set of `scale` hosts that starts at
/// `start_ns` and whose last row is before `end_ns`.
#[derive(Debug, Clone)]
pub struct QueryGenerator {
    pub seed: i64,
    pub scale: u64,
    pub start_ns: i64,
    /// The end of the interval windows are drawn from: the data's end plus
    /// one second, as TSBS's scripts pass it.
    pub end_ns: i64,
}

impl QueryGenerator {
    /// For data generated over `[start_ns, data_end_ns)`.
    pub fn for_data(seed: i64, scale: u64, start_ns: i64, data_end_ns: i64) -> Self {
        QueryGenerator {
            seed,
            scale,
            start_ns,
            end_ns: data_end_ns + NS_PER_SEC,
        }
    }

    /// `count` queries of type `name`, from a freshly seeded generator.
    pub fn generate(&self, name: &str, count: usize) -> Result<Vec<Query>, QueryGenError> {
        let (query_type, kind) = QUERY_TYPES
            .iter()
            .find(|(n, _)| *n == name)
            .copied()
            .ok_or_else(|| QueryGenError::UnknownType {
                name: name.to_string(),
            })?;
        let mut rng = GoRand::new(self.seed);
        (0..count)
            .map(|_| {
                Ok(Query {
                    query_type,
                    sql: self.one(&mut rng, query_type, kind)?,
                })
            })
            .collect()
    }

    fn window(&self, rng: &mut GoRand, hours: i64) -> Result<(i64, i64), QueryGenError> {
        let window = hours * HOUR_NS;
        let lower = self.start_ns;
        let upper = self.end_ns - window;
        if upper <= lower {
            return WindowTooLargeSnafu {
                window_hours: hours,
                range_secs: (self.end_ns - self.start_ns) / NS_PER_SEC,
            }
            .fail();
        }
        let start = lower + rng.int63n(upper - lower);
        Ok((start, start + window))
    }

    fn hosts(
        &self,
        rng: &mut GoRand,
        query_type: &str,
        n: usize,
    ) -> Result<Vec<String>, QueryGenError> {
        if n as u64 > self.scale {
            return TooFewHostsSnafu {
                query_type,
                hosts: n,
                scale: self.scale,
            }
            .fail();
        }
        let mut seen = HashSet::new();
        let mut hosts = Vec::with_capacity(n);
        while hosts.len() < n {
            let h = rng.intn(self.scale as usize);
            if seen.insert(h) {
                hosts.push(format!("host_{h}"));
            }
        }
        Ok(hosts)
    }

    fn one(
        &self,
        rng: &mut GoRand,
        query_type: &str,
        kind: QueryKind,
    ) -> Result<String, QueryGenError> {
        Ok(match kind {
            QueryKind::SingleGroupby {
                metrics,
                hosts,
                hours,
            } => {
                let (start, end) = self.window(rng, hours)?;
                let hosts = self.hosts(rng, query_type, hosts)?;
                format!(
                    "SELECT date_trunc('minute', time) AS minute, {} FROM cpu \
                     WHERE hostname IN ({}) AND time >= '{}' AND time < '{}' \
                     GROUP BY minute ORDER BY minute",
                    aggregates("max", metrics),
                    quoted(&hosts),
                    timestamp(start),
                    timestamp(end)
                )
            }
            QueryKind::CpuMaxAll { hosts } => {
                let (start, end) = self.window(rng, 8)?;
                let hosts = self.hosts(rng, query_type, hosts)?;
                format!(
                    "SELECT date_trunc('hour', time) AS hour, {} FROM cpu \
                     WHERE hostname IN ({}) AND time >= '{}' AND time < '{}' \
                     GROUP BY hour ORDER BY hour",
                    aggregates("max", FIELD_KEYS.len()),
                    quoted(&hosts),
                    timestamp(start),
                    timestamp(end)
                )
            }
            QueryKind::DoubleGroupby { metrics } => {
                let (start, end) = self.window(rng, 12)?;
                let means: Vec<String> = FIELD_KEYS[..metrics]
                    .iter()
                    .map(|m| format!("avg({m}) AS mean_{m}"))
                    .collect();
                format!(
                    "SELECT date_trunc('hour', time) AS hour, hostname, {} FROM cpu \
                     WHERE time >= '{}' AND time < '{}' \
                     GROUP BY hour, hostname ORDER BY hour, hostname",
                    means.join(", "),
                    timestamp(start),
                    timestamp(end)
                )
            }
            QueryKind::HighCpu { hosts } => {
                let host_filter = if hosts == 0 {
                    String::new()
                } else {
                    format!(
                        " AND hostname IN ({})",
                        quoted(&self.hosts(rng, query_type, hosts)?)
                    )
                };
                let (start, end) = self.window(rng, 12)?;
                format!(
                    "SELECT * FROM cpu WHERE usage_user > 90.0 \
                     AND time >= '{}' AND time < '{}'{host_filter}",
                    timestamp(start),
                    timestamp(end)
                )
            }
            QueryKind::Lastpoint => {
                "SELECT DISTINCT ON (hostname) * FROM cpu ORDER BY hostname, time DESC".to_string()
            }
            QueryKind::GroupbyOrderbyLimit => {
                let (_, end) = self.window(rng, 1)?;
                format!(
                    "SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu \
                     WHERE time < '{}' GROUP BY minute ORDER BY minute DESC LIMIT 5",
                    timestamp(end)
                )
            }
        })
    }
}

fn aggregates(func: &str, metrics: usize) -> String {
    let mut s = String::new();
    for (i, m) in FIELD_KEYS[..metrics].iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{func}({m}) AS {func}_{m}");
    }
    s
}

fn quoted(hosts: &[String]) -> String {
    hosts
        .iter()
        .map(|h| format!("'{h}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 3339 in UTC with microseconds, the precision TSBS's SQL targets
/// print.
fn timestamp(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2016: i64 = 1_451_606_400 * NS_PER_SEC;
    const DAY: i64 = 24 * HOUR_NS;

    /// TSBS's own unit-test vectors (seed 123, scale 10, data range
    /// [epoch 0, +1 h)): five random hosts are 5, 9, 3, 1, 7.
    #[test]
    fn hosts_follow_tsbs_vectors() {
        let g = QueryGenerator {
            seed: 123,
            scale: 10,
            start_ns: 0,
            end_ns: HOUR_NS,
        };
        let mut rng = GoRand::new(123);
        assert_eq!(
            g.hosts(&mut rng, "t", 5).unwrap(),
            vec!["host_5", "host_9", "host_3", "host_1", "host_7"]
        );
    }

    #[test]
    fn windows_follow_tsbs_vectors() {
        let g = QueryGenerator {
            seed: 123,
            scale: 10,
            start_ns: 0,
            end_ns: HOUR_NS,
        };
        // GroupByTime with a one-second window starts at 00:05:58.646325...
        let mut rng = GoRand::new(123);
        let window = NS_PER_SEC;
        let start = g.start_ns + rng.int63n(g.end_ns - window - g.start_ns);
        assert_eq!(timestamp(start), "1970-01-01T00:05:58.646325Z");
        assert_eq!(g.hosts(&mut rng, "t", 1).unwrap(), vec!["host_9"]);
        // ... and groupby-orderby-limit over two hours ends at 01:16:22.646325.
        let g = QueryGenerator {
            end_ns: 2 * HOUR_NS,
            ..g
        };
        let q = g.generate("groupby-orderby-limit", 1).unwrap();
        assert!(
            q[0].sql.contains("time < '1970-01-01T01:16:22.646325Z'"),
            "{}",
            q[0].sql
        );
    }

    /// Parameters of TSBS's standard run (seed 123, scale 4000, three days).
    #[test]
    fn standard_run_parameters() {
        let g = QueryGenerator::for_data(123, 4000, JAN_1_2016, JAN_1_2016 + 3 * DAY);
        let q = g.generate("single-groupby-1-1-1", 2).unwrap();
        assert_eq!(
            q[0].sql,
            "SELECT date_trunc('minute', time) AS minute, max(usage_user) AS max_usage_user \
             FROM cpu WHERE hostname IN ('host_249') AND time >= '2016-01-03T12:26:46.646325Z' \
             AND time < '2016-01-03T13:26:46.646325Z' GROUP BY minute ORDER BY minute"
        );
        assert!(q[1].sql.contains("'host_1435'"), "{}", q[1].sql);
        assert!(q[1].sql.contains("time >= '2016-01-01T11:17:10.894865Z'"));

        let q = g.generate("cpu-max-all-8", 1).unwrap();
        assert!(q[0].sql.contains(
            "hostname IN ('host_249', 'host_1403', 'host_1435', 'host_3539', 'host_3639', \
             'host_3075', 'host_815', 'host_2121')"
        ));
        assert!(q[0].sql.contains("time >= '2016-01-01T11:48:31.646325Z'"));

        let q = g.generate("double-groupby-all", 1).unwrap();
        assert!(q[0].sql.contains("time >= '2016-01-02T11:22:40.646325Z'"));
        assert!(q[0]
            .sql
            .contains("avg(usage_guest_nice) AS mean_usage_guest_nice"));

        let q = g.generate("high-cpu-1", 1).unwrap();
        assert!(q[0].sql.contains("'host_1035'"), "{}", q[0].sql);
        assert!(q[0].sql.contains("time >= '2016-01-02T23:35:31.138978Z'"));
    }

    #[test]
    fn every_type_generates_and_reseeds_per_type() {
        let g = QueryGenerator::for_data(7, 20, JAN_1_2016, JAN_1_2016 + DAY);
        for (name, _) in QUERY_TYPES {
            let a = g.generate(name, 3).unwrap();
            assert_eq!(a.len(), 3);
            assert_eq!(
                a,
                g.generate(name, 3).unwrap(),
                "{name} is not reproducible"
            );
        }
    }

    #[test]
    fn clear_errors_for_impossible_requests() {
        let g = QueryGenerator::for_data(1, 4, JAN_1_2016, JAN_1_2016 + HOUR_NS);
        let e = g.generate("double-groupby-1", 1).unwrap_err().to_string();
        assert!(e.contains("12 h window"), "{e}");
        let g = QueryGenerator::for_data(1, 4, JAN_1_2016, JAN_1_2016 + DAY);
        let e = g.generate("cpu-max-all-8", 1).unwrap_err().to_string();
        assert!(e.contains("needs 8 hosts but the scale is 4"), "{e}");
        let e = g.generate("cpu-max", 1).unwrap_err().to_string();
        assert!(e.contains("unknown query type 'cpu-max'"), "{e}");
    }
}
