//! A PostgreSQL outage: every RPC of every service that needs the database answers UNAVAILABLE
//! (never INTERNAL, never a hang), health says NOT_SERVING, and when the database is back the same
//! processes serve again without a restart; none of their background tasks (relays, consumers,
//! the tax deadline sweeper) dies of the outage. Commands keep coming throughout: every acknowledged
//! one is stored afterwards, and its event is published and consumed by tax without a restart.
//!
//! The services run on a private PostgreSQL cluster of this test (`fintech_devkit::postgres`),
//! which it stops and starts; the shared server is never touched.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fintech_devkit::postgres::{PgCluster, StopMode};
use fintech_platform::CancellationToken;
use fintech_platform::kit::Service;
use fintech_proto::ledger as lpb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use fintech_proto::payments as ppb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use fintech_proto::tax as tpb;
use fintech_proto::tax::tax_service_client::TaxServiceClient;
use fintech_tests::payments::{connect, platform_config, unique_prefix};
use fintech_tests::service::Channel;
use fintech_tests::{create_topics, kafka_bootstrap};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// One service of the platform running in-process on the private cluster.
struct Running {
    name: &'static str,
    /// Its database on the private cluster.
    url: String,
    channel: Channel,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start<S: Service>(cluster: &PgCluster, prefix: &str, adjust: impl FnOnce(&mut S::Config)) -> Running {
    let url = cluster.create_database(S::NAME).expect("create the service database");
    let mut platform = platform_config(S::NAME, &url, &kafka_bootstrap());
    // The database is down for seconds, far less than a record's retry budget; a record retried
    // through the outage must still be applied afterwards, not dead-lettered (ADR 0012).
    platform.kafka_max_retry = Duration::from_secs(600);
    platform.topic_prefix = prefix.to_owned();
    // Small pool, so that a dead database is noticed quickly on every connection.
    platform.database_max_connections = 4;
    let mut config = S::config(platform);
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(S::run(config, listener, shutdown.clone()));
    Running {
        name: S::NAME,
        url,
        channel: connect(&address).await,
        shutdown,
        task,
    }
}

async fn health(channel: &Channel) -> Option<ServingStatus> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for_health(running: &Running, expected: ServingStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = health(&running.channel).await;
        if status == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} health is {status:?}, not {expected:?}, after {within:?}",
            running.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Call = Pin<Box<dyn Future<Output = (String, Result<(), tonic::Status>)> + Send>>;

fn call<T: Send + 'static>(
    name: &str,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
) -> Call {
    let name = name.to_owned();
    Box::pin(async move {
        let outcome = tokio::time::timeout(Duration::from_secs(30), future)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the test gave up after 30 s")));
        (name, outcome.map(|_| ()))
    })
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every RPC of the three services with a request that passes validation, so that each one has to
/// reach the database (QuoteTax excepted: it stores and reads nothing).
fn every_rpc(payments: &Channel, tax: &Channel, ledger: &Channel) -> Vec<Call> {
    let mut calls = Vec::new();
    let p = || PaymentsServiceClient::new(payments.clone());
    let t = || TaxServiceClient::new(tax.clone());
    let l = || LedgerServiceClient::new(ledger.clone());

    let mut client = p();
    calls.push(call("payments CreateOrder", async move {
        client
            .create_order(ppb::CreateOrderRequest {
                customer_id: "outage-customer".to_owned(),
                country: "DE".to_owned(),
                currency: "EUR".to_owned(),
                amount: 1000,
                product_type: "standard".to_owned(),
            })
            .await
    }));
    let mut client = p();
    calls.push(call("payments UpdateOrder", async move {
        client
            .update_order(ppb::UpdateOrderRequest {
                order_id: uuid(),
                expected_version: 1,
                amount: Some(2000),
                ..Default::default()
            })
            .await
    }));
    let mut client = p();
    calls.push(call("payments GetOrder", async move {
        client.get_order(ppb::GetOrderRequest { order_id: uuid() }).await
    }));
    let mut client = p();
    calls.push(call("payments ListOrders", async move {
        client
            .list_orders(ppb::ListOrdersRequest {
                customer_id: "outage-customer".to_owned(),
                ..Default::default()
            })
            .await
    }));
    let mut client = p();
    calls.push(call("payments CreateTransaction", async move {
        client
            .create_transaction(ppb::CreateTransactionRequest {
                order_id: uuid(),
                amount: 1000,
                currency: "EUR".to_owned(),
                status: ppb::TransactionStatus::Pending as i32,
            })
            .await
    }));
    let mut client = p();
    calls.push(call("payments UpdateTransactionStatus", async move {
        client
            .update_transaction_status(ppb::UpdateTransactionStatusRequest {
                transaction_id: uuid(),
                status: ppb::TransactionStatus::Succeeded as i32,
                expected_version: 1,
            })
            .await
    }));
    let mut client = p();
    calls.push(call("payments GetTransaction", async move {
        client
            .get_transaction(ppb::GetTransactionRequest { transaction_id: uuid() })
            .await
    }));
    let mut client = p();
    calls.push(call("payments ListTransactions", async move {
        client
            .list_transactions(ppb::ListTransactionsRequest {
                order_id: uuid(),
                ..Default::default()
            })
            .await
    }));

    let mut client = t();
    calls.push(call("tax GetTaxedTransaction", async move {
        client
            .get_taxed_transaction(tpb::GetTaxedTransactionRequest { transaction_id: uuid() })
            .await
    }));
    let mut client = t();
    calls.push(call("tax ListTaxedTransactions", async move {
        client
            .list_taxed_transactions(tpb::ListTaxedTransactionsRequest {
                order_id: uuid(),
                ..Default::default()
            })
            .await
    }));
    let mut client = t();
    calls.push(call("tax ListFailed", async move {
        client.list_failed(tpb::ListFailedRequest::default()).await
    }));
    let mut client = t();
    calls.push(call("tax RetryFailed", async move {
        client
            .retry_failed(tpb::RetryFailedRequest { transaction_id: uuid() })
            .await
    }));

    let mut client = l();
    calls.push(call("ledger CreateAccount", async move {
        client
            .create_account(lpb::CreateAccountRequest {
                code: format!("outage-{}", uuid::Uuid::new_v4().simple()),
                name: "outage".to_owned(),
                r#type: lpb::AccountType::Asset as i32,
                currency: "EUR".to_owned(),
                overdraft_policy: lpb::OverdraftPolicy::Forbidden as i32,
                overdraft_limit: 0,
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger GetAccount", async move {
        client
            .get_account(lpb::GetAccountRequest {
                account_id: uuid(),
                code: String::new(),
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger ListAccounts", async move {
        client.list_accounts(lpb::ListAccountsRequest::default()).await
    }));
    let mut client = l();
    calls.push(call("ledger PostEntry", async move {
        let line = |side: lpb::Side| lpb::EntryLine {
            account_id: uuid(),
            side: side as i32,
            amount: 500,
            currency: "EUR".to_owned(),
        };
        client
            .post_entry(lpb::PostEntryRequest {
                entry_id: format!("outage-{}", uuid::Uuid::new_v4().simple()),
                description: "outage".to_owned(),
                metadata: Default::default(),
                lines: vec![line(lpb::Side::Debit), line(lpb::Side::Credit)],
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger GetEntry", async move {
        client
            .get_entry(lpb::GetEntryRequest {
                entry_id: "outage-entry".to_owned(),
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger GetBalance", async move {
        client
            .get_balance(lpb::GetBalanceRequest {
                account_id: uuid(),
                as_of: None,
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger ListAccountEvents", async move {
        client
            .list_account_events(lpb::ListAccountEventsRequest {
                account_id: uuid(),
                ..Default::default()
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger GetTrialBalance", async move {
        client
            .get_trial_balance(lpb::GetTrialBalanceRequest {
                currency: "EUR".to_owned(),
            })
            .await
    }));
    let mut client = l();
    calls.push(call("ledger VerifyStream", async move {
        client
            .verify_stream(lpb::VerifyStreamRequest { account_id: uuid() })
            .await
    }));
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_is_unavailable_while_postgres_is_down_and_the_services_recover_without_a_restart() {
    let mut cluster = PgCluster::start().expect("private PostgreSQL cluster starts");
    let prefix = unique_prefix();
    let mut topics: Vec<String> = fintech_payments::events::TOPICS
        .iter()
        .chain(fintech_tax::events::INPUT_TOPICS.iter())
        .chain(fintech_tax::events::OUTPUT_TOPICS.iter())
        .chain(fintech_ledger::events::TOPICS.iter())
        .map(|topic| format!("{prefix}{topic}"))
        .collect();
    topics.sort();
    topics.dedup();
    create_topics(
        &kafka_bootstrap(),
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        3,
    )
    .await;

    let payments = start::<fintech_payments::Payments>(&cluster, &prefix, |_| {}).await;
    let tax = start::<fintech_tax::Tax>(&cluster, &prefix, |config| {
        config.sweep_interval = Duration::from_millis(200);
    })
    .await;
    let ledger = start::<fintech_ledger::LedgerService>(&cluster, &prefix, |_| {}).await;
    let services = [&payments, &tax, &ledger];
    for service in services {
        wait_for_health(service, ServingStatus::Serving, Duration::from_secs(30)).await;
    }

    // Up: the calls reach the database and get its answers (found, not found, created).
    let answered = futures::future::join_all(every_rpc(&payments.channel, &tax.channel, &ledger.channel)).await;
    for (name, outcome) in &answered {
        if let Err(status) = outcome {
            assert_ne!(status.code(), Code::Unavailable, "{name} before the outage: {status:?}");
            assert_ne!(status.code(), Code::Internal, "{name} before the outage: {status:?}");
        }
    }

    // Load across the outage: commands keep coming; the acknowledged ones must all be there
    // afterwards, published and consumed.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let load_stop = CancellationToken::new();
    let load = tokio::spawn({
        let (acknowledged, load_stop) = (Arc::clone(&acknowledged), load_stop.clone());
        let mut client = PaymentsServiceClient::new(payments.channel.clone());
        async move {
            let mut n = 0u64;
            while !load_stop.is_cancelled() {
                n += 1;
                let mut request = tonic::Request::new(ppb::CreateOrderRequest {
                    customer_id: format!("load-customer-{n}"),
                    country: "DE".to_owned(),
                    currency: "EUR".to_owned(),
                    amount: 1_000,
                    product_type: "standard".to_owned(),
                });
                request.set_timeout(Duration::from_secs(10));
                request
                    .metadata_mut()
                    .insert("idempotency-key", format!("load-{n}").parse().expect("ascii"));
                if let Ok(response) = client.create_order(request).await
                    && let Some(order) = response.into_inner().order
                {
                    acknowledged.lock().expect("lock").push(order.order_id);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.stop(StopMode::Fast).expect("the private cluster stops");
    let during = futures::future::join_all(every_rpc(&payments.channel, &tax.channel, &ledger.channel)).await;
    let mut wrong = Vec::new();
    for (name, outcome) in &during {
        let code = outcome.as_ref().err().map(tonic::Status::code);
        if code != Some(Code::Unavailable) {
            wrong.push(format!("{name}: {outcome:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "during the outage, every RPC must answer UNAVAILABLE:\n{}",
        wrong.join("\n")
    );
    // The quote needs no database and keeps answering.
    let quote = TaxServiceClient::new(tax.channel.clone())
        .quote_tax(tpb::QuoteTaxRequest {
            country: "DE".to_owned(),
            product_type: "standard".to_owned(),
            amount: 10_000,
            currency: "EUR".to_owned(),
            tax_date: None,
        })
        .await
        .expect("QuoteTax needs no database");
    assert_eq!(quote.into_inner().tax_applied, 1_900);
    for service in services {
        wait_for_health(service, ServingStatus::NotServing, Duration::from_secs(20)).await;
        assert!(
            !service.task.is_finished(),
            "{} stopped during the outage",
            service.name
        );
    }

    cluster.start_again().expect("the private cluster starts again");
    for service in services {
        wait_for_health(service, ServingStatus::Serving, Duration::from_secs(30)).await;
    }
    // Back: the same processes answer every RPC from the database again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let after = futures::future::join_all(every_rpc(&payments.channel, &tax.channel, &ledger.channel)).await;
        let failing: Vec<String> = after
            .iter()
            .filter_map(|(name, outcome)| match outcome {
                Err(status) if matches!(status.code(), Code::Unavailable | Code::Internal) => {
                    Some(format!("{name}: {status:?}"))
                }
                _ => None,
            })
            .collect();
        if failing.is_empty() {
            let created = after
                .iter()
                .filter(|(name, outcome)| {
                    outcome.is_ok() && (name == "payments CreateOrder" || name == "ledger CreateAccount")
                })
                .count();
            assert_eq!(created, 2, "commands succeed again after the outage: {after:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "30 s after the database came back, still failing:\n{}",
            failing.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every acknowledged command is there, and the relay and tax's consumer resumed by
    // themselves: each acknowledged order reached tax's order cache.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load_stop.cancel();
    load.await.expect("load task");
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(!acknowledged.is_empty(), "the load got commands through");
    let payments_db = sqlx::PgPool::connect(&payments.url).await.expect("payments database");
    let tax_db = sqlx::PgPool::connect(&tax.url).await.expect("tax database");
    let ids: Vec<uuid::Uuid> = acknowledged.iter().map(|id| id.parse().expect("uuid")).collect();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = ANY($1)")
        .bind(&ids)
        .fetch_one(&payments_db)
        .await
        .expect("count orders");
    assert_eq!(stored, ids.len() as i64, "every acknowledged command is stored");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM order_cache WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_one(&tax_db)
            .await
            .expect("count cached orders");
        if cached == ids.len() as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{cached} of {} acknowledged orders reached tax after the outage",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    payments_db.close().await;
    tax_db.close().await;

    for service in [payments, tax, ledger] {
        service.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), service.task)
            .await
            .unwrap_or_else(|_| panic!("{} stops within 60 s", service.name))
            .expect("service task")
            .unwrap_or_else(|error| panic!("{} stopped with an error: {error:#}", service.name));
    }
}
