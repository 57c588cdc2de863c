//! The README's promises, run for real: its grpcurl block against a running payments service (and
//! the accounts README's against accounts, the holds block against accounts and the ledger), and
//! the generated Python and TypeScript clients creating and reading back an order and a transaction;
//! the transfers block against accounts, the ledger and transfers on a Temporal dev server.

use std::process::Command;

use fintech_platform::telemetry;
use fintech_tests::accounts::AccountsHarness;
use fintech_tests::ledger::LedgerHarness;
use fintech_tests::payments::PaymentsHarness;
use fintech_tests::{repo_root, venv_tool};

/// The fenced shell block between `<!-- readme-test:<name>:start -->` and `...:end -->`.
fn readme_block(name: &str) -> String {
    readme_block_in("README.md", name)
}

/// [`readme_block`] of the README at `path` (relative to the repository root).
fn readme_block_in(path: &str, name: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|_| panic!("{path}"));
    let start = format!("<!-- readme-test:{name}:start -->");
    let end = format!("<!-- readme-test:{name}:end -->");
    let section = readme
        .split_once(&start)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("README has no {name} block"));
    let body = section
        .trim()
        .strip_prefix("```sh")
        .and_then(|body| body.strip_suffix("```"))
        .expect("a ```sh block");
    body.to_owned()
}

fn run(command: &mut Command) -> String {
    // `deploy/local/token` builds with cargo: the same environment as the test build's.
    let output = fintech_tests::process::without_cargo_test_env(command)
        .output()
        .expect("command runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "command failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_readme_grpcurl_calls_create_and_read_back_an_order_and_a_transaction() {
    let _telemetry = telemetry::init("test");
    let harness = PaymentsHarness::start().await;
    let script = readme_block("payments").replace("localhost:50051", &harness.address);
    let auth_dir = fintech_tests::auth::jwks_path()
        .parent()
        .expect("key directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        venv_tool("").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking(move || {
        // From the repository root, so `deploy/local/token` resolves; it signs with this test
        // process's key (FINTECH_AUTH_DIR), which the harness's service trusts.
        run(Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(repo_root())
            .env("FINTECH_AUTH_DIR", auth_dir)
            .env("PATH", path))
    })
    .await
    .expect("script task");
    assert!(
        output.contains("\"customerId\": \"cust-42\""),
        "GetOrder printed the order:\n{output}"
    );
    assert!(
        output.contains("TRANSACTION_STATUS_PENDING"),
        "GetTransaction printed the transaction:\n{output}"
    );
    let (orders, transactions): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&harness.db.pool)
            .await
            .expect("count"),
        sqlx::query_scalar("SELECT count(*) FROM transactions")
            .fetch_one(&harness.db.pool)
            .await
            .expect("count"),
    );
    assert_eq!((orders, transactions), (1, 1));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_readme_grpcurl_calls_open_change_and_close_an_account() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let script =
        readme_block_in("services/accounts/README.md", "accounts").replace("localhost:50054", &harness.address);
    let auth_dir = fintech_tests::auth::jwks_path()
        .parent()
        .expect("key directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        venv_tool("").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking(move || {
        run(Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(repo_root())
            .env("FINTECH_AUTH_DIR", auth_dir)
            .env("PATH", path))
    })
    .await
    .expect("script task");
    assert!(
        output.contains("\"customerId\": \"cust-42\""),
        "GetAccount printed the account:\n{output}"
    );
    assert!(
        output.contains("FREEZE_KIND_DEBITS"),
        "FreezeAccount printed the freeze:\n{output}"
    );
    assert!(
        output.contains("ACCOUNT_STATE_CLOSED"),
        "CloseAccount printed the closed account:\n{output}"
    );
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM accounts")
        .fetch_all(&harness.db.pool)
        .await
        .expect("accounts");
    assert_eq!(
        versions,
        [5],
        "one account: opened, frozen, unfrozen, limit set, closed"
    );
    harness.stop().await;
}

#[tokio::test]
async fn the_generated_python_and_typescript_clients_create_and_read_back_with_idempotency_keys() {
    let _telemetry = telemetry::init("test");
    let harness = PaymentsHarness::start().await;
    let address = harness.address.clone();
    let token = fintech_tests::auth::operator_token();
    let root = repo_root();
    let (python, typescript) = tokio::task::spawn_blocking(move || {
        let python = run(Command::new(venv_tool("python"))
            .arg("examples/payments_demo.py")
            .arg(&address)
            .env("PYTHONPATH", "src")
            .env("FINTECH_TOKEN", &token)
            .current_dir(root.join("clients/python")));
        let typescript_dir = root.join("clients/typescript");
        run(Command::new(typescript_dir.join("node_modules/.bin/tsc"))
            .args(["-p", ".", "--noEmit", "false", "--outDir", "dist"])
            .current_dir(&typescript_dir));
        let typescript = run(Command::new("node")
            .arg("dist/examples/payments_demo.js")
            .env("FINTECH_TOKEN", &token)
            .arg(&address)
            .current_dir(&typescript_dir));
        (python, typescript)
    })
    .await
    .expect("client task");
    assert!(python.contains("python client ok"), "{python}");
    assert!(typescript.contains("typescript client ok"), "{typescript}");
    let (orders, transactions): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&harness.db.pool)
            .await
            .expect("count"),
        sqlx::query_scalar("SELECT count(*) FROM transactions")
            .fetch_one(&harness.db.pool)
            .await
            .expect("count"),
    );
    assert_eq!(
        (orders, transactions),
        (2, 2),
        "each client's retried CreateOrder executed once"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_holds_block_opens_an_account_that_the_ledger_holds_money_on() {
    let _telemetry = telemetry::init("test");
    let accounts = AccountsHarness::start().await;
    let ledger = LedgerHarness::start_on(&accounts.prefix, |_| {}).await;
    let script = readme_block("holds")
        .replace("localhost:50054", &accounts.address)
        .replace("localhost:50053", &ledger.address);
    let auth_dir = fintech_tests::auth::jwks_path()
        .parent()
        .expect("key directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        venv_tool("").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking(move || {
        run(Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(repo_root())
            .env("FINTECH_AUTH_DIR", auth_dir)
            .env("PATH", path))
    })
    .await
    .expect("script task");
    assert!(
        output.contains("HOLD_STATUS_ACTIVE") && output.contains("\"held\": \"10000\""),
        "PlaceHold printed the active hold of 10000:\n{output}"
    );
    assert!(
        output.contains("HOLD_STATUS_RELEASED") && output.contains("authorisation voided"),
        "ReleaseHold printed the released hold and why:\n{output}"
    );
    assert!(
        output.contains("\"customerId\": \"cust-42\""),
        "GetAccount printed the account:\n{output}"
    );
    let hold: Option<String> = sqlx::query_scalar("SELECT status FROM ledger_holds WHERE hold_id = 'readme-hold-1'")
        .fetch_optional(&ledger.db.pool)
        .await
        .expect("holds");
    assert_eq!(
        hold.as_deref(),
        Some("released"),
        "the ledger's database holds the released hold"
    );
    ledger.stop().await;
    accounts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_transfers_block_moves_money_between_two_customers_accounts() {
    let _telemetry = telemetry::init("test");
    let stack = fintech_tests::transfers::TransfersStack::start(|_| {}).await;
    let script = readme_block("transfers")
        .replace("localhost:50054", &stack.accounts.address)
        .replace("localhost:50053", &stack.ledger.address)
        .replace("localhost:50055", &stack.transfers.address);
    let auth_dir = fintech_tests::auth::jwks_path()
        .parent()
        .expect("key directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        venv_tool("").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::task::spawn_blocking(move || {
            run(Command::new("bash")
                .args(["-euo", "pipefail", "-c", &script])
                .current_dir(repo_root())
                .env("FINTECH_AUTH_DIR", auth_dir)
                .env("PATH", path))
        }),
    )
    .await
    .expect("the README block finishes")
    .expect("script task");
    assert!(
        output.contains("TRANSFER_STATUS_COMPLETED") && output.contains("\"amount\": \"12000\""),
        "GetTransfer printed the completed transfer of 12000:\n{output}"
    );
    assert!(
        output.contains("\"reference\": \"rent\""),
        "ListTransfers printed it:\n{output}"
    );
    assert!(
        output.contains("\"entryId\": \"transfer:"),
        "GetEntry printed the ledger's entry of the transfer:\n{output}"
    );
    let transfers: Vec<(String, i64)> = sqlx::query_as("SELECT status, amount FROM transfers")
        .fetch_all(&stack.transfers.db.pool)
        .await
        .expect("transfers");
    assert_eq!(
        transfers,
        vec![("completed".to_owned(), 12_000)],
        "one transfer, completed"
    );
}
