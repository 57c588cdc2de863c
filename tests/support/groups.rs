//! Who is in a consumer group and who owns which partition, and which outbox relays are alive:
//!
//! - [`describe_group`]: the coordinator's answer (ListGroups + DescribeGroups): the members, by
//!   member id, and the partitions the group's leader assigned each. Tansu 0.6 answers the
//!   members but sends every assignment empty (`tansu-storage` builds `DescribedGroupMember` with
//!   `member_assignment(Bytes::new())`); Apache Kafka sends them.
//! - [`owned_partitions`]: what one consumer process was told by the group, replayed from the
//!   "partitions assigned" / "partitions revoked" lines its rebalance callback logs
//!   (`fintech_platform::kafka::consumer`), in `LOG_FORMAT=json`. On Tansu this is the only view
//!   of the assignment per process; where the broker reports assignments a test can compare both.
//! - [`live_relays`]: the relays holding their liveness lock in a database (ADR 0013).
//!
//! Every instance of a service has the same client id, so members are told apart by member id.
//! librdkafka keeps its member id across rebalances, so a test that starts instances one at a time
//! learns which id is whose from the member that appears with each start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use sqlx::PgPool;

/// One member of a consumer group and the partitions the group's leader assigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its `client.id`.
    pub client_id: String,
    /// `(topic, partition)` it owns.
    pub partitions: BTreeSet<(String, i32)>,
}

/// A consumer group as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead` (as the broker spells it).
    pub state: String,
    /// Its members, by member id.
    pub members: BTreeMap<String, GroupMember>,
}

impl GroupState {
    /// Every partition some member owns.
    pub fn assigned(&self) -> BTreeSet<(String, i32)> {
        self.members
            .values()
            .flat_map(|member| member.partitions.iter().cloned())
            .collect()
    }
}

/// Describes `group` on the broker at `bootstrap` (`None` when the broker does not know it).
pub fn describe_group(bootstrap: &str, group: &str) -> Option<GroupState> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .expect("admin consumer");
    let list = match client.fetch_group_list(Some(group), Duration::from_secs(10)) {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(%error, group, "describe group failed");
            return None;
        }
    };
    let info = list.groups().iter().find(|info| info.name() == group)?;
    let members = info
        .members()
        .iter()
        .map(|member| {
            let partitions = member.assignment().map(decode_assignment).unwrap_or_default();
            (
                member.id().to_owned(),
                GroupMember {
                    member_id: member.id().to_owned(),
                    client_id: member.client_id().to_owned(),
                    partitions,
                },
            )
        })
        .collect();
    Some(GroupState {
        state: info.state().to_owned(),
        members,
    })
}

/// The partitions a consumer process owns now, among `of`, replayed from the rebalance lines of
/// its log `log` (JSON lines; see the [module](self) docs): an assignment adds its partitions, a
/// revocation removes its own, which is right for eager and incremental rebalancing alike.
pub fn owned_partitions(log: &Path, of: &BTreeSet<(String, i32)>) -> BTreeSet<(String, i32)> {
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
pub fn assignments_logged(log: &Path, of: &BTreeSet<(String, i32)>) -> usize {
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

/// The partitions of a `ConsumerProtocolAssignment` (Kafka's consumer embedded protocol): version
/// (int16), then an array of (topic string, array of int32 partitions), then user data, ignored.
/// Malformed bytes yield what was read before them.
pub fn decode_assignment(bytes: &[u8]) -> BTreeSet<(String, i32)> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn int16(bytes: &mut &[u8]) -> Option<i16> {
        take(bytes, 2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn int32(bytes: &mut &[u8]) -> Option<i32> {
        take(bytes, 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    let mut partitions = BTreeSet::new();
    let mut rest = bytes;
    let decode = |rest: &mut &[u8], partitions: &mut BTreeSet<(String, i32)>| -> Option<()> {
        int16(rest)?;
        let topics = int32(rest)?;
        for _ in 0..topics.max(0) {
            let length = usize::try_from(int16(rest)?).ok()?;
            let topic = String::from_utf8_lossy(take(rest, length)?).into_owned();
            let count = int32(rest)?;
            for _ in 0..count.max(0) {
                partitions.insert((topic.clone(), int32(rest)?));
            }
        }
        Some(())
    };
    let _ = decode(&mut rest, &mut partitions);
    partitions
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
    fn an_assignment_decodes_to_its_partitions() {
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        for (topic, partitions) in [("a.b", vec![0, 2]), ("c", vec![1])] {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for partition in partitions {
                bytes.extend((partition as i32).to_be_bytes());
            }
        }
        bytes.extend((-1i32).to_be_bytes());
        let decoded = decode_assignment(&bytes);
        let expected: BTreeSet<(String, i32)> = [("a.b", 0), ("a.b", 2), ("c", 1)]
            .into_iter()
            .map(|(topic, partition)| (topic.to_owned(), partition))
            .collect();
        assert_eq!(decoded, expected);
        assert!(decode_assignment(&[]).is_empty());
        assert_eq!(decode_assignment(&bytes[..bytes.len() - 8]).len(), 2, "cut short");
    }

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
        let of: BTreeSet<(String, i32)> = [("p.a", 0), ("p.a", 1), ("p.b", 0)]
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
