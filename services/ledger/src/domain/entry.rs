//! Journal entries: validation of the request on its own (shape, amounts, balance per currency)
//! and against the accounts it touches (existence, currency, limits), producing one append per
//! affected account stream.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use fintech_types::Currency;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::stream::{EventBody, StoredEvent, canonical_json};
use super::{Account, LedgerError, Precondition, Violations, parse_id};

/// Fewest lines of an entry.
pub const MIN_LINES: usize = 2;
/// Most lines of an entry.
pub const MAX_LINES: usize = 100;
/// Longest entry id (the idempotency key rules: visible ASCII).
pub const MAX_ENTRY_ID_LEN: usize = 128;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// Most metadata keys.
pub const MAX_METADATA_KEYS: usize = 32;
/// Longest metadata key.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest metadata value.
pub const MAX_METADATA_VALUE_LEN: usize = 500;
/// Largest amount of one line, in minor units (10^15: ten trillion units of a two-decimal
/// currency). Far below the `i64` edge, so no sequence of entries can be used to push a balance
/// there in a few calls.
pub const MAX_LINE_AMOUNT: i64 = 1_000_000_000_000_000;
/// Largest magnitude of any account's balance, in minor units (10^17). An entry that would take a
/// balance beyond it is rejected (`BALANCE_LIMIT`), whoever posts it; the `i64` range (9.2 * 10^18)
/// is never reached, and the trial balance sums in `numeric`.
pub const MAX_ABS_BALANCE: i64 = 100_000_000_000_000_000;
/// Entry-id prefixes only the ledger's own event handlers write (`tax:<transaction id>`,
/// `tax-reversal:<transaction id>`, and those of the services to come); `PostEntry` refuses them.
pub const RESERVED_ENTRY_PREFIXES: [&str; 7] = [
    "tax:",
    "tax-reversal:",
    "transfer:",
    "hold:",
    "system:",
    "ledger:",
    "interest:",
];
/// Entry-id prefix of the interest the accounts service posts (`interest:<account>:<YYYY-MM>`).
pub const INTEREST_PREFIX: &str = "interest:";

/// Precondition types of the accounts contract (CONTRACT-accounts): an account the ledger has
/// never seen, a closed one, a freeze in the line's direction, available going below zero.
pub mod rules {
    /// No account has this id.
    pub const UNKNOWN: &str = "account.unknown";
    /// The customer account is closed.
    pub const CLOSED: &str = "account.closed";
    /// The customer account refuses debits (money out, holds).
    pub const FROZEN_DEBITS: &str = "account.frozen.debits";
    /// The customer account refuses credits (money in).
    pub const FROZEN_CREDITS: &str = "account.frozen.credits";
    /// A customer account's available balance would go below zero.
    pub const OVERDRAFT_LIMIT: &str = "account.overdraft_limit";
    /// Any other account would go below its floor (available below zero).
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
}

/// Whether `entry_id` is in a namespace of the ledger's own event handlers.
pub fn is_reserved_entry_id(entry_id: &str) -> bool {
    let lower = entry_id.to_ascii_lowercase();
    RESERVED_ENTRY_PREFIXES.iter().any(|prefix| lower.starts_with(prefix))
}

/// The side of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Debit.
    Debit,
    /// Credit.
    Credit,
}

impl Side {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Credit => "credit",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "debit" => Some(Self::Debit),
            "credit" => Some(Self::Credit),
            _ => None,
        }
    }
}

/// One line as received (the side already read from the wire: `Ok(None)` for unspecified,
/// `Err(raw)` for an unknown value).
#[derive(Debug, Clone)]
pub struct LineInput {
    /// Account id.
    pub account_id: String,
    /// Debit or credit.
    pub side: Result<Option<Side>, i32>,
    /// Minor units.
    pub amount: i64,
    /// Currency code.
    pub currency: String,
}

/// PostEntry's input, as received.
#[derive(Debug, Clone)]
pub struct EntryInput {
    /// Client-chosen id.
    pub entry_id: String,
    /// Free text.
    pub description: String,
    /// Free annotations (sorted, so the fingerprint does not depend on map order).
    pub metadata: BTreeMap<String, String>,
    /// The lines.
    pub lines: Vec<LineInput>,
}

/// A validated line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The account.
    pub account_id: Uuid,
    /// Debit or credit.
    pub side: Side,
    /// Minor units, > 0.
    pub amount: i64,
    /// The line's currency.
    pub currency: Currency,
}

/// An entry that is well-formed and balanced per currency; it still has to fit the accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Client-chosen id.
    pub entry_id: String,
    /// Free text.
    pub description: String,
    /// Free annotations.
    pub metadata: BTreeMap<String, String>,
    /// Two or more lines.
    pub lines: Vec<Line>,
}

/// Whether `value` may be a metadata value: at most [`MAX_METADATA_VALUE_LEN`] characters, no NUL.
/// Event handlers check what they copy into an entry's metadata with it, so an event the entry
/// would refuse is refused (and named) when it is read.
pub fn is_metadata_value(value: &str) -> bool {
    value.chars().count() <= MAX_METADATA_VALUE_LEN && !value.contains('\0')
}

/// Checks an entry id: 1-128 visible ASCII characters (the same rule as idempotency keys, since
/// the entry id is the idempotency key of PostEntry).
pub fn check_entry_id(entry_id: &str, violations: &mut Violations) {
    if entry_id.is_empty() {
        violations.add("entry_id", "is required");
    } else if entry_id.len() > MAX_ENTRY_ID_LEN || !entry_id.bytes().all(|byte| byte.is_ascii_graphic()) {
        violations.add(
            "entry_id",
            format!("must be 1-{MAX_ENTRY_ID_LEN} visible ASCII characters ('!' to '~')"),
        );
    }
}

impl EntryInput {
    /// Validates the entry on its own: id, description, metadata, 2-100 lines with an account,
    /// a side, a positive amount and a known currency, and debits equal to credits per currency.
    pub fn validate(self) -> Result<NewEntry, LedgerError> {
        let mut violations = Violations::default();
        check_entry_id(&self.entry_id, &mut violations);
        // PostgreSQL's JSONB, where descriptions and metadata are stored, cannot hold NUL.
        if self.description.chars().count() > MAX_DESCRIPTION_LEN || self.description.contains('\0') {
            violations.add(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters without NUL"),
            );
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            violations.add("metadata", format!("must have at most {MAX_METADATA_KEYS} keys"));
        }
        for (key, value) in &self.metadata {
            let key_len = key.chars().count();
            if key_len == 0 || key_len > MAX_METADATA_KEY_LEN || key.chars().any(char::is_control) {
                violations.add(
                    format!("metadata[{key:?}]"),
                    format!("keys must be 1-{MAX_METADATA_KEY_LEN} characters without control characters"),
                );
            }
            if !is_metadata_value(value) {
                violations.add(
                    format!("metadata[{key:?}]"),
                    format!("values must be at most {MAX_METADATA_VALUE_LEN} characters without NUL"),
                );
            }
        }
        if self.lines.len() < MIN_LINES || self.lines.len() > MAX_LINES {
            violations.add(
                "lines",
                format!(
                    "an entry has {MIN_LINES} to {MAX_LINES} lines, got {}",
                    self.lines.len()
                ),
            );
        }

        let mut lines = Vec::with_capacity(self.lines.len());
        for (index, line) in self.lines.iter().enumerate() {
            let field = |name: &str| format!("lines[{index}].{name}");
            let account_id = parse_id(&field("account_id"), &line.account_id, &mut violations);
            let side = match line.side {
                Ok(Some(side)) => Some(side),
                Ok(None) => {
                    violations.add(field("side"), "is required (debit or credit)");
                    None
                }
                Err(raw) => {
                    violations.add(field("side"), format!("unknown side {raw}"));
                    None
                }
            };
            if line.amount <= 0 {
                violations.add(
                    field("amount"),
                    format!("must be greater than 0 (minor units), got {}", line.amount),
                );
            } else if line.amount > MAX_LINE_AMOUNT {
                violations.add(
                    field("amount"),
                    format!("must be at most {MAX_LINE_AMOUNT} (minor units), got {}", line.amount),
                );
            }
            let currency = match Currency::parse(&line.currency) {
                Ok(currency) => Some(currency),
                Err(error) => {
                    violations.add(field("currency"), error.to_string());
                    None
                }
            };
            if let (Some(account_id), Some(side), Some(currency)) = (account_id, side, currency)
                && line.amount > 0
                && line.amount <= MAX_LINE_AMOUNT
            {
                lines.push(Line {
                    account_id,
                    side,
                    amount: line.amount,
                    currency,
                });
            }
        }
        if violations.is_empty() {
            // i128: a hundred i64 amounts cannot overflow it.
            let mut nets: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
            for line in &lines {
                let (debits, credits) = nets.entry(line.currency.as_str()).or_default();
                match line.side {
                    Side::Debit => *debits += i128::from(line.amount),
                    Side::Credit => *credits += i128::from(line.amount),
                }
            }
            for (currency, (debits, credits)) in nets {
                if debits != credits {
                    violations.add(
                        "lines",
                        format!("debits ({debits}) and credits ({credits}) in {currency} do not balance"),
                    );
                }
            }
        }
        violations.into_result(|| NewEntry {
            entry_id: self.entry_id,
            description: self.description,
            metadata: self.metadata,
            lines,
        })
    }
}

impl NewEntry {
    /// Whether this is the interest the accounts service posted: booked regardless of a freeze
    /// (only the ledger's consumer writes `interest:` ids; PostEntry refuses them).
    pub fn is_interest(&self) -> bool {
        self.entry_id.starts_with(INTEREST_PREFIX) && self.metadata.get("kind").is_some_and(|kind| kind == "interest")
    }

    /// The accounts the entry touches, sorted (the order streams are locked and appended in).
    pub fn account_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.lines.iter().map(|line| line.account_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Hex SHA-256 of the entry's canonical form: the same entry always has the same fingerprint,
    /// whatever the order of its metadata map on the wire.
    pub fn fingerprint(&self) -> String {
        let lines: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(|line| {
                serde_json::json!({
                    "account_id": line.account_id.to_string(),
                    "side": line.side.as_str(),
                    "amount": line.amount,
                    "currency": line.currency.as_str(),
                })
            })
            .collect();
        let canonical = canonical_json(&serde_json::json!({
            "entry_id": self.entry_id,
            "description": self.description,
            "metadata": self.metadata,
            "lines": lines,
        }));
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// An account and the head of its stream, read under the stream's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    /// The account.
    pub account: Account,
    /// Current balance (projection of events 1..version).
    pub balance: i64,
    /// Sum of the active holds (for a capture: after the capture).
    pub held: i64,
    /// Current stream version.
    pub version: i64,
    /// Hash of the stream's last event.
    pub head_hash: String,
    /// Time of the stream's last event.
    pub updated_at: DateTime<Utc>,
}

/// What an entry appends to one account's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosting {
    /// The account.
    pub account_id: Uuid,
    /// The version the stream must still be at (optimistic concurrency).
    pub expected_version: i64,
    /// Hash of the event at `expected_version`, which the new event chains to.
    pub previous_hash: String,
    /// `(line index, side, amount)` of this account's lines.
    pub lines: Vec<(usize, Side, i64)>,
    /// Balance before the entry.
    pub balance_before: i64,
    /// Balance after the entry.
    pub balance_after: i64,
    /// Active holds after the entry.
    pub held_after: i64,
    /// Available after the entry.
    pub available_after: i64,
}

/// Checks `entry` against the accounts it touches and computes each stream's append, ordered by
/// account id. Every broken rule is reported, none applied: unknown accounts, currency
/// mismatches, balances out of the `i64` range, and balances that would pass their floor while
/// going down (an entry that raises a balance is always allowed).
pub fn plan_posting(
    entry: &NewEntry,
    accounts: &HashMap<Uuid, AccountState>,
) -> Result<Vec<StreamPosting>, LedgerError> {
    let mut broken = Vec::new();
    let mut postings: BTreeMap<Uuid, StreamPosting> = BTreeMap::new();
    let mut reported: std::collections::HashSet<(Uuid, &'static str)> = std::collections::HashSet::new();
    let interest = entry.is_interest();
    for (index, line) in entry.lines.iter().enumerate() {
        let Some(state) = accounts.get(&line.account_id) else {
            broken.push(Precondition {
                kind: rules::UNKNOWN,
                subject: format!("lines[{index}].account_id"),
                description: format!("account {} does not exist", line.account_id),
            });
            continue;
        };
        if state.account.currency != line.currency {
            broken.push(Precondition {
                kind: "CURRENCY_MISMATCH",
                subject: format!("lines[{index}].currency"),
                description: format!(
                    "account {} holds {}, not {}",
                    state.account.code, state.account.currency, line.currency
                ),
            });
            continue;
        }
        if let Some(customer) = &state.account.customer {
            let refusal = if customer.state == super::account::CustomerState::Closed {
                Some((rules::CLOSED, "is closed"))
            } else if !interest && customer.freeze.blocks(line.side) {
                Some(match line.side {
                    Side::Debit => (rules::FROZEN_DEBITS, "is frozen for debits"),
                    Side::Credit => (rules::FROZEN_CREDITS, "is frozen for credits"),
                })
            } else {
                None
            };
            if let Some((kind, what)) = refusal {
                if reported.insert((line.account_id, kind)) {
                    broken.push(Precondition {
                        kind,
                        subject: format!("lines[{index}].account_id"),
                        description: format!("account {} {what}", state.account.code),
                    });
                }
                continue;
            }
        }
        let posting = postings.entry(line.account_id).or_insert_with(|| StreamPosting {
            account_id: line.account_id,
            expected_version: state.version,
            previous_hash: state.head_hash.clone(),
            lines: Vec::new(),
            balance_before: state.balance,
            balance_after: state.balance,
            held_after: state.held,
            available_after: state.account.available(state.balance, state.held),
        });
        posting.lines.push((index, line.side, line.amount));
    }
    for posting in postings.values_mut() {
        let state = &accounts[&posting.account_id];
        let mut balance = Some(posting.balance_before);
        for &(_, side, amount) in &posting.lines {
            balance = balance.and_then(|balance| balance.checked_add(state.account.signed(side, amount)));
        }
        let Some(balance) = balance else {
            broken.push(Precondition {
                kind: "AMOUNT_OUT_OF_RANGE",
                subject: posting.account_id.to_string(),
                description: format!("the balance of account {} would overflow", state.account.code),
            });
            continue;
        };
        if balance.unsigned_abs() > MAX_ABS_BALANCE.unsigned_abs() && balance.abs() > posting.balance_before.abs() {
            broken.push(Precondition {
                kind: "BALANCE_LIMIT",
                subject: posting.account_id.to_string(),
                description: format!(
                    "account {} would go to {balance}, beyond the ledger's limit of ±{MAX_ABS_BALANCE} {}",
                    state.account.code, state.account.currency
                ),
            });
            continue;
        }
        posting.balance_after = balance;
        posting.available_after = state.account.available(balance, posting.held_after);
        if let Some(floor) = state.account.overdraft.floor()
            && posting.available_after < 0
            && balance < posting.balance_before
        {
            let kind = if state.account.customer.is_some() {
                rules::OVERDRAFT_LIMIT
            } else {
                rules::LIMIT_EXCEEDED
            };
            broken.push(Precondition {
                kind,
                subject: posting.account_id.to_string(),
                description: format!(
                    "account {} would go to {balance} with {} held, below its limit of {floor} {}",
                    state.account.code, posting.held_after, state.account.currency
                ),
            });
        }
    }
    if broken.is_empty() {
        Ok(postings.into_values().collect())
    } else {
        Err(LedgerError::Rejected(broken))
    }
}

/// Where an entry was appended in one account's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The account (stream).
    pub account_id: Uuid,
    /// Version of the appended event.
    pub version: i64,
    /// Its hash.
    pub hash: String,
    /// The account's balance after the entry.
    pub balance_after: i64,
    /// Active holds after the entry.
    pub held_after: i64,
    /// Available after the entry.
    pub available_after: i64,
}

/// A posted entry, as returned and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedEntry {
    /// Client-chosen id.
    pub entry_id: String,
    /// Free text.
    pub description: String,
    /// Free annotations.
    pub metadata: BTreeMap<String, String>,
    /// The lines, in the order posted.
    pub lines: Vec<Line>,
    /// When it was posted.
    pub posted_at: DateTime<Utc>,
    /// One append per affected account, ordered by account id.
    pub appends: Vec<Append>,
}

impl PostedEntry {
    /// Rebuilds an entry from the events it appended (one per affected stream).
    pub fn from_events(events: &[StoredEvent]) -> Result<Self, String> {
        let mut header = None;
        let mut lines: Vec<(usize, Line)> = Vec::new();
        let mut appends = Vec::new();
        let mut expected_lines = 0;
        for event in events {
            let EventBody::EntryPosted(posted) = event.body()? else {
                return Err(format!("event {}@{} is not a posting", event.stream_id, event.version));
            };
            for line in &posted.lines {
                lines.push((
                    line.line_index,
                    Line {
                        account_id: event.stream_id,
                        side: line.side()?,
                        amount: line.amount,
                        currency: Currency::parse(&line.currency).map_err(|error| format!("currency: {error}"))?,
                    },
                ));
            }
            appends.push(Append {
                account_id: event.stream_id,
                version: event.version,
                hash: event.hash.clone(),
                balance_after: posted.balance_after,
                held_after: posted.held_after.unwrap_or(0),
                available_after: posted.available_after.unwrap_or(posted.balance_after),
            });
            expected_lines = posted.line_count;
            header.get_or_insert((posted.entry_id, posted.description, posted.metadata, event.occurred_at));
        }
        let Some((entry_id, description, metadata, posted_at)) = header else {
            return Err("no events".to_owned());
        };
        lines.sort_by_key(|(index, _)| *index);
        if lines.len() != expected_lines
            || lines
                .iter()
                .enumerate()
                .any(|(position, (index, _))| position != *index)
        {
            return Err(format!(
                "entry {entry_id} has {} of its {expected_lines} lines",
                lines.len()
            ));
        }
        appends.sort_by_key(|append| append.account_id);
        Ok(Self {
            entry_id,
            description,
            metadata,
            lines: lines.into_iter().map(|(_, line)| line).collect(),
            posted_at,
            appends,
        })
    }
}

/// An account's balance at some point of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceView {
    /// The account.
    pub account_id: Uuid,
    /// Its currency.
    pub currency: Currency,
    /// Balance on the normal side.
    pub balance: i64,
    /// Events 1..version are included.
    pub version: i64,
    /// Time of the last event included.
    pub updated_at: DateTime<Utc>,
    /// Sum of the active holds.
    pub held: i64,
    /// What may still be spent or held.
    pub available: i64,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{AccountType, OverdraftPolicy, now};

    fn account(account_type: AccountType, overdraft: OverdraftPolicy) -> AccountState {
        AccountState {
            account: Account {
                account_id: Uuid::new_v4(),
                code: format!("acct-{}", Uuid::new_v4().simple()),
                name: "test".to_owned(),
                account_type,
                currency: Currency::parse("EUR").unwrap(),
                overdraft,
                system: false,
                created_at: now(),
                customer: None,
            },
            balance: 0,
            held: 0,
            version: 1,
            head_hash: "0".repeat(64),
            updated_at: now(),
        }
    }

    fn line(account: &AccountState, side: Side, amount: i64) -> LineInput {
        LineInput {
            account_id: account.account.account_id.to_string(),
            side: Ok(Some(side)),
            amount,
            currency: "EUR".to_owned(),
        }
    }

    fn entry(lines: Vec<LineInput>) -> EntryInput {
        EntryInput {
            entry_id: "entry-1".to_owned(),
            description: "test".to_owned(),
            metadata: BTreeMap::new(),
            lines,
        }
    }

    fn invalid_fields(result: Result<NewEntry, LedgerError>) -> Vec<String> {
        match result {
            Err(LedgerError::Invalid(violations)) => violations.fields().into_iter().map(str::to_owned).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn malformed_entries_name_every_bad_field() {
        let cash = account(AccountType::Asset, OverdraftPolicy::Unlimited);
        assert_eq!(
            invalid_fields(entry(vec![line(&cash, Side::Debit, 5)]).validate()),
            ["lines"]
        );
        let mut bad = entry(vec![
            line(&cash, Side::Debit, 0),
            LineInput {
                account_id: "nope".to_owned(),
                side: Ok(None),
                amount: -1,
                currency: "EURO".to_owned(),
            },
        ]);
        bad.entry_id = "has space".to_owned();
        assert_eq!(
            invalid_fields(bad.validate()),
            [
                "entry_id",
                "lines[0].amount",
                "lines[1].account_id",
                "lines[1].side",
                "lines[1].amount",
                "lines[1].currency"
            ]
        );
    }

    #[test]
    fn unbalanced_entries_are_rejected_per_currency() {
        let cash = account(AccountType::Asset, OverdraftPolicy::Unlimited);
        let sales = account(AccountType::Revenue, OverdraftPolicy::Unlimited);
        let result = entry(vec![line(&cash, Side::Debit, 100), line(&sales, Side::Credit, 99)]).validate();
        assert_eq!(invalid_fields(result), ["lines"]);
        let mut usd = line(&sales, Side::Credit, 100);
        usd.currency = "USD".to_owned();
        let mixed = entry(vec![line(&cash, Side::Debit, 100), usd]).validate();
        assert_eq!(
            invalid_fields(mixed),
            ["lines", "lines"],
            "neither EUR nor USD balances"
        );
    }

    #[test]
    fn a_planned_posting_moves_normal_side_balances_and_checks_limits() {
        let cash = account(AccountType::Asset, OverdraftPolicy::Forbidden);
        let sales = account(AccountType::Revenue, OverdraftPolicy::Unlimited);
        let accounts: HashMap<Uuid, AccountState> = [cash.clone(), sales.clone()]
            .into_iter()
            .map(|state| (state.account.account_id, state))
            .collect();
        let sale = entry(vec![line(&cash, Side::Debit, 100), line(&sales, Side::Credit, 100)])
            .validate()
            .unwrap();
        let plan = plan_posting(&sale, &accounts).unwrap();
        let after: HashMap<Uuid, i64> = plan
            .iter()
            .map(|posting| (posting.account_id, posting.balance_after))
            .collect();
        assert_eq!(after[&cash.account.account_id], 100);
        assert_eq!(
            after[&sales.account.account_id], 100,
            "revenue grows on the credit side"
        );

        let refund = entry(vec![line(&cash, Side::Credit, 100), line(&sales, Side::Debit, 100)])
            .validate()
            .unwrap();
        match plan_posting(&refund, &accounts) {
            Err(LedgerError::Rejected(broken)) => {
                assert_eq!(broken.len(), 1);
                assert_eq!(broken[0].kind, "LIMIT_EXCEEDED");
                assert_eq!(broken[0].subject, cash.account.account_id.to_string());
            }
            other => panic!("expected a limit rejection, got {other:?}"),
        }
    }

    #[test]
    fn unknown_accounts_and_foreign_currencies_are_preconditions() {
        let cash = account(AccountType::Asset, OverdraftPolicy::Unlimited);
        let stranger = account(AccountType::Asset, OverdraftPolicy::Unlimited);
        let mut usd_account = account(AccountType::Liability, OverdraftPolicy::Unlimited);
        usd_account.account.currency = Currency::parse("USD").unwrap();
        let accounts: HashMap<Uuid, AccountState> = [cash.clone(), usd_account.clone()]
            .into_iter()
            .map(|state| (state.account.account_id, state))
            .collect();
        let posted = entry(vec![
            line(&cash, Side::Debit, 10),
            line(&stranger, Side::Credit, 5),
            line(&usd_account, Side::Credit, 5),
        ])
        .validate()
        .unwrap();
        match plan_posting(&posted, &accounts) {
            Err(LedgerError::Rejected(broken)) => {
                let kinds: Vec<_> = broken.iter().map(|rule| rule.kind).collect();
                assert_eq!(kinds, ["account.unknown", "CURRENCY_MISMATCH"]);
            }
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn fingerprints_ignore_nothing_but_map_order() {
        let cash = account(AccountType::Asset, OverdraftPolicy::Unlimited);
        let sales = account(AccountType::Revenue, OverdraftPolicy::Unlimited);
        let make = |amount: i64| {
            let mut input = entry(vec![
                line(&cash, Side::Debit, amount),
                line(&sales, Side::Credit, amount),
            ]);
            input.metadata.insert("b".to_owned(), "2".to_owned());
            input.metadata.insert("a".to_owned(), "1".to_owned());
            input.validate().unwrap()
        };
        assert_eq!(make(5).fingerprint(), make(5).fingerprint());
        assert_ne!(make(5).fingerprint(), make(6).fingerprint());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Entries built from balanced legs, sometimes with one amount perturbed: an entry that
        /// validates balances per currency; applying accepted plans in sequence never changes
        /// the debit-side sum of the balances and never takes an account below its floor.
        #[test]
        fn validated_entries_balance_and_plans_conserve_money(
            entries in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..4, 0usize..4, 1i64..60), 1..4),
                    proptest::option::of((0usize..8, -3i64..3)),
                ),
                1..12,
            )
        ) {
            let mut by_id: HashMap<Uuid, AccountState> = [
                (AccountType::Asset, OverdraftPolicy::Forbidden),
                (AccountType::Liability, OverdraftPolicy::Limited(30)),
                (AccountType::Revenue, OverdraftPolicy::Unlimited),
                (AccountType::Expense, OverdraftPolicy::Forbidden),
            ]
            .into_iter()
            .map(|(kind, policy)| account(kind, policy))
            .map(|state| (state.account.account_id, state))
            .collect();
            let mut ids: Vec<Uuid> = by_id.keys().copied().collect();
            ids.sort_unstable();
            for (legs, perturb) in entries {
                let mut lines: Vec<LineInput> = legs
                    .iter()
                    .flat_map(|&(debit, credit, amount)| {
                        [line(&by_id[&ids[debit]], Side::Debit, amount), line(&by_id[&ids[credit]], Side::Credit, amount)]
                    })
                    .collect();
                if let Some((index, delta)) = perturb {
                    let count = lines.len();
                    lines[index % count].amount += delta;
                }
                let Ok(valid) = entry(lines).validate() else { continue };
                let debits: i64 = valid.lines.iter().filter(|l| l.side == Side::Debit).map(|l| l.amount).sum();
                let credits: i64 = valid.lines.iter().filter(|l| l.side == Side::Credit).map(|l| l.amount).sum();
                prop_assert_eq!(debits, credits);
                let Ok(plan) = plan_posting(&valid, &by_id) else { continue };
                let mut debit_side_change = 0;
                for posting in &plan {
                    let state = by_id.get_mut(&posting.account_id).unwrap();
                    prop_assert_eq!(posting.balance_before, state.balance);
                    let change = posting.balance_after - posting.balance_before;
                    debit_side_change += match state.account.account_type.normal_side() {
                        Side::Debit => change,
                        Side::Credit => -change,
                    };
                    if let Some(floor) = state.account.overdraft.floor() {
                        prop_assert!(posting.balance_after >= floor || posting.balance_after >= posting.balance_before);
                    }
                    state.balance = posting.balance_after;
                    state.version += 1;
                }
                prop_assert_eq!(debit_side_change, 0);
            }
        }
    }
}
