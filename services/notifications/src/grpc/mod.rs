//! `fintech.notifications.v1.NotificationsService`: decodes requests (ids, paging, the caller),
//! calls [`NotificationsApp`], encodes the answer; errors become statuses in one place
//! ([`status`]). `WatchEvents` replays from the store and then follows the in-process wake-ups,
//! reading the store again on each (so a slow reader never skips an event, ADR 0026).

mod status;

use std::pin::Pin;
use std::time::Duration;

use fintech_platform::auth::Caller;
use fintech_proto::notifications as pb;
use fintech_proto::notifications::notifications_service_server::NotificationsService;
use fintech_proto::time::timestamp;
use fintech_types::paging::PageRequest;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::app::{Actor, NotificationsApp};
use crate::domain::{self, NotificationsError, Violations};
use crate::storage::{self, AttemptRow, EndpointRow, EventRow, MessageRow};

/// The scope that sees every owner's endpoints.
pub const ADMIN_SCOPE: &str = "notifications.admin";
/// Events read from the store per round of a stream.
const STREAM_BATCH: i64 = 500;
/// A stream looks at the store at least this often, even without a wake-up (events committed
/// by another instance).
const STREAM_POLL: Duration = Duration::from_secs(1);

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct NotificationsGrpc {
    app: NotificationsApp,
}

impl NotificationsGrpc {
    /// The service over `app`.
    pub fn new(app: NotificationsApp) -> Self {
        Self { app }
    }
}

fn actor<T>(request: &Request<T>) -> Actor {
    match Caller::of(request) {
        Some(caller) => Actor {
            subject: caller.subject.clone(),
            admin: caller.has_scope(ADMIN_SCOPE),
        },
        None => Actor {
            subject: "anonymous".to_owned(),
            admin: false,
        },
    }
}

/// The protobuf form of an endpoint (never with a secret).
pub fn endpoint_pb(endpoint: &EndpointRow) -> pb::Endpoint {
    pb::Endpoint {
        endpoint_id: domain::public_id("ep", endpoint.endpoint_id),
        owner: endpoint.owner.clone(),
        url: endpoint.url.clone(),
        event_types: endpoint.event_types.clone(),
        description: endpoint.description.clone(),
        rate_limit_per_second: endpoint.rate_limit_per_second,
        disabled: endpoint.disabled,
        disabled_reason: endpoint.disabled_reason.clone(),
        created_at: Some(timestamp(endpoint.created_at)),
        updated_at: Some(timestamp(endpoint.updated_at)),
        failing_since: endpoint.failing_since.map(timestamp),
    }
}

fn message_pb(message: &MessageRow) -> pb::Message {
    let status = match message.status.as_str() {
        "pending" => pb::MessageStatus::Pending,
        "delivered" => pb::MessageStatus::Delivered,
        "failed" => pb::MessageStatus::Failed,
        _ => pb::MessageStatus::Unspecified,
    };
    pb::Message {
        message_id: domain::public_id("msg", message.message_id),
        endpoint_id: domain::public_id("ep", message.endpoint_id),
        event_id: domain::public_id("evt", message.event_id),
        event_type: message.event_type.clone(),
        status: status as i32,
        attempts: message.attempts,
        next_attempt_at: message.next_attempt_at.map(timestamp),
        created_at: Some(timestamp(message.created_at)),
        delivered_at: message.delivered_at.map(timestamp),
    }
}

fn attempt_pb(attempt: &AttemptRow) -> pb::Attempt {
    pb::Attempt {
        attempt_id: attempt.attempt_id.to_string(),
        message_id: domain::public_id("msg", attempt.message_id),
        endpoint_id: domain::public_id("ep", attempt.endpoint_id),
        attempt_number: attempt.attempt_number,
        url: attempt.url.clone(),
        status_code: attempt.status_code,
        latency_ms: attempt.latency_ms,
        response_snippet: attempt.response_snippet.clone(),
        error: attempt.error.clone(),
        success: attempt.success,
        started_at: Some(timestamp(attempt.started_at)),
    }
}

fn event_pb(event: &EventRow) -> pb::Event {
    pb::Event {
        event_id: domain::public_id("evt", event.event_id),
        event_type: event.event_type.clone(),
        timestamp: Some(timestamp(event.occurred_at)),
        payload_json: event.body.clone(),
        subject: event.subject.clone(),
    }
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, NotificationsError> {
    Ok(PageRequest::parse(page_size, page_token)?)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotificationsService for NotificationsGrpc {
    type WatchEventsStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::CreateEndpointResponse>, Status> {
        let actor = actor(&request);
        let (endpoint, secret) = self.app.create_endpoint(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::CreateEndpointResponse {
            endpoint: Some(endpoint_pb(&endpoint)),
            secret: secret.expose().to_owned(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::UpdateEndpointResponse>, Status> {
        let actor = actor(&request);
        let endpoint = self.app.update_endpoint(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::UpdateEndpointResponse {
            endpoint: Some(endpoint_pb(&endpoint)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_secret(
        &self,
        request: Request<pb::RotateSecretRequest>,
    ) -> Result<Response<pb::RotateSecretResponse>, Status> {
        let actor = actor(&request);
        let (secret, expires) = self.app.rotate_secret(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::RotateSecretResponse {
            secret: secret.expose().to_owned(),
            previous_expires_at: Some(timestamp(expires)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn disable_endpoint(
        &self,
        request: Request<pb::DisableEndpointRequest>,
    ) -> Result<Response<pb::DisableEndpointResponse>, Status> {
        let actor = actor(&request);
        let request = request.get_ref();
        let endpoint = self
            .app
            .set_disabled(&actor, &request.endpoint_id, true, &request.reason)
            .await?;
        Ok(Response::new(pb::DisableEndpointResponse {
            endpoint: Some(endpoint_pb(&endpoint)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn enable_endpoint(
        &self,
        request: Request<pb::EnableEndpointRequest>,
    ) -> Result<Response<pb::EnableEndpointResponse>, Status> {
        let actor = actor(&request);
        let endpoint = self
            .app
            .set_disabled(&actor, &request.get_ref().endpoint_id, false, "")
            .await?;
        Ok(Response::new(pb::EnableEndpointResponse {
            endpoint: Some(endpoint_pb(&endpoint)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let actor = actor(&request);
        let page = page(request.get_ref().page_size, &request.get_ref().page_token)?;
        let mut endpoints = self.app.list_endpoints(&actor, &page).await?;
        let next = page.next_cursor(&mut endpoints, storage::endpoint_cursor);
        Ok(Response::new(pb::ListEndpointsResponse {
            endpoints: endpoints.iter().map(endpoint_pb).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_endpoint(
        &self,
        request: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let actor = actor(&request);
        self.app.delete_endpoint(&actor, &request.get_ref().endpoint_id).await?;
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let actor = actor(&request);
        let request = request.get_ref();
        let page = page(request.page_size, &request.page_token)?;
        let mut messages = self.app.list_messages(&actor, &request.endpoint_id, &page).await?;
        let next = page.next_cursor(&mut messages, storage::message_cursor);
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(message_pb).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_attempts(
        &self,
        request: Request<pb::ListAttemptsRequest>,
    ) -> Result<Response<pb::ListAttemptsResponse>, Status> {
        let actor = actor(&request);
        let request = request.get_ref();
        let page = page(request.page_size, &request.page_token)?;
        let mut attempts = self.app.list_attempts(&actor, request, &page).await?;
        let next = page.next_cursor(&mut attempts, storage::attempt_cursor);
        Ok(Response::new(pb::ListAttemptsResponse {
            attempts: attempts.iter().map(attempt_pb).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn resend_message(
        &self,
        request: Request<pb::ResendMessageRequest>,
    ) -> Result<Response<pb::ResendMessageResponse>, Status> {
        let actor = actor(&request);
        let message = self.app.resend(&actor, &request.get_ref().message_id).await?;
        Ok(Response::new(pb::ResendMessageResponse {
            message: Some(message_pb(&message)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn recover_since(
        &self,
        request: Request<pb::RecoverSinceRequest>,
    ) -> Result<Response<pb::RecoverSinceResponse>, Status> {
        let actor = actor(&request);
        let queued = self.app.recover_since(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::RecoverSinceResponse {
            queued: i64::try_from(queued).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn send_test_event(
        &self,
        request: Request<pb::SendTestEventRequest>,
    ) -> Result<Response<pb::SendTestEventResponse>, Status> {
        let actor = actor(&request);
        let message = self.app.send_test_event(&actor, &request.get_ref().endpoint_id).await?;
        Ok(Response::new(pb::SendTestEventResponse {
            message: Some(message_pb(&message)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::default();
        for (index, event_type) in request.event_types.iter().enumerate() {
            domain::check_event_type(&format!("event_types[{index}]"), event_type, &mut violations);
        }
        if !violations.is_empty() {
            return Err(NotificationsError::Invalid(violations).into());
        }
        // Subscribed before the start is read, so nothing committed in between is missed.
        let mut wakeups = self.app.event_wakeups();
        let mut after = self.app.watch_start(&request.after_event_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BATCH as usize);
        let app = self.app.clone();
        let types = request.event_types;
        tokio::spawn(async move {
            loop {
                let events = match app.events_after(after, &types, STREAM_BATCH).await {
                    Ok(events) => events,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                let full = events.len() as i64 == STREAM_BATCH;
                for event in &events {
                    after = event.sequence;
                    let item = pb::WatchEventsResponse {
                        event: Some(event_pb(event)),
                    };
                    if sender.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    () = sender.closed() => return,
                    changed = wakeups.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }
}
