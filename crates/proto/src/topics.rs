//! Every Kafka topic of the platform, generated from `proto/topics.json` (the one list the
//! services, the local stack's `deploy/local/topics.py` and the docs read). Names here are
//! unprefixed; a service prepends its `TOPIC_PREFIX` (`PlatformConfig::topic`).

/// One topic: what it carries and who writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic {
    /// Unprefixed name, `<entity>.<past-tense verb>` (`orders.created`).
    pub name: &'static str,
    /// Partitions it is created with.
    pub partitions: i32,
    /// What the record key is (the aggregate id, so one aggregate's events stay in order).
    pub key: &'static str,
    /// Protobuf full name of the record value; `None` for dead-letter topics, which carry the
    /// original record unchanged.
    pub payload: Option<&'static str>,
    /// CloudEvents `ce_type` of its events.
    pub event_type: Option<&'static str>,
    /// The service that writes it.
    pub producer: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/topics.rs"));

impl Topic {
    /// The topic named `name` (unprefixed).
    pub fn named(name: &str) -> Option<Topic> {
        ALL.iter().copied().find(|topic| topic.name == name)
    }

    /// The CloudEvents type; panics for a dead-letter topic, which has none (a programming error
    /// caught by every test that publishes).
    pub fn ce_type(&self) -> &'static str {
        self.event_type
            .unwrap_or_else(|| panic!("topic {} carries no events of its own", self.name))
    }
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;

    #[test]
    fn payloads_are_the_contracts_full_names() {
        assert_eq!(
            ORDERS_CREATED.payload,
            Some(crate::payments::Order::full_name().as_str())
        );
        assert_eq!(
            TAX_CALCULATED.payload,
            Some(crate::tax::TaxedTransaction::full_name().as_str())
        );
        assert_eq!(
            LEDGER_ENTRY_POSTED.payload,
            Some(crate::ledger::Entry::full_name().as_str())
        );
        assert_eq!(Topic::named("tax.dlq").map(|topic| topic.payload), Some(None));
        let mut names: Vec<&str> = ALL.iter().map(|topic| topic.name).collect();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
