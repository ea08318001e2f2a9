//! The cluster secret as the roles and `strata admin` take it: a file
//! named by `--cluster-secret-file` (or `STRATA_CLUSTER_SECRET_FILE`, or
//! the config key `cluster_secret_file`), or the secret itself in
//! `STRATA_CLUSTER_SECRET`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::ConfigFile;

/// How a role authenticates to the others.
#[derive(Args, Debug, Default)]
pub struct ClusterAuthArgs {
    /// File holding the cluster secret (at least 16 characters), the same
    /// for every role of the cluster; calls between roles carry it and the
    /// internal ports refuse calls without it. The secret itself may be
    /// given in STRATA_CLUSTER_SECRET instead.
    #[arg(long, env = "STRATA_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Run without authentication: no cluster secret needed and, on a
    /// coordinator, no client tokens.
    #[arg(long)]
    pub without_auth: bool,
    /// Call the other roles over TLS, trusting this CA certificate (PEM);
    /// catalog members and storage nodes then serve TLS (--tls-cert,
    /// --tls-key).
    #[arg(long, env = "STRATA_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
}

impl ClusterAuthArgs {
    /// Sets this process's cluster secret. Returns whether authentication
    /// is on (`--without-auth` not given); without a secret that is an
    /// error naming the ways to give one.
    pub fn apply(self, f: &ConfigFile, role: &str) -> Result<bool, String> {
        let without_auth =
            self.without_auth || f.pick(None, "without_auth", false).map_err(|e| e.0)?;
        let file: Option<String> = f
            .pick_opt(
                self.cluster_secret_file.map(|p| p.display().to_string()),
                "cluster_secret_file",
            )
            .map_err(|e| e.0)?;
        let secret = load_secret(file.as_deref().map(Path::new))?;
        let ca: Option<String> = f
            .pick_opt(
                self.cluster_tls_ca.map(|p| p.display().to_string()),
                "cluster_tls_ca",
            )
            .map_err(|e| e.0)?;
        set_cluster_tls_ca(ca.as_deref().map(Path::new))?;
        match (secret, without_auth) {
            (Some(s), _) => {
                strata_proto::cluster::set_secret(Some(&s))?;
                Ok(!without_auth)
            }
            (None, true) => Ok(false),
            (None, false) => Err(format!(
                "strata {role} runs with authentication unless told otherwise: give \
                 --cluster-secret-file (a file holding the secret every role of the cluster \
                 shares; or the secret in STRATA_CLUSTER_SECRET), or --without-auth for an open \
                 cluster"
            )),
        }
    }
}

/// Makes calls to other roles go over TLS trusting the CA in `file`.
pub fn set_cluster_tls_ca(file: Option<&Path>) -> Result<(), String> {
    let Some(path) = file else {
        return Ok(());
    };
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read --cluster-tls-ca {}: {e}", path.display()))?;
    strata_proto::cluster::set_tls_ca(Some(pem))
}

/// The secret in `file`, else in `STRATA_CLUSTER_SECRET`, else none.
pub fn load_secret(file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the cluster secret file {}: {e}",
                path.display()
            )
        })?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(std::env::var("STRATA_CLUSTER_SECRET")
        .ok()
        .filter(|s| !s.trim().is_empty()))
}

/// The secret of a dev cluster's data directory: read from
/// `<data>/cluster-secret`, made (random, readable by the owner only) on
/// the first start with authentication.
pub fn dev_secret(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("cluster-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let secret = strata_catalog::tokens::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = |options: &std::fs::OpenOptions| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = options.open(&path)?;
        file.write_all(secret.as_bytes())?;
        file.sync_all()
    };
    write(&options).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(secret)
}
