// Type-checked by scripts/check-clients: builds an Order and a gRPC client stub from the generated code.
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  OrderSchema,
  PaymentsService,
  TransactionStatus,
  type Order,
} from "../src/gen/fintech/payments/v1/payments_pb.js";

const order: Order = create(OrderSchema, {
  orderId: "5f0c6a52-7f7e-4a3c-9d8e-2b8f0b3f1a11",
  customerId: "cust-42",
  country: "DE",
  currency: "EUR",
  amount: 12_345n,
  productType: "standard",
  createdAt: timestampNow(),
  version: 1n,
});

const roundTrip = fromBinary(OrderSchema, toBinary(OrderSchema, order));
if (roundTrip.amount !== 12_345n) {
  throw new Error("order did not survive a protobuf round trip");
}

const transport = createGrpcTransport({ baseUrl: "http://127.0.0.1:50051" });
const payments = createClient(PaymentsService, transport);
const pending: TransactionStatus = TransactionStatus.PENDING;
// Not called here (no server in a type check); shows the typed call shape.
export const createOrder = () =>
  payments.createOrder(
    { customerId: order.customerId, country: "DE", currency: "EUR", amount: 100n, productType: "standard" },
    { headers: { "idempotency-key": "example-key" } },
  );
export { pending };
console.log(`order ${roundTrip.orderId} ok`);
