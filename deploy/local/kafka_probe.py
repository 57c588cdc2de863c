#!/usr/bin/env python3
"""Exit 0 when a Kafka-protocol broker answers at HOST PORT, 1 otherwise.

Sends one ApiVersions (v0) request over a plain socket and checks the correlation id of the reply, so it tells a
Kafka broker apart from any other program listening on the port. With --metadata it also sends a Metadata (v0)
request, which needs the broker's storage: a broker whose storage failed answers ApiVersions but not Metadata.
Standard library only (works before the venv).
Usage: kafka_probe.py [HOST] [PORT] [TIMEOUT_SECONDS] [--metadata]
"""

import socket
import struct
import sys


def probe(host: str, port: int, timeout: float, api_key: int = 18) -> bool:
    correlation_id = 0x4B50  # "KP"
    client_id = b"fintech-probe"
    # RequestHeader v1: api_key (18 ApiVersions, 3 Metadata), api_version=0, correlation_id, client_id
    body = struct.pack(">hhih", api_key, 0, correlation_id, len(client_id)) + client_id
    if api_key == 3:
        body += struct.pack(">i", 0)  # Metadata v0: an empty topic array means every topic
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 8:
                chunk = sock.recv(8 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    size, got_id = struct.unpack(">ii", header)
    return bool(size >= 4 and got_id == correlation_id)


def main() -> int:
    args = [arg for arg in sys.argv[1:] if arg != "--metadata"]
    host = args[0] if len(args) > 0 else "127.0.0.1"
    port = int(args[1]) if len(args) > 1 else 9092
    timeout = float(args[2]) if len(args) > 2 else 2.0
    if not probe(host, port, timeout):
        return 1
    if "--metadata" in sys.argv and not probe(host, port, timeout, api_key=3):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
