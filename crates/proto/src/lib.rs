//! Protobuf contracts of the platform, generated at build time from `proto/`.
//!
//! # Layout
//! - one module per protobuf package (`fintech::payments::v1`, `fintech::tax::v1`, …) holding the
//!   prost messages, the tonic client (`*_client`) and server (`*_server`) of each service;
//! - [`FILE_DESCRIPTOR_SET`]: every contract as an encoded `FileDescriptorSet`, for gRPC server
//!   reflection (so `grpcurl list` and `grpcurl describe` work without local `.proto` files);
//! - [`MessageLimits`]: the message-size limits of every generated server, set by the service kit;
//! - [`time`]: protobuf timestamps ⇄ chrono;
//! - [`topics`]: every Kafka topic of the platform, with its key, payload and CloudEvents type.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// Generated code, one module per protobuf package.
pub mod fintech {
    /// `fintech.common.*`
    pub mod common {
        /// `fintech.common.v1`: what every contract shares, e.g. the `authorization` method
        /// option that declares each RPC's scope.
        pub mod v1 {
            tonic::include_proto!("fintech.common.v1");
        }
    }
    /// `fintech.payments.*`
    pub mod payments {
        /// `fintech.payments.v1`: orders and transactions.
        pub mod v1 {
            tonic::include_proto!("fintech.payments.v1");
        }
    }
    /// `fintech.tax.*`
    pub mod tax {
        /// `fintech.tax.v1`: VAT results, quotes and failures.
        pub mod v1 {
            tonic::include_proto!("fintech.tax.v1");
        }
    }
    /// `fintech.accounts.*`
    pub mod accounts {
        /// `fintech.accounts.v1`: customers' current and savings accounts.
        pub mod v1 {
            tonic::include_proto!("fintech.accounts.v1");
        }
    }
    /// `fintech.transfers.*`
    pub mod transfers {
        /// `fintech.transfers.v1`: money transfers between customer accounts (sagas on Temporal).
        pub mod v1 {
            tonic::include_proto!("fintech.transfers.v1");
        }
    }
    /// `fintech.notifications.*`
    pub mod notifications {
        /// `fintech.notifications.v1`: webhook endpoints, deliveries and the live event stream.
        pub mod v1 {
            tonic::include_proto!("fintech.notifications.v1");
        }
    }
    /// `fintech.ledger.*`
    pub mod ledger {
        /// `fintech.ledger.v1`: accounts, journal entries, balances of the double-entry ledger.
        pub mod v1 {
            tonic::include_proto!("fintech.ledger.v1");
        }
    }
}

/// Every contract of `proto/` as an encoded `google.protobuf.FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fintech_descriptor.bin"));

pub use fintech::accounts::v1 as accounts;
pub use fintech::common::v1 as common;
pub use fintech::ledger::v1 as ledger;
pub use fintech::notifications::v1 as notifications;
pub use fintech::payments::v1 as payments;
pub use fintech::tax::v1 as tax;
pub use fintech::transfers::v1 as transfers;

pub mod time;
pub mod topics;

/// The message-size limits of a generated tonic server, so the service kit can set them on any
/// service without knowing its type.
pub trait MessageLimits {
    /// Caps decoded (received) and encoded (sent) messages at `max_bytes`.
    fn with_message_limits(self, max_bytes: usize) -> Self;
}

macro_rules! message_limits {
    ($($($segment:ident)::+),* $(,)?) => {$(
        impl<T> MessageLimits for $($segment)::+<T> {
            fn with_message_limits(self, max_bytes: usize) -> Self {
                self.max_decoding_message_size(max_bytes).max_encoding_message_size(max_bytes)
            }
        }
    )*};
}

message_limits!(
    payments::payments_service_server::PaymentsServiceServer,
    tax::tax_service_server::TaxServiceServer,
    ledger::ledger_service_server::LedgerServiceServer,
    accounts::accounts_service_server::AccountsServiceServer,
    transfers::transfers_service_server::TransfersServiceServer,
    notifications::notifications_service_server::NotificationsServiceServer,
);
