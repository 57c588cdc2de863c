"""Creates an order and a transaction through the generated Python client, with idempotency keys,
then reads both back. Usage: payments_demo.py HOST:PORT with the bearer token in FINTECH_TOKEN
(e.g. `FINTECH_TOKEN=$(deploy/local/token --all-scopes)`; run by tests/readme.rs)."""

import os
import sys
import uuid

import grpc

from fintech.payments.v1 import payments_pb2, payments_pb2_grpc


def main(address: str) -> None:
    # Every call carries the caller's token; the services refuse calls without one.
    auth = ("authorization", f"Bearer {os.environ.get('FINTECH_TOKEN', '')}")
    with grpc.insecure_channel(address) as channel:
        payments = payments_pb2_grpc.PaymentsServiceStub(channel)
        key = str(uuid.uuid4())
        request = payments_pb2.CreateOrderRequest(
            customer_id="py-client", country="FR", currency="EUR", amount=4_200, product_type="standard"
        )
        created = payments.CreateOrder(request, metadata=(auth, ("idempotency-key", f"order-{key}")))
        retried = payments.CreateOrder(request, metadata=(auth, ("idempotency-key", f"order-{key}")))
        assert retried.order == created.order, "a retry with the same key returns the same order"

        transaction = payments.CreateTransaction(
            payments_pb2.CreateTransactionRequest(
                order_id=created.order.order_id,
                amount=4_200,
                currency="EUR",
                status=payments_pb2.TRANSACTION_STATUS_PENDING,
            ),
            metadata=(auth, ("idempotency-key", f"txn-{key}")),
        ).transaction

        order = payments.GetOrder(payments_pb2.GetOrderRequest(order_id=created.order.order_id), metadata=(auth,)).order
        read = payments.GetTransaction(
            payments_pb2.GetTransactionRequest(transaction_id=transaction.transaction_id), metadata=(auth,)
        ).transaction
        assert order == created.order, "GetOrder returns the created order"
        assert read == transaction, "GetTransaction returns the created transaction"
        try:
            payments.GetOrder(payments_pb2.GetOrderRequest(order_id="not-a-uuid"), metadata=(auth,))
            raise AssertionError("a bad id must be rejected")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code()
        print(f"python client ok order={order.order_id} transaction={read.transaction_id}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
