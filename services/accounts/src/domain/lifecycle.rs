//! The account lifecycle as an explicit state machine.
//!
//! ```text
//!             MarkDormant                 Close
//!   ACTIVE ───────────────▶ DORMANT ───────────────▶ CLOSED (terminal)
//!     ▲  ◀─────────────────    │
//!     │      Reactivate        │ Close
//!     └────────────────────────┴──────────────────────▶ CLOSED
//! ```
//!
//! A freeze (debits, credits or both) is orthogonal: `Freeze` / `Unfreeze` / `SetOverdraftLimit`
//! keep the state. A CLOSED account accepts nothing and never carries a freeze, so a frozen
//! account must be unfrozen before it can be closed. Every accepted command yields the next
//! state with `version + 1`; a refused one is an [`IllegalTransition`] naming the rule
//! (FAILED_PRECONDITION). The money conditions of closing (balance, holds, interest) and of
//! lowering an overdraft limit come from the projection and are checked by the caller with
//! [`close_refusals`] and the `exposure` of [`Command::SetOverdraftLimit`].

use chrono::{DateTime, Utc};
use fintech_types::Currency;
use uuid::Uuid;

/// What an account is opened as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Product {
    /// May have an overdraft; earns no interest.
    Current,
    /// Never overdrawn; earns interest.
    Savings,
}

impl Product {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Savings => "savings",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "current" => Some(Self::Current),
            "savings" => Some(Self::Savings),
            _ => None,
        }
    }
}

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountState {
    /// Open.
    Active,
    /// Open, no customer movement for a while.
    Dormant,
    /// Terminal.
    Closed,
}

impl AccountState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Dormant => "dormant",
            Self::Closed => "closed",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "active" => Some(Self::Active),
            "dormant" => Some(Self::Dormant),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

impl std::fmt::Display for AccountState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What a freeze blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FreezeKind {
    /// Money out and holds.
    Debits,
    /// Money in.
    Credits,
    /// Both directions.
    Both,
}

impl FreezeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debits => "debits",
            Self::Credits => "credits",
            Self::Both => "both",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "debits" => Some(Self::Debits),
            "credits" => Some(Self::Credits),
            "both" => Some(Self::Both),
            _ => None,
        }
    }

    /// Whether credits (interest included) are blocked.
    pub fn blocks_credits(self) -> bool {
        matches!(self, Self::Credits | Self::Both)
    }
}

/// A freeze in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    /// What it blocks.
    pub kind: FreezeKind,
    /// Why (1-500 characters).
    pub reason: String,
    /// When it was set.
    pub frozen_at: DateTime<Utc>,
}

/// An account: the full state published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Server-assigned id; the ledger stream id too.
    pub account_id: Uuid,
    /// The owner.
    pub customer_id: String,
    /// Current or savings.
    pub product: Product,
    /// ISO 4217.
    pub currency: Currency,
    /// Lifecycle state.
    pub state: AccountState,
    /// The freeze in force.
    pub freeze: Option<Freeze>,
    /// Minor units, >= 0; 0 for savings.
    pub overdraft_limit: i64,
    /// Opening time.
    pub opened_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Closing time.
    pub closed_at: Option<DateTime<Utc>>,
    /// 1 when opened, +1 per change.
    pub version: i64,
    /// The last customer movement known when this version was written.
    pub last_customer_movement_at: Option<DateTime<Utc>>,
}

/// A change requested of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Sets (or replaces) a freeze.
    Freeze {
        /// What to block.
        kind: FreezeKind,
        /// Why.
        reason: String,
    },
    /// Lifts the freeze.
    Unfreeze,
    /// Sets a current account's overdraft limit; `exposure` is what the limit must still cover
    /// per the projection (`held - balance`, the overdrawn amount including holds).
    SetOverdraftLimit {
        /// The new limit.
        limit: i64,
        /// What the limit must cover.
        exposure: i64,
    },
    /// Closes the account (the money conditions are checked by [`close_refusals`] first).
    Close,
    /// No customer movement for the dormancy period.
    MarkDormant {
        /// The last movement known (stamped on the new version).
        last_movement: Option<DateTime<Utc>>,
    },
    /// A customer movement on a dormant account.
    Reactivate {
        /// When the movement happened.
        movement_at: DateTime<Utc>,
    },
}

impl Command {
    /// A short name for logs and the change log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Freeze { .. } => "freeze",
            Self::Unfreeze => "unfreeze",
            Self::SetOverdraftLimit { .. } => "set_overdraft_limit",
            Self::Close => "close",
            Self::MarkDormant { .. } => "mark_dormant",
            Self::Reactivate { .. } => "reactivate",
        }
    }
}

/// A command the account's state does not allow (FAILED_PRECONDITION, `rule` as the
/// `PreconditionFailure` type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct IllegalTransition {
    /// The rule, e.g. `account.closed`.
    pub rule: &'static str,
    /// What is wrong, shown to the caller.
    pub description: String,
}

fn refuse(rule: &'static str, description: impl Into<String>) -> IllegalTransition {
    IllegalTransition {
        rule,
        description: description.into(),
    }
}

impl Account {
    /// The account after `command` at `now` (version + 1), or why it is refused.
    pub fn apply(&self, command: &Command, now: DateTime<Utc>) -> Result<Account, IllegalTransition> {
        use AccountState::{Active, Closed, Dormant};
        if self.state == Closed {
            return Err(refuse(
                "account.closed",
                format!("account {} is closed; nothing can change it", self.account_id),
            ));
        }
        let mut next = self.clone();
        match command {
            Command::Freeze { kind, reason } => {
                next.freeze = Some(Freeze {
                    kind: *kind,
                    reason: reason.clone(),
                    frozen_at: now,
                });
            }
            Command::Unfreeze => {
                if self.freeze.is_none() {
                    return Err(refuse(
                        "account.not_frozen",
                        format!("account {} has no freeze to lift", self.account_id),
                    ));
                }
                next.freeze = None;
            }
            Command::SetOverdraftLimit { limit, exposure } => {
                if self.product != Product::Current {
                    return Err(refuse(
                        "account.product",
                        "only current accounts have an overdraft limit; savings accounts are never overdrawn",
                    ));
                }
                if *limit < *exposure {
                    return Err(refuse(
                        "account.overdrawn",
                        format!(
                            "the account is overdrawn by {exposure} minor units (holds included); the limit cannot go below that"
                        ),
                    ));
                }
                next.overdraft_limit = *limit;
            }
            Command::Close => {
                if self.freeze.is_some() {
                    return Err(refuse(
                        "account.frozen",
                        "a frozen account cannot be closed; lift the freeze first",
                    ));
                }
                next.state = Closed;
                next.closed_at = Some(now);
            }
            Command::MarkDormant { last_movement } => {
                if self.state != Active {
                    return Err(refuse(
                        "account.state",
                        format!("only an active account becomes dormant, this one is {}", self.state),
                    ));
                }
                next.state = Dormant;
                next.last_customer_movement_at = *last_movement;
            }
            Command::Reactivate { movement_at } => {
                if self.state != Dormant {
                    return Err(refuse(
                        "account.state",
                        format!("only a dormant account is reactivated, this one is {}", self.state),
                    ));
                }
                next.state = Active;
                next.last_customer_movement_at = Some(
                    self.last_customer_movement_at
                        .map_or(*movement_at, |known| known.max(*movement_at)),
                );
            }
        }
        next.updated_at = now;
        next.version += 1;
        Ok(next)
    }
}

/// What the projection says about an account's money, for closing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MoneyState {
    /// Ledger balance.
    pub balance: i64,
    /// Held by active holds (the ledger's figure).
    pub held: i64,
    /// Active holds known from hold events.
    pub active_holds: i64,
    /// Accrued interest not posted yet, in minor units (floor).
    pub accrued_interest: i64,
    /// Interest postings published but not yet seen booked by the ledger.
    pub unbooked_postings: i64,
}

/// One reason an account cannot be closed: a `PreconditionFailure` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `account.balance_not_zero`, `account.active_holds`, `account.interest_unposted`.
    pub rule: &'static str,
    /// What is left.
    pub description: String,
}

/// Why an account with `money` cannot be closed (empty: it can), every reason at once.
pub fn close_refusals(money: &MoneyState) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    if money.balance != 0 {
        refusals.push(Refusal {
            rule: "account.balance_not_zero",
            description: format!("the ledger balance is {} minor units, not 0", money.balance),
        });
    }
    if money.held != 0 || money.active_holds != 0 {
        refusals.push(Refusal {
            rule: "account.active_holds",
            description: format!(
                "{} active hold(s) reserve {} minor units",
                money.active_holds, money.held
            ),
        });
    }
    if money.accrued_interest != 0 || money.unbooked_postings != 0 {
        refusals.push(Refusal {
            rule: "account.interest_unposted",
            description: format!(
                "{} minor units of interest are accrued and not posted yet ({} posting(s) not yet booked by the ledger)",
                money.accrued_interest, money.unbooked_postings
            ),
        });
    }
    refusals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(product: Product, state: AccountState, frozen: bool) -> Account {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Account {
            account_id: Uuid::nil(),
            customer_id: "cust-1".to_owned(),
            product,
            currency: Currency::parse("EUR").unwrap(),
            state,
            freeze: frozen.then(|| Freeze {
                kind: FreezeKind::Debits,
                reason: "case 1".to_owned(),
                frozen_at: at,
            }),
            overdraft_limit: 0,
            opened_at: at,
            updated_at: at,
            closed_at: (state == AccountState::Closed).then_some(at),
            version: 3,
            last_customer_movement_at: None,
        }
    }

    fn later() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn commands() -> Vec<Command> {
        vec![
            Command::Freeze {
                kind: FreezeKind::Both,
                reason: "aml".to_owned(),
            },
            Command::Unfreeze,
            Command::SetOverdraftLimit {
                limit: 500,
                exposure: 0,
            },
            Command::Close,
            Command::MarkDormant { last_movement: None },
            Command::Reactivate { movement_at: later() },
        ]
    }

    /// One row of the table: (state, frozen, command) -> (state, frozen) after it, or the rule.
    type Row = (
        AccountState,
        bool,
        &'static str,
        Result<(AccountState, bool), &'static str>,
    );

    /// The full transition table: (state, frozen, command) -> resulting state or refused rule.
    #[test]
    fn every_transition_of_the_state_machine() {
        use AccountState::{Active, Closed, Dormant};
        let expected: &[Row] = &[
            (Active, false, "freeze", Ok((Active, true))),
            (Active, false, "unfreeze", Err("account.not_frozen")),
            (Active, false, "set_overdraft_limit", Ok((Active, false))),
            (Active, false, "close", Ok((Closed, false))),
            (Active, false, "mark_dormant", Ok((Dormant, false))),
            (Active, false, "reactivate", Err("account.state")),
            (Active, true, "freeze", Ok((Active, true))),
            (Active, true, "unfreeze", Ok((Active, false))),
            (Active, true, "set_overdraft_limit", Ok((Active, true))),
            (Active, true, "close", Err("account.frozen")),
            (Active, true, "mark_dormant", Ok((Dormant, true))),
            (Active, true, "reactivate", Err("account.state")),
            (Dormant, false, "freeze", Ok((Dormant, true))),
            (Dormant, false, "unfreeze", Err("account.not_frozen")),
            (Dormant, false, "set_overdraft_limit", Ok((Dormant, false))),
            (Dormant, false, "close", Ok((Closed, false))),
            (Dormant, false, "mark_dormant", Err("account.state")),
            (Dormant, false, "reactivate", Ok((Active, false))),
            (Dormant, true, "freeze", Ok((Dormant, true))),
            (Dormant, true, "unfreeze", Ok((Dormant, false))),
            (Dormant, true, "set_overdraft_limit", Ok((Dormant, true))),
            (Dormant, true, "close", Err("account.frozen")),
            (Dormant, true, "mark_dormant", Err("account.state")),
            (Dormant, true, "reactivate", Ok((Active, true))),
            (Closed, false, "freeze", Err("account.closed")),
            (Closed, false, "unfreeze", Err("account.closed")),
            (Closed, false, "set_overdraft_limit", Err("account.closed")),
            (Closed, false, "close", Err("account.closed")),
            (Closed, false, "mark_dormant", Err("account.closed")),
            (Closed, false, "reactivate", Err("account.closed")),
        ];
        let mut checked = 0;
        for (state, frozen, name, outcome) in expected {
            let command = commands().into_iter().find(|command| command.name() == *name).unwrap();
            let current = account(Product::Current, *state, *frozen);
            let result = current.apply(&command, later());
            match (outcome, result) {
                (Ok((next_state, next_frozen)), Ok(next)) => {
                    assert_eq!(next.state, *next_state, "{state} frozen={frozen} {name}");
                    assert_eq!(next.freeze.is_some(), *next_frozen, "{state} frozen={frozen} {name}");
                    assert_eq!(next.version, current.version + 1);
                    assert_eq!(next.updated_at, later());
                    assert_eq!(next.closed_at.is_some(), next.state == Closed);
                }
                (Err(rule), Err(refused)) => assert_eq!(refused.rule, *rule, "{state} frozen={frozen} {name}"),
                (outcome, result) => panic!("{state} frozen={frozen} {name}: expected {outcome:?}, got {result:?}"),
            }
            checked += 1;
        }
        assert_eq!(
            checked,
            3 * 2 * commands().len() - commands().len(),
            "closed+frozen cannot exist"
        );
    }

    #[test]
    fn savings_accounts_have_no_overdraft_and_limits_cover_the_exposure() {
        let savings = account(Product::Savings, AccountState::Active, false);
        let refused = savings
            .apply(&Command::SetOverdraftLimit { limit: 10, exposure: 0 }, later())
            .unwrap_err();
        assert_eq!(refused.rule, "account.product");
        let current = account(Product::Current, AccountState::Active, false);
        let refused = current
            .apply(
                &Command::SetOverdraftLimit {
                    limit: 99,
                    exposure: 100,
                },
                later(),
            )
            .unwrap_err();
        assert_eq!(refused.rule, "account.overdrawn");
        let next = current
            .apply(
                &Command::SetOverdraftLimit {
                    limit: 100,
                    exposure: 100,
                },
                later(),
            )
            .unwrap();
        assert_eq!(next.overdraft_limit, 100);
    }

    #[test]
    fn a_freeze_is_replaced_and_reactivation_keeps_the_latest_movement() {
        let frozen = account(Product::Current, AccountState::Dormant, true);
        let refrozen = frozen
            .apply(
                &Command::Freeze {
                    kind: FreezeKind::Credits,
                    reason: "court order".to_owned(),
                },
                later(),
            )
            .unwrap();
        let freeze = refrozen.freeze.clone().unwrap();
        assert_eq!(
            (freeze.kind, freeze.reason.as_str(), freeze.frozen_at),
            (FreezeKind::Credits, "court order", later())
        );
        let movement = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        let active = refrozen
            .apply(&Command::Reactivate { movement_at: movement }, later())
            .unwrap();
        assert_eq!(active.last_customer_movement_at, Some(movement));
        assert_eq!(active.version, frozen.version + 2);
    }

    #[test]
    fn closing_names_everything_left() {
        assert!(close_refusals(&MoneyState::default()).is_empty());
        let rules: Vec<&str> = close_refusals(&MoneyState {
            balance: 5,
            held: 3,
            active_holds: 1,
            accrued_interest: 1,
            unbooked_postings: 0,
        })
        .iter()
        .map(|refusal| refusal.rule)
        .collect();
        assert_eq!(
            rules,
            [
                "account.balance_not_zero",
                "account.active_holds",
                "account.interest_unposted"
            ]
        );
        let rules: Vec<&str> = close_refusals(&MoneyState {
            unbooked_postings: 1,
            ..MoneyState::default()
        })
        .iter()
        .map(|refusal| refusal.rule)
        .collect();
        assert_eq!(rules, ["account.interest_unposted"]);
    }
}
