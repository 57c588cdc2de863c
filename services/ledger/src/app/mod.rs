//! The ledger's use cases, called by the gRPC layer and the `tax.calculated` consumer alike:
//! [`posting`] (post an entry, post a batch of tax results, open accounts), each in one
//! PostgreSQL transaction with ordered stream locks and expected versions.

pub mod posting;
