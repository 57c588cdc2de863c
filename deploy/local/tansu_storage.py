#!/usr/bin/env python3
"""Prepare the SQLite file of the local broker (Tansu 0.6.0) before the broker starts.

Usage: python3 deploy/local/tansu_storage.py PATH/TO/tansu.db   (standard library only; idempotent)

Tansu 0.6.0 creates a `header` table (one row per record header) without any index, and looks the
headers of every fetched record up with a join on (topition, offset_id). SQLite then scans the whole
table once per record, so a consumer slows down as the broker fills: with ~9 CloudEvents headers per
event, fetches fell to a few hundred records/s after a few thousand records, and the broker spent
most of its CPU in that scan (profile in bench/README.md, ADR 0008).

This script creates the table with Tansu's own DDL (ddl/040-header.sql of tansu-storage 0.6.0, so
Tansu's `create table if not exists` keeps it) plus the missing index. On an existing file it only
adds the index. It must run while no broker has the file open. Nothing here changes what the broker
stores or answers; Apache Kafka (deploy/ outside local/) needs none of it.
"""

import sqlite3
import sys

HEADER_DDL = """
create table if not exists header (
    topition integer,
    offset_id integer,
    k blob,
    v blob,
    last_updated datetime default current_timestamp not null,
    created_at datetime default current_timestamp not null,
    foreign key (topition, offset_id) references record (topition, offset_id) on delete cascade
)
"""

HEADER_INDEX = "create index if not exists header_topition_offset_id on header (topition, offset_id)"


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: tansu_storage.py PATH/TO/tansu.db", file=sys.stderr)
        return 2
    path = sys.argv[1]
    try:
        connection = sqlite3.connect(path, timeout=10)
        with connection:
            # The mode Tansu sets itself; setting it first avoids a rollback journal for this write.
            connection.execute("pragma journal_mode = wal")
            connection.execute(HEADER_DDL)
            connection.execute(HEADER_INDEX)
        connection.close()
    except sqlite3.Error as error:
        print(f"error: preparing broker storage {path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
