//! Settings for the server roles: command-line flags (and their `STRATA_*`
//! environment variables) override a TOML file given with `--config`, which
//! overrides the defaults. File keys are the long flag names with `_`
//! (e.g. `data_dir = "/var/lib/strata"`).

use std::path::Path;
use std::str::FromStr;

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed config file (empty when none was given).
#[derive(Debug, Default)]
pub struct ConfigFile {
    path: String,
    table: toml::Table,
}

impl ConfigFile {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let table = text.parse::<toml::Table>().map_err(|e| {
            ConfigError(format!(
                "config file {} is not valid TOML: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.display().to_string(),
            table,
        })
    }

    /// The flag if given, else the file's value for `key`, else `default`.
    /// As [`Self::pick`], with no default: `None` when neither gives one.
    pub fn pick_opt<T: FromStr>(&self, flag: Option<T>, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if let Some(v) = flag {
            return Ok(Some(v));
        }
        let Some(v) = self.table.get(key) else {
            return Ok(None);
        };
        let text = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError(format!("{}: invalid value for '{key}': {e}", self.path)))
    }

    pub fn pick<T: FromStr>(&self, flag: Option<T>, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.pick_opt(flag, key)?.unwrap_or(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen = \"0.0.0.0:9000\"\nnode_id = 4\n").unwrap();
        let f = ConfigFile::load(Some(&p)).unwrap();
        assert_eq!(
            f.pick(None, "listen", "x".to_string()).unwrap(),
            "0.0.0.0:9000"
        );
        assert_eq!(f.pick(Some(7u64), "node_id", 1).unwrap(), 7);
        assert_eq!(f.pick(None, "node_id", 1u64).unwrap(), 4);
        assert_eq!(f.pick(None, "data_dir", "d".to_string()).unwrap(), "d");
        std::fs::write(&p, "node_id = \"many\"\n").unwrap();
        let f = ConfigFile::load(Some(&p)).unwrap();
        assert!(f
            .pick(None, "node_id", 1u64)
            .unwrap_err()
            .0
            .contains("node_id"));
    }
}
