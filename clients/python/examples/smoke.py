"""Type-checked and run by scripts/check-clients: builds an Order and a gRPC client stub."""

import grpc

from fintech.payments.v1 import payments_pb2, payments_pb2_grpc


def build_order() -> payments_pb2.Order:
    order = payments_pb2.Order(
        order_id="5f0c6a52-7f7e-4a3c-9d8e-2b8f0b3f1a11",
        customer_id="cust-42",
        country="DE",
        currency="EUR",
        amount=12_345,
        product_type="standard",
        version=1,
    )
    order.created_at.GetCurrentTime()
    return order


def main() -> None:
    order = build_order()
    decoded = payments_pb2.Order.FromString(order.SerializeToString())
    assert decoded.amount == 12_345, "order did not survive a protobuf round trip"
    assert payments_pb2.TRANSACTION_STATUS_PENDING == 1
    channel = grpc.insecure_channel("127.0.0.1:50051")
    stub = payments_pb2_grpc.PaymentsServiceStub(channel)
    assert callable(stub.CreateOrder)
    channel.close()
    print(f"order {decoded.order_id} ok")


if __name__ == "__main__":
    main()
