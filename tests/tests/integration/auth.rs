//! Client authentication and the secure default, with real processes: a coordinator with users in
//! its config file refuses calls without credentials (`Unauthenticated`), accepts a Basic login
//! and then its bearer token, also on a second coordinator sharing the token secret; `quiver sql`
//! logs in; binding beyond loopback without authentication is refused unless `--insecure`.

use std::time::Duration;

use quiver_client::{ConnectOptions, QuiverClient};
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::process::{QuiverProcess, quiver_bin};
use quiver_tests::secure::Security;
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;

use crate::QUERY_LIMIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_tokens_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let security = Security::create(dir.path());
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: security.args(false),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let url = cluster.url();

    // No credentials: the connection opens, every call is refused.
    let mut anonymous = within(QUERY_LIMIT, "connect", QuiverClient::connect(&url))
        .await
        .expect("connect");
    let err = within(QUERY_LIMIT, "query", anonymous.query("SELECT 1"))
        .await
        .expect_err("no credentials");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::Unauthenticated));

    // A wrong password fails at login, without echoing it.
    let wrong = ConnectOptions {
        user: Some(security.user.clone()),
        password: Some("not the password".into()),
        ..Default::default()
    };
    let err = within(
        QUERY_LIMIT,
        "bad login",
        QuiverClient::connect_with(&url, &wrong),
    )
    .await
    .expect_err("bad password");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::Unauthenticated));
    assert!(!err.to_string().contains("not the password"), "{err}");

    let good = ConnectOptions {
        user: Some(security.user.clone()),
        password: Some(security.password.clone()),
        ..Default::default()
    };
    let mut client = within(
        QUERY_LIMIT,
        "login",
        QuiverClient::connect_with(&url, &good),
    )
    .await
    .expect("login");
    let result = within(
        QUERY_LIMIT,
        "query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect("authenticated query");
    assert_eq!(result.num_rows(), 1);
    let token = client.token().expect("a bearer token").to_string();

    // Another coordinator with the same secret accepts the token.
    let mut args: Vec<String> = ["coordinator", "--listen", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(security.args(false));
    let mut second = QuiverProcess::spawn(dir.path(), "second-coordinator", &args);
    let second_url = format!(
        "grpc://{}",
        second.wait_for_address(Duration::from_secs(60))
    );
    let with_token = ConnectOptions {
        token: Some(token.clone()),
        ..Default::default()
    };
    let mut elsewhere = within(
        QUERY_LIMIT,
        "connect with token",
        QuiverClient::connect_with(&second_url, &with_token),
    )
    .await
    .expect("connect");
    within(QUERY_LIMIT, "constant query", elsewhere.query("SELECT 1"))
        .await
        .expect("the token works on another coordinator");
    let forged = ConnectOptions {
        token: Some(format!("{token}x")),
        ..Default::default()
    };
    let mut forger = within(
        QUERY_LIMIT,
        "connect forged",
        QuiverClient::connect_with(&second_url, &forged),
    )
    .await
    .expect("connect");
    let err = within(QUERY_LIMIT, "forged", forger.query("SELECT 1"))
        .await
        .expect_err("forged token");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::Unauthenticated));

    // `quiver sql` logs in with --user and QUIVER_PASSWORD.
    let output = within(
        QUERY_LIMIT,
        "quiver sql",
        tokio::process::Command::new(quiver_bin())
            .args([
                "sql",
                "--url",
                &url,
                "--user",
                &security.user,
                "-c",
                "SELECT 41 + 1 AS answer",
            ])
            .env("QUIVER_PASSWORD", &security.password)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run quiver sql");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("42"), "{stdout}");
    // Credentials never reach the server log.
    let log = cluster.coordinator.log_text();
    assert!(!log.contains(&security.password) && !log.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_without_auth_needs_insecure() {
    let output = within(
        QUERY_LIMIT,
        "coordinator on 0.0.0.0",
        tokio::process::Command::new(quiver_bin())
            .args(["coordinator", "--listen", "0.0.0.0:0"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run coordinator");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
}

/// The internal plane: executors and the membership service refuse calls without the cluster's
/// signature, and an executor with another secret never joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_need_the_cluster_secret() {
    use quiver_proto::cluster::cluster_service_client::ClusterServiceClient;
    use quiver_proto::cluster::executor_service_client::ExecutorServiceClient;
    use quiver_proto::cluster::{GetExecutorStatusRequest, ListExecutorsRequest};
    use quiver_server::{ClusterAuth, Signed};

    let mut cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let executor = format!("http://{}", cluster.executor_addrs[0]);
    let coordinator = format!("http://{}", cluster.coordinator_addr);
    let connect = |url: String| async move {
        within(
            QUERY_LIMIT,
            "connect",
            tonic::transport::Endpoint::from_shared(url)
                .expect("uri")
                .connect(),
        )
        .await
        .expect("connect")
    };
    let stranger = ClusterAuth::from_secret(&[42u8; 32]).expect("secret");

    // Unsigned and wrongly signed calls to an executor are refused.
    let mut unsigned = ExecutorServiceClient::new(connect(executor.clone()).await);
    let err = within(
        QUERY_LIMIT,
        "unsigned status",
        unsigned.get_executor_status(GetExecutorStatusRequest {}),
    )
    .await
    .expect_err("unsigned");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let mut forged =
        ExecutorServiceClient::new(Signed::new(connect(executor).await, stranger.clone()));
    let err = within(
        QUERY_LIMIT,
        "forged status",
        forged.get_executor_status(GetExecutorStatusRequest {}),
    )
    .await
    .expect_err("wrong secret");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // So are membership calls to the coordinator.
    let mut membership =
        ClusterServiceClient::new(Signed::new(connect(coordinator).await, stranger));
    let err = within(
        QUERY_LIMIT,
        "forged membership",
        membership.list_executors(ListExecutorsRequest {}),
    )
    .await
    .expect_err("wrong secret");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    // An executor with another secret never joins; queries keep running on the members.
    let other = cluster.dir.path().join("other.secret");
    std::fs::write(&other, "a-different-secret-of-enough-length-0123456789").expect("write");
    cluster.options.executor_args = vec![
        "--cluster-secret-file".to_string(),
        other.display().to_string(),
    ];
    cluster.add_executor();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.live_executors().await.len(), 2);
    let mut client = cluster.client().await;
    let result = within(
        QUERY_LIMIT,
        "query",
        client.query("SELECT count(*) FROM lineitem"),
    )
    .await
    .expect("query on the members");
    assert_eq!(result.num_rows(), 1);
}
