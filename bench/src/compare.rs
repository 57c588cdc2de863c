//! The side-by-side view of one suite run on several brokers (`--broker both`): each broker's
//! run is a [`Report`] of its own (`<out>/<broker>/latest.*`); this writes `<out>/comparison.md`
//! with the key numbers of every scenario on each broker next to each other, and what the broker
//! costs the flow (CPU per pair, the broker's share of it). `fintech-bench compare DIR` rebuilds
//! it from the JSON files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::procstat::Usage;
use crate::report::{Measured, OLDEST_READABLE, Report, SCHEMA_VERSION};

/// Processes that are not the flow's cost: the load and the baseline.
const NOT_THE_FLOW: [&str; 2] = ["load generator", "pgbench"];

/// CPU milliseconds per pair of the flow's processes (everything sampled but the load generator
/// and pgbench; PostgreSQL and the broker included), and the broker's part of it, at
/// `pairs_per_second`.
pub fn cpu_per_pair(resources: &BTreeMap<String, Usage>, pairs_per_second: f64) -> Option<(f64, f64)> {
    if pairs_per_second <= 0.0 || resources.is_empty() {
        return None;
    }
    let per_pair = |percent: f64| percent / 100.0 * 1000.0 / pairs_per_second;
    let total: f64 = (resources.iter())
        .filter(|(name, _)| !NOT_THE_FLOW.contains(&name.as_str()))
        .map(|(_, usage)| usage.cpu_percent)
        .sum();
    let broker = resources.get("broker").map_or(0.0, |usage| usage.cpu_percent);
    Some((per_pair(total), per_pair(broker)))
}

fn rate(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as u64;
        if whole >= 1000 {
            format!("{},{:03}", whole / 1000, whole % 1000)
        } else {
            whole.to_string()
        }
    } else {
        format!("{value:.1}")
    }
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        rate(value)
    } else {
        format!("{value:.1}")
    }
}

fn p50_p99(measured: &Measured) -> String {
    if measured.ok == 0 {
        return "-".to_owned();
    }
    format!("{} / {}", ms(measured.latency.p50_ms), ms(measured.latency.p99_ms))
}

fn cpu_text(cost: Option<(f64, f64)>) -> String {
    cost.map_or("-".to_owned(), |(total, broker)| {
        format!(
            "{total:.1} ({broker:.1} broker, {:.0} %)",
            100.0 * broker / total.max(1e-9)
        )
    })
}

/// A table whose columns are the reports (brokers) and whose rows are `rows`: a label and one
/// cell per report.
fn table(out: &mut String, first: &str, reports: &[Report], rows: &[(String, Vec<String>)]) {
    let _ = write!(out, "| {first} |");
    for report in reports {
        let _ = write!(out, " {} |", report.broker);
    }
    out.push_str("\n|---|");
    for _ in reports {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, cells) in rows {
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn row(
    label: impl Into<String>,
    reports: &[Report],
    cell: impl Fn(&Report) -> Option<String>,
) -> (String, Vec<String>) {
    let cells = reports
        .iter()
        .map(|report| cell(report).unwrap_or_else(|| "-".to_owned()))
        .collect();
    (label.into(), cells)
}

/// Client counts measured by any of the reports, in order.
fn levels(reports: &[Report], pick: fn(&Report) -> Vec<usize>) -> Vec<usize> {
    let mut levels: Vec<usize> = reports.iter().flat_map(pick).collect();
    levels.sort_unstable();
    levels.dedup();
    levels
}

/// The comparison of `reports` (one run per broker) as Markdown.
pub fn markdown(reports: &[Report]) -> String {
    let mut out = String::from("# Benchmark results side by side: one suite, each broker\n\n");
    for report in reports {
        let _ = writeln!(
            out,
            "- **{}**: run `{}` ({}), started {}, {:.0} s wall, broker {}; every table of it in [`{}/latest.md`]({}/latest.md)",
            report.broker,
            report.run_id,
            report.mode,
            report.started_at,
            report.wall_seconds,
            report.machine.broker,
            report.broker,
            report.broker
        );
    }
    let total: f64 = reports.iter().map(|report| report.wall_seconds).sum();
    let _ = writeln!(
        out,
        "\nTotal wall time of the runs: {:.0} s ({:.1} min). CPU per pair counts every sampled process but the load \
         generator and pgbench (payments, tax, ledger, PostgreSQL, the broker), in milliseconds of one core per \
         pair; the broker's part and its share follow in parentheses.\n",
        total,
        total / 60.0
    );
    if reports.iter().any(|report| report.mode == "smoke") {
        out.push_str("> Smoke runs: seconds per scenario, debug binaries; the numbers mean nothing.\n\n");
    }

    let flow_levels = levels(reports, |report| {
        report.payments.iter().map(|level| level.concurrency).collect()
    });
    if !flow_levels.is_empty() {
        out.push_str("## Payments with the flow (relay, tax, ledger, broker on the same cores)\n\n");
        let mut rows = Vec::new();
        for &clients in &flow_levels {
            let level = |report: &Report| {
                report
                    .payments
                    .iter()
                    .find(|level| level.concurrency == clients)
                    .cloned()
            };
            rows.push(row(
                format!("{clients} clients: commits/s (ratio to pgbench)"),
                reports,
                |report| {
                    level(report)
                        .map(|level| format!("{} ({:.2})", rate(level.commits_per_second), level.throughput_ratio))
                },
            ));
            rows.push(row(
                format!("{clients} clients: pair p50 / p99 ms"),
                reports,
                |report| level(report).map(|level| p50_p99(&level.pair)),
            ));
            rows.push(row(
                format!("{clients} clients: relay / tax events/s, bounded"),
                reports,
                |report| {
                    level(report).map(|level| {
                        let backlog = &level.backlog;
                        format!(
                            "{} / {}, {}",
                            rate(backlog.relay_events_per_second),
                            rate(backlog.tax_events_per_second),
                            if backlog.bounded { "yes" } else { "no" }
                        )
                    })
                },
            ));
            rows.push(row(format!("{clients} clients: CPU ms per pair"), reports, |report| {
                level(report).map(|level| cpu_text(cpu_per_pair(&level.resources, level.pairs_per_second)))
            }));
        }
        table(&mut out, "payments + flow", reports, &rows);
    }
    let alone_levels = levels(reports, |report| {
        report.payments_alone.iter().map(|level| level.concurrency).collect()
    });
    if !alone_levels.is_empty() {
        out.push_str(
            "## Payments alone (no relay, tax or ledger: the broker only holds the topics; a control for the run's noise)\n\n",
        );
        let rows: Vec<_> = (alone_levels.iter())
            .map(|&clients| {
                row(
                    format!("{clients} clients: commits/s (ratio), p99 ms"),
                    reports,
                    |report| {
                        let level = report
                            .payments_alone
                            .iter()
                            .find(|level| level.concurrency == clients)?;
                        Some(format!(
                            "{} ({:.2}), {}",
                            rate(level.commits_per_second),
                            level.throughput_ratio,
                            ms(level.pair.latency.p99_ms)
                        ))
                    },
                )
            })
            .collect();
        table(&mut out, "payments alone", reports, &rows);
    }

    if reports.iter().any(|report| report.kafka.is_some()) {
        out.push_str("## Raw Kafka baselines (rdkafka with the relay's settings, each on an empty broker)\n\n");
        let kafka = |report: &Report| report.kafka.clone();
        let rows = vec![
            row("producer records/s (256 in flight)", reports, |report| {
                kafka(report).map(|kafka| rate(kafka.produce_per_second))
            }),
            row("producer ack p50 / p99 ms", reports, |report| {
                kafka(report).map(|kafka| p50_p99(&kafka.produce))
            }),
            row("consumer records/s (first record after, ms)", reports, |report| {
                kafka(report).map(|kafka| {
                    let first = kafka.consume_first_record_ms.map_or("-".to_owned(), ms);
                    format!("{} ({first})", rate(kafka.consume_per_second))
                })
            }),
            row(
                "produce → consume p50 / p99 ms, default fetch wait (500 ms)",
                reports,
                |report| {
                    kafka(report)
                        .map(|kafka| format!("{} at {}/s", p50_p99(&kafka.roundtrip), rate(kafka.roundtrip_rate)))
                },
            ),
            row("produce → consume p50 / p99 ms, fetch wait 10 ms", reports, |report| {
                kafka(report).map(|kafka| p50_p99(&kafka.roundtrip_fast))
            }),
            row("ack during produce → consume p50 / p99 ms", reports, |report| {
                kafka(report).map(|kafka| p50_p99(&kafka.roundtrip_ack))
            }),
        ];
        table(&mut out, "raw Kafka", reports, &rows);
    }

    if reports.iter().any(|report| report.e2e.is_some()) {
        out.push_str(
            "## End to end (open loop at half each broker's own payments peak with the flow, so the rates differ)\n\n",
        );
        let e2e = |report: &Report| report.e2e.clone();
        let mut rows = vec![
            row("pairs/s (half of the peak)", reports, |report| {
                e2e(report).map(|e2e| format!("{} (of {})", rate(e2e.rate), rate(e2e.peak_pairs_per_second)))
            }),
            row("ack → `TaxedTransaction` readable p50 / p99 ms", reports, |report| {
                e2e(report).map(|e2e| p50_p99(&e2e.to_calculated))
            }),
            row("ack → on `tax.calculated` p50 / p99 ms", reports, |report| {
                e2e(report).map(|e2e| p50_p99(&e2e.to_published))
            }),
            row("ack → ledger entry posted p50 / p99 ms", reports, |report| {
                e2e(report).and_then(|e2e| e2e.to_ledger).map(|ledger| p50_p99(&ledger))
            }),
        ];
        let mut hops: Vec<String> = Vec::new();
        for report in reports {
            for hop in report.e2e.iter().flat_map(|e2e| &e2e.hops) {
                if !hops.contains(&hop.name) {
                    hops.push(hop.name.clone());
                }
            }
        }
        for name in &hops {
            rows.push(row(format!("hop {name} p50 / p99 ms"), reports, |report| {
                let hop = report.e2e.as_ref()?.hops.iter().find(|hop| &hop.name == name)?;
                Some(p50_p99(&hop.measured))
            }));
        }
        rows.push(row("missing (never on `tax.calculated`)", reports, |report| {
            e2e(report).map(|e2e| e2e.to_published.errors.to_string())
        }));
        rows.push(row("CPU ms per pair", reports, |report| {
            e2e(report).map(|e2e| cpu_text(cpu_per_pair(&e2e.resources, e2e.rate)))
        }));
        table(&mut out, "end to end", reports, &rows);
    }

    if reports.iter().any(|report| report.ledger.is_some()) {
        out.push_str("## Ledger (PostEntry, its consumers off: the broker only takes its outbox)\n\n");
        let ledger = |report: &Report| report.ledger.clone();
        let rows = vec![
            row("spread entries/s (p99 ms)", reports, |report| {
                ledger(report).map(|ledger| {
                    let spread = &ledger.spread;
                    format!(
                        "{} ({})",
                        rate(spread.entries_per_second),
                        ms(spread.post.latency.p99_ms)
                    )
                })
            }),
            row("hot entries/s (p99 ms)", reports, |report| {
                ledger(report).map(|ledger| {
                    let hot = &ledger.hot;
                    format!("{} ({})", rate(hot.entries_per_second), ms(hot.post.latency.p99_ms))
                })
            }),
            row("hot / spread", reports, |report| {
                ledger(report).map(|ledger| format!("{:.2}", ledger.hot_to_spread))
            }),
        ];
        table(&mut out, "ledger", reports, &rows);
    }

    let transfer_levels = levels(reports, |report| {
        report
            .transfers
            .iter()
            .flat_map(|transfers| transfers.levels.iter().map(|level| level.concurrency))
            .collect()
    });
    if !transfer_levels.is_empty() {
        out.push_str("## Transfers (the saga on Temporal; `accounts.opened` through the broker)\n\n");
        let rows: Vec<_> = (transfer_levels.iter())
            .map(|&clients| {
                row(
                    format!("{clients} clients: transfers/s, p50 / p99 ms"),
                    reports,
                    |report| {
                        let transfers = report.transfers.as_ref()?;
                        let level = transfers.levels.iter().find(|level| level.concurrency == clients)?;
                        Some(format!(
                            "{}, {}",
                            rate(level.transfers_per_second),
                            p50_p99(&level.create_to_completed)
                        ))
                    },
                )
            })
            .collect();
        table(&mut out, "transfers", reports, &rows);
    }

    if reports.iter().any(|report| report.notifications.is_some()) {
        out.push_str("## Notifications (event → signed webhook)\n\n");
        let notifications = |report: &Report| report.notifications.clone();
        let rows = vec![
            row("one healthy endpoint p50 / p99 ms", reports, |report| {
                notifications(report).map(|notifications| p50_p99(&notifications.alone.latency))
            }),
            row("beside a dead and a slow endpoint p50 / p99 ms", reports, |report| {
                notifications(report).map(|notifications| p50_p99(&notifications.beside.latency))
            }),
            row("raw produce → consume, same rate, p50 / p99 ms", reports, |report| {
                notifications(report).map(|notifications| p50_p99(&notifications.raw_consumer))
            }),
            row("burst: deliveries/s", reports, |report| {
                notifications(report).map(|notifications| {
                    let burst = &notifications.burst;
                    format!(
                        "{} ({} of {})",
                        rate(burst.deliveries_per_second),
                        burst.delivered,
                        burst.events
                    )
                })
            }),
        ];
        table(&mut out, "notifications", reports, &rows);
    }

    out.push_str("## Targets per broker\n\n");
    let names: Vec<String> = (reports.iter())
        .flat_map(|report| report.targets.iter().map(|target| target.target.clone()))
        .fold(Vec::new(), |mut names, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        });
    let rows: Vec<_> = (names.iter())
        .map(|name| {
            row(name.clone(), reports, |report| {
                let target = report.targets.iter().find(|target| &target.target == name)?;
                Some(
                    match target.met {
                        Some(true) => "met",
                        Some(false) => "missed",
                        None => "not judged",
                    }
                    .to_owned(),
                )
            })
        })
        .collect();
    table(&mut out, "target", reports, &rows);
    out
}

/// Writes `comparison.md` of `reports` into `out_dir`.
pub fn write(reports: &[Report], out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let path = out_dir.join("comparison.md");
    std::fs::write(&path, markdown(reports)).with_context(|| format!("write {}", path.display()))?;
    crate::progress::step(format!("comparison: {}", path.display()));
    Ok(())
}

/// Reads a report of a layout `render` understands.
pub fn read(json: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parse {}", json.display()))?;
    let layout = value["schema_version"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        (u64::from(OLDEST_READABLE)..=u64::from(SCHEMA_VERSION)).contains(&layout),
        "{} has layout {layout}; this build reads layouts {OLDEST_READABLE} to {SCHEMA_VERSION}",
        json.display()
    );
    serde_json::from_value(value).with_context(|| format!("read {}", json.display()))
}

/// Rebuilds `DIR/comparison.md` from `DIR/<broker>/latest.json` of every broker found there.
pub fn rebuild(dir: &Path) -> anyhow::Result<()> {
    let reports = (crate::suite::BrokerKind::ALL.iter())
        .map(|broker| dir.join(broker.name()).join("latest.json"))
        .filter(|json| json.exists())
        .map(|json| read(&json))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!reports.is_empty(), "no <broker>/latest.json under {}", dir.display());
    write(&reports, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{KafkaBaselines, PaymentsLevel};

    fn usage(percent: f64) -> Usage {
        Usage {
            cpu_percent: percent,
            ..Usage::default()
        }
    }

    #[test]
    fn cpu_per_pair_counts_the_flow_and_the_broker_but_not_the_load() {
        let resources = BTreeMap::from([
            ("payments".to_owned(), usage(50.0)),
            ("postgres".to_owned(), usage(100.0)),
            ("broker".to_owned(), usage(50.0)),
            ("load generator".to_owned(), usage(40.0)),
        ]);
        // 200 % of a core = 2,000 ms per second, over 100 pairs/s.
        let (total, broker) = cpu_per_pair(&resources, 100.0).expect("cost");
        assert!((total - 20.0).abs() < 1e-9 && (broker - 5.0).abs() < 1e-9);
        assert_eq!(cpu_per_pair(&resources, 0.0), None);
    }

    #[test]
    fn markdown_puts_each_broker_in_a_column() {
        let report = |broker: &str, commits: f64| Report {
            broker: broker.to_owned(),
            payments: vec![PaymentsLevel {
                concurrency: 8,
                commits_per_second: commits,
                throughput_ratio: 0.5,
                ..PaymentsLevel::default()
            }],
            kafka: Some(KafkaBaselines {
                produce_per_second: commits * 10.0,
                ..KafkaBaselines::default()
            }),
            ..Report::default()
        };
        let markdown = markdown(&[report("tansu", 400.0), report("mock", 1200.0)]);
        assert!(markdown.contains("| payments + flow | tansu | mock |"));
        assert!(markdown.contains("| 8 clients: commits/s (ratio to pgbench) | 400 (0.50) | 1,200 (0.50) |"));
        assert!(markdown.contains("| producer records/s (256 in flight) | 4,000 | 12,000 |"));
    }
}
