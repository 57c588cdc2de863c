//! kill -9 of the saga's worker between the hold and the capture: the worker runs in a transfers
//! process (the in-process instance serves the API only, `TRANSFERS_WORKER=false`); the process
//! is SIGKILLed while the transfer is held, started again, and the transfer completes exactly
//! once: one hold, one capture, one entry, one `transfers.completed`.

use std::time::Duration;

use fintech_proto::ledger as lpb;
use fintech_proto::transfers as pb;
use fintech_tests::process::{ServiceProcess, service_binary};
use fintech_tests::transfers::{TransfersStack, env, keyed};

fn worker_process(stack: &TransfersStack, log: &std::path::Path) -> ServiceProcess {
    let mut config = stack.transfers_config();
    config.worker = true;
    config.approval_threshold = 1_000;
    config.platform.grpc_listen_addr = "127.0.0.1:0".parse().expect("address");
    let binary = service_binary("fintech-transfers", "transfers");
    ServiceProcess::spawn(&binary, &env(&config), log)
}

#[tokio::test]
async fn a_worker_killed_between_hold_and_capture_completes_the_transfer_exactly_once() {
    let stack = TransfersStack::start(|config| {
        config.worker = false;
        config.approval_threshold = 1_000;
    })
    .await;
    let from = stack.open_funded("cust-m", 10_000, 0).await;
    let to = stack.open_funded("cust-n", 0, 0).await;
    let logs = tempfile::tempdir().expect("log dir");
    let mut worker = worker_process(&stack, &logs.path().join("worker-1.log"));

    let accepted = stack
        .transfers
        .client
        .clone()
        .create_transfer(keyed("crash-1", &from.account_id, &to.account_id, 2_500))
        .await
        .expect("create")
        .into_inner()
        .transfer
        .expect("transfer");
    let held = stack
        .wait_status(&accepted.transfer_id, pb::TransferStatus::AwaitingApproval)
        .await;
    assert_eq!(stack.balance(&from.account_id).await.held, 2_500);

    worker.kill();
    let _worker = worker_process(&stack, &logs.path().join("worker-2.log"));
    stack
        .transfers
        .client
        .clone()
        .approve_transfer(pb::ApproveTransferRequest {
            transfer_id: accepted.transfer_id.clone(),
        })
        .await
        .expect("approve");
    let done = stack
        .wait_for(
            &accepted.transfer_id,
            "completed after the restart",
            Duration::from_secs(120),
            |transfer| transfer.status == pb::TransferStatus::Completed as i32,
        )
        .await;

    let hold = stack
        .ledger_client
        .clone()
        .get_hold(lpb::GetHoldRequest {
            hold_id: held.hold_id.clone(),
        })
        .await
        .expect("hold")
        .into_inner()
        .hold
        .expect("hold");
    assert_eq!(hold.status, lpb::HoldStatus::Captured as i32);
    assert_eq!(hold.capture_entry_ids, vec![done.entry_id.clone()]);
    let holds = stack
        .ledger_client
        .clone()
        .list_holds(lpb::ListHoldsRequest {
            account_id: from.account_id.clone(),
            ..Default::default()
        })
        .await
        .expect("holds")
        .into_inner()
        .holds;
    assert_eq!(holds.len(), 1, "one hold");
    let source = stack.balance(&from.account_id).await;
    assert_eq!((source.balance, source.held), (7_500, 0));
    assert_eq!(stack.balance(&to.account_id).await.balance, 2_500);
    assert_eq!(
        stack.outbox_count("transfers.completed", &accepted.transfer_id).await,
        1
    );
    stack.assert_trial_balance_zero().await;
}
