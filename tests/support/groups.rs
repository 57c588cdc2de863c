//! Who owns which partition of a consumer group, how far the group has committed, and which
//! outbox relays are alive:
//!
//! - [`owned_partitions`]: what one consumer process was told by its group (the SyncGroup answer),
//!   replayed from the "partitions assigned" / "partitions revoked" lines its rebalance callback
//!   logs (`fintech_platform::kafka::consumer`), in `LOG_FORMAT=json`. The broker cannot be asked
//!   on Tansu 0.6: its DescribeGroups fails on the SQLite engine (`SerdeJson(invalid type:
//!   string ...)` reading the group back, and the connection is dropped), and even where it
//!   answers it sends every member's assignment empty (`tansu-storage` `DescribedGroupMember`).
//! - [`group_offsets`]: the group's committed offset (OffsetFetch) and the end (high watermark) of
//!   each partition: progress the group made on a partition, whoever made it.
//! - [`live_relays`]: the relays holding their liveness lock in a database (ADR 0013).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::Offset;
use rdkafka::{ClientConfig, TopicPartitionList};
use sqlx::PgPool;

/// A partition: `(topic, partition)`.
pub type Partition = (String, i32);

/// For each of `partitions`: the offset `group` committed on it (`None`: none yet) and its end
/// (high watermark). Blocking (a client of its own, no group membership taken).
pub fn group_offsets(
    bootstrap: &str,
    group: &str,
    partitions: &BTreeSet<Partition>,
) -> BTreeMap<Partition, (Option<i64>, i64)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets client");
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = client
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    partitions
        .iter()
        .map(|(topic, partition)| {
            let offset = committed
                .find_partition(topic, *partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            let (_, high) = client
                .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                .expect("watermarks");
            ((topic.clone(), *partition), (offset, high))
        })
        .collect()
}

/// The partitions a consumer process owns now, among `of`, replayed from the rebalance lines of
/// its log `log` (JSON lines; see the [module](self) docs): an assignment adds its partitions, a
/// revocation removes its own, which is right for eager and incremental rebalancing alike.
pub fn owned_partitions(log: &Path, of: &BTreeSet<Partition>) -> BTreeSet<Partition> {
    let mut owned = BTreeSet::new();
    for (assigned, partitions) in rebalances(log) {
        for partition in partitions.into_iter().filter(|partition| of.contains(partition)) {
            if assigned {
                owned.insert(partition);
            } else {
                owned.remove(&partition);
            }
        }
    }
    owned
}

/// How many assignments among `of` the process logged (each rebalance it took part in that gave it
/// some of them).
pub fn assignments_logged(log: &Path, of: &BTreeSet<Partition>) -> usize {
    rebalances(log)
        .into_iter()
        .filter(|(assigned, partitions)| *assigned && partitions.iter().any(|partition| of.contains(partition)))
        .count()
}

/// The rebalance lines of `log`, in order: (assigned, partitions), `false` for a revocation.
fn rebalances(log: &Path) -> Vec<(bool, Vec<(String, i32)>)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut events = Vec::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &value["fields"];
        let assigned = match fields["message"].as_str() {
            Some("partitions assigned") => true,
            Some("partitions revoked") => false,
            _ => continue,
        };
        // `partitions = ?names`: the Debug form of a Vec of "topic[partition]@offset" strings.
        let names = fields["partitions"].as_str().unwrap_or_default();
        let partitions = names
            .split('"')
            .skip(1)
            .step_by(2)
            .filter_map(|name| {
                let (topic, rest) = name.rsplit_once('[')?;
                let partition = rest.split_once(']')?.0.parse().ok()?;
                Some((topic.to_owned(), partition))
            })
            .collect();
        events.push((assigned, partitions));
    }
    events
}

/// The keys of the outbox relays' liveness locks held in the database of `pool` (ADR 0013: each
/// relay holds `pg_advisory_lock(RELAY_LOCK_CLASS, key)` while it lives; the rows it claims record
/// `claimed_by = key`).
pub async fn live_relays(pool: &PgPool) -> BTreeSet<i32> {
    sqlx::query_scalar::<_, i64>(
        "SELECT objid::bigint FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::oid \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(RELAY_LOCK_CLASS)
    .fetch_all(pool)
    .await
    .expect("relay locks")
    .into_iter()
    .filter_map(|key| i32::try_from(key).ok())
    .collect()
}

/// Waits (up to `timeout`) until at least `count` relays hold their lock in the database of
/// `pool`; returns their keys.
pub async fn wait_for_relays(pool: &PgPool, count: usize, timeout: Duration) -> BTreeSet<i32> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let relays = live_relays(pool).await;
        if relays.len() >= count {
            return relays;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} relays hold their lock after {timeout:?}",
            relays.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `RELAY_LOCK_CLASS` of `fintech_platform::outbox` (private there; ADR 0013 names it).
const RELAY_LOCK_CLASS: i32 = 0x0B0C_0001;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_replays_to_what_the_process_owns_now() {
        let line = |message: &str, names: &[&str]| {
            let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            serde_json::json!({"level": "INFO", "fields": {"message": message, "partitions": format!("{names:?}")}})
                .to_string()
        };
        let log = tempfile::NamedTempFile::new().expect("log");
        let lines = [
            line("consumer started", &[]),
            line(
                "partitions assigned",
                &["p.a[0]@Invalid", "p.a[1]@Invalid", "p.b[0]@Invalid"],
            ),
            "not json".to_owned(),
            line(
                "partitions revoked",
                &["p.a[0]@Invalid", "p.a[1]@Invalid", "p.b[0]@Invalid"],
            ),
            line(
                "partitions assigned",
                &["p.a[1]@Offset(7)", "p.b[0]@Invalid", "other[0]@Invalid"],
            ),
        ];
        std::fs::write(log.path(), lines.join("\n")).expect("write log");
        let of: BTreeSet<Partition> = [("p.a", 0), ("p.a", 1), ("p.b", 0)]
            .into_iter()
            .map(|(topic, partition)| (topic.to_owned(), partition))
            .collect();
        let owned = owned_partitions(log.path(), &of);
        assert_eq!(
            owned,
            [("p.a".to_owned(), 1), ("p.b".to_owned(), 0)].into_iter().collect(),
            "the last assignment, without the partitions of other groups"
        );
        assert_eq!(assignments_logged(log.path(), &of), 2);
    }
}
