//! The private Temporal server of `fintech_devkit::temporal`: it serves its namespace once
//! started, a started workflow's history survives a SIGKILL and a start on the same port, and a
//! killed server refuses the CLI. Driven with the official CLI, so nothing of ours sits between
//! the test and the server.

use std::process::Command;

use fintech_devkit::temporal::{TemporalServer, temporal_binary};

/// Runs `temporal <args> --address <server>` and returns (success, stdout + stderr).
fn cli(server: &TemporalServer, args: &[&str]) -> (bool, String) {
    let output = Command::new(temporal_binary().expect("the Temporal CLI is installed"))
        .args(args)
        .args(["--address", server.address(), "--namespace", server.namespace()])
        .args(["--client-connect-timeout", "3s", "--command-timeout", "5s"])
        .output()
        .expect("run the Temporal CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn a_started_workflow_survives_a_kill_and_a_start_again_on_the_same_port() {
    let mut server = TemporalServer::start().await.expect("private Temporal server starts");
    assert!(server.address().starts_with("127.0.0.1:"));
    assert_ne!(server.address(), "127.0.0.1:7233", "never the local stack's port");
    assert_eq!(server.url(), format!("http://{}", server.address()));
    let address = server.address().to_owned();

    // No worker polls the queue: the workflow stays running, its history only in the server.
    let (started, output) = cli(
        &server,
        &[
            "workflow",
            "start",
            "--type",
            "Probe",
            "--task-queue",
            "devkit-probe",
            "--workflow-id",
            "probe-1",
        ],
    );
    assert!(started, "workflow start: {output}");

    let pid = server.pid().expect("running");
    server.kill().expect("kill");
    assert!(server.pid().is_none());
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "the killed process is gone"
    );
    let (answered, output) = cli(&server, &["workflow", "describe", "--workflow-id", "probe-1"]);
    assert!(!answered, "a killed server does not answer: {output}");

    server.start_again().await.expect("start again");
    assert_eq!(server.address(), address, "same port after the restart");
    let (described, output) = cli(
        &server,
        &["workflow", "describe", "--workflow-id", "probe-1", "--output", "json"],
    );
    assert!(described, "workflow describe after the restart: {output}");
    assert!(
        output.contains("\"Probe\""),
        "the history names the workflow type: {output}"
    );
    assert!(
        output.contains("WORKFLOW_EXECUTION_STATUS_RUNNING"),
        "the workflow is still running: {output}"
    );

    let (missing, output) = cli(&server, &["workflow", "describe", "--workflow-id", "never-started"]);
    assert!(!missing, "an unknown workflow is not found: {output}");
}
