//! The invariants, read after the load drained from the services' own databases and from the
//! topics read to their end (never from logs or from what the load believes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use fintech_platform::kafka::headers::header_str;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use fintech_proto::{ledger, payments, tax};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use serde::Serialize;

use crate::load::Acknowledged;
use crate::platform::{PREFIX, Platform};

/// Longest read of one topic to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// One invariant's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What must hold.
    pub(crate) invariant: String,
    /// Whether it held.
    pub(crate) holds: bool,
    /// The counts behind the verdict.
    pub(crate) counts: BTreeMap<String, i64>,
    /// What broke (a few examples), empty when it held.
    pub(crate) detail: String,
}

fn check(invariant: &str, holds: bool, counts: &[(&str, i64)], detail: String) -> Check {
    Check {
        invariant: invariant.to_owned(),
        holds,
        counts: counts
            .iter()
            .map(|(name, count)| ((*name).to_owned(), *count))
            .collect(),
        detail: if holds { String::new() } else { detail },
    }
}

/// `expected` against `found`: counts and a few examples of what is missing and extra.
fn same_set(
    invariant: &str,
    expected: &HashSet<String>,
    found: &HashSet<String>,
    extra_counts: &[(&str, i64)],
) -> Check {
    let missing: Vec<&String> = expected.difference(found).take(5).collect();
    let extra: Vec<&String> = found.difference(expected).take(5).collect();
    let missing_count = expected.difference(found).count() as i64;
    let extra_count = found.difference(expected).count() as i64;
    let mut counts = vec![
        ("expected", expected.len() as i64),
        ("found", found.len() as i64),
        ("missing", missing_count),
        ("extra", extra_count),
    ];
    counts.extend_from_slice(extra_counts);
    check(
        invariant,
        missing_count == 0 && extra_count == 0,
        &counts,
        format!("missing {missing:?}, extra {extra:?}"),
    )
}

/// The distinct events (`ce_id`s) per id of a topic's records; also how many records repeated an
/// event already seen (a republish, which consumers drop).
fn events_by(
    records: &[OwnedMessage],
    id_of: impl Fn(&[u8]) -> Option<String>,
) -> (HashMap<String, HashSet<String>>, i64) {
    let mut events: HashMap<String, HashSet<String>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut republished = 0;
    for record in records {
        let ce_id = record
            .headers()
            .and_then(|headers| header_str(headers, "ce_id"))
            .unwrap_or_default();
        if !seen.insert(ce_id.clone()) {
            republished += 1;
        }
        let id = record.payload().and_then(&id_of).unwrap_or_default();
        events.entry(id).or_default().insert(ce_id);
    }
    (events, republished)
}

/// Exactly one event per expected id, and no event for anything else.
fn one_event_each(
    topic: &str,
    records: &[OwnedMessage],
    expected: &HashSet<String>,
    id_of: impl Fn(&[u8]) -> Option<String>,
) -> Check {
    let (events, republished) = events_by(records, id_of);
    let found: HashSet<String> = events.keys().cloned().collect();
    let doubled: Vec<(&String, usize)> = events
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(id, ids)| (id, ids.len()))
        .collect();
    let mut result = same_set(
        &format!("{topic}: exactly one event (ce_id) per expected id"),
        expected,
        &found,
        &[
            ("records", records.len() as i64),
            ("republished_same_ce_id", republished),
            ("ids_with_two_or_more_events", doubled.len() as i64),
        ],
    );
    if !doubled.is_empty() {
        result.holds = false;
        result.detail = format!(
            "{} ids with more than one event, e.g. {:?}; {}",
            doubled.len(),
            &doubled[..doubled.len().min(5)],
            result.detail
        );
    }
    result
}

/// Per record key, the distinct events of each aggregate in offset order have increasing versions.
fn version_order(topic: &str, records: &[OwnedMessage], decode: impl Fn(&[u8]) -> Option<(String, i64)>) -> Check {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut out_of_order = Vec::new();
    let mut ordered: Vec<&OwnedMessage> = records.iter().collect();
    ordered.sort_by_key(|record| (record.partition(), record.offset()));
    for record in ordered {
        let ce_id = record
            .headers()
            .and_then(|headers| header_str(headers, "ce_id"))
            .unwrap_or_default();
        if !seen.insert(ce_id) {
            continue;
        }
        let Some((id, version)) = record.payload().and_then(&decode) else {
            continue;
        };
        if let Some(&previous) = last.get(&id)
            && version <= previous
        {
            out_of_order.push(format!("{id}: v{version} after v{previous}"));
        }
        last.insert(id, version);
    }
    check(
        &format!("{topic}: events per key in version order"),
        out_of_order.is_empty(),
        &[
            ("aggregates", last.len() as i64),
            ("out_of_order", out_of_order.len() as i64),
        ],
        format!("{:?}", &out_of_order[..out_of_order.len().min(5)]),
    )
}

async fn ids(pool: &sqlx::PgPool, sql: &str) -> anyhow::Result<HashSet<String>> {
    Ok(sqlx::query_scalar::<_, String>(sql)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect())
}

async fn read(platform: &Platform, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    fintech_devkit::read_to_end(platform.broker.bootstrap(), &format!("{PREFIX}{topic}"), READ_TIMEOUT).await
}

/// Every invariant.
pub(crate) async fn run(platform: &Platform, acknowledged: &Acknowledged) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let orders: HashSet<String> = acknowledged.orders.iter().cloned().collect();
    let transactions: HashSet<String> = acknowledged.transactions.iter().cloned().collect();
    let payments_db = &platform.service("payments").db;
    let tax_db = &platform.service("tax").db;
    let ledger_db = &platform.service("ledger").db;

    // Commands: every acknowledged one exists once, and nothing else exists (a retry under the
    // same key that created a second row would show up as extra).
    checks.push(same_set(
        "payments: every acknowledged order exists exactly once (and no other)",
        &orders,
        &ids(payments_db, "SELECT order_id::text FROM orders").await?,
        &[("acknowledged_commands", acknowledged.orders.len() as i64)],
    ));
    checks.push(same_set(
        "payments: every acknowledged transaction exists exactly once (and no other)",
        &transactions,
        &ids(payments_db, "SELECT transaction_id::text FROM transactions").await?,
        &[("acknowledged_commands", acknowledged.transactions.len() as i64)],
    ));

    // Tax: one result per transaction, one tax.calculated outbox row each.
    let calculated_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(format!("{PREFIX}tax.calculated"))
        .fetch_one(tax_db)
        .await?;
    let mut taxed = same_set(
        "tax: every transaction taxed once, one tax.calculated outbox row each",
        &transactions,
        &ids(tax_db, "SELECT transaction_id::text FROM taxed_transactions").await?,
        &[("tax_calculated_outbox_rows", calculated_rows)],
    );
    if calculated_rows != transactions.len() as i64 {
        taxed.holds = false;
        taxed.detail = format!(
            "{calculated_rows} tax.calculated outbox rows for {} transactions; {}",
            transactions.len(),
            taxed.detail
        );
    }
    checks.push(taxed);

    // Ledger: exactly the expected postings, a sale and a capture per transaction.
    let expected_entries: HashSet<String> = transactions
        .iter()
        .flat_map(|id| [format!("tax:{id}"), format!("capture:{id}")])
        .collect();
    let posted_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(format!("{PREFIX}ledger.entry_posted"))
        .fetch_one(ledger_db)
        .await?;
    let mut entries = same_set(
        "ledger: exactly one entry per expected posting (tax:<id>, capture:<id>), one entry_posted outbox row each",
        &expected_entries,
        &ids(ledger_db, "SELECT entry_id FROM ledger_entries").await?,
        &[("entry_posted_outbox_rows", posted_rows)],
    );
    if posted_rows != expected_entries.len() as i64 {
        entries.holds = false;
        entries.detail = format!(
            "{posted_rows} entry_posted outbox rows for {} entries; {}",
            expected_entries.len(),
            entries.detail
        );
    }
    checks.push(entries);

    // Trial balance, from the ledger itself.
    let mut client = LedgerServiceClient::new(platform.channel("ledger")?);
    let trial = client
        .get_trial_balance(ledger::GetTrialBalanceRequest::default())
        .await?
        .into_inner()
        .currencies;
    let unbalanced: Vec<String> = trial
        .iter()
        .filter(|currency| currency.net != 0)
        .map(|currency| format!("{} net {}", currency.currency, currency.net))
        .collect();
    let mut counts = vec![
        ("currencies", trial.len() as i64),
        ("unbalanced", unbalanced.len() as i64),
    ];
    let totals: Vec<(String, i64)> = trial
        .iter()
        .flat_map(|currency| {
            [
                (format!("{}_debits", currency.currency), currency.debit_total),
                (format!("{}_credits", currency.currency), currency.credit_total),
            ]
        })
        .collect();
    counts.extend(totals.iter().map(|(name, value)| (name.as_str(), *value)));
    checks.push(check(
        "ledger: the trial balance nets to zero in every currency",
        unbalanced.is_empty() && !trial.is_empty(),
        &counts,
        format!("{unbalanced:?}"),
    ));

    // Outboxes: nothing left unpublished but parked rows (each with its reason).
    for service in &platform.services {
        let (unpublished, parked): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL) \
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&service.db)
        .await?;
        let reasons: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(last_error, '(no reason)') FROM outbox WHERE published_at IS NULL AND parked_at IS NOT NULL LIMIT 5",
        )
        .fetch_all(&service.db)
        .await?;
        checks.push(check(
            &format!("{}: no outbox row left unpublished except parked ones", service.name),
            unpublished == 0,
            &[("unpublished", unpublished), ("parked", parked)],
            format!("parked reasons: {reasons:?}"),
        ));
    }

    // Topics, read to their end.
    let orders_created = read(platform, "orders.created").await?;
    let transactions_created = read(platform, "transactions.created").await?;
    let calculated = read(platform, "tax.calculated").await?;
    let failed = read(platform, "tax.failed").await?;
    let posted = read(platform, "ledger.entry_posted").await?;
    let order_id = |bytes: &[u8]| payments::Order::decode(bytes).ok().map(|order| order.order_id);
    let transaction_id = |bytes: &[u8]| {
        payments::Transaction::decode(bytes)
            .ok()
            .map(|transaction| transaction.transaction_id)
    };
    checks.push(one_event_each("orders.created", &orders_created, &orders, order_id));
    checks.push(one_event_each(
        "transactions.created",
        &transactions_created,
        &transactions,
        transaction_id,
    ));
    checks.push(one_event_each("tax.calculated", &calculated, &transactions, |bytes| {
        tax::TaxedTransaction::decode(bytes)
            .ok()
            .map(|taxed| taxed.transaction_id)
    }));
    let failures: BTreeSet<String> = failed
        .iter()
        .filter_map(|record| record.payload())
        .filter_map(|bytes| tax::TaxFailure::decode(bytes).ok())
        .map(|failure| failure.transaction_id)
        .collect();
    checks.push(check(
        "tax.failed: no transaction has a tax.failed beside its tax.calculated (none expected)",
        failed.is_empty(),
        &[
            ("records", failed.len() as i64),
            ("transactions", failures.len() as i64),
        ],
        format!("{:?}", failures.iter().take(5).collect::<Vec<_>>()),
    ));
    checks.push(one_event_each(
        "ledger.entry_posted",
        &posted,
        &expected_entries,
        |bytes| ledger::Entry::decode(bytes).ok().map(|entry| entry.entry_id),
    ));
    checks.push(version_order("orders.created", &orders_created, |bytes| {
        payments::Order::decode(bytes)
            .ok()
            .map(|order| (order.order_id, order.version))
    }));
    checks.push(version_order("transactions.created", &transactions_created, |bytes| {
        payments::Transaction::decode(bytes)
            .ok()
            .map(|transaction| (transaction.transaction_id, transaction.version))
    }));
    for topic in ["tax.dlq", "ledger.dlq"] {
        let records = read(platform, topic).await?;
        checks.push(check(
            &format!("{topic}: empty"),
            records.is_empty(),
            &[("records", records.len() as i64)],
            format!("{} dead letters", records.len()),
        ));
    }
    Ok(checks)
}
