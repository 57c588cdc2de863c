// Creates an order and a transaction through the generated TypeScript client (Connect over gRPC),
// with idempotency keys, then reads both back. Usage: node dist/examples/payments_demo.js HOST:PORT
// with the bearer token in FINTECH_TOKEN (e.g. `FINTECH_TOKEN=$(deploy/local/token --all-scopes)`;
// run by tests/readme.rs).
import { randomUUID } from "node:crypto";
import { equals } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  OrderSchema,
  PaymentsService,
  TransactionSchema,
  TransactionStatus,
} from "../src/gen/fintech/payments/v1/payments_pb.js";

async function main(address: string): Promise<void> {
  const token = process.env.FINTECH_TOKEN ?? "";
  // Every call carries the caller's token; the services refuse calls without one.
  const bearer: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const payments = createClient(
    PaymentsService,
    createGrpcTransport({ baseUrl: `http://${address}`, interceptors: [bearer] }),
  );
  const key = randomUUID();
  const request = { customerId: "ts-client", country: "ES", currency: "EUR", amount: 3_300n, productType: "standard" };
  const created = await payments.createOrder(request, { headers: { "idempotency-key": `order-${key}` } });
  const retried = await payments.createOrder(request, { headers: { "idempotency-key": `order-${key}` } });
  if (!created.order || !retried.order || !equals(OrderSchema, created.order, retried.order)) {
    throw new Error("a retry with the same key must return the same order");
  }
  const { transaction } = await payments.createTransaction(
    { orderId: created.order.orderId, amount: 3_300n, currency: "EUR", status: TransactionStatus.PENDING },
    { headers: { "idempotency-key": `txn-${key}` } },
  );
  if (!transaction) throw new Error("no transaction returned");
  const order = (await payments.getOrder({ orderId: created.order.orderId })).order;
  const read = (await payments.getTransaction({ transactionId: transaction.transactionId })).transaction;
  if (!order || !equals(OrderSchema, order, created.order)) throw new Error("GetOrder differs from CreateOrder");
  if (!read || !equals(TransactionSchema, read, transaction)) throw new Error("GetTransaction differs");
  try {
    await payments.getOrder({ orderId: "not-a-uuid" });
    throw new Error("a bad id must be rejected");
  } catch (error) {
    if (!(error instanceof ConnectError) || error.code !== Code.InvalidArgument) throw error;
  }
  console.log(`typescript client ok order=${order.orderId} transaction=${read.transactionId}`);
}

main(process.argv[2] ?? "127.0.0.1:50051").catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
