#!/usr/bin/env python3
"""Exit 0 when a Kafka-protocol broker answers at HOST PORT, 1 otherwise.

Sends one ApiVersions (v0) request over a plain socket and checks the correlation id of the reply, so it tells a
Kafka broker apart from any other program listening on the port. Standard library only (works before the venv).
Usage: kafka_probe.py [HOST] [PORT] [TIMEOUT_SECONDS]
"""

import socket
import struct
import sys


def probe(host: str, port: int, timeout: float) -> bool:
    correlation_id = 0x4B50  # "KP"
    client_id = b"fintech-probe"
    # RequestHeader v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id (int16 length string)
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
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
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9092
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    return 0 if probe(host, port, timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
