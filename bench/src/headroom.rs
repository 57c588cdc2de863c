//! PostgreSQL connection headroom, checked before any scenario starts.
//!
//! The benchmark shares its PostgreSQL with whatever else runs on the machine (a local stack's
//! services hold their pools there; other test suites come and go). Every scenario's environment
//! needs, at its peak, the pgbench clients + the pool of every service process it starts
//! (`DATABASE_MAX_CONNECTIONS`, which the benchmark passes) + the connections each service holds
//! outside its pool (per outbox relay: its liveness lock and, with `OUTBOX_WAKE_ON_COMMIT`, its
//! `LISTEN` connection) + the benchmark's own small pools on the service and pgbench databases, an
//! admin connection and a margin. That sum is an upper bound (the services sit idle while pgbench
//! runs, but their pools may keep what they opened), so nothing is left to chance.
//!
//! [`plan`] compares each scenario's [`Footprint`] with what the server has free (`max_connections`
//! − `superuser_reserved_connections` − the client connections others hold, [`Capacity::read`]):
//! **fit** as asked; **shrink** the pools the benchmark passes to the scenarios that need it (never
//! a client count, never below [`MIN_POOL`], never a pool the user set explicitly); or **refuse**
//! before anything starts, with the numbers and what to change ([`refusal`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use crate::db::redact;
use crate::suite::Options;

/// The pool size the services default to (`fintech_platform::config`).
pub const DEFAULT_POOL: u32 = 16;
/// The smallest pool the benchmark shrinks a service to: below it a consumer's lanes and the
/// relay wait on each other, and the scenario would measure the pool rather than the service.
pub const MIN_POOL: u32 = 4;
/// Connections of each of the benchmark's own pools (`environment::pool`): one per service
/// database it reads, one on the pgbench database.
pub const BENCH_POOL: usize = 2;
/// Its admin connection (databases created and dropped while an environment starts and stops).
pub const ADMIN: usize = 1;
/// Room for what nobody counted: a `psql` someone opens, pgbench's set-up connection.
pub const MARGIN: usize = 2;

/// What one scenario's environment holds on PostgreSQL at its peak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// The environment's tag (`c64`, `alone64`, `e2e`, `ledger`, …): its pool is looked up by it.
    pub tag: String,
    /// What it is, for people.
    pub label: String,
    /// The payments client count it runs at, when it is a payments level (`--levels`).
    pub level: Option<usize>,
    /// pgbench's clients (one connection each).
    pub pgbench_clients: usize,
    /// The service processes it starts, each with a pool of `DATABASE_MAX_CONNECTIONS`.
    pub services: Vec<&'static str>,
    /// Connections of those services outside their pools (relays' liveness locks and listeners).
    pub outside_pools: usize,
    /// The benchmark's own: its pools on the service and pgbench databases and its admin.
    pub own: usize,
}

impl Footprint {
    /// Connections it needs with pools of `pool`, margin included.
    pub fn needs(&self, pool: u32) -> usize {
        self.fixed() + self.services.len() * pool as usize
    }

    /// Everything but the pools.
    fn fixed(&self) -> usize {
        self.pgbench_clients + self.outside_pools + self.own + MARGIN
    }

    /// The largest pool, at most `requested`, with which it needs no more than `free`.
    fn largest_pool(&self, requested: u32, free: usize) -> Option<u32> {
        if self.needs(requested) <= free {
            return Some(requested);
        }
        let room = free.checked_sub(self.fixed())?;
        let per_service = u32::try_from(room / self.services.len().max(1)).unwrap_or(u32::MAX);
        (!self.services.is_empty()).then_some(per_service.min(requested))
    }

    /// `pgbench 64 + payments, tax, ledger (pools of 16, 2 outside each) + 9 of the bench's own + margin 2`.
    pub fn breakdown(&self, pool: u32) -> String {
        let mut parts = Vec::new();
        if self.pgbench_clients > 0 {
            parts.push(format!("pgbench {}", self.pgbench_clients));
        }
        if !self.services.is_empty() {
            let outside = self.outside_pools / self.services.len();
            parts.push(format!(
                "{} (pools of {pool}{})",
                self.services.join(", "),
                if outside > 0 {
                    format!(" + {outside} outside each")
                } else {
                    String::new()
                }
            ));
        }
        parts.push(format!("{} of the bench's own", self.own));
        parts.push(format!("margin {MARGIN}"));
        parts.join(" + ")
    }
}

/// The connections an outbox relay holds outside its service's pool: its liveness lock (a
/// detached pool connection, `outbox::Owner`) and, when relays wake on commit, its `LISTEN`
/// connection (`outbox::Wake`).
pub fn per_relay(wake_on_commit: bool) -> usize {
    1 + usize::from(wake_on_commit)
}

/// The footprint of every scenario `options` selects, mirroring what `environment` starts for
/// each: `relays` outbox relays per service (`OUTBOX_RELAYS`), each holding [`per_relay`]
/// connections outside the pool.
pub fn footprints(options: &Options, relays: usize, wake_on_commit: bool) -> Vec<Footprint> {
    let outside = relays * per_relay(wake_on_commit);
    let footprint = |tag: String, label: String, level, pgbench_clients, services: Vec<&'static str>, outside| {
        let own = BENCH_POOL * services.len() + if pgbench_clients > 0 { BENCH_POOL } else { 0 } + ADMIN;
        Footprint {
            tag,
            label,
            level,
            pgbench_clients,
            outside_pools: outside * services.len(),
            services,
            own,
        }
    };
    let with_ledger = options.ledger_bin.is_some();
    let mut all = Vec::new();
    if options.runs("payments") {
        for &clients in &options.levels {
            let mut flow = vec!["payments", "tax"];
            if with_ledger {
                flow.push("ledger");
            }
            let label = format!("payments at {clients} clients with the flow");
            all.push(footprint(
                format!("c{clients}"),
                label,
                Some(clients),
                clients,
                flow,
                outside,
            ));
            // Alone: OUTBOX_RELAYS=0, so nothing outside the pool.
            let label = format!("payments alone at {clients} clients");
            all.push(footprint(
                format!("alone{clients}"),
                label,
                Some(clients),
                clients,
                vec!["payments"],
                0,
            ));
        }
    }
    if options.runs("e2e") {
        let mut flow = vec!["payments", "tax"];
        if with_ledger {
            flow.push("ledger");
        }
        all.push(footprint("e2e".into(), "end to end".into(), None, 0, flow, outside));
    }
    if options.runs("ledger") && with_ledger {
        let label = format!("ledger at {} clients", options.ledger_clients);
        let clients = options.ledger_clients;
        all.push(footprint(
            "ledger".into(),
            label,
            None,
            clients,
            vec!["ledger"],
            outside,
        ));
    }
    if options.runs("transfers") && crate::suite::transfers_missing(options).is_none() {
        let services = vec!["accounts", "ledger", "transfers"];
        all.push(footprint(
            "transfers".into(),
            "transfers".into(),
            None,
            0,
            services,
            outside,
        ));
    }
    if options.runs("notifications") {
        let services = vec!["notifications"];
        all.push(footprint(
            "notifications".into(),
            "notifications".into(),
            None,
            0,
            services,
            outside,
        ));
    }
    all
}

/// Client connections held by others, grouped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `pg_stat_activity.datname`.
    pub database: String,
    /// `pg_stat_activity.application_name` (empty for sqlx's connections).
    pub application: String,
    /// How many.
    pub connections: usize,
}

impl Holder {
    fn describe(&self) -> String {
        match self.application.as_str() {
            "" => format!("{} on {}", self.connections, self.database),
            application => format!("{} on {} ({application})", self.connections, self.database),
        }
    }

    /// One of the local stack's services' databases (`fintech_<service>`, not the benchmark's).
    fn is_local_stack(&self) -> bool {
        self.database.starts_with("fintech_") && !self.database.starts_with(crate::db::DATABASE_PREFIX)
    }
}

/// What the server allows and what others hold of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// `max_connections`.
    pub max_connections: usize,
    /// `superuser_reserved_connections` (+ `reserved_connections` from PostgreSQL 16 on): left for
    /// an administrator.
    pub reserved: usize,
    /// Client connections of others (`pg_stat_activity`, `backend_type = 'client backend'`,
    /// without the one that read it), most first.
    pub others: Vec<Holder>,
}

impl Capacity {
    /// Connections others hold.
    pub fn held(&self) -> usize {
        self.others.iter().map(|holder| holder.connections).sum()
    }

    /// What this run may use.
    pub fn free(&self) -> usize {
        self.max_connections.saturating_sub(self.reserved + self.held())
    }

    /// `12 on fintech_payments, 3 on postgres (psql)`.
    pub fn held_text(&self) -> String {
        if self.others.is_empty() {
            return "none".to_owned();
        }
        (self.others.iter().map(Holder::describe))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads it from the server at `url` (an admin URL).
    pub async fn read(url: &str) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(url)
            .await
            .with_context(|| format!("connect to PostgreSQL at {}", redact(url)))?;
        let (max_connections, superuser_reserved, reserved): (i32, i32, i32) = sqlx::query_as(
            "SELECT current_setting('max_connections')::int, \
                    current_setting('superuser_reserved_connections')::int, \
                    COALESCE((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0)",
        )
        .fetch_one(&mut conn)
        .await
        .context("read max_connections")?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT COALESCE(datname, ''), COALESCE(application_name, ''), count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
        )
        .fetch_all(&mut conn)
        .await
        .context("read pg_stat_activity")?;
        let _ = conn.close().await;
        let count = |value: i32| usize::try_from(value).unwrap_or(0);
        Ok(Self {
            max_connections: count(max_connections),
            reserved: count(superuser_reserved) + count(reserved),
            others: (rows.into_iter())
                .map(|(database, application, connections)| Holder {
                    database,
                    application,
                    connections: usize::try_from(connections).unwrap_or(0),
                })
                .collect(),
        })
    }
}

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything fits with the pools asked for.
    Fit,
    /// Everything fits once the pools of these scenarios (tags) are shrunk to these sizes.
    Shrink(BTreeMap<String, u32>),
    /// These scenarios (tags) do not fit even with the smallest pool allowed.
    Refuse(Vec<String>),
}

/// The check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The pool asked for (`DATABASE_MAX_CONNECTIONS`, else [`DEFAULT_POOL`]).
    pub requested: u32,
    /// The user set it: it is never shrunk.
    pub fixed: bool,
    /// Connections this run may use.
    pub free: usize,
    /// The decision.
    pub verdict: Verdict,
}

impl Plan {
    /// The pool the services of scenario `tag` get.
    pub fn pool_for(&self, tag: &str) -> u32 {
        match &self.verdict {
            Verdict::Shrink(pools) => pools.get(tag).copied().unwrap_or(self.requested),
            _ => self.requested,
        }
    }

    /// The smallest pool it may shrink to.
    fn floor(&self) -> u32 {
        if self.fixed {
            self.requested
        } else {
            MIN_POOL.min(self.requested)
        }
    }

    /// The footprint that needs the most with the pools chosen, and how much.
    pub fn peak<'a>(&self, footprints: &'a [Footprint]) -> Option<(&'a Footprint, usize)> {
        (footprints.iter())
            .map(|footprint| (footprint, footprint.needs(self.pool_for(&footprint.tag))))
            .max_by_key(|(_, needs)| *needs)
    }
}

/// Decides, per scenario, whether its footprint fits `free` connections with pools of
/// `requested`, fits with a smaller pool (unless `fixed`, and never below [`MIN_POOL`]), or not
/// at all.
pub fn plan(footprints: &[Footprint], requested: u32, fixed: bool, free: usize) -> Plan {
    let mut plan = Plan {
        requested,
        fixed,
        free,
        verdict: Verdict::Fit,
    };
    let floor = plan.floor();
    let (mut shrunk, mut refused) = (BTreeMap::new(), Vec::new());
    for footprint in footprints {
        match footprint.largest_pool(requested, free) {
            Some(pool) if pool == requested => {}
            Some(pool) if pool >= floor => {
                shrunk.insert(footprint.tag.clone(), pool);
            }
            _ => refused.push(footprint.tag.clone()),
        }
    }
    plan.verdict = if !refused.is_empty() {
        Verdict::Refuse(refused)
    } else if !shrunk.is_empty() {
        Verdict::Shrink(shrunk)
    } else {
        Verdict::Fit
    };
    plan
}

/// One line for the run log and the report: the server's numbers, what the run needs, the pools.
pub fn summary(plan: &Plan, capacity: &Capacity, footprints: &[Footprint]) -> String {
    let mut text = format!(
        "max_connections {} - {} reserved - {} held by others ({}) = {} free",
        capacity.max_connections,
        capacity.reserved,
        capacity.held(),
        capacity.held_text(),
        capacity.free()
    );
    if let Some((peak, needs)) = plan.peak(footprints) {
        let _ = write!(text, "; this run needs at most {needs} ({})", peak.label);
    }
    match &plan.verdict {
        Verdict::Fit => {
            let _ = write!(text, "; services' pools of {} as asked", plan.requested);
        }
        Verdict::Shrink(pools) => {
            let _ = write!(
                text,
                "; services' pools of {}, shrunk to fit in {}",
                plan.requested,
                shrunk_text(pools, footprints)
            );
        }
        Verdict::Refuse(_) => text.push_str("; does not fit"),
    }
    text
}

/// `payments at 64 clients with the flow (5)`.
pub fn shrunk_text(pools: &BTreeMap<String, u32>, footprints: &[Footprint]) -> String {
    (footprints.iter())
        .filter_map(|footprint| Some(format!("{} ({})", footprint.label, pools.get(&footprint.tag)?)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the run cannot start and exactly what to change: the numbers, who holds what, and the
/// three ways out (stop the local stack or shrink its pools, raise `max_connections`, lower the
/// client levels); `levels` are the run's `--levels`, `url` the admin URL.
pub fn refusal(plan: &Plan, capacity: &Capacity, footprints: &[Footprint], levels: &[usize], url: &str) -> String {
    let floor = plan.floor();
    let Verdict::Refuse(refused) = &plan.verdict else {
        return String::new();
    };
    let blocking: Vec<&Footprint> = (footprints.iter())
        .filter(|footprint| refused.contains(&footprint.tag))
        .collect();
    let Some(worst) = (blocking.iter().copied()).max_by_key(|footprint| footprint.needs(floor)) else {
        return String::new();
    };
    let needed = worst.needs(floor);
    let pools = if plan.fixed {
        format!("DATABASE_MAX_CONNECTIONS={} as set", plan.requested)
    } else {
        format!("the smallest pools it would use, {floor}")
    };
    let mut text = format!(
        "not enough PostgreSQL connections for this run: needed {needed} ({}: {}; with {pools}), \
         max_connections {} - {} reserved (superuser_reserved_connections) - {} held by others = {} free",
        worst.label,
        worst.breakdown(floor),
        capacity.max_connections,
        capacity.reserved,
        capacity.held(),
        capacity.free(),
    );
    let _ = write!(text, "\n  held by others (pg_stat_activity): {}", capacity.held_text());
    if blocking.len() > 1 {
        let others: Vec<String> = (blocking.iter())
            .map(|footprint| format!("{} needs {}", footprint.label, footprint.needs(floor)))
            .collect();
        let _ = write!(text, "\n  scenarios that do not fit: {}", others.join(", "));
    }
    text.push_str("\n  change one of:");
    let local: usize = (capacity.others.iter())
        .filter(|holder| holder.is_local_stack())
        .map(|holder| holder.connections)
        .sum();
    if local > 0 {
        let after = capacity.free() + local;
        let _ = write!(
            text,
            "\n  - stop the local stack first: deploy/local/down (frees the {local} connections its services hold on \
             fintech_*; {after} free then{}), or restart it with smaller pools: deploy/local/down && \
             DATABASE_MAX_CONNECTIONS=4 deploy/local/up",
            if after >= needed {
                ", enough"
            } else {
                ", still not enough on its own"
            }
        );
    }
    // Everything as asked, without shrinking: the largest footprint with the requested pools.
    let all_asked = (footprints.iter())
        .map(|footprint| footprint.needs(plan.requested))
        .max()
        .unwrap_or(needed);
    let limit = (all_asked + capacity.reserved + capacity.held()).div_ceil(10) * 10;
    let _ = write!(
        text,
        "\n  - raise the limit: psql '{}' -c 'ALTER SYSTEM SET max_connections = {limit}', then restart PostgreSQL \
         (max_connections only changes on a restart, e.g. `pg_ctlcluster <version> main restart`)",
        redact(url)
    );
    // Fewer payments clients helps only when every blocking scenario is a payments level.
    if blocking.iter().all(|footprint| footprint.level.is_some()) {
        let room = blocking
            .iter()
            .map(|footprint| {
                let without = footprint.needs(floor) - footprint.pgbench_clients;
                capacity.free().saturating_sub(without)
            })
            .min()
            .unwrap_or(0);
        if room == 0 {
            text.push_str("\n  - (fewer clients would not help: even one pgbench client does not fit)");
        } else {
            let fitting: Vec<String> = (levels.iter())
                .filter(|level| **level <= room)
                .map(ToString::to_string)
                .collect();
            let suggestion = if fitting.is_empty() {
                room.to_string()
            } else {
                fitting.join(",")
            };
            let _ = write!(
                text,
                "\n  - run fewer clients: at most {room} fit now, e.g. `bench/run --levels {suggestion}`"
            );
        }
    } else {
        let names: Vec<&str> = (blocking.iter())
            .filter(|footprint| footprint.level.is_none())
            .map(|footprint| footprint.tag.as_str())
            .collect();
        let _ = write!(
            text,
            "\n  - leave out what does not fit: `--scenarios` without {}",
            names.join(", ")
        );
    }
    if plan.fixed {
        let _ = write!(
            text,
            "\n  - or a smaller DATABASE_MAX_CONNECTIONS (set to {}; unset, the bench shrinks pools to fit, down to {MIN_POOL})",
            plan.requested
        );
    }
    text
}

/// The pool asked for: `DATABASE_MAX_CONNECTIONS` when set (then fixed), else the default.
pub fn requested_pool(value: Option<&str>) -> anyhow::Result<(u32, bool)> {
    match value.map(str::trim).filter(|value| !value.is_empty()) {
        None => Ok((DEFAULT_POOL, false)),
        Some(value) => {
            let pool: u32 = value
                .parse()
                .with_context(|| format!("DATABASE_MAX_CONNECTIONS: {value:?} is not a number"))?;
            anyhow::ensure!(pool > 0, "DATABASE_MAX_CONNECTIONS must be at least 1");
            Ok((pool, true))
        }
    }
}

/// What the report keeps of the check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionBudget {
    /// The server's limit and who held what when the run started.
    pub capacity: Capacity,
    /// The most any scenario needs with the pools chosen.
    pub needed: usize,
    /// The scenario that needs it.
    pub peak: String,
    /// The pool asked for.
    pub requested_pool: u32,
    /// Scenarios whose services got a smaller pool, with its size (tag → pool).
    pub shrunk: BTreeMap<String, u32>,
    /// The line the run log printed.
    pub summary: String,
}

impl ConnectionBudget {
    /// The report's record of `plan`.
    pub fn of(plan: &Plan, capacity: &Capacity, footprints: &[Footprint]) -> Self {
        let (peak, needed) = plan.peak(footprints).map_or((String::new(), 0), |(footprint, needs)| {
            (footprint.label.clone(), needs)
        });
        Self {
            capacity: capacity.clone(),
            needed,
            peak,
            requested_pool: plan.requested,
            shrunk: match &plan.verdict {
                Verdict::Shrink(pools) => pools.clone(),
                _ => BTreeMap::new(),
            },
            summary: summary(plan, capacity, footprints),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payments with the flow at `clients` (payments, tax, ledger; one relay waking on commit).
    fn flow(clients: usize) -> Footprint {
        Footprint {
            tag: format!("c{clients}"),
            label: format!("payments at {clients} clients with the flow"),
            level: Some(clients),
            pgbench_clients: clients,
            services: vec!["payments", "tax", "ledger"],
            outside_pools: 3 * per_relay(true),
            own: 3 * BENCH_POOL + BENCH_POOL + ADMIN,
        }
    }

    fn ledger() -> Footprint {
        Footprint {
            tag: "ledger".into(),
            label: "ledger at 32 clients".into(),
            level: None,
            pgbench_clients: 32,
            services: vec!["ledger"],
            outside_pools: 2,
            own: 5,
        }
    }

    fn capacity(max: usize, held: &[(&str, &str, usize)]) -> Capacity {
        Capacity {
            max_connections: max,
            reserved: 3,
            others: (held.iter())
                .map(|(database, application, connections)| Holder {
                    database: (*database).into(),
                    application: (*application).into(),
                    connections: *connections,
                })
                .collect(),
        }
    }

    #[test]
    fn a_footprint_counts_clients_pools_relays_and_the_bench() {
        // 64 pgbench + 3 × 16 pools + 3 × 2 outside + 9 own + 2 margin.
        assert_eq!(flow(64).needs(16), 64 + 48 + 6 + 9 + 2);
        assert_eq!(flow(64).needs(4), 64 + 12 + 6 + 9 + 2);
        assert_eq!(per_relay(false), 1);
    }

    #[test]
    fn everything_fits_with_room() {
        let plan = plan(&[flow(8), flow(64), ledger()], 16, false, 200);
        assert_eq!(plan.verdict, Verdict::Fit);
        assert_eq!(plan.pool_for("c64"), 16);
        assert_eq!(plan.peak(&[flow(8), flow(64)]).map(|(_, needs)| needs), Some(129));
    }

    #[test]
    fn only_the_scenarios_that_need_it_get_smaller_pools() {
        // 97 free (max_connections 100, 3 reserved, nobody else): 64 clients with the flow need
        // 81 + 3 × pool, so pools of 5; 8 clients need 73 with 16 and keep them.
        let footprints = [flow(8), flow(64), ledger()];
        let plan = plan(&footprints, 16, false, capacity(100, &[]).free());
        assert_eq!(plan.verdict, Verdict::Shrink(BTreeMap::from([("c64".to_owned(), 5)])));
        assert_eq!(
            (plan.pool_for("c64"), plan.pool_for("c8"), plan.pool_for("ledger")),
            (5, 16, 16)
        );
        let (peak, needs) = plan.peak(&footprints).expect("a peak");
        assert_eq!((peak.tag.as_str(), needs), ("c64", 96));
        assert!(needs <= plan.free);
        let line = summary(&plan, &capacity(100, &[]), &footprints);
        assert!(line.contains("payments at 64 clients with the flow (5)"), "{line}");
    }

    #[test]
    fn a_local_stack_beside_it_makes_the_peak_refuse_with_what_to_change() {
        let others = capacity(
            100,
            &[
                ("fintech_payments", "", 18),
                ("fintech_tax", "", 17),
                ("fintech_ledger", "", 15),
                ("postgres", "psql", 1),
            ],
        );
        assert_eq!(others.free(), 46);
        let footprints = [flow(1), flow(8), flow(32), flow(64)];
        let plan = plan(&footprints, 16, false, others.free());
        assert_eq!(plan.verdict, Verdict::Refuse(vec!["c32".to_owned(), "c64".to_owned()]));
        let message = refusal(
            &plan,
            &others,
            &footprints,
            &[1, 8, 32, 64],
            "postgres://u:pw@db/postgres",
        );
        for expected in [
            "needed 93",
            "max_connections 100",
            "3 reserved",
            "51 held by others",
            "46 free",
            "18 on fintech_payments, 17 on fintech_tax, 15 on fintech_ledger, 1 on postgres (psql)",
            "deploy/local/down (frees the 50 connections",
            "96 free then, enough",
            "DATABASE_MAX_CONNECTIONS=4 deploy/local/up",
            // 129 (everything with pools of 16) + 3 reserved + 51 held, rounded up.
            "ALTER SYSTEM SET max_connections = 190",
            "postgres://u:***@db/postgres",
            // 46 free - (29 for the flow with pools of 4) = 17 clients.
            "at most 17 fit now, e.g. `bench/run --levels 1,8`",
        ] {
            assert!(message.contains(expected), "{expected:?} missing from:\n{message}");
        }
    }

    #[test]
    fn a_pool_set_by_the_user_is_never_shrunk() {
        let plan = plan(&[flow(64)], 16, true, 97);
        assert_eq!(plan.verdict, Verdict::Refuse(vec!["c64".to_owned()]));
        let message = refusal(&plan, &capacity(100, &[]), &[flow(64)], &[64], "postgres://h/postgres");
        assert!(message.contains("needed 129"), "{message}");
        assert!(message.contains("DATABASE_MAX_CONNECTIONS=16 as set"), "{message}");
        assert!(
            !message.contains("deploy/local/down"),
            "no local stack holds any: {message}"
        );
        assert!(
            message.contains("at most 32 fit now, e.g. `bench/run --levels 32`"),
            "{message}"
        );
    }

    #[test]
    fn a_scenario_without_levels_is_named_for_scenarios() {
        let plan = plan(&[flow(2), ledger()], 16, false, 30);
        assert_eq!(
            plan.verdict,
            Verdict::Refuse(vec!["c2".to_owned(), "ledger".to_owned()])
        );
        let message = refusal(
            &plan,
            &capacity(100, &[("x", "", 67)]),
            &[flow(2), ledger()],
            &[2],
            "postgres://h/p",
        );
        assert!(message.contains("`--scenarios` without ledger"), "{message}");
        assert!(message.contains("scenarios that do not fit"), "{message}");
    }

    #[test]
    fn the_requested_pool_comes_from_the_environment() {
        assert_eq!(requested_pool(None).expect("default"), (16, false));
        assert_eq!(requested_pool(Some(" ")).expect("empty"), (16, false));
        assert_eq!(requested_pool(Some("8")).expect("set"), (8, true));
        assert!(requested_pool(Some("0")).is_err());
        assert!(requested_pool(Some("many")).is_err());
    }

    /// On a private cluster (max_connections 100; the shared server must keep its connections for
    /// everyone else): the read sees idle connections others hold, grouped by database and
    /// application, and the same run that fitted is refused once they are held.
    #[tokio::test(flavor = "multi_thread")]
    async fn connections_held_by_others_are_read_and_turn_a_fit_into_a_refusal() {
        let cluster = tokio::task::block_in_place(fintech_devkit::postgres::PgCluster::start).expect("private cluster");
        let url = cluster.admin_url();
        let before = Capacity::read(&url).await.expect("read the capacity");
        assert_eq!((before.max_connections, before.reserved), (100, 3));
        assert_eq!(before.held(), 0, "nobody else on a fresh cluster: {before:?}");
        // The smoke run's peak (payments at 2 clients with the flow) fits with pools of 16.
        let footprints = [flow(2)];
        assert_eq!(plan(&footprints, 16, false, before.free()).verdict, Verdict::Fit);

        let held_url = format!("{}?application_name=headroom-test", cluster.url("postgres"));
        let mut held = Vec::new();
        for _ in 0..80 {
            held.push(PgConnection::connect(&held_url).await.expect("an idle connection"));
        }
        let during = Capacity::read(&url).await.expect("read the capacity");
        assert_eq!(during.held(), 80, "{during:?}");
        assert_eq!(
            during.others,
            vec![Holder {
                database: "postgres".into(),
                application: "headroom-test".into(),
                connections: 80
            }]
        );
        assert_eq!(during.free(), 17);
        let refused = plan(&footprints, 16, false, during.free());
        assert_eq!(refused.verdict, Verdict::Refuse(vec!["c2".to_owned()]));
        let message = refusal(&refused, &during, &footprints, &[2], &url);
        assert!(message.contains("needed 31"), "{message}");
        assert!(message.contains("80 held by others = 17 free"), "{message}");
        assert!(message.contains("80 on postgres (headroom-test)"), "{message}");
        for conn in held {
            let _ = conn.close().await;
        }
    }

    #[test]
    fn footprints_mirror_the_environments() {
        let mut options = Options::smoke();
        options.bin_dir = "/nonexistent".into();
        options.ledger_bin = Some("/nonexistent/ledger".into());
        let all = footprints(&options, 1, true);
        let tags: Vec<&str> = all.iter().map(|footprint| footprint.tag.as_str()).collect();
        // transfers needs binaries that /nonexistent does not have, so it is not counted.
        assert_eq!(tags, ["c2", "alone2", "e2e", "ledger", "notifications"]);
        let flow = &all[0];
        assert_eq!(
            (flow.pgbench_clients, flow.services.len(), flow.outside_pools, flow.own),
            (2, 3, 6, 9)
        );
        let alone = &all[1];
        assert_eq!(
            (alone.services.as_slice(), alone.outside_pools, alone.own),
            (&["payments"][..], 0, 5)
        );
        let ledger = &all[3];
        assert_eq!(
            (ledger.pgbench_clients, ledger.outside_pools),
            (options.ledger_clients, 2)
        );
        assert_eq!(footprints(&options, 2, false)[0].outside_pools, 6);
    }
}
