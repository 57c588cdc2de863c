// Entry point of the generated TypeScript client: re-exports every generated package.
export * as paymentsV1 from "./gen/fintech/payments/v1/payments_pb.js";
export * as taxV1 from "./gen/fintech/tax/v1/tax_pb.js";
