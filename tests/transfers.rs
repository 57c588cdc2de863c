//! The transfers saga against the real Temporal dev server, PostgreSQL and broker, with the real
//! accounts and ledger services: balances move exactly once, refusals end fast and typed, the
//! hold is released whenever the money does not move, retries with one idempotency key are one
//! transfer, and outages of the ledger or of Temporal only delay a transfer.

use std::time::Duration;

use fintech_proto::accounts as apb;
use fintech_proto::ledger as lpb;
use fintech_proto::transfers as pb;
use fintech_tests::ledger::violation_types;
use fintech_tests::transfers::{TransfersStack, keyed, replay_recorded, request};

/// Replays the transfer's recorded history against the current workflow code and, when
/// `TRANSFERS_RECORD_HISTORIES` is set, stores it as a fixture of tests/transfers_replay.rs.
async fn replay_and_record(stack: &TransfersStack, transfer_id: &str, name: &str) {
    let json = replay_recorded(stack, transfer_id).await;
    if std::env::var_os("TRANSFERS_RECORD_HISTORIES").is_some() {
        let dir = fintech_tests::repo_root().join("tests/fixtures/transfers");
        std::fs::create_dir_all(&dir).expect("fixture dir");
        std::fs::write(dir.join(format!("{name}.json")), json).expect("fixture written");
    }
}
use tonic::Code;

async fn create(
    client: &mut fintech_proto::transfers::transfers_service_client::TransfersServiceClient<
        fintech_tests::service::Channel,
    >,
    key: &str,
    from: &str,
    to: &str,
    amount: i64,
) -> pb::Transfer {
    client
        .create_transfer(keyed(key, from, to, amount))
        .await
        .unwrap_or_else(|status| panic!("create transfer: {status:?}"))
        .into_inner()
        .transfer
        .expect("transfer")
}

async fn hold(stack: &TransfersStack, hold_id: &str) -> Result<lpb::Hold, tonic::Status> {
    stack
        .ledger_client
        .clone()
        .get_hold(lpb::GetHoldRequest {
            hold_id: hold_id.to_owned(),
        })
        .await
        .map(|response| response.into_inner().hold.expect("hold"))
}

#[tokio::test]
async fn a_transfer_moves_the_money_once_and_publishes_completed_once() {
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-a", 10_000, 0).await;
    let to = stack.open_funded("cust-b", 0, 0).await;
    let mut client = stack.customer_client("cust-a").await;

    let accepted = create(&mut client, "happy-1", &from.account_id, &to.account_id, 2_500).await;
    assert_eq!(accepted.status, pb::TransferStatus::Pending as i32);
    assert_eq!(accepted.version, 1);
    assert_eq!(accepted.customer_id, "cust-a");

    let done = stack
        .wait_status(&accepted.transfer_id, pb::TransferStatus::Completed)
        .await;
    let derived = format!("transfer:{}", accepted.transfer_id);
    assert_eq!(done.hold_id, derived);
    assert_eq!(done.entry_id, derived);
    assert_eq!(done.step, pb::TransferStep::Done as i32);
    assert!(done.finished_at.is_some());
    assert!(done.failure_code.is_empty());

    let source = stack.balance(&from.account_id).await;
    let destination = stack.balance(&to.account_id).await;
    assert_eq!((source.balance, source.held, source.available), (7_500, 0, 7_500));
    assert_eq!(destination.balance, 2_500);
    let captured = hold(&stack, &derived).await.expect("the hold exists");
    assert_eq!(captured.status, lpb::HoldStatus::Captured as i32);
    assert_eq!(captured.capture_entry_ids, vec![derived.clone()]);
    let entry = stack
        .ledger_client
        .clone()
        .get_entry(lpb::GetEntryRequest {
            entry_id: derived.clone(),
        })
        .await
        .expect("the entry exists")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(entry.lines.len(), 2);

    // One created, one completed: the activities' retries and the replays publish nothing twice.
    assert_eq!(stack.outbox_count("transfers.created", &accepted.transfer_id).await, 1);
    assert_eq!(
        stack.outbox_count("transfers.completed", &accepted.transfer_id).await,
        1
    );
    assert_eq!(stack.outbox_count("transfers.failed", &accepted.transfer_id).await, 0);
    stack.assert_trial_balance_zero().await;
    replay_and_record(&stack, &accepted.transfer_id, "completed").await;

    // The customer sees it in its lists; the other customer does not see it at all.
    let listed = client
        .list_transfers(pb::ListTransfersRequest {
            account_id: from.account_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list by account")
        .into_inner();
    assert_eq!(listed.transfers.len(), 1);
    assert_eq!(listed.transfers[0].transfer_id, accepted.transfer_id);
    let mut other = stack.customer_client("cust-b").await;
    let hidden = other
        .get_transfer(pb::GetTransferRequest {
            transfer_id: accepted.transfer_id.clone(),
        })
        .await
        .expect_err("another customer's transfer");
    assert_eq!(hidden.code(), Code::NotFound);

    // Cancelling after the capture is refused.
    let late = client
        .cancel_transfer(pb::CancelTransferRequest {
            transfer_id: accepted.transfer_id.clone(),
            reason: "too late".to_owned(),
        })
        .await
        .expect_err("cancel after completion");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&late), ["transfer.finished"]);
}

#[tokio::test]
async fn insufficient_funds_fail_fast_without_a_hold_or_an_entry() {
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-poor", 1_000, 0).await;
    let to = stack.open_funded("cust-rich", 0, 0).await;
    let mut client = stack.customer_client("cust-poor").await;
    let accepted = create(&mut client, "poor-1", &from.account_id, &to.account_id, 5_000).await;

    // Business refusals are not retried: a retried refusal would never reach FAILED (the retry
    // policy has no attempt limit), so reaching it at all shows the typed, non-retryable path.
    let failed = stack
        .wait_status(&accepted.transfer_id, pb::TransferStatus::Failed)
        .await;
    assert_eq!(failed.failure_code, "account.overdraft_limit");
    assert!(failed.hold_id.is_empty() && failed.entry_id.is_empty());
    let missing = hold(&stack, &format!("transfer:{}", accepted.transfer_id))
        .await
        .expect_err("no hold was placed");
    assert_eq!(missing.code(), Code::NotFound);
    let source = stack.balance(&from.account_id).await;
    assert_eq!((source.balance, source.held, source.available), (1_000, 0, 1_000));
    assert_eq!(stack.balance(&to.account_id).await.balance, 0);
    assert_eq!(stack.outbox_count("transfers.failed", &accepted.transfer_id).await, 1);
    assert_eq!(
        stack.outbox_count("transfers.completed", &accepted.transfer_id).await,
        0
    );
    replay_and_record(&stack, &accepted.transfer_id, "insufficient_funds").await;
}

#[tokio::test]
async fn one_idempotency_key_is_one_transfer_also_when_sent_concurrently() {
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-i", 10_000, 0).await;
    let to = stack.open_funded("cust-j", 0, 0).await;
    let client = stack.customer_client("cust-i").await;

    let first = create(&mut client.clone(), "same-key", &from.account_id, &to.account_id, 1_000).await;
    let again = create(&mut client.clone(), "same-key", &from.account_id, &to.account_id, 1_000).await;
    assert_eq!(first, again, "a retry gets the same answer");

    let answers = futures::future::join_all((0..8).map(|_| {
        let mut client = client.clone();
        let (from, to) = (from.account_id.clone(), to.account_id.clone());
        async move { create(&mut client, "raced-key", &from, &to, 700).await }
    }))
    .await;
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]), "{answers:?}");
    assert_ne!(answers[0].transfer_id, first.transfer_id);

    for transfer in [&first, &answers[0]] {
        stack
            .wait_status(&transfer.transfer_id, pb::TransferStatus::Completed)
            .await;
        assert_eq!(stack.outbox_count("transfers.created", &transfer.transfer_id).await, 1);
        assert_eq!(
            stack.outbox_count("transfers.completed", &transfer.transfer_id).await,
            1
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(&stack.transfers.db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 2, "two keys, two transfers");
    assert_eq!(stack.balance(&from.account_id).await.balance, 10_000 - 1_000 - 700);

    // A finished transfer's key is never run again (RejectDuplicate), and answers the same.
    let after = create(&mut client.clone(), "same-key", &from.account_id, &to.account_id, 1_000).await;
    assert_eq!(after, first);
    assert_eq!(stack.balance(&from.account_id).await.balance, 10_000 - 1_000 - 700);

    // The same key with another request is refused.
    let reused = client
        .clone()
        .create_transfer(keyed("same-key", &from.account_id, &to.account_id, 999))
        .await
        .expect_err("a reused key");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&reused), ["IDEMPOTENCY_KEY_REUSED"]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_and_nothing_starts() {
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-x", 1_000, 0).await;
    let to = stack.open_funded("cust-y", 0, 0).await;
    let mut client = stack.customer_client("cust-x").await;

    let unkeyed = client
        .create_transfer(request(&from.account_id, &to.account_id, 10))
        .await
        .expect_err("no key");
    assert_eq!(unkeyed.code(), Code::InvalidArgument);
    let fields = fintech_tests::transfers::violation_fields(&unkeyed);
    assert_eq!(fields, ["idempotency-key"]);

    let invalid = client
        .create_transfer(keyed("bad-1", "not-a-uuid", &to.account_id, 0))
        .await
        .expect_err("bad fields");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        fintech_tests::transfers::violation_fields(&invalid),
        ["from_account_id", "amount"]
    );

    // Out of another customer's account: NOT_FOUND, exactly like a missing one.
    let mut thief = stack.customer_client("cust-y").await;
    let stolen = thief
        .create_transfer(keyed("steal-1", &from.account_id, &to.account_id, 10))
        .await
        .expect_err("not the caller's account");
    assert_eq!(stolen.code(), Code::NotFound);

    // Customers cannot approve.
    let approve = client
        .approve_transfer(pb::ApproveTransferRequest {
            transfer_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("customer approval");
    assert_eq!(approve.code(), Code::PermissionDenied);

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(&stack.transfers.db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
    assert_eq!(stack.balance(&from.account_id).await.balance, 1_000);
}

/// A stack where every transfer above 1,000 waits for approval, with `timeout`.
async fn approval_stack(timeout: Duration) -> TransfersStack {
    TransfersStack::start(|config| {
        config.approval_threshold = 1_000;
        config.approval_timeout = timeout;
    })
    .await
}

async fn awaiting(
    stack: &TransfersStack,
    key: &str,
    from: &apb::Account,
    to: &apb::Account,
    amount: i64,
) -> pb::Transfer {
    let mut client = stack.transfers.client.clone();
    let accepted = client
        .create_transfer(keyed(key, &from.account_id, &to.account_id, amount))
        .await
        .expect("create")
        .into_inner()
        .transfer
        .expect("transfer");
    assert!(accepted.requires_approval);
    stack
        .wait_status(&accepted.transfer_id, pb::TransferStatus::AwaitingApproval)
        .await
}

#[tokio::test]
async fn cancel_before_capture_releases_the_hold_and_an_unanswered_approval_is_rejected() {
    let stack = approval_stack(Duration::from_secs(4)).await;
    let from = stack.open_funded("cust-c", 10_000, 0).await;
    let to = stack.open_funded("cust-d", 0, 0).await;

    // Cancelled while it waits: released, CANCELLED, nothing moved.
    let waiting = awaiting(&stack, "cancel-me", &from, &to, 3_000).await;
    assert_eq!(waiting.hold_id, format!("transfer:{}", waiting.transfer_id));
    assert_eq!(stack.balance(&from.account_id).await.available, 7_000);
    let mut client = stack.customer_client("cust-c").await;
    client
        .cancel_transfer(pb::CancelTransferRequest {
            transfer_id: waiting.transfer_id.clone(),
            reason: "changed my mind".to_owned(),
        })
        .await
        .expect("cancel before capture");
    let cancelled = stack
        .wait_status(&waiting.transfer_id, pb::TransferStatus::Cancelled)
        .await;
    assert_eq!(cancelled.failure_code, "transfer.cancelled");
    assert_eq!(
        hold(&stack, &waiting.hold_id).await.expect("hold").status,
        lpb::HoldStatus::Released as i32
    );
    let source = stack.balance(&from.account_id).await;
    assert_eq!((source.balance, source.held, source.available), (10_000, 0, 10_000));
    assert_eq!(stack.outbox_count("transfers.cancelled", &waiting.transfer_id).await, 1);
    replay_and_record(&stack, &waiting.transfer_id, "cancelled_while_awaiting_approval").await;

    // Nobody decides within the deadline: rejected, released.
    let ignored = awaiting(&stack, "ignore-me", &from, &to, 2_000).await;
    let rejected = stack
        .wait_for(
            &ignored.transfer_id,
            "rejected on timeout",
            Duration::from_secs(60),
            |transfer| transfer.status == pb::TransferStatus::Rejected as i32,
        )
        .await;
    assert_eq!(rejected.failure_code, "approval.timeout");
    assert_eq!(
        hold(&stack, &ignored.hold_id).await.expect("hold").status,
        lpb::HoldStatus::Released as i32
    );
    assert_eq!(stack.balance(&from.account_id).await.available, 10_000);
    assert_eq!(stack.outbox_count("transfers.failed", &ignored.transfer_id).await, 1);
    replay_and_record(&stack, &ignored.transfer_id, "approval_timeout").await;

    // A decision on an ended transfer is refused.
    let late = stack
        .transfers
        .client
        .clone()
        .approve_transfer(pb::ApproveTransferRequest {
            transfer_id: ignored.transfer_id.clone(),
        })
        .await
        .expect_err("approve after rejection");
    assert_eq!(late.code(), Code::FailedPrecondition);
    stack.assert_trial_balance_zero().await;
}

#[tokio::test]
async fn a_destination_frozen_between_hold_and_capture_is_compensated() {
    let stack = approval_stack(Duration::from_secs(120)).await;
    let from = stack.open_funded("cust-e", 10_000, 0).await;
    let to = stack.open_funded("cust-f", 0, 0).await;
    let waiting = awaiting(&stack, "frozen-dest", &from, &to, 4_000).await;
    assert_eq!(stack.balance(&from.account_id).await.available, 6_000);

    // The destination is frozen for credits while the money is held.
    let frozen = stack
        .accounts
        .client
        .clone()
        .freeze_account(apb::FreezeAccountRequest {
            account_id: to.account_id.clone(),
            kind: apb::FreezeKind::Credits as i32,
            reason: "case 17".to_owned(),
        })
        .await
        .expect("freeze")
        .into_inner()
        .account
        .expect("account");
    fintech_tests::ledger::wait_for_cached_version(&stack.ledger.db, &to.account_id, frozen.version).await;

    stack
        .transfers
        .client
        .clone()
        .approve_transfer(pb::ApproveTransferRequest {
            transfer_id: waiting.transfer_id.clone(),
        })
        .await
        .expect("approve");
    let failed = stack
        .wait_status(&waiting.transfer_id, pb::TransferStatus::Failed)
        .await;
    assert_eq!(failed.failure_code, "account.frozen.credits");
    assert!(!failed.failure_reason.is_empty());
    assert!(failed.entry_id.is_empty());
    assert_eq!(
        hold(&stack, &waiting.hold_id).await.expect("hold").status,
        lpb::HoldStatus::Released as i32
    );
    let source = stack.balance(&from.account_id).await;
    assert_eq!((source.balance, source.held, source.available), (10_000, 0, 10_000));
    assert_eq!(stack.balance(&to.account_id).await.balance, 0);
    assert_eq!(stack.outbox_count("transfers.failed", &waiting.transfer_id).await, 1);
    stack.assert_trial_balance_zero().await;
    replay_and_record(&stack, &waiting.transfer_id, "compensated_destination_frozen").await;
}

#[tokio::test]
async fn a_hundred_concurrent_transfers_from_an_account_funded_for_fifty() {
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-hot", 5_000, 0).await;
    let to = stack.open_funded("cust-sink", 0, 0).await;
    let client = stack.customer_client("cust-hot").await;
    let accepted = futures::future::join_all((0..100).map(|index| {
        let mut client = client.clone();
        let (from, to) = (from.account_id.clone(), to.account_id.clone());
        async move { create(&mut client, &format!("hot-{index}"), &from, &to, 100).await }
    }))
    .await;

    let mut completed = 0;
    let mut refused = 0;
    for transfer in &accepted {
        let done = stack
            .wait_for(&transfer.transfer_id, "ended", Duration::from_secs(300), |transfer| {
                transfer.status == pb::TransferStatus::Completed as i32
                    || transfer.status == pb::TransferStatus::Failed as i32
            })
            .await;
        if done.status == pb::TransferStatus::Completed as i32 {
            completed += 1;
        } else {
            assert_eq!(done.failure_code, "account.overdraft_limit");
            refused += 1;
        }
    }
    assert_eq!((completed, refused), (50, 50));
    let source = stack.balance(&from.account_id).await;
    assert_eq!(
        (source.balance, source.held),
        (0, 0),
        "never below its overdraft limit (0)"
    );
    assert_eq!(stack.balance(&to.account_id).await.balance, 5_000);
    stack.assert_trial_balance_zero().await;
}

#[tokio::test]
async fn a_transfer_completes_once_across_a_twenty_second_ledger_outage() {
    let mut stack = approval_stack(Duration::from_secs(300)).await;
    let from = stack.open_funded("cust-g", 10_000, 0).await;
    let to = stack.open_funded("cust-h", 0, 0).await;
    let waiting = awaiting(&stack, "ledger-down", &from, &to, 2_000).await;

    stack.ledger.pause().await;
    stack
        .transfers
        .client
        .clone()
        .approve_transfer(pb::ApproveTransferRequest {
            transfer_id: waiting.transfer_id.clone(),
        })
        .await
        .expect("approve while the ledger is down");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        stack.get(&waiting.transfer_id).await.status,
        pb::TransferStatus::AwaitingApproval as i32,
        "nothing completes while the ledger is down"
    );
    stack.ledger.resume().await;

    let done = stack
        .wait_status(&waiting.transfer_id, pb::TransferStatus::Completed)
        .await;
    assert_eq!(done.entry_id, format!("transfer:{}", waiting.transfer_id));
    stack.ledger_client = stack.ledger.client().await;
    assert_eq!(stack.balance(&from.account_id).await.balance, 8_000);
    assert_eq!(stack.balance(&to.account_id).await.balance, 2_000);
    assert_eq!(stack.outbox_count("transfers.completed", &waiting.transfer_id).await, 1);
    stack.assert_trial_balance_zero().await;
}

#[tokio::test]
async fn a_transfer_completes_once_across_a_temporal_restart() {
    let mut stack = approval_stack(Duration::from_secs(300)).await;
    let from = stack.open_funded("cust-k", 10_000, 0).await;
    let to = stack.open_funded("cust-l", 0, 0).await;
    let waiting = awaiting(&stack, "temporal-restart", &from, &to, 3_000).await;

    stack.temporal.kill().expect("kill temporal");
    stack.temporal.start_again().await.expect("temporal again");

    // The client reconnects; retry the decision until Temporal answers again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = stack
            .transfers
            .client
            .clone()
            .approve_transfer(pb::ApproveTransferRequest {
                transfer_id: waiting.transfer_id.clone(),
            })
            .await;
        match answer {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("approve after the restart: {status:?}"),
        }
    }
    let done = stack
        .wait_status(&waiting.transfer_id, pb::TransferStatus::Completed)
        .await;
    assert_eq!(done.entry_id, format!("transfer:{}", waiting.transfer_id));
    assert_eq!(stack.balance(&from.account_id).await.balance, 7_000);
    assert_eq!(stack.outbox_count("transfers.completed", &waiting.transfer_id).await, 1);
    stack.assert_trial_balance_zero().await;
}

#[tokio::test]
async fn the_transfer_namespace_of_the_ledger_needs_the_transfers_scope() {
    let stack = TransfersStack::start(|_| {}).await;
    let account = stack.open_funded("cust-o", 1_000, 0).await;
    // Another service with the ordinary posting scopes: not the transfers service.
    let token = fintech_tests::auth::scoped_token("svc:other", &["ledger.post", "ledger.read"]);
    let mut other = lpb::ledger_service_client::LedgerServiceClient::new(
        fintech_tests::service::connect_with_token(&stack.ledger.address, &token).await,
    );
    let taken = other
        .place_hold(fintech_tests::ledger::hold_request(
            "transfer:00000000-0000-0000-0000-000000000001",
            &account.account_id,
            10,
        ))
        .await
        .expect_err("a transfer: hold id without the scope");
    assert_eq!(taken.code(), Code::PermissionDenied);
    let released = other
        .release_hold(lpb::ReleaseHoldRequest {
            hold_id: "transfer:00000000-0000-0000-0000-000000000001".to_owned(),
            reason: "not mine".to_owned(),
        })
        .await
        .expect_err("a transfer: hold release without the scope");
    assert_eq!(released.code(), Code::PermissionDenied);
    // Its own hold ids still work, and a capture into a transfer: entry is refused.
    other
        .place_hold(fintech_tests::ledger::hold_request("card-1", &account.account_id, 10))
        .await
        .expect("an ordinary hold");
    let captured = other
        .capture_hold(lpb::CaptureHoldRequest {
            hold_id: "card-1".to_owned(),
            amount: 10,
            remainder: lpb::CaptureRemainder::Release as i32,
            entry_id: "transfer:forged".to_owned(),
            description: "forged".to_owned(),
            metadata: Default::default(),
            lines: vec![
                lpb::EntryLine {
                    account_id: account.account_id.clone(),
                    side: lpb::Side::Debit as i32,
                    amount: 10,
                    currency: "EUR".to_owned(),
                },
                lpb::EntryLine {
                    account_id: stack.cash.account_id.clone(),
                    side: lpb::Side::Credit as i32,
                    amount: 10,
                    currency: "EUR".to_owned(),
                },
            ],
        })
        .await
        .expect_err("a transfer: entry id without the scope");
    assert_eq!(captured.code(), Code::PermissionDenied);
    assert_eq!(stack.balance(&account.account_id).await.balance, 1_000);
}

/// Tracing: the caller's trace goes with the transfer into the workflow's input, so every activity
/// runs in it, the ledger calls carry it, and every event the saga causes (the service's own and
/// the ledger's hold and entry events) carries that trace id.
#[tokio::test]
async fn one_trace_covers_the_call_the_activities_the_ledger_and_every_event() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let _telemetry = fintech_platform::telemetry::init("test");
    let stack = TransfersStack::start(|_| {}).await;
    let from = stack.open_funded("cust-trace", 10_000, 0).await;
    let to = stack.open_funded("cust-trace-b", 0, 0).await;
    let mut client = stack.customer_client("cust-trace").await;
    let mut request = keyed("traced-1", &from.account_id, &to.account_id, 1_200);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().expect("ascii"),
    );
    let accepted = client
        .create_transfer(request)
        .await
        .expect("create transfer")
        .into_inner()
        .transfer
        .expect("transfer");
    stack
        .wait_status(&accepted.transfer_id, pb::TransferStatus::Completed)
        .await;

    let traces = |rows: Vec<(String, String, Option<String>)>| -> Vec<(String, Option<String>)> {
        rows.into_iter()
            .map(|(topic, _, traceparent)| {
                let trace = traceparent
                    .as_deref()
                    .and_then(fintech_platform::telemetry::trace_id_of);
                (topic, trace.map(str::to_owned))
            })
            .collect()
    };
    let own: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT topic, record_key, traceparent FROM outbox WHERE record_key = $1 ORDER BY id")
            .bind(&accepted.transfer_id)
            .fetch_all(&stack.transfers.db.pool)
            .await
            .expect("transfers outbox");
    let topic = |name: &str| stack.transfers.topic(name);
    assert_eq!(
        traces(own),
        vec![
            (topic("transfers.created"), Some(TRACE_ID.to_owned())),
            (topic("transfers.completed"), Some(TRACE_ID.to_owned())),
        ],
        "the service's events carry the caller's trace"
    );
    // The ledger's events of this transfer: the hold placed and captured on the source account
    // (keyed by account) and the entry (keyed by its id).
    let derived = format!("transfer:{}", accepted.transfer_id);
    let ledger: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT topic, record_key, traceparent FROM outbox \
         WHERE (record_key = $1 AND topic LIKE '%ledger.hold_%') OR record_key = $2 ORDER BY id",
    )
    .bind(&from.account_id)
    .bind(&derived)
    .fetch_all(&stack.ledger.db.pool)
    .await
    .expect("ledger outbox");
    let ledger_topics: Vec<String> = ledger.iter().map(|(topic, _, _)| topic.clone()).collect();
    for expected in ["ledger.hold_placed", "ledger.hold_captured", "ledger.entry_posted"] {
        assert!(
            ledger_topics.iter().any(|topic| topic.ends_with(expected)),
            "the ledger published {expected} for the transfer: {ledger_topics:?}"
        );
    }
    for (topic, trace) in traces(ledger) {
        assert_eq!(
            trace.as_deref(),
            Some(TRACE_ID),
            "{topic}: the ledger call carried the caller's trace"
        );
    }
}
