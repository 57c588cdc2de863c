//! Postings from `tax.calculated` against the real broker and PostgreSQL: a result delivered twice
//! (and re-published under a new event id) posts one balanced entry, the published entry carries
//! the trace of the event that caused it, and a result that can never be posted is dead-lettered.

use std::time::Duration;

use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::{self, TraceHeaders};
use fintech_proto::ledger as pb;
use fintech_proto::tax::{TaxReason, TaxedTransaction};
use fintech_tests::ledger::LedgerHarness;
use fintech_tests::{header, kafka_bootstrap, read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WAIT: Duration = Duration::from_secs(60);

fn taxed(transaction_id: &str, base: i64, tax: i64) -> TaxedTransaction {
    TaxedTransaction {
        transaction_id: transaction_id.to_owned(),
        order_id: "order-1".to_owned(),
        customer_id: "cust-1".to_owned(),
        base_amount: base,
        tax_applied: tax,
        total_amount: base + tax,
        currency: "EUR".to_owned(),
        country: "DE".to_owned(),
        product_type: "standard".to_owned(),
        tax_rate_bps: 1_900,
        reason: TaxReason::StandardRate as i32,
        rule_version: "2026-01".to_owned(),
        calculated_at: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        tax_date: None,
        order_version: 1,
    }
}

fn metadata(event_id: &str, span_id: &str) -> EventMetadata {
    EventMetadata {
        id: event_id.to_owned(),
        event_type: "fintech.tax.v1.tax.calculated".to_owned(),
        source: "/fintech/tax".to_owned(),
        time: chrono::Utc::now(),
        subject: Some("order-1".to_owned()),
        payload_type: "fintech.tax.v1.TaxedTransaction".to_owned(),
        trace: TraceHeaders {
            traceparent: Some(format!("00-{TRACE_ID}-{span_id}-01")),
            tracestate: None,
        },
    }
}

async fn wait_for_entry(harness: &LedgerHarness, entry_id: &str) -> pb::Entry {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = harness
            .client
            .clone()
            .get_entry(pb::GetEntryRequest {
                entry_id: entry_id.to_owned(),
            })
            .await;
        match found {
            Ok(response) => return response.into_inner().entry.expect("entry"),
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(tokio::time::Instant::now() < deadline, "{entry_id} was never posted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("get entry: {status:?}"),
        }
    }
}

async fn account_by_code(harness: &LedgerHarness, code: &str) -> pb::GetAccountResponse {
    harness
        .client
        .clone()
        .get_account(pb::GetAccountRequest {
            code: code.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("{code}: {status:?}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tax_result_delivered_twice_posts_one_balanced_entry_with_the_callers_trace() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let entries = reader(&kafka_bootstrap(), &[&harness.topic("ledger.entry_posted")]);
    let producer = EventProducer::new(&kafka_bootstrap(), "test-tax", Duration::from_secs(20)).expect("producer");
    let topic = harness.topic("tax.calculated");
    let transaction_id = uuid::Uuid::new_v4().to_string();
    let result = taxed(&transaction_id, 10_000, 1_900).encode_to_vec();
    let event_id = uuid::Uuid::new_v4().to_string();

    // The same event twice (a redelivery), then the same result re-published as a new event.
    for (id, span) in [
        (event_id.as_str(), "00f067aa0ba902b7"),
        (event_id.as_str(), "00f067aa0ba902b7"),
        (&*uuid::Uuid::new_v4().to_string(), "1111111111111111"),
    ] {
        producer
            .send_event(&topic, "order-1", &result, &metadata(id, span))
            .await
            .expect("produce");
    }
    // A second transaction of the same order, to know when the three above were all consumed
    // (one partition per key, consumed in order).
    let marker_id = uuid::Uuid::new_v4().to_string();
    producer
        .send_event(
            &topic,
            "order-1",
            &taxed(&marker_id, 500, 0).encode_to_vec(),
            &metadata(&uuid::Uuid::new_v4().to_string(), "2222222222222222"),
        )
        .await
        .expect("produce marker");

    let entry = wait_for_entry(&harness, &format!("tax:{transaction_id}")).await;
    wait_for_entry(&harness, &format!("tax:{marker_id}")).await;

    // A sale is recognised on the receivable; cash moves only with payments' captures (ADR 0016).
    let receivable = account_by_code(&harness, "system:receivable:EUR").await;
    let revenue = account_by_code(&harness, "system:revenue:EUR").await;
    let vat = account_by_code(&harness, "system:vat-payable:DE:EUR").await;
    let id_of = |account: &pb::GetAccountResponse| account.account.as_ref().expect("account").account_id.clone();
    let lines: Vec<(String, i32, i64)> = entry
        .lines
        .iter()
        .map(|line| (line.account_id.clone(), line.side, line.amount))
        .collect();
    assert_eq!(
        lines,
        [
            (id_of(&receivable), pb::Side::Debit as i32, 11_900),
            (id_of(&revenue), pb::Side::Credit as i32, 10_000),
            (id_of(&vat), pb::Side::Credit as i32, 1_900),
        ],
        "debit the receivable for the total, credit revenue for the base and VAT payable for the tax"
    );
    assert_eq!(entry.metadata.get("transaction_id"), Some(&transaction_id));
    // Posted once: the marker (500, no VAT) is the only other entry.
    assert_eq!(receivable.balance.as_ref().map(|balance| balance.balance), Some(12_400));
    assert_eq!(revenue.balance.as_ref().map(|balance| balance.balance), Some(10_500));
    assert_eq!(
        vat.balance.as_ref().map(|balance| (balance.balance, balance.version)),
        Some((1_900, 2))
    );
    let trial = harness.trial_balance().await;
    assert_eq!(trial.len(), 1);
    assert_eq!((trial[0].net, trial[0].debit_total), (0, 12_400));

    let records = read_records(&entries, 2, WAIT).await;
    assert_eq!(records.len(), 2, "one ledger.entry_posted per transaction");
    let record = records
        .iter()
        .find(|record| record.key() == Some(format!("tax:{transaction_id}").as_bytes()))
        .expect("the transaction's entry");
    let published = pb::Entry::decode(record.payload().expect("payload")).expect("an Entry");
    assert_eq!(published, entry, "the full entry is published");
    assert_eq!(
        header(record, "ce_type").as_deref(),
        Some("fintech.ledger.v1.entry.posted")
    );
    let traceparent = header(record, "traceparent").expect("traceparent");
    assert_eq!(
        telemetry::trace_id_of(&traceparent),
        Some(TRACE_ID),
        "the posted entry continues the trace of the tax result"
    );
    assert!(
        read_extra(&entries, Duration::from_secs(1)).await.is_empty(),
        "no second posting"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tax_result_that_can_never_post_is_dead_lettered_and_does_not_block_the_partition() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let dead_letters = reader(&kafka_bootstrap(), &[&harness.topic("ledger.dlq")]);
    let producer = EventProducer::new(&kafka_bootstrap(), "test-tax", Duration::from_secs(20)).expect("producer");
    let topic = harness.topic("tax.calculated");
    let mut inconsistent = taxed("txn-bad", 1_000, 190);
    inconsistent.total_amount = 1;
    producer
        .send_event(
            &topic,
            "order-1",
            &inconsistent.encode_to_vec(),
            &metadata(&uuid::Uuid::new_v4().to_string(), "00f067aa0ba902b7"),
        )
        .await
        .expect("produce");
    producer
        .send_event(
            &topic,
            "order-1",
            &taxed("txn-good", 1_000, 190).encode_to_vec(),
            &metadata(&uuid::Uuid::new_v4().to_string(), "00f067aa0ba902b7"),
        )
        .await
        .expect("produce");

    wait_for_entry(&harness, "tax:txn-good").await;
    let records = read_records(&dead_letters, 1, WAIT).await;
    assert_eq!(records.len(), 1);
    let reason = header(&records[0], "dlq_reason").expect("reason");
    assert!(reason.contains("total 1"), "{reason}");
    let missing = harness
        .client
        .clone()
        .get_entry(pb::GetEntryRequest {
            entry_id: "tax:txn-bad".to_owned(),
        })
        .await
        .expect_err("never posted");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_waiting_for_the_ledger_are_posted_together_each_once_on_its_own_trace() {
    let _telemetry = telemetry::init("test");
    // The results are on the broker before the ledger starts, so they wait in its consumer.
    let prefix = format!("test.{}.", uuid::Uuid::new_v4().simple());
    let topics: Vec<String> = fintech_ledger::events::TOPICS
        .iter()
        .map(|topic| format!("{prefix}{topic}"))
        .collect();
    fintech_tests::create_topics(
        &kafka_bootstrap(),
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        3,
    )
    .await;
    let producer = EventProducer::new(&kafka_bootstrap(), "test-tax", Duration::from_secs(20)).expect("producer");
    const RESULTS: i64 = 30;
    let mut expected = Vec::new();
    for n in 0..RESULTS {
        let transaction_id = uuid::Uuid::new_v4().to_string();
        let trace_id = format!("{:032x}", 0xabc0_0000 + n);
        let event = EventMetadata {
            trace: TraceHeaders {
                traceparent: Some(format!("00-{trace_id}-00f067aa0ba902b7-01")),
                tracestate: None,
            },
            ..metadata(&uuid::Uuid::new_v4().to_string(), "00f067aa0ba902b7")
        };
        let value = taxed(&transaction_id, 1_000 + n, 190).encode_to_vec();
        let copies = if n == 7 { 2 } else { 1 };
        for _ in 0..copies {
            // Result 7 is delivered twice (same event id): posted once.
            producer
                .send_event(&format!("{prefix}tax.calculated"), "order-1", &value, &event)
                .await
                .expect("produce");
        }
        expected.push((format!("tax:{transaction_id}"), trace_id, 1_190 + n));
    }

    let harness = LedgerHarness::start_on(&prefix, |_| {}).await;
    for (entry_id, _, _) in &expected {
        wait_for_entry(&harness, entry_id).await;
    }

    let receivable = account_by_code(&harness, "system:receivable:EUR").await;
    let total: i64 = expected.iter().map(|(_, _, amount)| amount).sum();
    assert_eq!(
        receivable.balance.as_ref().map(|balance| balance.balance),
        Some(total),
        "every result posted exactly once"
    );
    let trial = harness.trial_balance().await;
    assert_eq!((trial[0].net, trial[0].debit_total), (0, total));

    // Posted in fewer transactions than entries: the waiting results went together.
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM ledger_entries WHERE entry_id LIKE 'tax:%'")
            .fetch_one(&harness.db.pool)
            .await
            .expect("count posting transactions");
    assert!(
        transactions < RESULTS,
        "{RESULTS} entries were posted in {transactions} transactions"
    );

    // Each ledger.entry_posted continues the trace of its own result.
    let entries = reader(&kafka_bootstrap(), &[&harness.topic("ledger.entry_posted")]);
    let records = read_records(&entries, expected.len(), WAIT).await;
    assert_eq!(records.len(), expected.len());
    for (entry_id, trace_id, _) in &expected {
        let record = records
            .iter()
            .find(|record| record.key() == Some(entry_id.as_bytes()))
            .unwrap_or_else(|| panic!("{entry_id} published"));
        let traceparent = header(record, "traceparent").expect("traceparent");
        assert_eq!(
            telemetry::trace_id_of(&traceparent),
            Some(trace_id.as_str()),
            "{entry_id} on its result's trace"
        );
    }
    assert!(
        read_extra(&entries, Duration::from_secs(1)).await.is_empty(),
        "one ledger.entry_posted per result"
    );
    harness.stop().await;
}
