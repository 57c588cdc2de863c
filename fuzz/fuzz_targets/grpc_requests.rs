//! The gRPC request validators and their conversions, one request kind per selector byte:
//! payments CreateOrder / UpdateOrder / CreateTransaction, ledger PostEntry / PlaceHold,
//! accounts OpenAccount, transfers CreateTransfer, notifications CreateEndpoint and public ids.
//! What a validator accepts is never refused by a later step: the order, transaction or account
//! a service publishes from an accepted request is accepted by every consumer of it (tax, the
//! ledger, transfers); an accepted entry is balanced; an accepted endpoint URL re-reads to itself
//! and passes its checks again when reloaded; amounts stay positive and in range.
#![no_main]

use chrono::{DateTime, Utc};
use fintech_fuzz::{assert_balanced, split_two, storable};
use fintech_proto::{accounts as apb, ledger as lpb, notifications as npb, payments as ppb, transfers as tpb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(1_790_000_000_000_000).unwrap()
}

/// The order CreateOrder makes of `request`, when it is valid; what payments publishes from it
/// is what tax caches.
fn created_order(request: &ppb::CreateOrderRequest) -> Option<fintech_payments::domain::Order> {
    let order = fintech_payments::domain::CreateOrder {
        customer_id: request.customer_id.clone(),
        country: request.country.clone(),
        currency: request.currency.clone(),
        amount: request.amount,
        product_type: request.product_type.clone(),
    }
    .into_order(now())
    .ok()?;
    assert!(order.amount > 0 && storable(&order.customer_id) && storable(&order.product_type));
    assert_published_order(&order);
    Some(order)
}

fn assert_published_order(order: &fintech_payments::domain::Order) {
    let published = ppb::Order::from(order);
    let cached = fintech_tax::proto::cached_order(&published)
        .unwrap_or_else(|error| panic!("tax refuses payments' {published:?}: {error}"));
    assert_eq!(cached.version, order.version);
    assert_eq!(cached.amount, order.amount);
}

fn payments(selector: u8, first: &[u8], second: &[u8]) {
    let Ok(create) = ppb::CreateOrderRequest::decode(first) else {
        return;
    };
    let Some(order) = created_order(&create) else { return };
    if selector == 1 {
        let Ok(update) = ppb::UpdateOrderRequest::decode(second) else {
            return;
        };
        let Ok(changes) = fintech_payments::domain::OrderChanges::parse(
            &update.order_id,
            update.expected_version,
            update.country.clone(),
            update.amount,
            update.product_type.clone(),
        ) else {
            return;
        };
        let current = fintech_payments::domain::Order {
            version: changes.expected_version,
            ..order
        };
        let Ok(changed) = changes.apply(&current, now()) else {
            return;
        };
        assert_eq!(changed.version, current.version + 1);
        assert!(changed.amount > 0 && storable(&changed.product_type));
        assert_published_order(&changed);
    } else {
        let Ok(request) = ppb::CreateTransactionRequest::decode(second) else {
            return;
        };
        let status = fintech_payments::proto::status_from_wire(request.status);
        let Ok(command) = fintech_payments::domain::CreateTransaction::parse(
            &request.order_id,
            request.amount,
            &request.currency,
            status,
        ) else {
            return;
        };
        let Ok(transaction) = command.on_order(&order, now()) else {
            return;
        };
        assert!(transaction.amount > 0);
        let published = ppb::Transaction::from(&transaction);
        let taxable = fintech_tax::proto::taxable_transaction(&published)
            .unwrap_or_else(|error| panic!("tax refuses payments' {published:?}: {error}"));
        assert_eq!(taxable.amount, transaction.amount);
        fintech_ledger::events::cash_movement(&published)
            .unwrap_or_else(|error| panic!("the ledger refuses payments' {published:?}: {error}"));
    }
}

fn ledger(selector: u8, payload: &[u8]) {
    if selector == 3 {
        let Ok(request) = lpb::PostEntryRequest::decode(payload) else {
            return;
        };
        let Ok(entry) = fintech_ledger::domain::EntryInput::from(request).validate() else {
            return;
        };
        assert_balanced(&entry);
        assert!(
            entry
                .lines
                .iter()
                .all(|line| line.amount <= fintech_ledger::domain::entry::MAX_LINE_AMOUNT)
        );
    } else {
        let Ok(request) = lpb::PlaceHoldRequest::decode(payload) else {
            return;
        };
        let input = fintech_ledger::domain::hold::PlaceHoldInput {
            hold_id: request.hold_id,
            account_id: request.account_id,
            amount: request.amount,
            currency: request.currency,
            expires_at: request
                .expires_at
                .as_ref()
                .and_then(fintech_ledger::proto::from_timestamp),
            reason: request.reason,
        };
        let Ok(hold) = input.validate(now()) else { return };
        assert!(hold.amount > 0 && hold.amount <= fintech_ledger::domain::entry::MAX_LINE_AMOUNT);
        assert!(
            hold.expires_at > now(),
            "a hold that expires at once: {:?}",
            hold.expires_at
        );
        assert!(storable(&hold.reason) && storable(&hold.hold_id));
    }
}

fn accounts(payload: &[u8]) {
    let Ok(request) = apb::OpenAccountRequest::decode(payload) else {
        return;
    };
    let Ok(account) = fintech_accounts::domain::OpenAccount {
        customer_id: request.customer_id.clone(),
        product: fintech_accounts::proto::product_from_wire(request.product),
        currency: request.currency.clone(),
        overdraft_limit: request.overdraft_limit,
    }
    .into_account(now()) else {
        return;
    };
    // The accounts table's CHECK on customer_id.
    let id = &account.customer_id;
    assert!((1..=64).contains(&id.len()), "customer id {id:?}");
    assert!(
        id.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte)),
        "customer id {id:?}"
    );
    assert!(account.overdraft_limit >= 0);
    // What accounts publishes on accounts.opened, as the ledger and transfers read it.
    let published = apb::Account::from(&account);
    fintech_ledger::events::customer_account_of(&published)
        .validate()
        .unwrap_or_else(|error| panic!("the ledger refuses accounts' {published:?}: {error}"));
    fintech_transfers::events::cached(&published)
        .unwrap_or_else(|error| panic!("transfers refuses accounts' {published:?}: {error}"));
}

fn transfers(payload: &[u8]) {
    let Ok(request) = tpb::CreateTransferRequest::decode(payload) else {
        return;
    };
    let Ok(transfer) = fintech_transfers::domain::NewTransfer::parse(
        &request.from_account_id,
        &request.to_account_id,
        request.amount,
        &request.currency,
        &request.reference,
    ) else {
        return;
    };
    assert_ne!(transfer.from_account_id, transfer.to_account_id);
    // The saga holds and captures the amount in the ledger: within a ledger line's range.
    assert!(transfer.amount > 0 && transfer.amount <= fintech_ledger::domain::entry::MAX_LINE_AMOUNT);
    assert!(storable(&transfer.reference));
}

fn notifications(selector: u8, payload: &[u8]) {
    use fintech_notifications::domain::{self, EndpointSpec, ssrf::SsrfPolicy};
    if selector == 8 {
        let text = String::from_utf8_lossy(payload);
        if let Ok(id) = domain::parse_public_id("endpoint_id", "ep", &text) {
            assert!(domain::public_id("ep", id).eq_ignore_ascii_case(&text));
        }
        if let Some(delay) = domain::parse_retry_after(&text, now()) {
            let _ = delay.as_secs();
        }
        return;
    }
    let Ok(request) = npb::CreateEndpointRequest::decode(payload) else {
        return;
    };
    let policy = SsrfPolicy::default();
    let Ok(spec) = EndpointSpec::parse(
        &request.url,
        &request.event_types,
        &request.description,
        request.rate_limit_per_second,
        &policy,
    ) else {
        return;
    };
    assert_eq!(spec.url.scheme(), "https");
    assert!(storable(spec.url.as_str()) && storable(&spec.description));
    // Stored as text and read back when delivering: the same URL, still allowed.
    let reread = url::Url::parse(spec.url.as_str()).expect("a stored URL parses");
    assert_eq!(reread, spec.url, "{:?} re-reads differently", spec.url.as_str());
    domain::check_url(&reread, &policy)
        .unwrap_or_else(|error| panic!("{:?} refused on reload: {error}", spec.url.as_str()));
    if let Some(url::Host::Ipv4(address)) = spec.url.host() {
        assert!(domain::ssrf::non_public(address.into()).is_none());
    }
    if let Some(url::Host::Ipv6(address)) = spec.url.host() {
        assert!(domain::ssrf::non_public(address.into()).is_none());
    }
    assert!(spec.rate_limit_per_second >= 0);
    for event_type in &spec.event_types {
        let mut violations = fintech_types::Violations::default();
        domain::check_event_type("event_types", event_type, &mut violations);
        assert!(violations.is_empty());
    }
}

// Input: a selector byte (the request kind), then the request (two, for the payments kinds: the
// CreateOrder behind a u16 length, then the UpdateOrder or CreateTransaction).
fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    match selector % 9 {
        selector @ (0 | 1) => {
            let (first, second) = split_two(payload);
            payments(selector, first, second);
        }
        selector @ (3 | 4) => ledger(selector, payload),
        2 => {
            let (first, second) = split_two(payload);
            payments(2, first, second);
        }
        5 => accounts(payload),
        6 => transfers(payload),
        selector => notifications(selector, payload),
    }
});
