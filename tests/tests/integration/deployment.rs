//! The deployment files (Dockerfile, `deploy/k8s/`) cannot be applied on a test machine, so this
//! checks them against the binary: every manifest parses, every container's arguments pass
//! `quiver … --check` (the binary's own validation, which binds and contacts nothing), and the
//! ports of probes, Services, containers and the Dockerfile are the ones those arguments listen
//! on (`tests/python/deploy_check.py` says exactly what is checked).

use std::time::Duration;

use quiver_tests::process::quiver_bin;
use quiver_tests::{python, within, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_dockerfile_match_the_binary() {
    let root = workspace_root();
    let output = within(
        Duration::from_secs(120),
        "deploy_check.py",
        tokio::process::Command::new(python())
            .arg(root.join("tests/python/deploy_check.py"))
            .arg(quiver_bin())
            .arg(&root)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run deploy_check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(": OK"), "{stdout}");
}

/// `--check` validates like start-up: a bad setting fails it, and it binds nothing (it passes
/// on a port that is taken).
#[test]
fn check_validates_without_binding() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let run = |args: &[&str]| {
        std::process::Command::new(quiver_bin())
            .args(args)
            .output()
            .expect("run quiver")
    };
    let ok = run(&[
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--check",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains(&format!("listen = 127.0.0.1:{port}")),
        "{stdout}"
    );
    assert!(stdout.contains("drain_grace = 30 s"), "{stdout}");

    // Beyond loopback without auth: refused, as start-up refuses it.
    let open = run(&["coordinator", "--listen", "0.0.0.0:50051", "--check"]);
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("without authentication"));
    let missing = run(&[
        "executor",
        "--coordinator",
        "grpc://127.0.0.1:1",
        "--cluster-secret-file",
        "/nonexistent/secret",
        "--check",
    ]);
    assert!(!missing.status.success());
    let wildcard = run(&[
        "executor",
        "--coordinator",
        "grpc://127.0.0.1:1",
        "--listen",
        "0.0.0.0:50052",
        "--insecure",
        "--check",
    ]);
    assert!(
        !wildcard.status.success(),
        "no --advertise for a wildcard listen"
    );
    drop(taken);
}
