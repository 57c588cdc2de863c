#!/usr/bin/env python3
"""Create the platform's Kafka topics, idempotently, with explicit partition counts.

Run with the project venv (scripts/install-tools): .tools/venv/bin/python deploy/local/topics.py
Bootstrap servers come from KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092). Existing topics are left alone.
Never "fix" a topic by deleting it: Tansu 0.6.0 (SQLite engine) deletes every topic on any DeleteTopics request.
"""

import json
import os
import sys
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

# (topic, partitions, replication factor), from the platform's one topic list (proto/topics.json, which the
# services' fintech_proto::topics is generated from). Add new topics there.
CATALOGUE = Path(__file__).resolve().parents[2] / "proto" / "topics.json"
TOPICS = [(topic["name"], topic["partitions"], 1) for topic in json.loads(CATALOGUE.read_text())["topics"]] + [
    # deploy/local/smoke.py's own topic: a broker check must never put its messages where services read.
    ("local.smoke", 1, 1),
]

TIMEOUT_S = 20.0


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "fintech-topics"})

    try:
        existing = admin.list_topics(timeout=TIMEOUT_S).topics
    except KafkaException as exc:
        print(f"error: cannot reach Kafka at {bootstrap}: {exc}", file=sys.stderr)
        return 1

    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication)
        for name, partitions, replication in TOPICS
        if name not in existing
    ]
    failures = 0
    if wanted:
        futures = admin.create_topics(wanted, operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
        for name, future in futures.items():
            try:
                future.result()
                print(f"    created {name}")
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                print(f"error: creating {name}: {err}", file=sys.stderr)
                failures += 1

    # Report what the broker now has, and flag topics whose partition count differs from the declaration.
    metadata = admin.list_topics(timeout=TIMEOUT_S).topics
    for name, partitions, _ in TOPICS:
        topic = metadata.get(name)
        if topic is None or topic.error is not None:
            print(f"error: topic {name} missing after create", file=sys.stderr)
            failures += 1
            continue
        have = len(topic.partitions)
        note = "" if have == partitions else f"  (declared {partitions}; existing topics are not altered)"
        print(f"    {name}: {have} partitions{note}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
