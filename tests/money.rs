//! Money semantics end to end (ADR 0015-0017) against the real PostgreSQL and broker: a
//! transaction is taxed on the order version it was made against, whatever updates race it; the
//! ledger's settlement account holds exactly the money payments moved over a mixed run; a
//! reversal is booked only against a booked sale; orders that lag their transactions by more than
//! the parking deadline still get every transaction taxed.

use std::collections::HashMap;
use std::time::Duration;

use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::payments::{self, TransactionStatus};
use fintech_proto::{ledger, tax};
use fintech_tests::ledger::LedgerHarness;
use fintech_tests::payments::{PaymentsHarness, unique_prefix};
use fintech_tests::tax::TaxHarness;
use fintech_tests::{kafka_bootstrap, read_records, reader};
use futures::StreamExt as _;
use prost::Message as _;
use rdkafka::Message as _;

const WAIT: Duration = Duration::from_secs(120);

/// VAT contained in `gross` at `rate_bps`, rounded half away from zero (ADR 0016).
fn inclusive_vat(gross: i64, rate_bps: i64) -> i64 {
    let (numerator, denominator) = (gross * rate_bps, 10_000 + rate_bps);
    (2 * numerator + denominator) / (2 * denominator)
}

fn rate_of(country: &str) -> i64 {
    match country {
        "DE" => 1_900,
        "FR" => 2_000,
        "AT" => 2_000,
        "PT" => 2_300,
        "BE" => 2_100,
        other => panic!("no rate in this test for {other}"),
    }
}

async fn create_order(payments: &PaymentsHarness, customer: &str, country: &str, amount: i64) -> payments::Order {
    payments
        .client
        .clone()
        .create_order(payments::CreateOrderRequest {
            customer_id: customer.to_owned(),
            country: country.to_owned(),
            currency: "EUR".to_owned(),
            amount,
            product_type: "standard".to_owned(),
        })
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order")
}

async fn create_transaction(
    payments: &PaymentsHarness,
    order_id: &str,
    amount: i64,
    status: TransactionStatus,
) -> payments::Transaction {
    payments
        .client
        .clone()
        .create_transaction(payments::CreateTransactionRequest {
            order_id: order_id.to_owned(),
            amount,
            currency: "EUR".to_owned(),
            status: status as i32,
        })
        .await
        .expect("create transaction")
        .into_inner()
        .transaction
        .expect("transaction")
}

async fn update_status(
    payments: &PaymentsHarness,
    transaction: &payments::Transaction,
    status: TransactionStatus,
) -> payments::Transaction {
    payments
        .client
        .clone()
        .update_transaction_status(payments::UpdateTransactionStatusRequest {
            transaction_id: transaction.transaction_id.clone(),
            expected_version: transaction.version,
            status: status as i32,
        })
        .await
        .expect("update status")
        .into_inner()
        .transaction
        .expect("transaction")
}

async fn update_country(payments: &PaymentsHarness, order: &payments::Order, country: &str) -> payments::Order {
    payments
        .client
        .clone()
        .update_order(payments::UpdateOrderRequest {
            order_id: order.order_id.clone(),
            expected_version: order.version,
            country: Some(country.to_owned()),
            amount: None,
            product_type: None,
        })
        .await
        .expect("update order")
        .into_inner()
        .order
        .expect("order")
}

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Polls `probe` until it returns true or [`WAIT`] passes; panics with `what` on timeout.
async fn wait_until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn balance_of(ledger: &LedgerHarness, code: &str) -> i64 {
    match ledger
        .client
        .clone()
        .get_account(ledger::GetAccountRequest {
            code: code.to_owned(),
            ..Default::default()
        })
        .await
    {
        Ok(response) => response.into_inner().balance.expect("balance").balance,
        Err(status) if status.code() == tonic::Code::NotFound => 0,
        Err(status) => panic!("get account {code}: {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_update_racing_create_transaction_never_changes_the_vat_of_that_transaction() {
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let payments = PaymentsHarness::start_with_prefix(&prefix).await;

    let mut order = create_order(&payments, "cust-race", "DE", 11_900).await;
    let mut states: HashMap<i64, String> = HashMap::from([(order.version, order.country.clone())]);
    let mut transactions = Vec::new();
    // Each round races an update of the order's country (DE 19 % <-> FR 20 %) against a new
    // transaction on it: the transaction pays for whichever version it locked.
    for round in 0..24 {
        let country = if round % 2 == 0 { "FR" } else { "DE" };
        let (updated, transaction) = tokio::join!(
            update_country(&payments, &order, country),
            create_transaction(&payments, &order.order_id, 11_900, TransactionStatus::Succeeded),
        );
        states.insert(updated.version, updated.country.clone());
        order = updated;
        transactions.push(transaction);
    }
    let versions: std::collections::BTreeSet<i64> = transactions
        .iter()
        .map(|transaction| transaction.order_version)
        .collect();
    assert!(
        versions.len() > 1,
        "the transactions pay for several versions of the order: {versions:?}"
    );

    tax.wait_for_taxed(transactions.len() as i64, WAIT).await;
    let mut results = Vec::new();
    for transaction in &transactions {
        let taxed = tax
            .client
            .clone()
            .get_taxed_transaction(tax::GetTaxedTransactionRequest {
                transaction_id: transaction.transaction_id.clone(),
            })
            .await
            .expect("taxed")
            .into_inner()
            .taxed_transaction
            .expect("result");
        let country = &states[&transaction.order_version];
        assert_eq!(
            (taxed.order_version, taxed.country.as_str()),
            (transaction.order_version, country.as_str()),
            "transaction {} is taxed on the order version it was made against",
            transaction.transaction_id
        );
        assert_eq!(taxed.tax_applied, inclusive_vat(11_900, rate_of(country)));
        assert_eq!(
            taxed.total_amount, transaction.amount,
            "the VAT is inside the money that moved"
        );
        results.push(taxed);
    }

    // An update after every payment changes no calculated tax.
    let last = update_country(&payments, &order, "PT").await;
    wait_until("tax caches the last order version", async || {
        scalar(
            &tax.db.pool,
            &format!(
                "SELECT coalesce(max(version), 0) FROM order_cache WHERE id = '{}'",
                order.order_id
            ),
        )
        .await
            == last.version
    })
    .await;
    for (transaction, before) in transactions.iter().zip(&results) {
        let after = tax
            .client
            .clone()
            .get_taxed_transaction(tax::GetTaxedTransactionRequest {
                transaction_id: transaction.transaction_id.clone(),
            })
            .await
            .expect("taxed")
            .into_inner()
            .taxed_transaction
            .expect("result");
        assert_eq!(&after, before, "a later order update changes nothing calculated");
    }
    assert_eq!(
        scalar(&tax.db.pool, "SELECT count(*) FROM taxed_transactions").await,
        transactions.len() as i64,
        "one result per transaction"
    );
    payments.stop().await;
    tax.stop().await;
}

/// What the mixed run did to one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Created pending, left pending.
    StaysPending,
    /// Created pending, then captured.
    Captured,
    /// Created succeeded.
    Succeeded,
    /// Created pending, then failed.
    Failed,
    /// Created failed.
    CreatedFailed,
    /// Created succeeded, then refunded.
    Refunded,
    /// Created pending, captured, then refunded.
    CapturedThenRefunded,
}

const FATES: [Fate; 7] = [
    Fate::StaysPending,
    Fate::Captured,
    Fate::Succeeded,
    Fate::Failed,
    Fate::CreatedFailed,
    Fate::Refunded,
    Fate::CapturedThenRefunded,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlement_holds_exactly_the_money_of_the_succeeded_transactions_over_a_mixed_run() {
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(120)).await;
    let ledger = LedgerHarness::start_on(&prefix, |_| {}).await;
    let payments = PaymentsHarness::start_with_prefix(&prefix).await;

    let countries = ["DE", "FR", "AT", "PT", "BE"];
    let mut orders = Vec::new();
    for index in 0..50 {
        let country = countries[index % countries.len()];
        orders.push(create_order(&payments, &format!("cust-{index}"), country, 10_000).await);
    }
    // 1,000 transactions, 20 per order, amounts from 1.01 to 99.99, every fate in turn.
    let plan: Vec<(usize, i64, Fate)> = (0..1_000_usize)
        .map(|index| {
            let amount = 101 + (index as i64 * 7_919) % 9_899;
            (index % orders.len(), amount, FATES[index % FATES.len()])
        })
        .collect();
    let finals: Vec<(Fate, payments::Transaction)> = futures::stream::iter(plan.iter().copied())
        .map(|(order, amount, fate)| {
            let (payments, order_id) = (&payments, orders[order].order_id.clone());
            async move {
                let initial = match fate {
                    Fate::Succeeded | Fate::Refunded => TransactionStatus::Succeeded,
                    Fate::CreatedFailed => TransactionStatus::Failed,
                    _ => TransactionStatus::Pending,
                };
                let mut transaction = create_transaction(payments, &order_id, amount, initial).await;
                let steps: &[TransactionStatus] = match fate {
                    Fate::Captured => &[TransactionStatus::Succeeded],
                    Fate::Failed => &[TransactionStatus::Failed],
                    Fate::Refunded => &[TransactionStatus::Refunded],
                    Fate::CapturedThenRefunded => &[TransactionStatus::Succeeded, TransactionStatus::Refunded],
                    Fate::StaysPending | Fate::Succeeded | Fate::CreatedFailed => &[],
                };
                for step in steps {
                    transaction = update_status(payments, &transaction, *step).await;
                }
                (fate, transaction)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(finals.len(), 1_000);

    // What payments says moved: the sum of the transactions that are succeeded now.
    let (mut succeeded, mut pending) = (0_i64, 0_i64);
    let (mut captures, mut refunds) = (0_i64, 0_i64);
    for (_, transaction) in &finals {
        match TransactionStatus::try_from(transaction.status).expect("status") {
            TransactionStatus::Succeeded => {
                succeeded += transaction.amount;
                captures += 1;
            }
            TransactionStatus::Refunded => {
                captures += 1;
                refunds += 1;
            }
            TransactionStatus::Pending => pending += transaction.amount,
            TransactionStatus::Failed | TransactionStatus::Unspecified => {}
        }
    }
    let from_payments: i64 = scalar(
        &payments.db.pool,
        "SELECT coalesce(sum(amount), 0)::bigint FROM transactions WHERE status = 'succeeded'",
    )
    .await;
    assert_eq!(from_payments, succeeded, "payments' own table agrees with the answers");

    // Everything has flowed: every taxable transaction has a result or was voided, the ledger
    // booked one sale per result, one reversal per reversed result, and the captures and refunds.
    let taxable = finals.iter().filter(|(fate, _)| *fate != Fate::CreatedFailed).count() as i64;
    wait_until("tax has handled every transaction", async || {
        scalar(
            &tax.db.pool,
            "SELECT (SELECT count(*) FROM taxed_transactions) \
               + (SELECT count(*) FROM tax_reversals WHERE NOT reversed_result)",
        )
        .await
            == taxable
    })
    .await;
    let count_entries = async |prefix: &str| {
        scalar(
            &ledger.db.pool,
            &format!("SELECT count(*) FROM ledger_entries WHERE entry_id LIKE '{prefix}:%'"),
        )
        .await
    };
    wait_until("the ledger booked every entry", async || {
        let sales = scalar(&tax.db.pool, "SELECT count(*) FROM taxed_transactions").await;
        let reversals = scalar(&tax.db.pool, "SELECT count(*) FROM tax_reversals WHERE reversed_result").await;
        count_entries("tax").await == sales
            && count_entries("tax-reversal").await == reversals
            && count_entries("capture").await == captures
            && count_entries("refund").await == refunds
    })
    .await;
    assert_eq!(
        scalar(
            &tax.db.pool,
            "SELECT count(*) FROM tax_failures WHERE resolved_at IS NULL"
        )
        .await,
        0,
        "no transaction failed to be taxed"
    );

    assert_eq!(
        balance_of(&ledger, "system:settlement:EUR").await,
        succeeded,
        "settlement holds exactly the money of the succeeded transactions"
    );
    assert_eq!(
        balance_of(&ledger, "system:receivable:EUR").await,
        pending,
        "pending transactions are recognised as receivable, not as cash"
    );
    // The VAT still owed is the VAT of the transactions that are pending or succeeded.
    let vat_owed: i64 = scalar(
        &tax.db.pool,
        "SELECT coalesce(sum(tax_applied), 0)::bigint FROM taxed_transactions t \
         WHERE NOT EXISTS (SELECT 1 FROM tax_reversals r WHERE r.transaction_id = t.transaction_id)",
    )
    .await;
    let mut vat_booked = 0;
    for country in countries {
        vat_booked += balance_of(&ledger, &format!("system:vat-payable:{country}:EUR")).await;
    }
    assert_eq!(
        vat_booked, vat_owed,
        "VAT payable is the VAT of the transactions that stand"
    );
    assert!(vat_owed > 0, "the run taxed something");
    for currency in ledger.trial_balance().await {
        assert_eq!(currency.net, 0, "trial balance nets to zero in {}", currency.currency);
    }

    // Nothing more is booked later: the run is settled, not merely passing through equality.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(balance_of(&ledger, "system:settlement:EUR").await, succeeded);
    payments.stop().await;
    ledger.stop().await;
    tax.stop().await;
}

fn tax_metadata(event_type: &str, payload_type: &str, key: &str) -> EventMetadata {
    EventMetadata {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        source: "/fintech/tax".to_owned(),
        time: chrono::Utc::now(),
        subject: Some(key.to_owned()),
        payload_type: payload_type.to_owned(),
        trace: TraceHeaders::default(),
    }
}

fn reversal(transaction_id: &str, base: i64, vat: i64) -> tax::TaxReversal {
    tax::TaxReversal {
        transaction_id: transaction_id.to_owned(),
        order_id: "order-r".to_owned(),
        customer_id: "cust-r".to_owned(),
        base_amount: base,
        tax_reversed: vat,
        total_amount: base + vat,
        currency: "EUR".to_owned(),
        country: "DE".to_owned(),
        tax_rate_bps: 1_900,
        reason: tax::TaxReversalReason::TransactionFailed as i32,
        rule_version: "2026-01".to_owned(),
        reversed_at: None,
        transaction_version: 2,
    }
}

fn sale(transaction_id: &str, base: i64, vat: i64) -> tax::TaxedTransaction {
    tax::TaxedTransaction {
        transaction_id: transaction_id.to_owned(),
        order_id: "order-r".to_owned(),
        customer_id: "cust-r".to_owned(),
        base_amount: base,
        tax_applied: vat,
        total_amount: base + vat,
        currency: "EUR".to_owned(),
        country: "DE".to_owned(),
        product_type: "standard".to_owned(),
        tax_rate_bps: 1_900,
        reason: tax::TaxReason::StandardRate as i32,
        rule_version: "2026-01".to_owned(),
        calculated_at: None,
        tax_date: None,
        order_version: 1,
    }
}

async fn entry(ledger: &LedgerHarness, entry_id: &str) -> Option<ledger::Entry> {
    match ledger
        .client
        .clone()
        .get_entry(ledger::GetEntryRequest {
            entry_id: entry_id.to_owned(),
        })
        .await
    {
        Ok(response) => response.into_inner().entry,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("get entry {entry_id}: {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_is_booked_only_against_the_sale_that_was_booked() {
    let ledger = LedgerHarness::start().await;
    let producer = EventProducer::new(&kafka_bootstrap(), "test-money", Duration::from_secs(20)).expect("producer");
    let dead_letters = reader(&kafka_bootstrap(), &[&ledger.topic("ledger.dlq")]);
    let (calculated, reversed) = (ledger.topic("tax.calculated"), ledger.topic("tax.reversed"));
    let send = async |topic: &str, key: &str, payload: Vec<u8>, metadata: EventMetadata| {
        producer
            .send_event(topic, key, &payload, &metadata)
            .await
            .expect("produce");
    };

    // A reversal whose sale was never booked books nothing while the sale is missing...
    let early = uuid::Uuid::new_v4().to_string();
    send(
        &reversed,
        "order-r",
        reversal(&early, 10_000, 1_900).encode_to_vec(),
        tax_metadata("fintech.tax.v1.tax.reversed", "fintech.tax.v1.TaxReversal", "order-r"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        entry(&ledger, &format!("tax-reversal:{early}")).await.is_none(),
        "nothing is reversed before the sale is booked"
    );
    assert_eq!(balance_of(&ledger, "system:receivable:EUR").await, 0);

    // ...and is booked, as the sale's lines swapped, once the sale is.
    send(
        &calculated,
        "order-r",
        sale(&early, 10_000, 1_900).encode_to_vec(),
        tax_metadata(
            "fintech.tax.v1.tax.calculated",
            "fintech.tax.v1.TaxedTransaction",
            "order-r",
        ),
    )
    .await;
    wait_until("the reversal follows its sale", async || {
        entry(&ledger, &format!("tax-reversal:{early}")).await.is_some()
    })
    .await;
    let booked = entry(&ledger, &format!("tax:{early}")).await.expect("sale");
    let reversal_entry = entry(&ledger, &format!("tax-reversal:{early}"))
        .await
        .expect("reversal");
    let lines = |entry: &ledger::Entry| {
        let mut lines: Vec<(String, i64)> = entry
            .lines
            .iter()
            .map(|line| (line.account_id.clone(), line.amount))
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&booked), lines(&reversal_entry), "the same accounts and amounts");
    for (sold, reversed) in booked.lines.iter().zip(&reversal_entry.lines) {
        assert_ne!(sold.side, reversed.side, "sides swapped");
    }
    assert_eq!(balance_of(&ledger, "system:receivable:EUR").await, 0);
    assert_eq!(balance_of(&ledger, "system:settlement:EUR").await, 0, "no cash moved");

    // A reversal of other amounts than the sale booked is refused, with its reason, on the DLQ.
    let other = uuid::Uuid::new_v4().to_string();
    send(
        &calculated,
        "order-r",
        sale(&other, 5_000, 950).encode_to_vec(),
        tax_metadata(
            "fintech.tax.v1.tax.calculated",
            "fintech.tax.v1.TaxedTransaction",
            "order-r",
        ),
    )
    .await;
    wait_until("the second sale is booked", async || {
        entry(&ledger, &format!("tax:{other}")).await.is_some()
    })
    .await;
    send(
        &reversed,
        "order-r",
        reversal(&other, 10_000, 1_900).encode_to_vec(),
        tax_metadata("fintech.tax.v1.tax.reversed", "fintech.tax.v1.TaxReversal", "order-r"),
    )
    .await;
    let refused = read_records(&dead_letters, 1, WAIT).await;
    assert_eq!(refused.len(), 1, "the mismatched reversal is dead-lettered");
    let reason = fintech_tests::header(&refused[0], "dlq_reason").expect("reason");
    assert!(reason.contains("sale booked 5950"), "{reason}");
    assert!(refused[0].payload().is_some());
    assert!(entry(&ledger, &format!("tax-reversal:{other}")).await.is_none());
    ledger.stop().await;
}

fn transaction_event(transaction_id: &str, order_id: &str, amount: i64) -> payments::Transaction {
    let at = prost_types::Timestamp {
        seconds: 1_790_000_100,
        nanos: 0,
    };
    payments::Transaction {
        transaction_id: transaction_id.to_owned(),
        order_id: order_id.to_owned(),
        customer_id: "cust-lag".to_owned(),
        amount,
        status: TransactionStatus::Pending as i32,
        created_at: Some(at),
        updated_at: Some(at),
        version: 1,
        currency: "EUR".to_owned(),
        order_version: 1,
    }
}

fn order_event(order_id: &str, country: &str) -> payments::Order {
    let at = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 0,
    };
    payments::Order {
        order_id: order_id.to_owned(),
        customer_id: "cust-lag".to_owned(),
        country: country.to_owned(),
        currency: "EUR".to_owned(),
        amount: 10_000,
        product_type: "standard".to_owned(),
        created_at: Some(at),
        updated_at: Some(at),
        version: 1,
    }
}

fn payments_metadata(event_type: &str, payload_type: &str, key: &str) -> EventMetadata {
    EventMetadata {
        source: "/fintech/payments".to_owned(),
        ..tax_metadata(event_type, payload_type, key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_delayed_behind_their_transactions_past_the_parking_deadline_leave_no_transaction_failed() {
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(1)).await;
    let producer = EventProducer::new(&kafka_bootstrap(), "test-lag", Duration::from_secs(20)).expect("producer");
    let failed = reader(&kafka_bootstrap(), &[&tax.topic("tax.failed")]);

    // 40 transactions on 8 orders whose events lag far behind.
    let orders: Vec<String> = (0..8).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut expected = HashMap::new();
    for index in 0..40 {
        let order_id = &orders[index % orders.len()];
        let transaction_id = uuid::Uuid::new_v4().to_string();
        let amount = 1_000 + index as i64;
        producer
            .send_event(
                &tax.topic("transactions.created"),
                order_id,
                &transaction_event(&transaction_id, order_id, amount).encode_to_vec(),
                &payments_metadata(
                    "fintech.payments.v1.transaction.created",
                    "fintech.payments.v1.Transaction",
                    order_id,
                ),
            )
            .await
            .expect("produce transaction");
        expected.insert(transaction_id, amount);
    }
    // They all pass their deadline and fail as order_not_found...
    let failures = read_records(&failed, expected.len(), WAIT).await;
    assert_eq!(failures.len(), expected.len(), "every transaction failed waiting");
    for record in &failures {
        let failure = tax::TaxFailure::decode(record.payload().expect("payload")).expect("failure");
        assert_eq!(failure.reason, tax::TaxFailureReason::OrderNotFound as i32);
    }
    assert_eq!(
        scalar(&tax.db.pool, "SELECT count(*) FROM parked_transactions").await,
        0
    );

    // ...then the orders arrive, long after the deadline.
    for order_id in &orders {
        producer
            .send_event(
                &tax.topic("orders.created"),
                order_id,
                &order_event(order_id, "DE").encode_to_vec(),
                &payments_metadata(
                    "fintech.payments.v1.order.created",
                    "fintech.payments.v1.Order",
                    order_id,
                ),
            )
            .await
            .expect("produce order");
    }
    tax.wait_for_taxed(expected.len() as i64, WAIT).await;
    assert_eq!(
        scalar(
            &tax.db.pool,
            "SELECT count(*) FROM tax_failures WHERE resolved_at IS NULL"
        )
        .await,
        0,
        "no transaction is left failed once its order arrived"
    );
    for (transaction_id, amount) in &expected {
        let taxed = tax
            .client
            .clone()
            .get_taxed_transaction(tax::GetTaxedTransactionRequest {
                transaction_id: transaction_id.clone(),
            })
            .await
            .expect("taxed")
            .into_inner()
            .taxed_transaction
            .expect("result");
        assert_eq!(taxed.tax_applied, inclusive_vat(*amount, 1_900));
    }
    // The deadlines were set and compared on the database's clock.
    assert_eq!(
        scalar(
            &tax.db.pool,
            "SELECT count(*) FROM tax_failures WHERE failed_at > now() + interval '1 minute'"
        )
        .await,
        0
    );
    tax.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_row_that_cannot_be_swept_does_not_hold_back_the_others() {
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(1)).await;
    let producer = EventProducer::new(&kafka_bootstrap(), "test-sweep", Duration::from_secs(20)).expect("producer");
    let failed = reader(&kafka_bootstrap(), &[&tax.topic("tax.failed")]);

    // Once tax answers, its migrations have run.
    tax.client
        .clone()
        .list_failed(tax::ListFailedRequest::default())
        .await
        .expect("tax answers");
    // A parked row whose stored event cannot be decoded, expired before everything else.
    let (bad, bad_order) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    sqlx::query(
        "INSERT INTO parked_transactions (transaction_id, order_id, order_version, event_type, payload, deadline) \
         VALUES ($1, $2, 1, 'fintech.payments.v1.transaction.created', '\\xffff'::bytea, now() - interval '1 hour')",
    )
    .bind(bad)
    .bind(bad_order)
    .execute(&tax.db.pool)
    .await
    .expect("insert bad parked row");

    let mut ids = Vec::new();
    for _ in 0..5 {
        let (transaction_id, order_id) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
        producer
            .send_event(
                &tax.topic("transactions.created"),
                &order_id,
                &transaction_event(&transaction_id, &order_id, 5_000).encode_to_vec(),
                &payments_metadata(
                    "fintech.payments.v1.transaction.created",
                    "fintech.payments.v1.Transaction",
                    &order_id,
                ),
            )
            .await
            .expect("produce");
        ids.push(transaction_id);
    }
    let failures = read_records(&failed, ids.len(), WAIT).await;
    assert_eq!(failures.len(), ids.len(), "the good rows are swept past the bad one");
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT sweep_attempts, last_error FROM parked_transactions WHERE transaction_id = $1")
            .bind(bad)
            .fetch_one(&tax.db.pool)
            .await
            .expect("the bad row is kept, not lost");
    assert!(attempts >= 1, "its failure is recorded");
    assert!(last_error.is_some_and(|error| error.contains("decode")));
    tax.stop().await;
}
