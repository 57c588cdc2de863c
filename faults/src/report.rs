//! The campaign's report, as JSON and markdown: the seed (to replay it), the load, the faults by
//! kind with their recovery times, and each invariant with its counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::checks::Check;
use crate::faults::Injected;

/// Everything a campaign produced.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) mode: String,
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    pub(crate) load_seconds: f64,
    pub(crate) clients: usize,
    pub(crate) quick_restarts: bool,
    pub(crate) static_membership: bool,
    pub(crate) orders: usize,
    pub(crate) transactions: usize,
    pub(crate) retries: u64,
    pub(crate) given_up: u64,
    pub(crate) final_drain_s: Option<f64>,
    pub(crate) faults: Vec<Injected>,
    pub(crate) checks: Vec<Check>,
    pub(crate) work_dir: String,
}

impl Report {
    /// Whether every invariant held, every fault was recovered from, and no command was given up.
    pub(crate) fn holds(&self) -> bool {
        self.checks.iter().all(|check| check.holds)
            && self.faults.iter().all(|fault| fault.recovery_s.is_some())
            && self.final_drain_s.is_some()
            && self.given_up == 0
    }

    /// One line for the console.
    pub(crate) fn summary(&self) -> String {
        let broken: Vec<&str> = self
            .checks
            .iter()
            .filter(|check| !check.holds)
            .map(|check| check.invariant.as_str())
            .collect();
        format!(
            "seed {}: {} faults, {} orders and {} transactions acknowledged, {} of {} invariants hold{}{}",
            self.seed,
            self.faults.len(),
            self.orders,
            self.transactions,
            self.checks.len() - broken.len(),
            self.checks.len(),
            if broken.is_empty() {
                String::new()
            } else {
                format!("; BROKEN: {}", broken.join("; "))
            },
            if self.holds() { "" } else { " — FAILED" }
        )
    }

    /// Writes `<mode>-latest.json` and `<mode>-latest.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("{}-latest.json", self.mode)),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join(format!("{}-latest.md", self.mode)), self.markdown())?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "# Fault campaign ({} mode), seed {}\n", self.mode, self.seed);
        let _ = writeln!(
            text,
            "Started {} · replay with `fintech-faults run --seed {}{}{}{} --faults {}` · verdict: **{}**\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC"),
            self.seed,
            if self.mode == "short" { " --short" } else { "" },
            if self.quick_restarts { " --quick-restarts" } else { "" },
            if self.static_membership {
                " --static-membership"
            } else {
                ""
            },
            self.faults.len(),
            if self.holds() {
                "every invariant holds"
            } else {
                "FAILED"
            }
        );
        let _ = writeln!(
            text,
            "Load: {} clients for {:.0} s, {} orders and {} transactions acknowledged (each retried under its \
             idempotency key until answered OK: {} retries, {} given up); final drain {}.\n",
            self.clients,
            self.load_seconds,
            self.orders,
            self.transactions,
            self.retries,
            self.given_up,
            self.final_drain_s
                .map_or("did NOT finish".to_owned(), |seconds| format!("took {seconds:.1} s"))
        );
        let _ = writeln!(text, "## Faults by kind\n");
        let _ = writeln!(
            text,
            "| kind | count | outage (mean s) | recovery mean s | recovery max s |"
        );
        let _ = writeln!(text, "|---|---:|---:|---:|---:|");
        let mut by_kind: BTreeMap<_, Vec<&Injected>> = BTreeMap::new();
        for fault in &self.faults {
            by_kind.entry(fault.kind).or_default().push(fault);
        }
        for (kind, faults) in &by_kind {
            let recoveries: Vec<f64> = faults.iter().filter_map(|fault| fault.recovery_s).collect();
            let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
            let outages: Vec<f64> = faults.iter().map(|fault| fault.outage_s).collect();
            let _ = writeln!(
                text,
                "| {} | {} | {:.1} | {:.1}{} | {:.1} |",
                kind.name(),
                faults.len(),
                mean(&outages),
                mean(&recoveries),
                if recoveries.len() < faults.len() {
                    format!(" ({} not recovered)", faults.len() - recoveries.len())
                } else {
                    String::new()
                },
                recoveries.iter().copied().fold(0.0, f64::max)
            );
        }
        let _ = writeln!(text, "\n## Invariants\n");
        let _ = writeln!(text, "| invariant | holds | counts |");
        let _ = writeln!(text, "|---|---|---|");
        for check in &self.checks {
            let counts: Vec<String> = check
                .counts
                .iter()
                .map(|(name, count)| format!("{name} {count}"))
                .collect();
            let _ = writeln!(
                text,
                "| {} | {} | {}{} |",
                check.invariant,
                if check.holds { "yes" } else { "**NO**" },
                counts.join(", "),
                if check.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", check.detail.replace('|', "/"))
                }
            );
        }
        let _ = writeln!(text, "\n## Every fault\n");
        let _ = writeln!(
            text,
            "Recovery: from the fault's end until every transaction acknowledged by then has its ledger entries \
             and no outbox row written before then is unpublished.\n"
        );
        let _ = writeln!(
            text,
            "| # | kind | at s | outage s | acknowledged | recovery s | retries |"
        );
        let _ = writeln!(text, "|---:|---|---:|---:|---:|---:|---:|");
        for fault in &self.faults {
            let _ = writeln!(
                text,
                "| {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                fault.n,
                fault.kind.name(),
                fault.at_s,
                fault.outage_s,
                fault.acknowledged,
                fault
                    .recovery_s
                    .map_or("not recovered".to_owned(), |seconds| format!("{seconds:.1}")),
                fault.retries
            );
        }
        text
    }
}
