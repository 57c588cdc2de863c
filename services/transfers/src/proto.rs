//! Conversions between the protobuf contract (`fintech.transfers.v1`) and the domain types, used
//! by the gRPC layer and by the events (which carry the same `Transfer`).

use fintech_proto::transfers as pb;

use crate::domain::{Status, Step, Transfer};

pub use fintech_proto::time::{from_timestamp, timestamp};

impl From<Status> for pb::TransferStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Pending => Self::Pending,
            Status::AwaitingApproval => Self::AwaitingApproval,
            Status::Completed => Self::Completed,
            Status::Failed => Self::Failed,
            Status::Cancelled => Self::Cancelled,
            Status::Rejected => Self::Rejected,
        }
    }
}

impl From<Step> for pb::TransferStep {
    fn from(step: Step) -> Self {
        match step {
            Step::Validating => Self::Validating,
            Step::Holding => Self::Holding,
            Step::Approving => Self::Approving,
            Step::Capturing => Self::Capturing,
            Step::Releasing => Self::Releasing,
            Step::Done => Self::Done,
        }
    }
}

impl From<&Transfer> for pb::Transfer {
    fn from(transfer: &Transfer) -> Self {
        Self {
            transfer_id: transfer.transfer_id.to_string(),
            customer_id: transfer.customer_id.clone(),
            from_account_id: transfer.from_account_id.to_string(),
            to_account_id: transfer.to_account_id.to_string(),
            amount: transfer.amount,
            currency: transfer.currency.clone(),
            reference: transfer.reference.clone(),
            status: pb::TransferStatus::from(transfer.status) as i32,
            step: pb::TransferStep::from(transfer.step) as i32,
            failure_code: transfer
                .failure
                .as_ref()
                .map(|failure| failure.code.as_str().to_owned())
                .unwrap_or_default(),
            failure_reason: transfer
                .failure
                .as_ref()
                .map(|failure| failure.reason.clone())
                .unwrap_or_default(),
            hold_id: transfer.hold_id.clone().unwrap_or_default(),
            entry_id: transfer.entry_id.clone().unwrap_or_default(),
            requires_approval: transfer.requires_approval,
            created_at: Some(timestamp(transfer.created_at)),
            updated_at: Some(timestamp(transfer.updated_at)),
            finished_at: transfer.finished_at.map(timestamp),
            version: transfer.version,
            workflow_id: transfer.workflow_id.clone(),
        }
    }
}
