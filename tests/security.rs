//! Authentication and authorization of every RPC (issue 15).
//!
//! - **The matrix**: for every RPC of every service, enumerated from the contracts' descriptor set
//!   (a new RPC is covered without editing this file), every kind of bad token gets the right code
//!   and a snapshot of the service's database shows nothing written.
//! - **The abuse cases**: each would succeed on a platform without authentication.
//! - **The contract check**: every RPC declares its scope (the service would refuse to start).

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

use base64::Engine as _;
use fintech_devkit::auth::{Claims, SigningKey, now_secs};
use fintech_platform::auth::{Rule, every_rule};
use fintech_proto::ledger as lpb;
use fintech_proto::payments as ppb;
use fintech_proto::tax as tpb;
use fintech_tests::accounts::AccountsHarness;
use fintech_tests::auth::{customer_token, operator_token, scoped_token, signing_key, token};
use fintech_tests::ledger::{LedgerHarness, line};
use fintech_tests::payments::PaymentsHarness;
use fintech_tests::service::{connect_raw, connect_with_token};
use fintech_tests::tax::TaxHarness;
use jsonwebtoken::{Algorithm, Header};
use sqlx::{PgPool, Row};
use tonic::Code;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Every service's methods and rules, from the embedded descriptor set.
fn rules_of(service: &str) -> Vec<(String, Rule)> {
    let all = every_rule(fintech_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let methods = all
        .get(service)
        .unwrap_or_else(|| panic!("{service} is in the descriptor set"));
    methods
        .iter()
        .map(|(method, rule)| {
            let rule = rule
                .clone()
                .unwrap_or_else(|| panic!("{service}/{method} declares a scope"));
            (format!("/{service}/{method}"), rule)
        })
        .collect()
}

#[test]
fn every_rpc_of_every_service_declares_its_scope() {
    let all = every_rule(fintech_proto::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut undeclared = Vec::new();
    let mut counted = 0;
    for (service, methods) in all.iter().filter(|(service, _)| service.starts_with("fintech.")) {
        for (method, rule) in methods {
            counted += 1;
            if rule.is_none() {
                undeclared.push(format!("{service}/{method}"));
            }
        }
    }
    assert!(counted >= 22, "the contracts have their RPCs ({counted})");
    assert!(
        undeclared.is_empty(),
        "RPCs without fintech.common.v1.authorization: {undeclared:?}"
    );
}

/// A token signed by this process's key whose claims are the operator's, changed by `change`.
fn operator_with(change: impl FnOnce(&mut Claims)) -> String {
    let mut claims = Claims::operator("matrix-operator");
    change(&mut claims);
    token(&claims)
}

/// The kinds of bad token and the code each must get, for a method requiring `rule`.
fn bad_tokens(rule: &Rule) -> Vec<(&'static str, Option<String>, Code)> {
    let now = now_secs();
    let valid = operator_token();
    let (signed, signature) = valid.rsplit_once('.').expect("three parts");
    let (header, _payload) = signed.split_once('.').expect("three parts");
    // Tampered: the same header and signature over claims that say something else.
    let forged_claims = serde_json::to_vec(&Claims::operator("someone-else")).expect("claims");
    let tampered = format!("{header}.{}.{signature}", B64.encode(forged_claims));
    // alg none: no signature at all.
    let none_header = B64.encode(format!(
        r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
        signing_key().kid()
    ));
    let payload = B64.encode(serde_json::to_vec(&Claims::operator("matrix-operator")).expect("claims"));
    let alg_none = format!("{none_header}.{payload}.");
    // HS256 keyed with the public JWKS (algorithm confusion).
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(signing_key().kid().to_owned());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &Claims::operator("matrix-operator"),
        &jsonwebtoken::EncodingKey::from_secret(signing_key().jwks_json().as_bytes()).expect("hmac key"),
    )
    .expect("hs256 token");
    // A well-formed token from a key the service does not know.
    let stranger = SigningKey::generate().mint(&Claims::operator("matrix-operator"));
    let scopes_without: Vec<&str> = fintech_tests::auth::all_scopes()
        .iter()
        .copied()
        .filter(|scope| *scope != rule.scope)
        .collect();
    let mut cases = vec![
        ("no token", None, Code::Unauthenticated),
        ("garbage", Some("not-a-jwt".to_owned()), Code::Unauthenticated),
        (
            "expired",
            Some(operator_with(|claims| {
                claims.iat = now - 7200;
                claims.nbf = Some(now - 7200);
                claims.exp = now - 600;
            })),
            Code::Unauthenticated,
        ),
        (
            "not yet valid",
            Some(operator_with(|claims| claims.nbf = Some(now + 600))),
            Code::Unauthenticated,
        ),
        (
            "wrong issuer",
            Some(operator_with(|claims| {
                claims.iss = "https://elsewhere.example".to_owned()
            })),
            Code::Unauthenticated,
        ),
        (
            "wrong audience",
            Some(operator_with(|claims| claims.aud = "another-platform".to_owned())),
            Code::Unauthenticated,
        ),
        ("tampered signature", Some(tampered), Code::Unauthenticated),
        ("alg none", Some(alg_none), Code::Unauthenticated),
        ("hs256 with the public key", Some(confused), Code::Unauthenticated),
        ("unknown kid", Some(stranger), Code::Unauthenticated),
        (
            "wrong scope",
            Some(scoped_token("matrix-operator", &scopes_without)),
            Code::PermissionDenied,
        ),
    ];
    if !rule.customers {
        cases.push((
            "customer token on an operator method",
            Some(customer_token("matrix-customer", &[rule.scope.as_str()])),
            Code::PermissionDenied,
        ));
    }
    cases
}

/// Calls `path` with an empty request message and `token` (if any); the code of the answer.
async fn call(address: &str, path: &str, token: Option<&str>) -> Code {
    let channel = connect_raw(address).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    }
    request
        .metadata_mut()
        .insert("idempotency-key", "matrix-key".parse().expect("ascii"));
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_str(path).expect("path");
    match grpc.unary(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Every table of the database with a digest of its rows.
async fn snapshot(pool: &PgPool) -> BTreeMap<String, String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut digests = BTreeMap::new();
    for table in tables {
        let row = sqlx::query(&format!(
            "SELECT count(*) AS rows, md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) AS digest \
             FROM \"{table}\" t"
        ))
        .fetch_one(pool)
        .await
        .expect("digest");
        let rows: i64 = row.get("rows");
        let digest: String = row.get("digest");
        digests.insert(table, format!("{rows} rows, {digest}"));
    }
    digests
}

/// Waits until the service reports SERVING (migrated, its start-up writes done).
async fn wait_serving(address: &str) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect_raw(address).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|response| response.into_inner().status);
        if status
            .as_ref()
            .is_ok_and(|status| *status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{address} never served: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_matrix(service: &str, address: &str, pool: &PgPool) {
    let rules = rules_of(service);
    assert!(!rules.is_empty(), "{service} has RPCs");
    wait_serving(address).await;
    let before = snapshot(pool).await;
    let mut wrong = Vec::new();
    for (path, rule) in &rules {
        for (case, token, expected) in bad_tokens(rule) {
            let code = call(address, path, token.as_deref()).await;
            if code != expected {
                wrong.push(format!("{path} with {case}: {code:?}, expected {expected:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    // The outbox relay marks rows published; nothing else may change.
    let after = snapshot(pool).await;
    assert_eq!(before, after, "{service}: a refused request wrote something");
    // And a good token does reach the service (the matrix is not passing because nothing works).
    let first = &rules[0];
    let code = call(address, &first.0, Some(&operator_token())).await;
    assert!(
        !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
        "{}: an operator token is let through, got {code:?}",
        first.0
    );
}

#[tokio::test]
async fn every_payments_rpc_refuses_every_bad_token_and_writes_nothing() {
    let payments = PaymentsHarness::start().await;
    run_matrix(fintech_payments::SERVICE_NAME, &payments.address, &payments.db.pool).await;
    payments.stop().await;
}

#[tokio::test]
async fn every_tax_rpc_refuses_every_bad_token_and_writes_nothing() {
    let tax = TaxHarness::start(&fintech_tests::service::unique_prefix(), Duration::from_secs(60)).await;
    run_matrix(fintech_tax::SERVICE_NAME, &tax.address, &tax.db.pool).await;
    tax.stop().await;
}

#[tokio::test]
async fn every_ledger_rpc_refuses_every_bad_token_and_writes_nothing() {
    let ledger = LedgerHarness::start().await;
    run_matrix(fintech_ledger::SERVICE_NAME, &ledger.address, &ledger.db.pool).await;
    ledger.stop().await;
}

#[tokio::test]
async fn every_accounts_rpc_refuses_every_bad_token_and_writes_nothing() {
    let accounts = AccountsHarness::start().await;
    run_matrix(fintech_accounts::SERVICE_NAME, &accounts.address, &accounts.db.pool).await;
    accounts.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer_without_a_token() {
    let payments = PaymentsHarness::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect_raw(&payments.address).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is open");
    let code = call(&payments.address, "/fintech.payments.v1.PaymentsService/GetOrder", None).await;
    assert_eq!(code, Code::Unauthenticated);
    payments.stop().await;
}

// ------------------------------------------------------------------------------------------------
// The abuse cases of the issue, one test each.

fn order_request(customer: &str) -> ppb::CreateOrderRequest {
    ppb::CreateOrderRequest {
        customer_id: customer.to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount: 10_000,
        product_type: "standard".to_owned(),
    }
}

#[tokio::test]
async fn an_unauthenticated_caller_cannot_post_entries_and_nobody_posts_to_system_accounts() {
    let ledger = LedgerHarness::start().await;
    wait_serving(&ledger.address).await;
    // The ledger opens its system accounts itself when its first tax event needs them; open the
    // EUR settlement account the same way.
    fintech_ledger::app::posting::Ledger::new(
        ledger.db.pool.clone(),
        fintech_platform::idempotency::IdempotencyStore::new(None).expect("store"),
        fintech_ledger::events::Topics::with_prefix(&ledger.prefix),
        fintech_ledger::app::posting::PostingSettings::default(),
    )
    .ensure_system_accounts(&[fintech_ledger::domain::tax::SystemAccount::settlement(
        &fintech_types::Currency::parse("EUR").expect("EUR"),
    )])
    .await
    .expect("system account opened");
    let settlement = ledger
        .client
        .clone()
        .get_account(lpb::GetAccountRequest {
            code: "system:settlement:EUR".to_owned(),
            ..Default::default()
        })
        .await
        .expect("system account exists")
        .into_inner()
        .account
        .expect("account");
    let cash = ledger
        .open_account(
            "cash-eur",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let entry = |entry_id: &str| lpb::PostEntryRequest {
        entry_id: entry_id.to_owned(),
        description: "abuse".to_owned(),
        lines: vec![
            line(&settlement, lpb::Side::Debit, 1_000),
            line(&cash, lpb::Side::Credit, 1_000),
        ],
        ..Default::default()
    };
    let before = snapshot(&ledger.db.pool).await;
    let anonymous = lpb::ledger_service_client::LedgerServiceClient::new(connect_raw(&ledger.address).await);
    let refused = anonymous
        .clone()
        .post_entry(entry("anonymous-1"))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // Even a poster may not touch the ledger's own accounts.
    let poster = lpb::ledger_service_client::LedgerServiceClient::new(
        connect_with_token(&ledger.address, &scoped_token("poster", &["ledger.post"])).await,
    );
    let refused = poster.clone().post_entry(entry("poster-1")).await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("system:settlement:EUR"),
        "{}",
        refused.message()
    );
    assert_eq!(before, snapshot(&ledger.db.pool).await, "nothing was posted");
    ledger.stop().await;
}

#[tokio::test]
async fn the_entry_ids_of_the_ledgers_own_postings_cannot_be_taken_through_the_api() {
    let ledger = LedgerHarness::start().await;
    let a = ledger
        .open_account(
            "a-eur",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let b = ledger
        .open_account(
            "b-eur",
            lpb::AccountType::Liability,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let poster = lpb::ledger_service_client::LedgerServiceClient::new(
        connect_with_token(&ledger.address, &scoped_token("poster", &["ledger.post"])).await,
    );
    for entry_id in [
        format!("tax:{}", uuid::Uuid::new_v4()),
        format!("tax-reversal:{}", uuid::Uuid::new_v4()),
        format!("TAX:{}", uuid::Uuid::new_v4()),
    ] {
        let refused = poster
            .clone()
            .post_entry(lpb::PostEntryRequest {
                entry_id: entry_id.clone(),
                description: "squatting".to_owned(),
                lines: vec![line(&a, lpb::Side::Debit, 5), line(&b, lpb::Side::Credit, 5)],
                ..Default::default()
            })
            .await
            .expect_err("reserved id refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{entry_id}: {refused:?}");
    }
    ledger.stop().await;
}

#[tokio::test]
async fn no_api_call_pushes_a_balance_towards_the_int64_edge() {
    let ledger = LedgerHarness::start().await;
    let a = ledger
        .open_account(
            "edge-a",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let b = ledger
        .open_account(
            "edge-b",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let post = |id: String, amount: i64| {
        let mut client = ledger.client.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            client
                .post_entry(lpb::PostEntryRequest {
                    entry_id: id,
                    description: "edge".to_owned(),
                    lines: vec![line(&a, lpb::Side::Debit, amount), line(&b, lpb::Side::Credit, amount)],
                    ..Default::default()
                })
                .await
        }
    };
    let refused = post("edge-huge".to_owned(), i64::MAX)
        .await
        .expect_err("one huge line refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let step = fintech_ledger::domain::entry::MAX_LINE_AMOUNT;
    let steps = fintech_ledger::domain::entry::MAX_ABS_BALANCE / step;
    for index in 0..steps {
        post(format!("edge-{index}"), step).await.expect("within the limit");
    }
    let refused = post("edge-over".to_owned(), step)
        .await
        .expect_err("beyond the balance limit");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("limit"), "{}", refused.message());
    // The books still add up, and other postings still work.
    let currencies = ledger.trial_balance().await;
    assert!(currencies.iter().all(|currency| currency.net == 0), "{currencies:?}");
    let c = ledger
        .open_account(
            "edge-c",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    ledger
        .client
        .clone()
        .post_entry(lpb::PostEntryRequest {
            entry_id: "edge-after".to_owned(),
            description: "still works".to_owned(),
            lines: vec![line(&c, lpb::Side::Debit, 10), line(&a, lpb::Side::Credit, 10)],
            ..Default::default()
        })
        .await
        .expect("another EUR posting still works");
    ledger.stop().await;
}

#[tokio::test]
async fn customer_a_cannot_read_or_list_customer_bs_orders_and_cannot_tell_whether_they_exist() {
    let payments = PaymentsHarness::start().await;
    let b_order = payments
        .client
        .clone()
        .create_order(order_request("customer-b"))
        .await
        .expect("order of b")
        .into_inner()
        .order
        .expect("order");
    let b_transaction = payments
        .client
        .clone()
        .create_transaction(ppb::CreateTransactionRequest {
            order_id: b_order.order_id.clone(),
            amount: 10_000,
            currency: "EUR".to_owned(),
            status: ppb::TransactionStatus::Pending as i32,
        })
        .await
        .expect("transaction of b")
        .into_inner()
        .transaction
        .expect("transaction");
    let a = ppb::payments_service_client::PaymentsServiceClient::new(
        connect_with_token(
            &payments.address,
            &customer_token("customer-a", &["payments.read", "payments.write"]),
        )
        .await,
    );
    let missing = uuid::Uuid::new_v4().to_string();
    let theirs = a
        .clone()
        .get_order(ppb::GetOrderRequest {
            order_id: b_order.order_id.clone(),
        })
        .await
        .expect_err("not a's");
    let nobodys = a
        .clone()
        .get_order(ppb::GetOrderRequest {
            order_id: missing.clone(),
        })
        .await
        .expect_err("missing");
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(nobodys.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace(&b_order.order_id, "ID"),
        nobodys.message().replace(&missing, "ID"),
        "the same answer for another's order and a missing one"
    );
    let listed = a
        .clone()
        .list_orders(ppb::ListOrdersRequest {
            customer_id: "customer-b".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("cannot list b's orders");
    assert_eq!(listed.code(), Code::PermissionDenied);
    let transaction = a
        .clone()
        .get_transaction(ppb::GetTransactionRequest {
            transaction_id: b_transaction.transaction_id.clone(),
        })
        .await
        .expect_err("not a's transaction");
    assert_eq!(transaction.code(), Code::NotFound);
    let transactions = a
        .clone()
        .list_transactions(ppb::ListTransactionsRequest {
            order_id: b_order.order_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("not a's order");
    assert_eq!(transactions.code(), Code::NotFound);
    let paid = a
        .clone()
        .create_transaction(ppb::CreateTransactionRequest {
            order_id: b_order.order_id.clone(),
            amount: 1,
            currency: "EUR".to_owned(),
            status: ppb::TransactionStatus::Pending as i32,
        })
        .await
        .expect_err("cannot pay into b's order");
    assert_eq!(paid.code(), Code::NotFound);
    let created = a
        .clone()
        .create_order(order_request("customer-b"))
        .await
        .expect_err("cannot order for b");
    assert_eq!(created.code(), Code::PermissionDenied);
    // a's own data works.
    let own = a
        .clone()
        .create_order(order_request("customer-a"))
        .await
        .expect("own order")
        .into_inner()
        .order
        .expect("order");
    let listed = a
        .clone()
        .list_orders(ppb::ListOrdersRequest {
            customer_id: "customer-a".to_owned(),
            ..Default::default()
        })
        .await
        .expect("own list")
        .into_inner();
    assert_eq!(listed.orders.len(), 1);
    assert_eq!(listed.orders[0].order_id, own.order_id);
    payments.stop().await;
}

#[tokio::test]
async fn a_customer_cannot_create_a_transaction_that_already_succeeded_or_change_its_status() {
    let payments = PaymentsHarness::start().await;
    let customer = ppb::payments_service_client::PaymentsServiceClient::new(
        connect_with_token(
            &payments.address,
            &customer_token("customer-s", &["payments.read", "payments.write"]),
        )
        .await,
    );
    let order = customer
        .clone()
        .create_order(order_request("customer-s"))
        .await
        .expect("own order")
        .into_inner()
        .order
        .expect("order");
    for status in [ppb::TransactionStatus::Succeeded, ppb::TransactionStatus::Refunded] {
        let refused = customer
            .clone()
            .create_transaction(ppb::CreateTransactionRequest {
                order_id: order.order_id.clone(),
                amount: 10_000,
                currency: "EUR".to_owned(),
                status: status as i32,
            })
            .await
            .expect_err("customers create only pending transactions");
        assert_eq!(refused.code(), Code::PermissionDenied, "{status:?}: {refused:?}");
    }
    let pending = customer
        .clone()
        .create_transaction(ppb::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: 10_000,
            currency: "EUR".to_owned(),
            status: ppb::TransactionStatus::Pending as i32,
        })
        .await
        .expect("pending is fine")
        .into_inner()
        .transaction
        .expect("transaction");
    let refused = customer
        .clone()
        .update_transaction_status(ppb::UpdateTransactionStatusRequest {
            transaction_id: pending.transaction_id.clone(),
            expected_version: 1,
            status: ppb::TransactionStatus::Succeeded as i32,
        })
        .await
        .expect_err("only the payment system settles");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&payments.db.pool)
        .await
        .expect("count");
    assert_eq!(transactions, 1);
    payments.stop().await;
}

#[tokio::test]
async fn customers_cannot_list_taxed_transactions_or_failures_of_others_nor_retry_failures() {
    let tax = TaxHarness::start(&fintech_tests::service::unique_prefix(), Duration::from_secs(60)).await;
    let customer = tpb::tax_service_client::TaxServiceClient::new(
        connect_with_token(
            &tax.address,
            &customer_token("customer-t", &["tax.read", "tax.operate"]),
        )
        .await,
    );
    let listed = customer
        .clone()
        .list_taxed_transactions(tpb::ListTaxedTransactionsRequest {
            customer_id: "customer-other".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("another customer's results");
    assert_eq!(listed.code(), Code::PermissionDenied);
    let failures = customer
        .clone()
        .list_failed(tpb::ListFailedRequest::default())
        .await
        .expect_err("operators only");
    assert_eq!(failures.code(), Code::PermissionDenied);
    let before = snapshot(&tax.db.pool).await;
    let reader = tpb::tax_service_client::TaxServiceClient::new(
        connect_with_token(&tax.address, &scoped_token("reader", &["tax.read"])).await,
    );
    let anonymous = tpb::tax_service_client::TaxServiceClient::new(connect_raw(&tax.address).await);
    for _ in 0..5 {
        let retry = tpb::RetryFailedRequest {
            transaction_id: uuid::Uuid::new_v4().to_string(),
        };
        let refused = anonymous
            .clone()
            .retry_failed(retry.clone())
            .await
            .expect_err("anonymous");
        assert_eq!(refused.code(), Code::Unauthenticated);
        let refused = customer
            .clone()
            .retry_failed(retry.clone())
            .await
            .expect_err("customer");
        assert_eq!(refused.code(), Code::PermissionDenied);
        let refused = reader.clone().retry_failed(retry).await.expect_err("reader");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    assert_eq!(before, snapshot(&tax.db.pool).await, "no failure row was added");
    tax.stop().await;
}

#[tokio::test]
async fn two_callers_with_the_same_idempotency_key_never_see_each_others_answer() {
    let payments = PaymentsHarness::start().await;
    let client = |token: String| {
        let address = payments.address.clone();
        async move { ppb::payments_service_client::PaymentsServiceClient::new(connect_with_token(&address, &token).await) }
    };
    let alice = client(customer_token("alice", &["payments.write"])).await;
    let mallory = client(customer_token("mallory", &["payments.write"])).await;
    let keyed = |request: ppb::CreateOrderRequest| {
        let mut request = tonic::Request::new(request);
        request
            .metadata_mut()
            .insert("idempotency-key", "shared-key-1".parse().expect("ascii"));
        request
    };
    let first = alice
        .clone()
        .create_order(keyed(order_request("alice")))
        .await
        .expect("alice's order")
        .into_inner()
        .order
        .expect("order");
    // Mallory replays alice's key with alice's request: not alice's stored answer (and not
    // allowed to order for alice anyway).
    let replay = mallory.clone().create_order(keyed(order_request("alice"))).await;
    assert_eq!(replay.expect_err("not replayed").code(), Code::PermissionDenied);
    // Mallory's own request under the same key is hers: a new order, not a conflict with alice.
    let own = mallory
        .clone()
        .create_order(keyed(order_request("mallory")))
        .await
        .expect("mallory's order")
        .into_inner()
        .order
        .expect("order");
    assert_ne!(own.order_id, first.order_id);
    assert_eq!(own.customer_id, "mallory");
    // Alice's retry still gets her own first answer.
    let again = alice
        .clone()
        .create_order(keyed(order_request("alice")))
        .await
        .expect("alice's retry")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(again.order_id, first.order_id);
    payments.stop().await;
}

#[tokio::test]
async fn verify_stream_and_point_in_time_balances_read_long_streams_page_by_page() {
    let ledger = LedgerHarness::start().await;
    let a = ledger
        .open_account(
            "long-a",
            lpb::AccountType::Asset,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    let b = ledger
        .open_account(
            "long-b",
            lpb::AccountType::Liability,
            "EUR",
            lpb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;
    // More events than one page, so the reads cross page boundaries.
    let entries = fintech_ledger::storage::STREAM_PAGE + 20;
    for index in 0..entries {
        ledger
            .client
            .clone()
            .post_entry(lpb::PostEntryRequest {
                entry_id: format!("long-{index}"),
                description: "long stream".to_owned(),
                lines: vec![line(&a, lpb::Side::Debit, 1), line(&b, lpb::Side::Credit, 1)],
                ..Default::default()
            })
            .await
            .expect("posted");
    }
    let verified = ledger
        .client
        .clone()
        .verify_stream(lpb::VerifyStreamRequest {
            account_id: a.account_id.clone(),
        })
        .await
        .expect("verified")
        .into_inner();
    assert!(verified.valid, "{verified:?}");
    assert_eq!(verified.events_checked, entries + 1, "opening + every posting");
    let as_of = ledger
        .balance_as_of(
            &a.account_id,
            Some(lpb::get_balance_request::AsOf::AsOfVersion(entries - 4)),
        )
        .await;
    assert_eq!((as_of.balance, as_of.version), (entries - 5, entries - 4));
    let now = ledger.balance(&a.account_id).await;
    assert_eq!(now.balance, entries);
    ledger.stop().await;
}

/// An authenticator over the JWKS file in `dir`, refreshing at most every `refresh_min`.
async fn authenticator(
    jwks: &std::path::Path,
    refresh_min: Duration,
) -> Result<fintech_platform::auth::Authenticator, fintech_platform::Error> {
    let config = fintech_platform::auth::AuthConfig {
        jwks: jwks.display().to_string(),
        jwks_refresh_min: refresh_min,
        ..fintech_tests::auth::auth_config()
    };
    fintech_platform::auth::Authenticator::new(&config, fintech_platform::auth::Policy::default()).await
}

fn bearer_headers(token: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("ascii"),
    );
    headers
}

fn write_jwks(path: &std::path::Path, keys: &[&SigningKey]) {
    let set = jsonwebtoken::jwk::JwkSet {
        keys: keys.iter().flat_map(|key| key.jwks().keys).collect(),
    };
    std::fs::write(path, serde_json::to_vec(&set).expect("json")).expect("jwks written");
}

#[tokio::test]
async fn a_rotated_in_key_is_fetched_on_its_first_unknown_kid_and_refreshes_are_rate_limited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    let (old, new) = (SigningKey::generate(), SigningKey::generate());
    write_jwks(&jwks, &[&old]);
    let path = "/fintech.payments.v1.PaymentsService/GetOrder";
    let new_token = new.mint(&Claims::operator("rotation"));

    // Refreshes allowed at once: the new key is picked up on its first token.
    let eager = authenticator(&jwks, Duration::ZERO).await.expect("keys load");
    let refused = eager
        .check(path, &bearer_headers(&new_token))
        .await
        .expect_err("unknown key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "missing or invalid bearer token",
        "the reason is not sent"
    );
    write_jwks(&jwks, &[&old, &new]);
    let caller = eager
        .check(path, &bearer_headers(&new_token))
        .await
        .expect("the rotated-in key verifies")
        .expect("a caller");
    assert_eq!(caller.subject, "rotation");
    let old_token = old.mint(&Claims::operator("rotation"));
    eager
        .check(path, &bearer_headers(&old_token))
        .await
        .expect("the old key still verifies");

    // Rate-limited: a flood of unknown kids does not make the service fetch again.
    write_jwks(&jwks, &[&old]);
    let limited = authenticator(&jwks, Duration::from_secs(3600))
        .await
        .expect("keys load");
    write_jwks(&jwks, &[&old, &new]);
    for _ in 0..20 {
        let refused = limited
            .check(path, &bearer_headers(&new_token))
            .await
            .expect_err("not fetched yet");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    // Health and reflection need no token.
    assert!(
        limited
            .check("/grpc.health.v1.Health/Check", &http::HeaderMap::new())
            .await
            .expect("open")
            .is_none()
    );
}

#[tokio::test]
async fn a_service_does_not_start_without_usable_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.json");
    let error = authenticator(&missing, Duration::ZERO).await.expect_err("no file");
    assert!(error.to_string().contains("AUTH_JWKS"), "{error}");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(
        &garbage,
        b"{\"keys\": [{\"kty\": \"oct\", \"kid\": \"k\", \"k\": \"c2VjcmV0\"}]}",
    )
    .expect("write");
    let error = authenticator(&garbage, Duration::ZERO)
        .await
        .expect_err("only a symmetric key");
    assert!(error.to_string().contains("no usable signing key"), "{error}");
    let config = fintech_platform::auth::AuthConfig {
        jwks: "http://127.0.0.1:1/jwks.json".to_owned(),
        ..fintech_tests::auth::auth_config()
    };
    let error = fintech_platform::auth::Authenticator::new(&config, fintech_platform::auth::Policy::default())
        .await
        .expect_err("plain http refused");
    assert!(error.to_string().contains("https"), "{error}");
}
