//! The ledger's use cases, called by the gRPC layer and the consumers alike: [`posting`] (post an
//! entry, post a batch of tax results, capture a hold, open accounts) and [`holds`] (place,
//! release and expire holds), each in one PostgreSQL transaction with ordered stream locks and
//! expected versions; [`accounts`] keeps the cache of the accounts service's accounts.

pub mod accounts;
pub mod holds;
pub mod posting;
