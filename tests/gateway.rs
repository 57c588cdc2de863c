//! The Envoy gateway (`deploy/gateway`) in front of the real services: one port for gRPC (grpcurl,
//! reflection), REST (gRPC-JSON transcoding of the contracts' `google.api.http` annotations, with
//! `curl`) and grpc-web; the bearer token checked at the edge and again by the service; a token
//! bucket per route; the caller's request id and trace context carried through.

use std::process::Command;
use std::time::Duration;

use fintech_proto::payments;
use fintech_tests::auth::{operator_token, scoped_token};
use fintech_tests::gateway::Gateway;
use fintech_tests::payments::PaymentsHarness;
use fintech_tests::service::connect_with_token;
use fintech_tests::venv_tool;
use prost::Message as _;
use serde_json::Value;

/// Upstreams that nothing in these tests calls: a port where nothing listens.
const UNUSED: &str = "127.0.0.1:9";

/// The browser origin the tests allow (CORS).
const APP_ORIGIN: &str = "http://localhost:3000";

async fn gateway_in_front_of(payments: &PaymentsHarness, rate_limit: &str) -> Gateway {
    let address = payments.address.clone();
    let rate_limit = rate_limit.to_owned();
    tokio::task::spawn_blocking(move || {
        Gateway::start(
            &[
                ("payments", &address),
                ("tax", UNUSED),
                ("ledger", UNUSED),
                ("accounts", UNUSED),
                ("transfers", UNUSED),
                ("notifications", UNUSED),
            ],
            &["--rate-limit", &rate_limit, "--cors-origin", APP_ORIGIN],
        )
    })
    .await
    .expect("gateway start")
}

/// Runs a command off the runtime (the services under test run on it); (success, stdout+stderr).
async fn run(mut command: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let output = command.output().expect("command runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    })
    .await
    .expect("command task")
}

/// `curl` with `args`; (HTTP status, body).
async fn curl(args: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-S", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args);
    let (ok, text) = run(command).await;
    assert!(ok, "curl failed: {text}");
    let (body, status) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
    (
        status.parse().unwrap_or_else(|_| panic!("curl status in {text:?}")),
        body.to_owned(),
    )
}

/// `grpcurl -plaintext [token] <flags> <gateway> <verb...>`.
async fn grpcurl(gateway: &Gateway, token: Option<&str>, flags: &[&str], verb: &[&str]) -> (bool, String) {
    let mut command = Command::new(venv_tool("grpcurl"));
    command.arg("-plaintext");
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    command.args(flags).arg(&gateway.address).args(verb);
    run(command).await
}

fn create_order_json(customer: &str) -> String {
    serde_json::json!({
        "customerId": customer,
        "country": "DE",
        "currency": "EUR",
        "amount": "2500",
        "productType": "standard",
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_gateway_needs_a_valid_token_and_the_right_scope() {
    let payments = PaymentsHarness::start().await;
    let gateway = gateway_in_front_of(&payments, "1000/1s").await;
    let token = operator_token();

    // Reflection stays open, so grpcurl can list and describe without a token.
    let (ok, listed) = grpcurl(&gateway, None, &[], &["list"]).await;
    assert!(ok && listed.contains("fintech.payments.v1.PaymentsService"), "{listed}");

    let body = create_order_json("cust-gw-grpc");
    let (data, create) = (
        ["-d", body.as_str()],
        ["fintech.payments.v1.PaymentsService/CreateOrder"],
    );
    let (ok, created) = grpcurl(&gateway, Some(&token), &data, &create).await;
    assert!(ok, "with a token: {created}");
    let order: Value = serde_json::from_str(&created).expect("grpcurl prints the response as JSON");
    assert_eq!(order["order"]["customerId"], "cust-gw-grpc", "{created}");

    let (ok, refused) = grpcurl(&gateway, None, &data, &create).await;
    assert!(!ok && refused.contains("Unauthenticated"), "without a token: {refused}");
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (ok, refused) = grpcurl(&gateway, Some(&tampered), &data, &create).await;
    assert!(
        !ok && refused.contains("Unauthenticated"),
        "tampered signature: {refused}"
    );

    // A valid token without payments.write passes the edge; the service refuses the RPC.
    let mut reader = payments::payments_service_client::PaymentsServiceClient::new(
        connect_with_token(&gateway.address, &scoped_token("reader", &["payments.read"])).await,
    );
    let status = reader
        .create_order(payments::CreateOrderRequest {
            customer_id: "cust-gw-grpc".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 100,
            product_type: "standard".to_owned(),
        })
        .await
        .expect_err("payments.read cannot create");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let order_id = order["order"]["orderId"].as_str().expect("order id");
    let read = reader
        .get_order(payments::GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("payments.read reads through the gateway")
        .into_inner();
    assert_eq!(read.order.expect("order").customer_id, "cust-gw-grpc");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&payments.db.pool)
        .await
        .expect("count orders");
    assert_eq!(orders, 1, "only the authorized create wrote an order");
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_users_create_and_read_an_order_with_curl() {
    let payments = PaymentsHarness::start().await;
    let gateway = gateway_in_front_of(&payments, "1000/1s").await;
    let bearer = format!("authorization: Bearer {}", operator_token());
    let body = create_order_json("cust-gw-rest");
    let orders = gateway.url("/v1/orders");
    let post = [
        "-X",
        "POST",
        &orders,
        "-H",
        &bearer,
        "-H",
        "content-type: application/json",
        "-H",
        "idempotency-key: rest-key-1",
        "-d",
        &body,
    ];

    let (status, created) = curl(&post).await;
    assert_eq!(status, 200, "{created}");
    let created: Value = serde_json::from_str(&created).expect("JSON order");
    let order_id = created["order"]["orderId"].as_str().expect("order id").to_owned();
    assert_eq!(created["order"]["amount"], "2500", "int64 as a JSON string: {created}");

    // The idempotency-key header reaches the service as metadata: a retry returns the first order.
    let (status, retried) = curl(&post).await;
    assert_eq!(status, 200, "{retried}");
    let retried: Value = serde_json::from_str(&retried).expect("JSON order");
    assert_eq!(retried["order"]["orderId"], order_id.as_str(), "same key, same order");

    let (status, read) = curl(&[&gateway.url(&format!("/v1/orders/{order_id}")), "-H", &bearer]).await;
    assert_eq!(status, 200, "{read}");
    let read: Value = serde_json::from_str(&read).expect("JSON order");
    assert_eq!(read["order"], created["order"], "read back as created");

    let (status, _) = curl(&[&gateway.url(&format!("/v1/orders/{order_id}"))]).await;
    assert_eq!(status, 401, "no token at the edge");

    // Bad input: 400 with the google.rpc.BadRequest field violations as JSON, nothing written.
    let invalid = serde_json::json!({"customerId": "", "country": "XX"}).to_string();
    let (status, error) = curl(&[
        "-X",
        "POST",
        &orders,
        "-H",
        &bearer,
        "-H",
        "content-type: application/json",
        "-d",
        &invalid,
    ])
    .await;
    assert_eq!(status, 400, "{error}");
    let error: Value = serde_json::from_str(&error).expect("JSON status");
    assert_eq!(error["code"], 3, "INVALID_ARGUMENT: {error}");
    let violations = error["details"][0]["fieldViolations"]
        .as_array()
        .expect("field violations");
    assert!(
        violations.iter().any(|violation| violation["field"] == "customer_id"),
        "names the field: {error}"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&payments.db.pool)
        .await
        .expect("count orders");
    assert_eq!(count, 1, "the retry and the invalid request wrote nothing");
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_over_rest_and_resource_exhausted_over_grpc() {
    let payments = PaymentsHarness::start().await;
    let gateway = gateway_in_front_of(&payments, "3/60s").await;
    let token = operator_token();
    let bearer = format!("authorization: Bearer {token}");
    let missing = gateway.url("/v1/orders/00000000-0000-4000-8000-000000000000");

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(curl(&[&missing, "-H", &bearer]).await.0);
    }
    assert_eq!(statuses, [404, 404, 404, 429], "three tokens, then limited");

    let mut client = payments::payments_service_client::PaymentsServiceClient::new(
        connect_with_token(&gateway.address, &token).await,
    );
    let status = client
        .get_order(payments::GetOrderRequest {
            order_id: "00000000-0000-4000-8000-000000000000".to_owned(),
        })
        .await
        .expect_err("the route's bucket is empty");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_calls_and_trace_context_pass_through_the_gateway() {
    let _telemetry = fintech_platform::telemetry::init("test");
    let payments = PaymentsHarness::start().await;
    let gateway = gateway_in_front_of(&payments, "1000/1s").await;
    let token = operator_token();
    let bearer = format!("authorization: Bearer {token}");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01");
    let request_id = format!("x-request-id: gw-test-{}", uuid::Uuid::new_v4());
    let body = create_order_json("cust-gw-web");
    let (status, created) = curl(&[
        "-X",
        "POST",
        &gateway.url("/v1/orders"),
        "-H",
        &bearer,
        "-H",
        "content-type: application/json",
        "-H",
        &traceparent,
        "-H",
        &request_id,
        "-d",
        &body,
    ])
    .await;
    assert_eq!(status, 200, "{created}");
    let created: Value = serde_json::from_str(&created).expect("JSON order");
    let order_id = created["order"]["orderId"].as_str().expect("order id").to_owned();

    // The service continued the caller's trace: the outbox row carries its trace id.
    let stored: Option<String> = sqlx::query_scalar("SELECT traceparent FROM outbox WHERE record_key = $1")
        .bind(&order_id)
        .fetch_one(&payments.db.pool)
        .await
        .expect("outbox row of the order");
    assert!(
        stored.as_deref().is_some_and(|value| value.contains(trace_id)),
        "trace context reached the service: {stored:?}"
    );

    // A browser on the allowed origin passes the CORS preflight (no token needed for it); another
    // origin gets no CORS headers.
    let grpc_web_path = gateway.url("/fintech.payments.v1.PaymentsService/GetOrder");
    let preflight = |origin: &'static str| {
        let mut command = Command::new("curl");
        command
            .args(["-s", "-i", "-X", "OPTIONS", &grpc_web_path, "-H"])
            .arg(format!("origin: {origin}"))
            .args(["-H", "access-control-request-method: POST"])
            .args([
                "-H",
                "access-control-request-headers: authorization,content-type,x-grpc-web",
            ]);
        run(command)
    };
    let (_, allowed) = preflight(APP_ORIGIN).await;
    assert!(
        allowed
            .to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {APP_ORIGIN}")),
        "{allowed}"
    );
    let (_, other) = preflight("http://evil.example").await;
    assert!(
        !other.to_ascii_lowercase().contains("access-control-allow-origin"),
        "{other}"
    );

    // grpc-web (what browsers speak): a length-prefixed frame over HTTP/1.1, trailers in the body.
    let request = payments::GetOrderRequest {
        order_id: order_id.clone(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(request.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&request);
    let dir = tempfile::tempdir().expect("temp dir");
    let (request_file, response_file) = (dir.path().join("request.bin"), dir.path().join("response.bin"));
    std::fs::write(&request_file, &frame).expect("write frame");
    let (status, _) = curl(&[
        "--http1.1",
        "-X",
        "POST",
        &grpc_web_path,
        "-H",
        &bearer,
        "-H",
        &format!("origin: {APP_ORIGIN}"),
        "-H",
        "content-type: application/grpc-web+proto",
        "-H",
        "x-grpc-web: 1",
        "--data-binary",
        &format!("@{}", request_file.display()),
        "-o",
        &response_file.display().to_string(),
    ])
    .await;
    assert_eq!(status, 200);
    let bytes = std::fs::read(&response_file).expect("response");
    let (message, trailers) = grpc_web_frames(&bytes);
    let response = payments::GetOrderResponse::decode(message.as_slice()).expect("a GetOrderResponse");
    assert_eq!(response.order.expect("order").order_id, order_id);
    assert!(trailers.contains("grpc-status:0"), "trailers: {trailers}");

    // The access log has the caller's request id and trace context, and never the token.
    let wanted = request_id.trim_start_matches("x-request-id: ").to_owned();
    let mut log = String::new();
    for _ in 0..50 {
        log = gateway.access_log();
        if log.contains(&wanted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = log
        .lines()
        .find(|line| line.contains(&wanted))
        .expect("access log line of the request");
    let entry: Value = serde_json::from_str(line).expect("JSON access log");
    assert!(
        entry["traceparent"]
            .as_str()
            .is_some_and(|value| value.contains(trace_id)),
        "{line}"
    );
    assert_eq!(entry["subject"], "test-operator", "{line}");
    assert!(!log.contains(&token), "the token is never logged");
    payments.stop().await;
}

/// The data frame and the trailer frame of a grpc-web response body.
fn grpc_web_frames(mut bytes: &[u8]) -> (Vec<u8>, String) {
    let (mut message, mut trailers) = (Vec::new(), String::new());
    while bytes.len() >= 5 {
        let flag = bytes[0];
        let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let payload = &bytes[5..5 + length];
        if flag & 0x80 == 0 {
            message = payload.to_vec();
        } else {
            trailers = String::from_utf8_lossy(payload).to_string();
        }
        bytes = &bytes[5 + length..];
    }
    (message, trailers)
}
