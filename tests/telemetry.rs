//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/gRPC: a gRPC request's span
//! reaches a collector with the service name and the caller's trace id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::payments as pb;
use fintech_tests::payments::PaymentsHarness;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

const TRACE_ID: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a7988";

/// A collector that keeps what it receives.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn request_spans_are_exported_over_otlp_with_the_callers_trace_id() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream_incoming(listener)),
    );
    let guard = telemetry::init_with_endpoint("payments", Some(&format!("http://{address}"))).expect("telemetry");

    let mut harness = PaymentsHarness::start().await;
    let mut request = Request::new(pb::GetOrderRequest {
        order_id: uuid::Uuid::new_v4().to_string(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-aaaaaaaaaaaaaaaa-01").parse().expect("ascii"),
    );
    let _not_found = harness.client.get_order(request).await.expect_err("no such order");
    harness.stop().await;
    drop(guard); // flushes the batch exporter

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let received = collector.received.lock().expect("lock").clone();
        let spans: Vec<_> = received
            .iter()
            .flat_map(|request| request.resource_spans.iter())
            .filter(|resource| {
                resource.resource.as_ref().is_some_and(|resource| {
                    resource.attributes.iter().any(|attribute| {
                        attribute.key == "service.name"
                            && attribute.value.as_ref().and_then(|value| value.value.as_ref())
                                == Some(&Value::StringValue("payments".to_owned()))
                    })
                })
            })
            .flat_map(|resource| resource.scope_spans.iter().flat_map(|scope| scope.spans.iter()))
            .filter(|span| hex(&span.trace_id) == TRACE_ID)
            .map(|span| span.name.clone())
            .collect();
        if spans.iter().any(|name| name.contains("GetOrder")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no exported GetOrder span on the trace; got {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
