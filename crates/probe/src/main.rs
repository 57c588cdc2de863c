//! `fintech-health-probe`: one `grpc.health.v1.Health/Check` against a service, for a container's
//! `HEALTHCHECK` and Kubernetes exec probes (ADR 0027).
//!
//! ```text
//! fintech-health-probe [--addr HOST:PORT] [--service NAME] [--timeout-ms N]
//! ```
//!
//! The address defaults to the service's own `GRPC_LISTEN_ADDR` (so one `HEALTHCHECK` line fits
//! every service in the image), with an unspecified host (`0.0.0.0`, `[::]`) asked on loopback.
//! The service name defaults to `""`, the service as a whole; a component (`relay-0`, `broker`,
//! `consumer-tax`, …) can be asked by name. Exit 0 when the answer is `SERVING`, 1 for any other
//! answer, an unknown service, a refused connection or a timeout, 2 for bad arguments. Plaintext
//! only: with `GRPC_TLS_CERT` set use a TLS-capable probe (the Kubernetes probes here are the
//! kubelet's own gRPC probes, which are plaintext too).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const USAGE: &str = "usage: fintech-health-probe [--addr HOST:PORT] [--service NAME] [--timeout-ms N]";

/// What to ask, from the arguments and `GRPC_LISTEN_ADDR`.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    address: SocketAddr,
    service: String,
    timeout: Duration,
}

fn parse(arguments: &[String], listen_addr: Option<&str>) -> Result<Probe, String> {
    let mut address = listen_addr.unwrap_or("127.0.0.1:50051").to_owned();
    let mut service = String::new();
    let mut timeout_ms = 3000u64;
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        let mut value = || {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{word} needs a value\n{USAGE}"))
        };
        match word.as_str() {
            "--addr" => address = value()?,
            "--service" => service = value()?,
            "--timeout-ms" => {
                let text = value()?;
                timeout_ms = text
                    .parse()
                    .map_err(|_| format!("--timeout-ms {text:?} is not a number\n{USAGE}"))?;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let mut address: SocketAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not HOST:PORT with an IP address\n{USAGE}"))?;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(Probe {
        address,
        service,
        timeout: Duration::from_millis(timeout_ms),
    })
}

async fn check(probe: &Probe) -> Result<ServingStatus, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", probe.address))
        .map_err(|error| format!("{}: {error}", probe.address))?
        .connect_timeout(probe.timeout)
        .timeout(probe.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| format!("{}: cannot connect: {error}", probe.address))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: probe.service.clone(),
        })
        .await
        .map_err(|status| format!("{}: {}: {}", probe.address, status.code(), status.message()))?;
    Ok(response.into_inner().status())
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let listen_addr = std::env::var("GRPC_LISTEN_ADDR").ok();
    let probe = match parse(&arguments, listen_addr.as_deref()) {
        Ok(probe) => probe,
        Err(message) => {
            #[allow(clippy::print_stderr)] // the probe's only output, for `docker inspect` and kubectl
            {
                eprintln!("{message}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("cannot start the runtime: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async { tokio::time::timeout(probe.timeout, check(&probe)).await });
    #[allow(clippy::print_stderr, clippy::print_stdout)]
    match outcome {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("{} {:?}: SERVING", probe.address, probe.service);
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("{} {:?}: {}", probe.address, probe.service, status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(message)) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{}: no answer within {:?}", probe.address, probe.timeout);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn the_listen_address_is_asked_on_loopback() {
        let probe = parse(&[], Some("0.0.0.0:50053")).unwrap();
        assert_eq!(probe.address, "127.0.0.1:50053".parse().unwrap());
        assert_eq!(probe.service, "");
        let probe = parse(&[], Some("[::]:50054")).unwrap();
        assert_eq!(probe.address, "[::1]:50054".parse().unwrap());
    }

    #[test]
    fn arguments_override_the_environment() {
        let probe = parse(
            &strings(&["--addr", "10.1.2.3:7000", "--service", "relay-0", "--timeout-ms", "500"]),
            Some("0.0.0.0:50051"),
        )
        .unwrap();
        assert_eq!(probe.address, "10.1.2.3:7000".parse().unwrap());
        assert_eq!(probe.service, "relay-0");
        assert_eq!(probe.timeout, Duration::from_millis(500));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&strings(&["--addr"]), None).is_err());
        assert!(parse(&strings(&["--addr", "payments:50051"]), None).is_err());
        assert!(parse(&strings(&["--timeout-ms", "soon"]), None).is_err());
        assert!(parse(&strings(&["--verbose"]), None).is_err());
    }
}
