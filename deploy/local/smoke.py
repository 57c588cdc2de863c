#!/usr/bin/env python3
"""Broker smoke test: produce one message with headers and read it back (confluent-kafka, modern librdkafka).

  .tools/venv/bin/python deploy/local/smoke.py                 # produce a new message, then consume it
  .tools/venv/bin/python deploy/local/smoke.py --find ID       # only look for a message produced earlier
                                                               #   (e.g. after down/up, to check durability)
Options: --topic (default local.smoke: a topic of its own, so no service ever reads the test message). Bootstrap servers from KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092).
Exit 0 when the message is found with its headers, 1 otherwise.
"""

import argparse
import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

HEADER_KEYS = ("message-id", "content-type", "source")


def produce(bootstrap: str, topic: str) -> str:
    message_id = str(uuid.uuid4())
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            raise SystemExit(f"error: delivery failed: {err}")
        delivered.append((msg.partition(), msg.offset()))

    value = json.dumps({"order_id": message_id, "amount_minor": 1234, "currency": "EUR"}).encode()
    producer.produce(
        topic,
        key=message_id.encode(),
        value=value,
        headers=[("message-id", message_id.encode()), ("content-type", b"application/json"),
                 ("source", b"deploy/local/smoke.py")],
        on_delivery=on_delivery,
    )
    if producer.flush(20) != 0 or not delivered:
        raise SystemExit("error: message not delivered within 20s")
    partition, offset = delivered[0]
    print(f"produced {topic}[{partition}]@{offset} message-id={message_id}")
    return message_id


def find(bootstrap: str, topic: str, message_id: str, timeout_s: float = 30.0) -> bool:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"smoke-{uuid.uuid4()}",  # fresh group: starts from the earliest offset
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])  # OFFSET 0 = from the start
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            seen += 1
            headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
            if headers.get("message-id") != message_id:
                continue
            missing = [k for k in HEADER_KEYS if k not in headers]
            print(f"consumed {msg.topic()}[{msg.partition()}]@{msg.offset()} key={msg.key().decode()} "
                  f"value={msg.value().decode()} headers={headers}")
            if missing:
                print(f"error: headers missing: {missing}", file=sys.stderr)
                return False
            return True
        print(f"error: message-id {message_id} not found in {topic} ({seen} messages read)", file=sys.stderr)
        return False
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", default="local.smoke")
    parser.add_argument("--find", metavar="MESSAGE_ID", help="only look for a message produced earlier")
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    message_id = args.find or produce(bootstrap, args.topic)
    return 0 if find(bootstrap, args.topic, message_id) else 1


if __name__ == "__main__":
    sys.exit(main())
