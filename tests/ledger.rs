//! The ledger against the real PostgreSQL and broker: concurrent entries over a few hot accounts
//! each take effect exactly once, projections equal the fold of the events, the trial balance
//! nets to zero, rejected entries change nothing, reads see any point of a stream, and an edited
//! event is reported by VerifyStream.

use std::collections::HashMap;
use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::get_balance_request::AsOf;
use fintech_tests::ledger::{LedgerHarness, line};
use fintech_tests::{read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

fn entry(entry_id: &str, lines: Vec<pb::EntryLine>) -> pb::PostEntryRequest {
    pb::PostEntryRequest {
        entry_id: entry_id.to_owned(),
        description: format!("test entry {entry_id}"),
        metadata: HashMap::from([("test".to_owned(), "ledger".to_owned())]),
        lines,
    }
}

/// The change of an account's normal-side balance by a line.
/// `request` with the `idempotency-key` metadata set to `key`.
fn with_idempotency_key(request: pb::PostEntryRequest, key: &str) -> tonic::Request<pb::PostEntryRequest> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("an ASCII key"));
    request
}

fn signed(account: &pb::Account, line: &pb::EntryLine) -> i64 {
    let debit_normal = matches!(
        pb::AccountType::try_from(account.r#type),
        Ok(pb::AccountType::Asset | pb::AccountType::Expense)
    );
    let debit = line.side == pb::Side::Debit as i32;
    if debit == debit_normal {
        line.amount
    } else {
        -line.amount
    }
}

async fn count(harness: &LedgerHarness, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&harness.db.pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Every account's projection equals the fold of its events and its stream verifies; the trial
/// balance nets to zero per currency.
async fn assert_books_consistent(harness: &LedgerHarness, accounts: &[pb::Account]) {
    for account in accounts {
        let current = harness.balance(&account.account_id).await;
        let folded = harness
            .balance_as_of(&account.account_id, Some(AsOf::AsOfVersion(current.version)))
            .await;
        assert_eq!(
            (folded.balance, folded.version),
            (current.balance, current.version),
            "projection of {} equals the fold of its events",
            account.code
        );
        let verification = harness
            .client
            .clone()
            .verify_stream(pb::VerifyStreamRequest {
                account_id: account.account_id.clone(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verification.valid, "{}: {}", account.code, verification.reason);
        assert_eq!(verification.events_checked, current.version);
    }
    for currency in harness.trial_balance().await {
        assert_eq!(currency.net, 0, "{currency:?}");
        assert_eq!(currency.debit_total, currency.credit_total, "{currency:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_entries_over_a_few_accounts_each_take_effect_exactly_once() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let accounts = vec![
        harness
            .open_account("cash", pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Unlimited, 0)
            .await,
        harness
            .open_account(
                "bank",
                pb::AccountType::Asset,
                "EUR",
                pb::OverdraftPolicy::Limited,
                10_000_000,
            )
            .await,
        harness
            .open_account(
                "deposits",
                pb::AccountType::Liability,
                "EUR",
                pb::OverdraftPolicy::Unlimited,
                0,
            )
            .await,
        harness
            .open_account(
                "fees",
                pb::AccountType::Revenue,
                "EUR",
                pb::OverdraftPolicy::Unlimited,
                0,
            )
            .await,
    ];
    let entries: Vec<pb::PostEntryRequest> = (0..200usize)
        .map(|index| {
            let debit = &accounts[index % 4];
            let credit = &accounts[(index * 7 + 1 + index / 4) % 4];
            let credit = if credit.account_id == debit.account_id {
                &accounts[(index + 1) % 4]
            } else {
                credit
            };
            let amount = 1 + (index as i64 * 37) % 500;
            let mut lines = vec![
                line(debit, pb::Side::Debit, amount),
                line(credit, pb::Side::Credit, amount),
            ];
            if index % 5 == 0 {
                // A three-line entry: part of the credit goes to fees.
                lines[1].amount = amount + 1;
                lines.push(line(&accounts[3], pb::Side::Credit, 1));
                lines[0].amount = amount + 2;
            }
            entry(&format!("concurrent-{index}"), lines)
        })
        .collect();
    // The first 20 entries are sent twice, concurrently: a retry must not post them again.
    let requests: Vec<pb::PostEntryRequest> = entries.iter().cloned().chain(entries[..20].iter().cloned()).collect();
    let calls = requests.into_iter().map(|request| {
        let mut client = harness.client.clone();
        tokio::spawn(async move {
            let entry_id = request.entry_id.clone();
            (entry_id, client.post_entry(request).await)
        })
    });
    let started = std::time::Instant::now();
    let results = futures::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let mut responses: HashMap<String, pb::PostEntryResponse> = HashMap::new();
    for result in results {
        let (entry_id, response) = result.expect("task");
        let response = response
            .unwrap_or_else(|status| panic!("{entry_id}: {status:?}"))
            .into_inner();
        if let Some(first) = responses.get(&entry_id) {
            assert_eq!(first, &response, "a retried entry gets the first response");
        }
        responses.insert(entry_id, response);
    }
    tracing::info!(?elapsed, "220 concurrent PostEntry calls");
    assert_eq!(responses.len(), 200);

    let mut expected: HashMap<&str, i64> = HashMap::new();
    let mut touched: HashMap<&str, i64> = HashMap::new();
    for request in &entries {
        let mut accounts_of_entry = Vec::new();
        for entry_line in &request.lines {
            let account = accounts
                .iter()
                .find(|account| account.account_id == entry_line.account_id)
                .expect("known account");
            *expected.entry(&account.account_id).or_default() += signed(account, entry_line);
            accounts_of_entry.push(account.account_id.as_str());
        }
        accounts_of_entry.sort_unstable();
        accounts_of_entry.dedup();
        for account_id in accounts_of_entry {
            *touched.entry(account_id).or_default() += 1;
        }
    }
    for account in &accounts {
        let balance = harness.balance(&account.account_id).await;
        assert_eq!(
            balance.balance,
            expected[account.account_id.as_str()],
            "balance of {}",
            account.code
        );
        assert_eq!(
            balance.version,
            1 + touched[account.account_id.as_str()],
            "one event per entry that touched {}",
            account.code
        );
    }
    assert_eq!(count(&harness, "SELECT count(*) FROM ledger_entries").await, 200);
    assert_eq!(
        count(
            &harness,
            "SELECT count(*) FROM outbox WHERE topic LIKE '%ledger.entry_posted'"
        )
        .await,
        200
    );
    assert_books_consistent(&harness, &accounts).await;

    // Every stream's versions are 1..n without gaps, and every response's appends are in them.
    for response in responses.values() {
        let entry = response.entry.as_ref().expect("entry");
        assert_eq!(entry.appends.len(), response.balances.len());
        for append in &entry.appends {
            let stored: String =
                sqlx::query_scalar("SELECT hash FROM ledger_events WHERE stream_id = $1::uuid AND version = $2")
                    .bind(&append.account_id)
                    .bind(append.version)
                    .fetch_one(&harness.db.pool)
                    .await
                    .expect("appended event");
            assert_eq!(stored, append.hash);
        }
    }
    harness.stop().await;
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

fn broken_rules(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|failure| {
            failure
                .violations
                .into_iter()
                .map(|violation| violation.r#type)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn rejected_entries_are_named_and_change_nothing() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let mut client = harness.client.clone();
    let cash = harness
        .open_account("cash", pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Forbidden, 0)
        .await;
    let sales = harness
        .open_account(
            "sales",
            pb::AccountType::Revenue,
            "EUR",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let wallet = harness
        .open_account(
            "wallet-usd",
            pb::AccountType::Asset,
            "USD",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let card = harness
        .open_account(
            "card",
            pb::AccountType::Liability,
            "EUR",
            pb::OverdraftPolicy::Limited,
            500,
        )
        .await;
    let sale = entry(
        "sale-1",
        vec![
            line(&cash, pb::Side::Debit, 1_000),
            line(&sales, pb::Side::Credit, 1_000),
        ],
    );
    let first = client.post_entry(sale.clone()).await.expect("sale").into_inner();
    assert_eq!(
        first.balances.iter().map(|balance| balance.balance).collect::<Vec<_>>(),
        {
            let mut expected = vec![(cash.account_id.clone(), 1_000), (sales.account_id.clone(), 1_000)];
            expected.sort();
            expected.into_iter().map(|(_, balance)| balance).collect::<Vec<_>>()
        },
        "the response carries every affected balance, ordered by account id"
    );

    let snapshot = async || {
        let mut balances = Vec::new();
        for account in [&cash, &sales, &wallet, &card] {
            let balance = harness.balance(&account.account_id).await;
            balances.push((balance.balance, balance.version));
        }
        (
            balances,
            count(&harness, "SELECT count(*) FROM ledger_events").await,
            count(&harness, "SELECT count(*) FROM ledger_entries").await,
            count(&harness, "SELECT count(*) FROM outbox").await,
        )
    };
    let before = snapshot().await;

    let mut foreign = line(&wallet, pb::Side::Credit, 5);
    foreign.currency = "EUR".to_owned();
    let unknown = pb::Account {
        account_id: uuid::Uuid::new_v4().to_string(),
        currency: "EUR".to_owned(),
        ..cash.clone()
    };
    let invalid: Vec<(pb::PostEntryRequest, Vec<&str>)> = vec![
        (
            entry(
                "unbalanced",
                vec![line(&cash, pb::Side::Debit, 10), line(&sales, pb::Side::Credit, 9)],
            ),
            vec!["lines"],
        ),
        (entry("one-line", vec![line(&cash, pb::Side::Debit, 10)]), vec!["lines"]),
        (
            entry(
                "zero",
                vec![line(&cash, pb::Side::Debit, 0), line(&sales, pb::Side::Credit, 0)],
            ),
            vec!["lines[0].amount", "lines[1].amount"],
        ),
        (
            entry(
                "negative",
                vec![line(&cash, pb::Side::Debit, -5), line(&sales, pb::Side::Credit, -5)],
            ),
            vec!["lines[0].amount", "lines[1].amount"],
        ),
        (
            entry(
                "no side",
                vec![
                    pb::EntryLine {
                        side: 0,
                        ..line(&cash, pb::Side::Debit, 5)
                    },
                    line(&sales, pb::Side::Credit, 5),
                ],
            ),
            vec!["entry_id", "lines[0].side"],
        ),
        (
            entry(
                "bad-currency",
                vec![
                    pb::EntryLine {
                        currency: "EURO".to_owned(),
                        ..line(&cash, pb::Side::Debit, 5)
                    },
                    line(&sales, pb::Side::Credit, 5),
                ],
            ),
            vec!["lines[0].currency"],
        ),
    ];
    for (request, fields) in invalid {
        let status = client.post_entry(request.clone()).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{}: {status:?}", request.entry_id);
        assert_eq!(bad_fields(&status), fields, "{}", request.entry_id);
    }
    let refused: Vec<(pb::PostEntryRequest, &str)> = vec![
        (
            entry(
                "unknown-account",
                vec![line(&cash, pb::Side::Debit, 5), line(&unknown, pb::Side::Credit, 5)],
            ),
            "account.unknown",
        ),
        (
            entry("foreign-currency", vec![line(&cash, pb::Side::Debit, 5), foreign]),
            "CURRENCY_MISMATCH",
        ),
        (
            entry(
                "overdraw-cash",
                vec![
                    line(&cash, pb::Side::Credit, 1_001),
                    line(&sales, pb::Side::Debit, 1_001),
                ],
            ),
            "LIMIT_EXCEEDED",
        ),
        (
            entry(
                "overdraw-card",
                vec![line(&card, pb::Side::Debit, 501), line(&cash, pb::Side::Credit, 501)],
            ),
            "LIMIT_EXCEEDED",
        ),
    ];
    for (request, rule) in refused {
        let status = client.post_entry(request.clone()).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{}: {status:?}",
            request.entry_id
        );
        assert_eq!(
            broken_rules(&status),
            [rule],
            "{}: {}",
            request.entry_id,
            status.message()
        );
    }
    let reused = entry(
        "sale-1",
        vec![line(&cash, pb::Side::Debit, 999), line(&sales, pb::Side::Credit, 999)],
    );
    let status = client.post_entry(reused).await.expect_err("reused entry id");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(broken_rules(&status), ["ENTRY_ID_REUSED"]);

    // The idempotency-key metadata, when sent, must name the entry id (PostEntry is idempotent on it).
    let keyed = with_idempotency_key(
        entry(
            "sale-2",
            vec![line(&cash, pb::Side::Debit, 300), line(&sales, pb::Side::Credit, 300)],
        ),
        "another-key",
    );
    let status = client
        .post_entry(keyed)
        .await
        .expect_err("key differs from the entry id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["idempotency-key"]);
    let keyed = with_idempotency_key(entry("sale-3", vec![]), "another-key");
    let status = client
        .post_entry(keyed)
        .await
        .expect_err("no lines and a key that differs");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        ["lines", "idempotency-key"],
        "every violation at once"
    );

    assert_eq!(snapshot().await, before, "rejected entries changed nothing");

    let keyed = with_idempotency_key(sale.clone(), "sale-1");
    let replay = client
        .post_entry(keyed)
        .await
        .expect("replay with the entry id as key")
        .into_inner();
    assert_eq!(
        replay, first,
        "the same entry with a matching key gets the first response"
    );
    let replay = client.post_entry(sale).await.expect("replay").into_inner();
    assert_eq!(replay, first, "the same entry again gets the first response");
    // Within the limit: the card may go to -500.
    client
        .post_entry(entry(
            "card-500",
            vec![line(&card, pb::Side::Debit, 500), line(&cash, pb::Side::Credit, 500)],
        ))
        .await
        .expect("down to the limit");
    assert_eq!(harness.balance(&card.account_id).await.balance, -500);
    assert_books_consistent(&harness, &[cash, sales, wallet, card]).await;

    let duplicate = client
        .create_account(pb::CreateAccountRequest {
            code: "cash".to_owned(),
            name: "again".to_owned(),
            r#type: pb::AccountType::Asset as i32,
            currency: "EUR".to_owned(),
            overdraft_policy: pb::OverdraftPolicy::Forbidden as i32,
            overdraft_limit: 0,
        })
        .await
        .expect_err("code taken");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let invalid_account = client
        .create_account(pb::CreateAccountRequest {
            code: "system:mine".to_owned(),
            name: String::new(),
            r#type: 0,
            currency: "EUR".to_owned(),
            overdraft_policy: pb::OverdraftPolicy::Limited as i32,
            overdraft_limit: 0,
        })
        .await
        .expect_err("invalid account");
    assert_eq!(
        bad_fields(&invalid_account),
        ["code", "name", "type", "overdraft_limit"]
    );
    harness.stop().await;
}

#[tokio::test]
async fn balances_can_be_read_as_of_any_version_or_time_and_streams_page() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let mut client = harness.client.clone();
    let entries_topic = reader(
        &fintech_tests::kafka_bootstrap(),
        &[&harness.topic("ledger.entry_posted")],
    );
    let cash = harness
        .open_account("cash", pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Unlimited, 0)
        .await;
    let equity = harness
        .open_account(
            "equity",
            pb::AccountType::Equity,
            "EUR",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let mut times = Vec::new();
    let mut posted = Vec::new();
    for (index, amount) in [100, 250, 40, 5].into_iter().enumerate() {
        let response = client
            .post_entry(entry(
                &format!("capital-{index}"),
                vec![
                    line(&cash, pb::Side::Debit, amount),
                    line(&equity, pb::Side::Credit, amount),
                ],
            ))
            .await
            .expect("post")
            .into_inner();
        times.push(
            response
                .entry
                .as_ref()
                .and_then(|entry| entry.posted_at)
                .expect("posted_at"),
        );
        posted.push(response.entry.expect("entry"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running = [100, 350, 390, 395];
    for (index, expected) in running.into_iter().enumerate() {
        let by_version = harness
            .balance_as_of(&cash.account_id, Some(AsOf::AsOfVersion(index as i64 + 2)))
            .await;
        assert_eq!((by_version.balance, by_version.version), (expected, index as i64 + 2));
        let by_time = harness
            .balance_as_of(&equity.account_id, Some(AsOf::AsOfTime(times[index])))
            .await;
        assert_eq!((by_time.balance, by_time.version), (expected, index as i64 + 2));
    }
    let opened = harness
        .balance_as_of(&cash.account_id, Some(AsOf::AsOfVersion(1)))
        .await;
    assert_eq!((opened.balance, opened.version), (0, 1));
    let past_head = client
        .get_balance(pb::GetBalanceRequest {
            account_id: cash.account_id.clone(),
            as_of: Some(AsOf::AsOfVersion(6)),
        })
        .await
        .expect_err("past the head");
    assert_eq!(past_head.code(), Code::OutOfRange);

    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_account_events(pb::ListAccountEventsRequest {
                account_id: cash.account_id.clone(),
                page_size: 2,
                page_token,
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.events.len() <= 2);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        events.iter().map(|event| event.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(matches!(
        events[0].body,
        Some(pb::account_event::Body::AccountOpened(_))
    ));
    for pair in events.windows(2) {
        assert_eq!(pair[1].previous_hash, pair[0].hash, "the chain links");
    }
    let Some(pb::account_event::Body::Posting(posting)) = &events[2].body else {
        panic!("a posting");
    };
    assert_eq!((posting.entry_id.as_str(), posting.balance_after), ("capital-1", 350));

    let read = client
        .get_entry(pb::GetEntryRequest {
            entry_id: "capital-2".to_owned(),
        })
        .await
        .expect("get entry")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(read, posted[2], "GetEntry rebuilds what PostEntry returned");
    let missing = client
        .get_entry(pb::GetEntryRequest {
            entry_id: "nope".to_owned(),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);

    let by_code = client
        .get_account(pb::GetAccountRequest {
            code: "cash".to_owned(),
            ..Default::default()
        })
        .await
        .expect("by code")
        .into_inner();
    assert_eq!(by_code.account.as_ref().map(|account| account.version), Some(5));
    assert_eq!(by_code.balance.map(|balance| balance.balance), Some(395));
    let listed = client
        .list_accounts(pb::ListAccountsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.accounts[0].code, "cash");
    let rest = client
        .list_accounts(pb::ListAccountsRequest {
            page_size: 1,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.accounts[0].code, "equity");
    assert!(rest.next_page_token.is_empty());

    let records = read_records(&entries_topic, 4, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 4);
    for record in &records {
        let published = pb::Entry::decode(record.payload().expect("payload")).expect("an Entry");
        let original = posted
            .iter()
            .find(|entry| entry.entry_id == published.entry_id)
            .expect("a posted entry");
        assert_eq!(&published, original, "the full entry is published");
        assert_eq!(record.key(), Some(published.entry_id.as_bytes()));
    }
    assert!(read_extra(&entries_topic, Duration::from_millis(500)).await.is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn an_event_edited_in_the_database_is_reported_by_verify_stream() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start().await;
    let mut client = harness.client.clone();
    let cash = harness
        .open_account("cash", pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Unlimited, 0)
        .await;
    let sales = harness
        .open_account(
            "sales",
            pb::AccountType::Revenue,
            "EUR",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    for index in 0..4 {
        client
            .post_entry(entry(
                &format!("sale-{index}"),
                vec![line(&cash, pb::Side::Debit, 100), line(&sales, pb::Side::Credit, 100)],
            ))
            .await
            .expect("post");
    }
    let verify = |account_id: String| {
        let mut client = harness.client.clone();
        async move {
            client
                .verify_stream(pb::VerifyStreamRequest { account_id })
                .await
                .expect("verify")
                .into_inner()
        }
    };
    let intact = verify(cash.account_id.clone()).await;
    assert!(intact.valid, "{}", intact.reason);
    assert_eq!(intact.events_checked, 5);

    // Someone with database access turns the third event's 100 into 1 000 000.
    let edited = sqlx::query(
        "UPDATE ledger_events SET payload = jsonb_set(payload, '{lines,0,amount}', '1000000') \
         WHERE stream_id = $1::uuid AND version = 3",
    )
    .bind(&cash.account_id)
    .execute(&harness.db.pool)
    .await
    .expect("edit")
    .rows_affected();
    assert_eq!(edited, 1);
    let tampered = verify(cash.account_id.clone()).await;
    assert!(!tampered.valid);
    assert_eq!(tampered.first_invalid_version, 3, "{}", tampered.reason);
    assert_eq!(tampered.events_checked, 2);
    assert!(tampered.reason.contains("does not match"), "{}", tampered.reason);
    assert!(
        verify(sales.account_id.clone()).await.valid,
        "other streams are unaffected"
    );

    // Deleting the last event is caught by the stream head.
    sqlx::query("DELETE FROM ledger_events WHERE stream_id = $1::uuid AND version = 5")
        .bind(&sales.account_id)
        .execute(&harness.db.pool)
        .await
        .expect("delete");
    let truncated = verify(sales.account_id.clone()).await;
    assert_eq!((truncated.valid, truncated.first_invalid_version), (false, 5));
    harness.stop().await;
}

/// One hot account (a country's VAT payable) credited by every entry, posted with 32 requests in
/// flight, once with ordered stream locks (the default) and once with pure optimistic appends; and
/// as a baseline the same load with a VAT account per customer (nothing shared). Prints entries/s
/// and how many were refused with ABORTED; the numbers are quoted in
/// docs/adr/0004-ledger-hot-accounts.md. Run with
/// `cargo nextest run -p fintech-tests --test ledger --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement for ADR 0004, not a check"]
#[allow(clippy::print_stdout)]
async fn hot_account_throughput_with_and_without_ordered_locks() {
    use futures::StreamExt as _;

    let _telemetry = telemetry::init("test");
    for (lock_streams, shared_vat) in [(true, true), (false, true), (true, false)] {
        let harness = LedgerHarness::start_with(|config| {
            config.posting.lock_streams = lock_streams;
            config.tax_consumer_enabled = false;
            config.platform.database_max_connections = 32;
        })
        .await;
        let mut vats = Vec::new();
        for index in 0..if shared_vat { 1 } else { 32 } {
            vats.push(
                harness
                    .open_account(
                        &format!("vat-{index}"),
                        pb::AccountType::Liability,
                        "EUR",
                        pb::OverdraftPolicy::Unlimited,
                        0,
                    )
                    .await,
            );
        }
        let mut customers = Vec::new();
        let mut sales = Vec::new();
        for index in 0..32 {
            customers.push(
                harness
                    .open_account(
                        &format!("customer-{index}"),
                        pb::AccountType::Asset,
                        "EUR",
                        pb::OverdraftPolicy::Unlimited,
                        0,
                    )
                    .await,
            );
            sales.push(
                harness
                    .open_account(
                        &format!("sales-{index}"),
                        pb::AccountType::Revenue,
                        "EUR",
                        pb::OverdraftPolicy::Unlimited,
                        0,
                    )
                    .await,
            );
        }
        let total = 640usize;
        let started = std::time::Instant::now();
        let outcomes: Vec<Result<(), Code>> = futures::stream::iter(0..total)
            .map(|index| {
                let mut client = harness.client.clone();
                let request = entry(
                    &format!("hot-{index}"),
                    vec![
                        line(&customers[index % 32], pb::Side::Debit, 119),
                        line(&sales[index % 32], pb::Side::Credit, 100),
                        line(&vats[index % vats.len()], pb::Side::Credit, 19),
                    ],
                );
                async move {
                    client
                        .post_entry(request)
                        .await
                        .map(|_| ())
                        .map_err(|status| status.code())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let posted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        let aborted = outcomes
            .iter()
            .filter(|outcome| **outcome == Err(Code::Aborted))
            .count();
        let mut vat_total = 0;
        for vat in &vats {
            vat_total += harness.balance(&vat.account_id).await.balance;
        }
        assert_eq!(vat_total, 19 * posted as i64, "every posted entry, once");
        println!(
            "lock_streams={lock_streams} shared_vat={shared_vat}: {posted}/{total} posted, {aborted} aborted, {:.0} entries/s ({elapsed:?})",
            posted as f64 / elapsed.as_secs_f64()
        );
        harness.stop().await;
    }
}
