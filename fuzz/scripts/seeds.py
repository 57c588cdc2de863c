#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target under fuzz/corpus/<target>/: a few real messages
each, encoded with the generated Python clients (clients/python) in the input format the target
documents (a selector byte, a u16 length before a first payload, ...). Run it again after a
contract change: `.tools/venv/bin/python fuzz/scripts/seeds.py` from the repository root."""

import base64
import json
import os
import pathlib
import shutil
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients/python/src"))

from fintech.accounts.v1 import accounts_pb2 as accounts  # noqa: E402
from fintech.ledger.v1 import ledger_pb2 as ledger  # noqa: E402
from fintech.notifications.v1 import notifications_pb2 as notifications  # noqa: E402
from fintech.payments.v1 import payments_pb2 as payments  # noqa: E402
from fintech.tax.v1 import tax_pb2 as tax  # noqa: E402
from fintech.transfers.v1 import transfers_pb2 as transfers  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402

CORPUS = ROOT / "fuzz/corpus"
ORDER_ID = "0191d1c2-8f5e-7c3a-9b1d-3e5f7a9c1b2d"
TRANSACTION_ID = "0191d1c3-1a2b-7c3d-8e4f-5a6b7c8d9e0f"
ACCOUNT_ID = "0191d1c4-0000-7000-8000-000000000001"
OTHER_ACCOUNT_ID = "0191d1c4-0000-7000-8000-000000000002"
SECONDS = 1_790_000_000


def at(seconds=SECONDS):
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=123_456_000)


def two(first: bytes, second: bytes) -> bytes:
    return struct.pack("<H", len(first)) + first + second


def order(**changes):
    fields = dict(order_id=ORDER_ID, customer_id="cust-42", country="DE", currency="EUR", amount=11_900,
                  product_type="standard", created_at=at(), updated_at=at(), version=1)
    fields.update(changes)
    return payments.Order(**fields)


def transaction(**changes):
    fields = dict(transaction_id=TRANSACTION_ID, order_id=ORDER_ID, customer_id="cust-42", amount=11_900,
                  status=payments.TRANSACTION_STATUS_PENDING, created_at=at(), updated_at=at(), version=1,
                  currency="EUR", order_version=1)
    fields.update(changes)
    return payments.Transaction(**fields)


def account(**changes):
    fields = dict(account_id=ACCOUNT_ID, customer_id="cust-42", product=accounts.PRODUCT_CURRENT, currency="EUR",
                  state=accounts.ACCOUNT_STATE_ACTIVE, overdraft_limit=10_000, opened_at=at(), updated_at=at(),
                  version=1)
    fields.update(changes)
    return accounts.Account(**fields)


def taxed():
    return tax.TaxedTransaction(transaction_id=TRANSACTION_ID, order_id=ORDER_ID, customer_id="cust-42",
                                base_amount=10_000, tax_applied=1_900, total_amount=11_900, currency="EUR",
                                country="DE", product_type="standard", tax_rate_bps=1900,
                                reason=tax.TAX_REASON_STANDARD_RATE, rule_version="eu-vat-2026.1",
                                calculated_at=at(), tax_date=at(), order_version=1)


def balance(version=3):
    return ledger.Balance(account_id=ACCOUNT_ID, currency="EUR", balance=50_000, version=version, updated_at=at(),
                          held=2_000, available=48_000)


def entry(kind=None):
    metadata = {"source": "tax.calculated"}
    if kind:
        metadata["kind"] = kind
    return ledger.Entry(
        entry_id="tax:" + TRANSACTION_ID, description="VAT", metadata=metadata, posted_at=at(),
        lines=[ledger.EntryLine(account_id=ACCOUNT_ID, side=ledger.SIDE_DEBIT, amount=11_900, currency="EUR"),
               ledger.EntryLine(account_id=OTHER_ACCOUNT_ID, side=ledger.SIDE_CREDIT, amount=11_900, currency="EUR")],
        appends=[ledger.StreamAppend(account_id=ACCOUNT_ID, version=4, hash="ab" * 32, balance_after=38_100,
                                     held_after=0, available_after=38_100),
                 ledger.StreamAppend(account_id="system:receivable:EUR", version=9, hash="cd" * 32,
                                     balance_after=11_900, held_after=0, available_after=11_900)])


def hold(status=ledger.HOLD_STATUS_ACTIVE):
    return ledger.Hold(hold_id="transfer:" + ORDER_ID, account_id=ACCOUNT_ID, currency="EUR", amount=2_000, held=2_000,
                       status=status, reason="transfer", expires_at=at(SECONDS + 3600), placed_at=at(),
                       updated_at=at(), balance=balance(), version=1)


def b(message) -> bytes:
    return message.SerializeToString()


def jwt_token(claims: dict) -> bytes:
    def enc(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    header = {"alg": "ES256", "typ": "JWT", "kid": "fuzz"}
    return f"{enc(header)}.{enc(claims)}.{base64.urlsafe_b64encode(b'x' * 64).rstrip(b'=').decode()}".encode()


def cursor(micros: int, uuid: str) -> bytes:
    return f"v1|{micros}|{uuid}".encode().hex().encode()


CLAIMS = {"iss": "fintech-local", "aud": "fintech-platform", "sub": "operator", "scope": "payments.read ledger.write",
          "iat": SECONDS, "nbf": SECONDS, "exp": 4_102_444_800}
VAT = (ROOT / "services/tax/src/domain/vat/rates.json").read_bytes()
INTEREST = (ROOT / "services/accounts/src/domain/interest/rates.json").read_bytes()
HEADERS = "\n".join([
    "ce_id:" + ORDER_ID, "ce_type:fintech.payments.v1.order.created", "ce_source:/fintech/payments",
    "ce_specversion:1.0", "ce_time:2026-11-22T10:00:00.123456Z", "ce_dataschema:type.googleapis.com/fintech.payments.v1.Order",
    "content-type:application/protobuf", "ce_subject:" + ORDER_ID,
    "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate:vendor=value",
])

SEEDS = {
    "page_token": {
        # (i32 page size, token): arbitrary's encoding is the 4 size bytes, then the text.
        "cursor": struct.pack("<i", 50) + cursor(1_700_000_000_123_456, ORDER_ID),
        "empty": struct.pack("<i", 0),
        "hold": struct.pack("<i", 10) + f"1700000000123456|transfer:{ORDER_ID}".encode().hex().encode(),
    },
    "cloudevents_headers": {
        "order_created": HEADERS.encode(),
        "non_utf8_key": b"\xff\xfe:x\nce_specversion:1.0",
        "dead_letter": (HEADERS + "\ndlq_reason:value is not a valid Order\ndlq_class:permanent\ndlq_attempts:1").encode(),
    },
    "trace_headers": {
        "sampled": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nvendor=value,other=1",
        "not_sampled": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    },
    "tax_events": {
        "pending": b"\x00" + two(b(order()), b(transaction())),
        "refunded": b"\x01" + two(b(order(product_type="books", country="FR", version=2)), b(transaction(status=payments.TRANSACTION_STATUS_REFUNDED, order_version=2))),
        "no_order": b"\x00" + two(b"", b(transaction(amount=1))),
    },
    "ledger_events": {
        "account": b"\x00" + b(account()),
        "frozen": b"\x00" + b(account(freeze=accounts.Freeze(kind=accounts.FREEZE_KIND_DEBITS, reason="kyc", frozen_at=at()))),
        "interest": b"\x01" + b(accounts.InterestPosting(posting_id=f"interest:{ACCOUNT_ID}:2026-11", account_id=ACCOUNT_ID, customer_id="cust-42", currency="EUR", period="2026-11", amount=123, days=30, posted_at=at())),
        "taxed": b"\x06" + b(taxed()),
        "reversal": b"\x0a" + b(tax.TaxReversal(transaction_id=TRANSACTION_ID, order_id=ORDER_ID, customer_id="cust-42", base_amount=10_000, tax_reversed=1_900, total_amount=11_900, currency="EUR", country="DE", tax_rate_bps=1900, reason=tax.TAX_REVERSAL_REASON_TRANSACTION_REFUNDED, rule_version="eu-vat-2026.1", reversed_at=at(), transaction_version=2)),
        "captured": b"\x03" + b(transaction(status=payments.TRANSACTION_STATUS_SUCCEEDED)),
        "refunded": b"\x03" + b(transaction(status=payments.TRANSACTION_STATUS_REFUNDED)),
    },
    "accounts_events": {
        "entry": b"\x00" + b(entry()),
        "interest_entry": b"\x00" + b(entry("interest")),
        "hold_placed": b"\x03" + b(hold()),
        "hold_captured": b"\x01" + b(hold(ledger.HOLD_STATUS_CAPTURED)),
    },
    "transfers_events": {
        "active": b(account()),
        "frozen": b(account(freeze=accounts.Freeze(kind=accounts.FREEZE_KIND_BOTH, reason="kyc", frozen_at=at()), version=2)),
        "closed": b(account(state=accounts.ACCOUNT_STATE_CLOSED, closed_at=at(), version=3)),
    },
    "notifications_events": {
        "order": b"\x00" + b(order()),
        "transaction": b"\x02" + b(transaction()),
        "taxed": b"\x04" + b(taxed()),
        "entry": b"\x07" + b(entry()),
        "hold": b"\x08" + b(hold()),
        "account": b"\x0c" + b(account()),
    },
    "grpc_requests": {
        "create_order": b"\x00" + two(b(payments.CreateOrderRequest(customer_id="cust-42", country="DE", currency="EUR", amount=11_900, product_type="standard")), b""),
        "update_order": b"\x01" + two(b(payments.CreateOrderRequest(customer_id="cust-42", country="DE", currency="EUR", amount=11_900, product_type="standard")), b(payments.UpdateOrderRequest(order_id=ORDER_ID, expected_version=1, country="FR", amount=5_000, product_type="books"))),
        "create_transaction": b"\x02" + two(b(payments.CreateOrderRequest(customer_id="cust-42", country="DE", currency="EUR", amount=11_900, product_type="standard")), b(payments.CreateTransactionRequest(order_id=ORDER_ID, amount=11_900, currency="EUR", status=payments.TRANSACTION_STATUS_SUCCEEDED))),
        "post_entry": b"\x03" + b(ledger.PostEntryRequest(entry_id="manual-1", description="adjustment", metadata={"ticket": "OPS-1"}, lines=[ledger.EntryLine(account_id=ACCOUNT_ID, side=ledger.SIDE_DEBIT, amount=500, currency="EUR"), ledger.EntryLine(account_id=OTHER_ACCOUNT_ID, side=ledger.SIDE_CREDIT, amount=500, currency="EUR")])),
        "place_hold": b"\x04" + b(ledger.PlaceHoldRequest(hold_id="card-auth-1", account_id=ACCOUNT_ID, amount=2_000, currency="EUR", expires_at=at(SECONDS + 86_400), reason="card authorization")),
        "open_account": b"\x05" + b(accounts.OpenAccountRequest(customer_id="cust-42", product=accounts.PRODUCT_SAVINGS, currency="EUR")),
        "create_transfer": b"\x06" + b(transfers.CreateTransferRequest(from_account_id=ACCOUNT_ID, to_account_id=OTHER_ACCOUNT_ID, amount=2_500, currency="EUR", reference="rent")),
        "create_endpoint": b"\x07" + b(notifications.CreateEndpointRequest(url="https://hooks.example.com/fintech?x=1", event_types=["order.created", "transfer.completed"], description="ops", rate_limit_per_second=10)),
        "public_id": b"\x08" + b"ep_0191d1c28f5e7c3a9b1d3e5f7a9c1b2d",
        "retry_after": b"\x08" + b"Wed, 21 Oct 2026 07:28:00 GMT",
    },
    "vat_rates": {
        "embedded": struct.pack("<qH", 11_900, 2_400) + VAT,
        "small": struct.pack("<qH", 1, 30) + json.dumps({"rule_version": "t-1", "rules": [
            {"country": "DE", "product_type": "standard", "reason": "standard_rate", "rate_bps": 1900, "effective_from": "2020-01-01"},
            {"country": "*", "product_type": "medicine", "reason": "exempt", "rate_bps": 0, "effective_from": "2020-01-01", "effective_until": "2030-12-31"}]}).encode(),
    },
    "interest_rates": {
        "embedded": struct.pack("<qH", 1_000_000, 400) + INTEREST,
        "small": struct.pack("<qH", 9_223_372_036_854_775_807, 0) + json.dumps({"rule_version": "t-1", "rates": [
            {"currency": "EUR", "rate_bps": 10_000, "effective_from": "2024-01-01", "effective_until": "2024-12-31"},
            {"currency": "EUR", "rate_bps": 1, "effective_from": "2025-01-01"}]}).encode(),
    },
    "jwt": {
        "bearer": b"\x00Bearer " + jwt_token(CLAIMS),
        "signed": b"\x01\x00" + json.dumps(CLAIMS).encode(),
        "customer": b"\x01\x04" + json.dumps({**CLAIMS, "sub": "customer:cust-42", "customer_id": "cust-42", "aud": ["other", "fintech-platform"]}).encode(),
        "none": b"\x01\x10" + json.dumps(CLAIMS).encode(),
        "confusion": b"\x01\x20" + json.dumps(CLAIMS).encode(),
    },
    "idempotency_key": {
        "key": b"order-42:retry/1~!\x00operator\x00customer:cust-42",
        "escaped": b"k\x00a%3Ab\x00a:b",
    },
    "config_duration": {name: value.encode() for name, value in
                        {"ms": "500ms", "s": "30s", "m": "15m", "h": "24h", "d": "7d", "grpc": "99999999H", "grpc_n": "10n"}.items()},
}


def main():
    for target, seeds in SEEDS.items():
        directory = CORPUS / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
    print(f"wrote {sum(len(seeds) for seeds in SEEDS.values())} seeds for {len(SEEDS)} targets under {CORPUS}")


if __name__ == "__main__":
    main()
