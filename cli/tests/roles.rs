//! The roles run as separate processes and find each other through the
//! catalog.

use futures::TryStreamExt;

use crate::support::{post, rows, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_catalog_storage_and_coordinator_processes_serve_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let (_catalog, addrs) = ServerProcess::start(
        &[
            "catalog",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap",
            "--data-dir",
            &path("catalog"),
        ],
        &dir.path().join("catalog.json"),
    );
    let catalog = addrs["catalog"].as_str().unwrap().to_string();

    // The second storage node reads its settings from a config file.
    let config = dir.path().join("storage-2.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 2\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncatalog = \"{catalog}\"\n",
            path("storage-2")
        ),
    )
    .unwrap();
    let (_s1, s1) = ServerProcess::start(
        &[
            "storage",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &path("storage-1"),
            "--catalog",
            &catalog,
        ],
        &dir.path().join("s1.json"),
    );
    let (_s2, s2) = ServerProcess::start(
        &["storage", "--config", config.to_str().unwrap()],
        &dir.path().join("s2.json"),
    );
    let coordinator_dir = dir.path().join("coordinator");
    let (_coord, addrs) = ServerProcess::start(
        &[
            "coordinator",
            "--without-auth",
            "--data-dir",
            coordinator_dir.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--catalog",
            &catalog,
        ],
        &dir.path().join("coord.json"),
    );
    let http = addrs["http"].as_str().unwrap();
    let flight = addrs["flight"].as_str().unwrap();

    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!("m,host=h{i} v={i}i {}\n", 1_600_000_000 + i));
    }
    let (status, resp) = post(
        &reqwest::Client::new(),
        &format!("http://{http}/write?db=roles&precision=s"),
        body.into_bytes(),
        None,
    )
    .await;
    assert_eq!(status, 204, "{resp}");

    let mut sql = strata::sql_client::SqlClient::connect(flight, Some("roles".into()))
        .await
        .unwrap();
    let got = rows(&sql.query("SELECT count(*), sum(v) FROM m").await.unwrap());
    assert_eq!(got, vec![format!("100|{}", (0..100).sum::<i64>())]);
    let got = rows(&sql.query("SHOW DATABASES").await.unwrap());
    assert_eq!(got, vec!["roles|NULL|1w|1|NULL|NULL|one"]);

    // Both storage nodes hold shards of the table, listed as Flights named
    // [database, table, shard_id].
    // The storage port serves the cluster only: a call without the
    // cluster secret is refused.
    let flight_client = |addr: String| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        arrow_flight::FlightClient::new(channel)
    };
    let refused = flight_client(s1["storage"].as_str().unwrap().to_string())
        .await
        .list_flights(bytes::Bytes::new())
        .await
        .err()
        .expect("a call without the cluster secret is refused");
    match refused {
        arrow_flight::error::FlightError::Tonic(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}")
        }
        other => panic!("unexpected error: {other}"),
    }
    for node in [&s1, &s2] {
        let addr = node["storage"].as_str().unwrap();
        let mut client = flight_client(addr.to_string()).await;
        client
            .add_header(
                strata_proto::cluster::CLUSTER_SECRET_HEADER,
                crate::support::TEST_CLUSTER_SECRET,
            )
            .unwrap();
        let flights: Vec<arrow_flight::FlightInfo> = client
            .list_flights(bytes::Bytes::new())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(!flights.is_empty(), "node at {addr} holds no shard");
        for f in flights {
            let path = f.flight_descriptor.unwrap().path;
            assert_eq!(&path[..2], &["roles".to_string(), "m".to_string()]);
            assert!(path[2].parse::<u64>().is_ok(), "{path:?}");
        }
    }
}

/// A separate role refuses to start open unless told to, naming the ways
/// to give a cluster secret; a secret too short is refused.
#[test]
fn separate_roles_need_a_cluster_secret_or_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["catalog", "storage", "coordinator"] {
        let out = std::process::Command::new(crate::support::strata_bin())
            .args([role, "--data-dir", dir.path().join(role).to_str().unwrap()])
            .env_remove("STRATA_CLUSTER_SECRET")
            .env_remove("STRATA_CLUSTER_SECRET_FILE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role} started without a secret");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--cluster-secret-file") && stderr.contains("--without-auth"),
            "{role}: {stderr}"
        );
    }
    let out = std::process::Command::new(crate::support::strata_bin())
        .args([
            "storage",
            "--data-dir",
            dir.path().join("s").to_str().unwrap(),
        ])
        .env("STRATA_CLUSTER_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
}
