//! The TSBS `cpu-only` use case: hosts with ten fixed tags and ten CPU
//! usage fields, one row per host every interval. Every draw from the
//! generator happens in the order TSBS makes it, so the same seed, scale and
//! time range give the very rows `tsbs_generate_data --use-case=cpu-only`
//! gives; see `shared/TSBS.md` §1 for the rules this follows.
//!
//! [`CpuOnlySimulator`] is a streaming source: it holds one state per host,
//! never the data set.

use super::gorand::GoRand;

/// Tag keys in TSBS's output order.
pub const TAG_KEYS: [&str; 10] = [
    "hostname",
    "region",
    "datacenter",
    "rack",
    "os",
    "arch",
    "team",
    "service",
    "service_version",
    "service_environment",
];

/// Field keys in TSBS's output order.
pub const FIELD_KEYS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];

const REGIONS: [(&str, &[&str]); 9] = [
    (
        "us-east-1",
        &["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1e"],
    ),
    ("us-west-1", &["us-west-1a", "us-west-1b"]),
    ("us-west-2", &["us-west-2a", "us-west-2b", "us-west-2c"]),
    ("eu-west-1", &["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("eu-central-1", &["eu-central-1a", "eu-central-1b"]),
    ("ap-southeast-1", &["ap-southeast-1a", "ap-southeast-1b"]),
    ("ap-southeast-2", &["ap-southeast-2a", "ap-southeast-2b"]),
    ("ap-northeast-1", &["ap-northeast-1a", "ap-northeast-1c"]),
    ("sa-east-1", &["sa-east-1a", "sa-east-1b", "sa-east-1c"]),
];
const TEAMS: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const OSES: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
const ARCHES: [&str; 2] = ["x64", "x86"];
const ENVIRONMENTS: [&str; 3] = ["production", "staging", "test"];

/// What to generate: TSBS's `--scale`, `--initial-scale`, `--seed`,
/// `--timestamp-start/-end`, `--log-interval` and `--max-data-points`.
#[derive(Debug, Clone)]
pub struct CpuOnlyConfig {
    pub seed: i64,
    pub scale: u64,
    /// Hosts reporting in the first interval; the rest join linearly until
    /// all `scale` report in the last (TSBS: 0 means `scale`).
    pub initial_scale: u64,
    /// Nanoseconds since the Unix epoch, UTC.
    pub start_ns: i64,
    pub end_ns: i64,
    pub interval_ns: i64,
    /// Stop after this many points (written or not, as TSBS counts); 0 = no
    /// limit.
    pub max_points: u64,
}

impl CpuOnlyConfig {
    /// The number of intervals, `floor((end - start) / interval)`.
    pub fn epochs(&self) -> u64 {
        if self.end_ns <= self.start_ns || self.interval_ns <= 0 {
            return 0;
        }
        ((self.end_ns - self.start_ns) / self.interval_ns) as u64
    }
}

/// One host: its tag values (in [`TAG_KEYS`] order) and the clamped random
/// walk behind each field.
#[derive(Debug, Clone)]
pub struct Host {
    pub tags: [String; 10],
    state: [f64; 10],
}

impl Host {
    /// Creates host `id`, drawing exactly as TSBS's `NewHostCPUOnly`: first
    /// the ten initial field states, then the tags in the order of Go's
    /// struct literal (region, datacenter, rack, arch, os, service, version,
    /// environment, team).
    fn new(id: u64, rng: &mut GoRand) -> Self {
        let mut state = [0.0; 10];
        for s in &mut state {
            *s = rng.float64() * 100.0;
        }
        let (region, datacenters) = REGIONS[rng.intn(REGIONS.len())];
        let datacenter = datacenters[rng.intn(datacenters.len())];
        let rack = rng.int63n(100);
        let arch = ARCHES[rng.intn(ARCHES.len())];
        let os = OSES[rng.intn(OSES.len())];
        let service = rng.int63n(20);
        let service_version = rng.int63n(2);
        let environment = ENVIRONMENTS[rng.intn(ENVIRONMENTS.len())];
        let team = TEAMS[rng.intn(TEAMS.len())];
        Host {
            tags: [
                format!("host_{id}"),
                region.to_string(),
                datacenter.to_string(),
                rack.to_string(),
                os.to_string(),
                arch.to_string(),
                team.to_string(),
                service.to_string(),
                service_version.to_string(),
                environment.to_string(),
            ],
            state,
        }
    }

    /// Advances every field by one shared N(0,1) step, clamped to [0, 100].
    fn tick(&mut self, rng: &mut GoRand) {
        for s in &mut self.state {
            *s = (*s + rng.norm_float64()).clamp(0.0, 100.0);
        }
    }

    /// The emitted values: each state truncated toward zero, as Go's
    /// `int64(float64)`.
    pub fn values(&self) -> [i64; 10] {
        self.state.map(|s| s as i64)
    }
}

/// A row to write: the host it belongs to and its timestamp.
pub struct Row<'a> {
    pub host: &'a Host,
    pub host_index: usize,
    pub time_ns: i64,
}

/// Generates the cpu-only rows in TSBS's order: every host at one instant,
/// then every host at the next.
pub struct CpuOnlySimulator {
    rng: GoRand,
    hosts: Vec<Host>,
    interval_ns: i64,
    time_ns: i64,
    epoch: u64,
    epochs: u64,
    initial_hosts: u64,
    epoch_hosts: u64,
    host_index: usize,
    made_points: u64,
    max_points: u64,
}

impl CpuOnlySimulator {
    pub fn new(config: &CpuOnlyConfig) -> Self {
        let mut rng = GoRand::new(config.seed);
        let hosts: Vec<Host> = (0..config.scale)
            .map(|id| Host::new(id, &mut rng))
            .collect();
        let initial_hosts = if config.initial_scale == 0 {
            config.scale
        } else {
            config.initial_scale.min(config.scale)
        };
        let epochs = config.epochs();
        let mut max_points = epochs * config.scale;
        if config.max_points > 0 && config.max_points < max_points {
            max_points = config.max_points;
        }
        CpuOnlySimulator {
            rng,
            hosts,
            interval_ns: config.interval_ns,
            time_ns: config.start_ns,
            epoch: 0,
            epochs,
            initial_hosts,
            epoch_hosts: initial_hosts,
            host_index: 0,
            made_points: 0,
            max_points,
        }
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Rows this run will write at most (before `initial_scale` suppresses
    /// any).
    pub fn max_points(&self) -> u64 {
        self.max_points
    }

    /// The next row to write, or `None` when done. Points of hosts that
    /// have not joined yet (with `initial_scale < scale`) are simulated and
    /// skipped, exactly as TSBS does.
    pub fn next_row(&mut self) -> Option<Row<'_>> {
        loop {
            if self.made_points >= self.max_points {
                return None;
            }
            if self.host_index == self.hosts.len() {
                self.host_index = 0;
                self.time_ns += self.interval_ns;
                for host in &mut self.hosts {
                    host.tick(&mut self.rng);
                }
                self.epoch += 1;
                let missing = (self.hosts.len() as u64 - self.initial_hosts) as f64;
                self.epoch_hosts = self.initial_hosts
                    + (missing * self.epoch as f64 / (self.epochs as f64 - 1.0)) as u64;
            }
            let index = self.host_index;
            self.host_index += 1;
            self.made_points += 1;
            if (index as u64) < self.epoch_hosts {
                return Some(Row {
                    host: &self.hosts[index],
                    host_index: index,
                    time_ns: self.time_ns,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: i64, scale: u64, epochs: i64) -> CpuOnlyConfig {
        CpuOnlyConfig {
            seed,
            scale,
            initial_scale: 0,
            start_ns: 1_451_606_400_000_000_000,
            end_ns: 1_451_606_400_000_000_000 + epochs * 10_000_000_000,
            interval_ns: 10_000_000_000,
            max_points: 0,
        }
    }

    #[test]
    fn seed_123_matches_the_published_rows() {
        let mut sim = CpuOnlySimulator::new(&config(123, 3, 3));
        let mut rows = Vec::new();
        while let Some(row) = sim.next_row() {
            rows.push((row.host.tags.clone(), row.host.values(), row.time_ns));
        }
        assert_eq!(rows.len(), 9);
        assert_eq!(
            rows[0].0.join(","),
            "host_0,eu-central-1,eu-central-1a,6,Ubuntu15.10,x86,SF,19,1,test"
        );
        assert_eq!(
            rows[1].0.join(","),
            "host_1,us-west-1,us-west-1a,41,Ubuntu15.10,x64,NYC,9,1,staging"
        );
        assert_eq!(
            rows[2].0.join(","),
            "host_2,sa-east-1,sa-east-1a,89,Ubuntu16.04LTS,x86,LON,13,0,staging"
        );
        assert_eq!(rows[0].1, [58, 2, 24, 61, 22, 63, 6, 44, 80, 38]);
        assert_eq!(rows[1].1, [84, 11, 53, 87, 29, 20, 54, 77, 53, 74]);
        assert_eq!(rows[2].1, [29, 48, 5, 63, 17, 52, 60, 49, 93, 1]);
        assert_eq!(rows[3].1, [58, 3, 24, 60, 25, 62, 7, 45, 81, 37]);
        assert_eq!(rows[6].1, [57, 3, 23, 57, 26, 64, 5, 46, 80, 38]);
        assert_eq!(rows[6].2, 1_451_606_420_000_000_000);
    }

    #[test]
    fn initial_scale_suppresses_hosts_that_have_not_joined() {
        let mut c = config(7, 4, 5);
        c.initial_scale = 1;
        let mut sim = CpuOnlySimulator::new(&c);
        let mut per_epoch = vec![0; 5];
        while let Some(row) = sim.next_row() {
            per_epoch[((row.time_ns - c.start_ns) / c.interval_ns) as usize] += 1;
        }
        // init + (scale - init) * epoch / (epochs - 1): 1, 1, 2, 3, 4.
        assert_eq!(per_epoch, vec![1, 1, 2, 3, 4]);

        // The values do not depend on which hosts were written.
        let mut full = CpuOnlySimulator::new(&config(7, 4, 5));
        let mut last_full = None;
        while let Some(row) = full.next_row() {
            last_full = Some(row.host.values());
        }
        let mut sim = CpuOnlySimulator::new(&c);
        let mut last = None;
        while let Some(row) = sim.next_row() {
            last = Some(row.host.values());
        }
        assert_eq!(last, last_full);
    }

    #[test]
    fn max_points_counts_rows_as_tsbs_does() {
        let mut c = config(1, 3, 10);
        c.max_points = 5;
        let mut sim = CpuOnlySimulator::new(&c);
        let mut n = 0;
        while sim.next_row().is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
    }
}
