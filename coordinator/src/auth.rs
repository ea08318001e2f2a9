//! Who a request acts as, and what it may do.
//!
//! Clients present a token the way their protocol does: `Authorization:
//! Token <t>` or `Bearer <t>` (InfluxDB 2 and 3 clients, Flight SQL),
//! Basic auth or the v1 `u`/`p` parameters with the token as password
//! (InfluxDB 1 clients, ADBC's username/password handshake). The token is
//! looked up by its hash in this coordinator's copy of the catalog, so a
//! revoked token stops working as soon as the catalog change arrives.

use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::TableReference;
use datafusion::logical_expr::LogicalPlan;
use strata_catalog::tokens::{self, Level, Token};
use strata_catalog::CatalogClient;

use crate::error::{Error, Result};
use crate::query::system_tables::SYSTEM_SCHEMA;

/// How a coordinator treats requests.
#[derive(Clone)]
pub struct Auth {
    /// `None`: authentication is off; every request may do everything.
    catalog: Option<CatalogClient>,
}

impl Auth {
    /// Every request may do everything (`strata dev` without `--auth`,
    /// `strata coordinator --without-auth`).
    pub fn disabled() -> Self {
        Self { catalog: None }
    }

    /// Requests need a token of the catalog's.
    pub fn required(catalog: CatalogClient) -> Self {
        Self {
            catalog: Some(catalog),
        }
    }

    /// Who presents `credential` (what [`credential_from_header`] found).
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Access> {
        let Some(catalog) = &self.catalog else {
            return Ok(Access::Open);
        };
        let Some(token) = credential.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated {
                reason: "authentication required: send a token (Authorization: Token <token> or \
                         Bearer <token>; as the password of Basic auth or the v1 `p` parameter)"
                    .into(),
            });
        };
        let hash = tokens::hash(token);
        let state = catalog.state();
        match state
            .tokens
            .values()
            .find(|t| tokens::same_secret(t.hash.as_bytes(), hash.as_bytes()))
        {
            Some(t) => Ok(Access::Token(Arc::new(t.clone()))),
            None => Err(Error::Unauthenticated {
                reason: "the token is not valid (unknown or revoked)".into(),
            }),
        }
    }
}

/// What a request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authentication is off.
    Open,
    Token(Arc<Token>),
}

impl Access {
    /// A name for logs and plan caches: the token's, or `-`.
    pub fn name(&self) -> &str {
        match self {
            Access::Open => "-",
            Access::Token(t) => &t.name,
        }
    }

    /// Whether the request may act at `level` on `database` (`None`: the
    /// cluster itself).
    pub fn allows(&self, database: Option<&str>, level: Level) -> bool {
        match self {
            Access::Open => true,
            Access::Token(t) => t.allows(database, level),
        }
    }

    /// [`Self::allows`], or the 403 saying what is missing.
    pub fn require(&self, database: Option<&str>, level: Level) -> Result<()> {
        if self.allows(database, level) {
            return Ok(());
        }
        let what = match database {
            Some(db) => format!("{level} permission on database '{db}'"),
            None => format!("{level} permission on * (the whole cluster)"),
        };
        Err(Error::PermissionDenied {
            reason: format!("token '{}' lacks {what}", self.name()),
        })
    }

    /// Read permission on every table a query plan scans (subqueries
    /// included); `default_db` is the session's database. The system
    /// tables need admin on `*`; `information_schema` lists only what the
    /// token may read.
    pub fn require_reads(&self, plan: &LogicalPlan, default_db: Option<&str>) -> Result<()> {
        if matches!(self, Access::Open) {
            return Ok(());
        }
        let mut databases = vec![];
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                databases.push(scan_database(&scan.table_name, default_db));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|source| Error::Query { source })?;
        databases.sort();
        databases.dedup();
        for db in databases {
            match db.as_str() {
                "information_schema" => {}
                SYSTEM_SCHEMA => self.require(None, Level::Admin)?,
                db => self.require(Some(db), Level::Read)?,
            }
        }
        Ok(())
    }
}

/// The database (schema) a scan reads.
fn scan_database(table: &TableReference, default_db: Option<&str>) -> String {
    match table {
        // A session without a database resolves bare names in the
        // default schema, which a database may be named after.
        TableReference::Bare { .. } => default_db
            .unwrap_or(crate::query::DEFAULT_SCHEMA)
            .to_string(),
        TableReference::Partial { schema, .. } | TableReference::Full { schema, .. } => {
            schema.to_string()
        }
    }
}

/// The token in an `Authorization` header value: `Token t`, `Bearer t`,
/// or `Basic base64(user:t)` (the user name is not checked).
pub fn credential_from_header(value: &str) -> Result<String> {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // Padded or not: Go's Flight client (ADBC) sends it unpadded.
        const BASIC: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let decoded = BASIC
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::Unauthenticated {
                reason: "the Basic credentials are not base64 of user:password".into(),
            })?;
        let (_, password) = decoded.split_once(':').unwrap_or(("", &decoded));
        return Ok(password.to_string());
    }
    // The "scheme" may be a bare token: not echoed back.
    Err(Error::Unauthenticated {
        reason: "the Authorization header must be `Token <token>`, `Bearer <token>` or `Basic \
                 <base64 of user:token>`"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_as_influxdb_and_flight_clients_send_them() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        assert_eq!(credential_from_header("Token abc").unwrap(), "abc");
        assert_eq!(credential_from_header("bearer  abc ").unwrap(), "abc");
        let basic = format!("Basic {}", STANDARD.encode("me:secret:with:colons"));
        assert_eq!(
            credential_from_header(&basic).unwrap(),
            "secret:with:colons"
        );
        let no_user = format!("Basic {}", STANDARD.encode(":tok"));
        assert_eq!(credential_from_header(&no_user).unwrap(), "tok");
        // As Go's Flight client sends it: no padding.
        let unpadded = format!("Basic {}", STANDARD_NO_PAD.encode("x:strata_abc"));
        assert!(!unpadded.ends_with('='));
        assert_eq!(credential_from_header(&unpadded).unwrap(), "strata_abc");
        let bare = credential_from_header("strata_sometoken").unwrap_err();
        assert!(!bare.to_string().contains("strata_sometoken"), "{bare}");
        assert!(matches!(
            credential_from_header("Basic ***"),
            Err(Error::Unauthenticated { .. })
        ));
        assert!(matches!(
            credential_from_header("Digest x"),
            Err(Error::Unauthenticated { .. })
        ));
    }

    /// Plans over schemas `a` and `b` (each with a table `t`) in a
    /// session whose database is `a`.
    async fn plan(sql: &str) -> LogicalPlan {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
        use datafusion::datasource::MemTable;
        use datafusion::prelude::{SessionConfig, SessionContext};
        let config = SessionConfig::new().with_default_catalog_and_schema("datafusion", "a");
        let ctx = SessionContext::new_with_config(config);
        let catalog = ctx.catalog("datafusion").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        for name in ["a", "b"] {
            let provider = Arc::new(MemorySchemaProvider::new());
            let table = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
            provider
                .register_table("t".into(), Arc::new(table))
                .unwrap();
            catalog.register_schema(name, provider).unwrap();
        }
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    /// A token named `name` holding one grant.
    fn access(name: &str, grant: &str) -> Access {
        Access::Token(Arc::new(Token {
            name: name.into(),
            hash: tokens::hash("t"),
            grants: vec![strata_catalog::tokens::Grant::parse(grant).unwrap()],
            created_ms: 0,
        }))
    }

    #[tokio::test]
    async fn reads_are_checked_on_every_table_a_plan_scans() {
        let access = access("a-reader", "a:read");
        for allowed in [
            "SELECT * FROM t",
            "SELECT * FROM a.t",
            "EXPLAIN SELECT * FROM t",
        ] {
            assert!(
                access
                    .require_reads(&plan(allowed).await, Some("a"))
                    .is_ok(),
                "{allowed}"
            );
        }
        for denied in [
            "SELECT * FROM b.t",
            "SELECT * FROM t JOIN b.t USING (x)",
            "SELECT * FROM t WHERE x IN (SELECT x FROM b.t)",
            "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM b.t WHERE b.t.x = t.x)",
            "WITH c AS (SELECT * FROM b.t) SELECT * FROM c",
            "SELECT x FROM t UNION ALL SELECT x FROM \"b\".t",
            "EXPLAIN SELECT * FROM b.t",
        ] {
            let e = access
                .require_reads(&plan(denied).await, Some("a"))
                .unwrap_err();
            assert!(e.to_string().contains("database 'b'"), "{denied}: {e}");
        }
        // Bare names of a session without a database read the default
        // schema, which may be a database's name too.
        assert!(access
            .require_reads(&plan("SELECT * FROM a.t").await, None)
            .is_ok());
        assert_eq!(
            scan_database(&TableReference::bare("t"), None),
            crate::query::DEFAULT_SCHEMA
        );
    }

    #[test]
    fn access_follows_the_grants() {
        let access = access("reader", "metrics:read");
        assert!(access.require(Some("metrics"), Level::Read).is_ok());
        let denied = access.require(Some("metrics"), Level::Write).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "token 'reader' lacks write permission on database 'metrics'"
        );
        assert_eq!(denied.http_status(), http::StatusCode::FORBIDDEN);
        assert!(access.require(None, Level::Admin).is_err());
        assert!(Access::Open.require(None, Level::Admin).is_ok());
    }
}
