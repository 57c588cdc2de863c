//! Account streams: the events, their hash chain, and the folds that turn them into balances.
//!
//! # Hash chain
//! Every event stores `hash = SHA-256(previous_hash, stream_id, version, event_type, occurred_at,
//! canonical(payload))`, each part length-prefixed, where `previous_hash` is the hash of the
//! stream's previous event (64 zeros for version 1) and `canonical` is JSON with object keys
//! sorted at every level (so the hash does not depend on how PostgreSQL's JSONB orders keys). The
//! chain is per stream: appends never take a ledger-wide lock.
//!
//! [`verify_stream`] recomputes the chain and reports the first event whose content, version or
//! link does not match, or a stream head that disagrees with its last event. It detects any edit
//! made without recomputing every later hash; an attacker with write access who recomputes the
//! whole chain is caught only against a hash kept elsewhere (the hashes published with every
//! `ledger.entry_posted` event are such anchors; see the ADR).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::account::{Account, AccountType, CustomerControls, CustomerState, Freeze, OverdraftPolicy};
use super::entry::Side;

/// `previous_hash` of the first event of every stream.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Event type of the first event of an account stream.
pub const ACCOUNT_OPENED: &str = "ledger.account.opened";
/// Event type of an entry's effect on one account.
pub const ENTRY_POSTED: &str = "ledger.entry.posted";
/// Event type of a hold placed on the account.
pub const HOLD_PLACED: &str = "ledger.hold.placed";
/// Event type of a hold captured (right after the capturing entry's posting).
pub const HOLD_CAPTURED: &str = "ledger.hold.captured";
/// Event type of a hold released or expired.
pub const HOLD_RELEASED: &str = "ledger.hold.released";

/// Payload of [`ACCOUNT_OPENED`]: the account's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    /// Account id (= stream id).
    pub account_id: String,
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Stored type name.
    pub account_type: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Stored policy name.
    pub overdraft_policy: String,
    /// Overdraft limit (0 unless limited).
    pub overdraft_limit: i64,
    /// Created by the ledger itself.
    pub system: bool,
    /// The customer of an account opened from the accounts service's events (absent otherwise,
    /// and in every event written before customer accounts existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

impl From<&Account> for AccountOpened {
    fn from(account: &Account) -> Self {
        Self {
            account_id: account.account_id.to_string(),
            code: account.code.clone(),
            name: account.name.clone(),
            account_type: account.account_type.as_str().to_owned(),
            currency: account.currency.as_str().to_owned(),
            overdraft_policy: account.overdraft.as_str().to_owned(),
            overdraft_limit: account.overdraft.limit(),
            system: account.system,
            customer_id: account.customer.as_ref().map(|customer| customer.customer_id.clone()),
        }
    }
}

impl AccountOpened {
    /// The account this event opened, at `created_at`.
    pub fn account(&self, created_at: DateTime<Utc>) -> Result<Account, String> {
        Ok(Account {
            account_id: Uuid::parse_str(&self.account_id).map_err(|error| format!("account_id: {error}"))?,
            code: self.code.clone(),
            name: self.name.clone(),
            account_type: AccountType::from_stored(&self.account_type)
                .ok_or_else(|| format!("unknown account type {:?}", self.account_type))?,
            currency: fintech_types::Currency::parse(&self.currency).map_err(|error| format!("currency: {error}"))?,
            overdraft: OverdraftPolicy::from_stored(&self.overdraft_policy, self.overdraft_limit)
                .ok_or_else(|| format!("unknown overdraft policy {:?}", self.overdraft_policy))?,
            system: self.system,
            created_at,
            // As opened; the current controls live in `ledger_accounts`.
            customer: self.customer_id.as_ref().map(|customer_id| CustomerControls {
                customer_id: customer_id.clone(),
                state: CustomerState::Active,
                freeze: Freeze::None,
            }),
        })
    }
}

/// One line of an entry as recorded in an account's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedLine {
    /// Position of the line in the entry.
    pub line_index: usize,
    /// `debit` or `credit`.
    pub side: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl PostedLine {
    /// The side, parsed.
    pub fn side(&self) -> Result<Side, String> {
        Side::from_stored(&self.side).ok_or_else(|| format!("unknown side {:?}", self.side))
    }
}

/// Payload of [`ENTRY_POSTED`]: the entry's header and this account's lines. The header is
/// repeated in every affected stream so that every part of an entry is covered by a hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPosted {
    /// The entry.
    pub entry_id: String,
    /// Its description.
    pub description: String,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// How many lines the whole entry has.
    pub line_count: usize,
    /// This account's lines.
    pub lines: Vec<PostedLine>,
    /// The account's balance after the entry (informative; folds recompute it from the lines).
    pub balance_after: i64,
    /// The sum of the account's active holds after the entry (a capture's posting already
    /// counts the capture); absent in events written before holds existed (then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_after: Option<i64>,
    /// `balance_after + overdraft_limit - held_after` with the limit in force when it was
    /// written; absent in events written before holds existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_after: Option<i64>,
}

/// Payload of [`HOLD_PLACED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlacedEvent {
    /// The hold.
    pub hold_id: String,
    /// Amount placed.
    pub amount: i64,
    /// When it expires (RFC 3339, microseconds).
    pub expires_at: String,
    /// Why.
    pub reason: String,
    /// Sum of the account's active holds after the event.
    pub held_after: i64,
    /// The account's available balance after the event.
    pub available_after: i64,
}

/// Payload of [`HOLD_CAPTURED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCapturedEvent {
    /// The hold.
    pub hold_id: String,
    /// The capturing entry (whose posting is the previous event of the stream).
    pub entry_id: String,
    /// Amount captured.
    pub amount: i64,
    /// Amount released with the capture.
    pub released: i64,
    /// Sum of the account's active holds after the event.
    pub held_after: i64,
    /// The account's available balance after the event.
    pub available_after: i64,
}

/// Payload of [`HOLD_RELEASED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReleasedEvent {
    /// The hold.
    pub hold_id: String,
    /// Amount released.
    pub amount: i64,
    /// Released by the expiry job.
    pub expired: bool,
    /// Why.
    pub reason: String,
    /// Sum of the account's active holds after the event.
    pub held_after: i64,
    /// The account's available balance after the event.
    pub available_after: i64,
}

/// What an event says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// The account was opened.
    AccountOpened(AccountOpened),
    /// An entry touched the account.
    EntryPosted(EntryPosted),
    /// A hold was placed.
    HoldPlaced(HoldPlacedEvent),
    /// A hold was captured.
    HoldCaptured(HoldCapturedEvent),
    /// A hold was released or expired.
    HoldReleased(HoldReleasedEvent),
}

impl EventBody {
    /// The stored event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::AccountOpened(_) => ACCOUNT_OPENED,
            Self::EntryPosted(_) => ENTRY_POSTED,
            Self::HoldPlaced(_) => HOLD_PLACED,
            Self::HoldCaptured(_) => HOLD_CAPTURED,
            Self::HoldReleased(_) => HOLD_RELEASED,
        }
    }

    /// `(held_after, available_after)` as recorded by the event, when it records them.
    pub fn holds_after(&self) -> Option<(i64, Option<i64>)> {
        match self {
            Self::AccountOpened(_) => None,
            Self::EntryPosted(posted) => posted.held_after.map(|held| (held, posted.available_after)),
            Self::HoldPlaced(placed) => Some((placed.held_after, Some(placed.available_after))),
            Self::HoldCaptured(captured) => Some((captured.held_after, Some(captured.available_after))),
            Self::HoldReleased(released) => Some((released.held_after, Some(released.available_after))),
        }
    }

    /// The JSON payload.
    pub fn payload(&self) -> serde_json::Value {
        let encoded = match self {
            Self::AccountOpened(opened) => serde_json::to_value(opened),
            Self::EntryPosted(posted) => serde_json::to_value(posted),
            Self::HoldPlaced(placed) => serde_json::to_value(placed),
            Self::HoldCaptured(captured) => serde_json::to_value(captured),
            Self::HoldReleased(released) => serde_json::to_value(released),
        };
        // Plain structs of strings, integers and string maps always serialize.
        encoded.unwrap_or(serde_json::Value::Null)
    }

    /// Decodes a stored event's body.
    pub fn decode(event_type: &str, payload: &serde_json::Value) -> Result<Self, String> {
        match event_type {
            ACCOUNT_OPENED => serde_json::from_value(payload.clone())
                .map(Self::AccountOpened)
                .map_err(|error| format!("payload is not a valid account opening: {error}")),
            ENTRY_POSTED => serde_json::from_value(payload.clone())
                .map(Self::EntryPosted)
                .map_err(|error| format!("payload is not a valid posting: {error}")),
            HOLD_PLACED => serde_json::from_value(payload.clone())
                .map(Self::HoldPlaced)
                .map_err(|error| format!("payload is not a valid hold placement: {error}")),
            HOLD_CAPTURED => serde_json::from_value(payload.clone())
                .map(Self::HoldCaptured)
                .map_err(|error| format!("payload is not a valid hold capture: {error}")),
            HOLD_RELEASED => serde_json::from_value(payload.clone())
                .map(Self::HoldReleased)
                .map_err(|error| format!("payload is not a valid hold release: {error}")),
            other => Err(format!("unknown event type {other:?}")),
        }
    }

    /// The entry a posting belongs to.
    pub fn entry_id(&self) -> Option<&str> {
        match self {
            Self::AccountOpened(_) | Self::HoldPlaced(_) | Self::HoldCaptured(_) | Self::HoldReleased(_) => None,
            Self::EntryPosted(posted) => Some(&posted.entry_id),
        }
    }
}

/// An event as stored (or about to be).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The stream (account id).
    pub stream_id: Uuid,
    /// Position in the stream, from 1.
    pub version: i64,
    /// Event type.
    pub event_type: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// The entry of a posting (a copy of the payload's, for lookups).
    pub entry_id: Option<String>,
    /// When it was appended.
    pub occurred_at: DateTime<Utc>,
    /// Hash of the previous event of the stream.
    pub previous_hash: String,
    /// This event's hash.
    pub hash: String,
}

impl StoredEvent {
    /// The event appending `body` at `version` after an event hashed `previous_hash`.
    pub fn chained(
        stream_id: Uuid,
        version: i64,
        previous_hash: &str,
        occurred_at: DateTime<Utc>,
        body: &EventBody,
    ) -> Self {
        let payload = body.payload();
        let hash = event_hash(
            previous_hash,
            stream_id,
            version,
            body.event_type(),
            occurred_at,
            &payload,
        );
        Self {
            stream_id,
            version,
            event_type: body.event_type().to_owned(),
            payload,
            entry_id: body.entry_id().map(str::to_owned),
            occurred_at,
            previous_hash: previous_hash.to_owned(),
            hash,
        }
    }

    /// The decoded body.
    pub fn body(&self) -> Result<EventBody, String> {
        EventBody::decode(&self.event_type, &self.payload)
    }
}

/// The hash of one event (see the module docs).
pub fn event_hash(
    previous_hash: &str,
    stream_id: Uuid,
    version: i64,
    event_type: &str,
    occurred_at: DateTime<Utc>,
    payload: &serde_json::Value,
) -> String {
    let mut hasher = Sha256::new();
    let parts = [
        previous_hash.to_owned(),
        stream_id.to_string(),
        version.to_string(),
        event_type.to_owned(),
        occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        canonical_json(payload),
    ];
    for part in &parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// JSON with the keys of every object sorted and no insignificant whitespace.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => out.push_str(&value.to_string()),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// The balance of `account` after `events` (its stream, in version order, from version 1),
/// computed from the posted lines. Returns `(balance, version, time of the last event)`.
pub fn fold_balance(account: &Account, events: &[StoredEvent]) -> Result<(i64, i64, DateTime<Utc>), String> {
    let mut fold = BalanceFold::new(account);
    for event in events {
        fold.apply(account, event)?;
    }
    Ok(fold.result())
}

/// [`fold_balance`] one event at a time (streams read in pages with bounded memory), with the
/// holds: the sum of the active holds is recomputed from the hold events (placed +amount,
/// captured -(amount + released), released -amount; a capture's posting already counts its
/// capture, as recorded in its `held_after`) and checked against what each event recorded.
#[derive(Debug, Clone, Copy)]
pub struct BalanceFold {
    balance: i64,
    held: i64,
    /// The available balance the last event recorded (None: compute from the opening limit).
    recorded_available: Option<i64>,
    opening_floor: Option<i64>,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl BalanceFold {
    /// Before the first event of `account`.
    pub fn new(account: &Account) -> Self {
        Self {
            balance: 0,
            held: 0,
            recorded_available: None,
            opening_floor: account.overdraft.floor(),
            version: 0,
            updated_at: account.created_at,
        }
    }

    /// Folds the next event in.
    pub fn apply(&mut self, account: &Account, event: &StoredEvent) -> Result<(), String> {
        let body = event.body()?;
        match &body {
            EventBody::AccountOpened(opened) => {
                let limit = opened.overdraft_limit;
                self.opening_floor = OverdraftPolicy::from_stored(&opened.overdraft_policy, limit)
                    .ok_or_else(|| format!("unknown overdraft policy {:?}", opened.overdraft_policy))?
                    .floor();
            }
            EventBody::EntryPosted(posted) => {
                for line in &posted.lines {
                    self.balance = self
                        .balance
                        .checked_add(account.signed(line.side()?, line.amount))
                        .ok_or_else(|| format!("balance overflows at version {}", event.version))?;
                }
                if let Some(held) = posted.held_after {
                    // A capture's posting lowers what is held by the capture it is for.
                    if held > self.held || held < 0 {
                        return Err(format!(
                            "posting at version {} records {held} held after {} (a posting never raises holds)",
                            event.version, self.held
                        ));
                    }
                    self.held = held;
                }
            }
            EventBody::HoldPlaced(placed) => {
                self.held = self
                    .held
                    .checked_add(placed.amount)
                    .ok_or_else(|| format!("holds overflow at version {}", event.version))?;
            }
            EventBody::HoldCaptured(captured) => {
                // Counted by the capture's posting right before it when that recorded it.
                if self.held != captured.held_after {
                    self.held -= captured.amount + captured.released;
                }
            }
            EventBody::HoldReleased(released) => self.held -= released.amount,
        }
        if let Some((held, available)) = body.holds_after() {
            if held != self.held {
                return Err(format!(
                    "event {} records {held} held, the fold of the hold events gives {}",
                    event.version, self.held
                ));
            }
            self.recorded_available = available;
        } else {
            self.recorded_available = None;
        }
        self.version = event.version;
        self.updated_at = event.occurred_at;
        Ok(())
    }

    /// `(balance, version, time of the last event)`.
    pub fn result(&self) -> (i64, i64, DateTime<Utc>) {
        (self.balance, self.version, self.updated_at)
    }

    /// `(held, available)` after the events folded: the available balance as the last event
    /// recorded it (with the overdraft limit then in force), or from the opening limit.
    pub fn holds(&self) -> (i64, i64) {
        let available = self.recorded_available.unwrap_or_else(|| {
            self.balance
                .saturating_sub(self.opening_floor.unwrap_or(0))
                .saturating_sub(self.held)
        });
        (self.held, available)
    }
}

/// Outcome of [`verify_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Every event and the head match.
    pub valid: bool,
    /// Events checked before the first mismatch (all of them when valid).
    pub events_checked: i64,
    /// Version of the first event that does not match (0 when valid).
    pub first_invalid_version: i64,
    /// What does not match (empty when valid).
    pub reason: String,
    /// Hash of the last event, as recomputed.
    pub head_hash: String,
}

/// Recomputes the chain of a stream whose head says `(head_version, head_hash)` from its events in
/// version order, and reports the first mismatch.
pub fn verify_stream(head_version: i64, head_hash: &str, events: &[StoredEvent]) -> Verification {
    let mut verifier = StreamVerifier::default();
    for event in events {
        if let Some(invalid) = verifier.check(event) {
            return invalid;
        }
    }
    verifier.finish(head_version, head_hash)
}

/// [`verify_stream`] one event at a time, so a long stream can be read in pages with bounded
/// memory: feed every event in version order to [`check`](Self::check) (stop at the first
/// `Some`), then [`finish`](Self::finish) with the stream head.
#[derive(Debug, Clone)]
pub struct StreamVerifier {
    previous: String,
    checked: i64,
}

impl Default for StreamVerifier {
    fn default() -> Self {
        Self {
            previous: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }
}

impl StreamVerifier {
    fn invalid(&self, version: i64, reason: String) -> Verification {
        Verification {
            valid: false,
            events_checked: self.checked,
            first_invalid_version: version,
            reason,
            head_hash: self.previous.clone(),
        }
    }

    /// Checks the next event; `Some` with the verdict at the first mismatch.
    pub fn check(&mut self, event: &StoredEvent) -> Option<Verification> {
        let expected_version = self.checked + 1;
        if event.version != expected_version {
            return Some(self.invalid(
                expected_version,
                format!("event {expected_version} is missing (found version {})", event.version),
            ));
        }
        if event.previous_hash != self.previous {
            return Some(self.invalid(
                event.version,
                "previous_hash does not link to the preceding event".to_owned(),
            ));
        }
        let recomputed = event_hash(
            &self.previous,
            event.stream_id,
            event.version,
            &event.event_type,
            event.occurred_at,
            &event.payload,
        );
        if recomputed != event.hash {
            return Some(self.invalid(
                event.version,
                format!(
                    "stored hash {} does not match the content (recomputed {recomputed})",
                    event.hash
                ),
            ));
        }
        let body = match event.body() {
            Ok(body) => body,
            Err(reason) => return Some(self.invalid(event.version, reason)),
        };
        if body.entry_id() != event.entry_id.as_deref() {
            return Some(self.invalid(
                event.version,
                "the entry_id column does not match the payload".to_owned(),
            ));
        }
        if (event.version == 1) != matches!(body, EventBody::AccountOpened(_)) {
            return Some(self.invalid(
                event.version,
                "an account stream starts with, and only with, its opening".to_owned(),
            ));
        }
        self.previous = recomputed;
        self.checked += 1;
        None
    }

    /// The verdict once every event was checked, against the stream head.
    pub fn finish(self, head_version: i64, head_hash: &str) -> Verification {
        if head_version != self.checked || head_hash != self.previous {
            return self.invalid(
                self.checked + 1,
                format!(
                    "the stream head (version {head_version}, hash {head_hash}) does not match its last event (version {})",
                    self.checked
                ),
            );
        }
        Verification {
            valid: true,
            events_checked: self.checked,
            first_invalid_version: 0,
            reason: String::new(),
            head_hash: self.previous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now;

    fn account() -> Account {
        Account {
            account_id: Uuid::new_v4(),
            code: "cash".to_owned(),
            name: "Cash".to_owned(),
            account_type: AccountType::Asset,
            currency: fintech_types::Currency::parse("EUR").unwrap(),
            overdraft: OverdraftPolicy::Unlimited,
            system: false,
            created_at: now(),
            customer: None,
        }
    }

    fn posting(entry_id: &str, side: &str, amount: i64) -> EventBody {
        EventBody::EntryPosted(EntryPosted {
            entry_id: entry_id.to_owned(),
            description: "d".to_owned(),
            metadata: BTreeMap::from([("z".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())]),
            line_count: 2,
            lines: vec![PostedLine {
                line_index: 0,
                side: side.to_owned(),
                amount,
                currency: "EUR".to_owned(),
            }],
            balance_after: 0,
            held_after: None,
            available_after: None,
        })
    }

    fn stream(account: &Account) -> Vec<StoredEvent> {
        let bodies = [
            EventBody::AccountOpened(AccountOpened::from(account)),
            posting("e1", "debit", 100),
            posting("e2", "credit", 30),
            posting("e3", "debit", 5),
        ];
        let mut previous = GENESIS_HASH.to_owned();
        bodies
            .iter()
            .enumerate()
            .map(|(index, body)| {
                let event = StoredEvent::chained(account.account_id, index as i64 + 1, &previous, now(), body);
                previous = event.hash.clone();
                event
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value = serde_json::json!({"b": [{"y": 1, "x": "é\"q"}], "a": null});
        assert_eq!(canonical_json(&value), r#"{"a":null,"b":[{"x":"é\"q","y":1}]}"#);
    }

    #[test]
    fn folds_sum_signed_lines() {
        let account = account();
        let events = stream(&account);
        let (balance, version, _) = fold_balance(&account, &events).unwrap();
        assert_eq!((balance, version), (75, 4));
        let (balance, version, _) = fold_balance(&account, &events[..2]).unwrap();
        assert_eq!((balance, version), (100, 2));
    }

    #[test]
    fn an_intact_stream_verifies() {
        let account = account();
        let events = stream(&account);
        let head = events.last().unwrap().hash.clone();
        let verification = verify_stream(4, &head, &events);
        assert!(verification.valid, "{verification:?}");
        assert_eq!(verification.events_checked, 4);
        assert_eq!(verification.head_hash, head);
    }

    #[test]
    fn an_edited_payload_is_reported_at_its_version() {
        let account = account();
        let mut events = stream(&account);
        let head = events.last().unwrap().hash.clone();
        events[2].payload["lines"][0]["amount"] = serde_json::json!(31);
        let verification = verify_stream(4, &head, &events);
        assert!(!verification.valid);
        assert_eq!(verification.first_invalid_version, 3);
        assert_eq!(verification.events_checked, 2);
    }

    #[test]
    fn a_recomputed_hash_breaks_the_next_link_and_a_truncated_stream_the_head() {
        let account = account();
        let mut events = stream(&account);
        let head = events.last().unwrap().hash.clone();
        events[1].payload["lines"][0]["amount"] = serde_json::json!(1_000_000);
        events[1].hash = event_hash(
            &events[1].previous_hash,
            account.account_id,
            2,
            ENTRY_POSTED,
            events[1].occurred_at,
            &events[1].payload,
        );
        assert_eq!(verify_stream(4, &head, &events).first_invalid_version, 3);

        let intact = stream(&account);
        let head = intact.last().unwrap().hash.clone();
        let truncated = verify_stream(4, &head, &intact[..3]);
        assert_eq!(truncated.first_invalid_version, 4);
        let mut gap = intact.clone();
        gap.remove(1);
        assert_eq!(verify_stream(4, &head, &gap).first_invalid_version, 2);
    }
}
