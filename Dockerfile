# syntax=docker/dockerfile:1.7
# The platform's container images (ADR 0027). One build, three targets:
#
#   docker build --target runtime  -t fintech-platform .   every service binary, fintech-ops and the probe
#   docker build --target gateway  -t fintech-gateway .    Envoy with the contracts' descriptor set
#   docker build --target devtools -t fintech-devtools .   runtime + fintech-token (Compose only)
#
# Always name the target: the last stage is the gateway. The stages fetch only from package
# registries (Debian, crates.io, PyPI, npm) and the base images' registry. Linted by hadolint in
# scripts/check-deploy (.hadolint.yaml).

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm
ARG ENVOY_VERSION=v1.40.0

# ---------------------------------------------------------------------------------------------------
# The googleapis contracts the build needs (google/api annotations, google/rpc error details), from
# the same pinned PyPI package as scripts/install-tools; they are never copied into the repository.
FROM python:3.12-slim-${DEBIAN_RELEASE} AS googleapis
WORKDIR /out
RUN pip install --no-cache-dir --target /tmp/pkgs googleapis-common-protos==1.76.0 \
 && mkdir -p google/api google/rpc \
 && cp /tmp/pkgs/google/api/annotations.proto /tmp/pkgs/google/api/http.proto google/api/ \
 && cp /tmp/pkgs/google/rpc/status.proto /tmp/pkgs/google/rpc/error_details.proto google/rpc/

# ---------------------------------------------------------------------------------------------------
# Rust toolchain with cargo-chef: the dependency graph is built in its own layer, rebuilt only when
# Cargo.toml / Cargo.lock change, not on every source edit.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
ARG RUST_VERSION
# The toolchain file asks for rustfmt and clippy, which a release build does not need.
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} \
    CARGO_TERM_COLOR=never \
    GOOGLEAPIS_PROTO_DIR=/src/.tools/proto
# protoc for the Temporal SDK's generated crate; OpenSSL headers for librdkafka's TLS and SASL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libssl-dev pkg-config cmake \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=googleapis /out /src/.tools/proto
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
      -p fintech-payments -p fintech-tax -p fintech-ledger -p fintech-accounts \
      -p fintech-transfers -p fintech-notifications -p fintech-ops \
 && cargo build --release --locked -p fintech-devkit --bin fintech-token \
 && mkdir -p /out \
 && cp target/release/payments target/release/tax target/release/ledger target/release/accounts \
       target/release/transfers target/release/notifications target/release/fintech-ops \
       target/release/fintech-token /out/
# The probe fully static (glibc and libgcc linked in), so that it also runs in the gateway's
# distroless Envoy image, which has no libgcc_s. An explicit --target keeps these RUSTFLAGS off
# the build scripts and out of the services' build cache.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN host="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked -p fintech-probe --target "$host" \
 && cp "target/$host/release/fintech-health-probe" /out/

# ---------------------------------------------------------------------------------------------------
# The descriptor set the gateway transcodes JSON with (buf from the pinned npm package).
FROM node:22-${DEBIAN_RELEASE}-slim AS descriptor
WORKDIR /src/tools
COPY tools/package.json tools/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
WORKDIR /src
COPY buf.yaml ./
COPY proto proto
COPY --from=googleapis /out .tools/proto
RUN tools/node_modules/.bin/buf build --as-file-descriptor-set -o /out/descriptor.binpb

# ---------------------------------------------------------------------------------------------------
# Services: Debian slim with CA certificates and the OpenSSL runtime librdkafka links, the binaries,
# and nothing else (no shell tools are added; the base image's own remain). Non-root.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fintech-platform" \
      org.opencontainers.image.description="Payments and core-banking services: payments, tax, ledger, accounts, transfers, notifications; fintech-ops; fintech-health-probe" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.vendor="fintech platform team"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 fintech \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fintech
COPY --from=builder /out/payments /out/tax /out/ledger /out/accounts /out/transfers /out/notifications \
     /out/fintech-ops /out/fintech-health-probe /usr/local/bin/
USER 10001:10001
ENV LOG_FORMAT=json
# grpc.health.v1 Check of the service as a whole, at the address the service listens on
# (GRPC_LISTEN_ADDR, which every deployment sets to 0.0.0.0:<port>).
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/fintech-health-probe", "--timeout-ms", "3000"]
# Which service runs is the command: `payments`, `tax`, `ledger`, `accounts`, `transfers`, `notifications`.
CMD ["payments"]

# ---------------------------------------------------------------------------------------------------
# Compose's one-shot jobs: the development key and tokens (never deployed to Kubernetes).
FROM runtime AS devtools
COPY --from=builder /out/fintech-token /usr/local/bin/
LABEL org.opencontainers.image.title="fintech-devtools"
HEALTHCHECK NONE
CMD ["fintech-token", "--help"]

# ---------------------------------------------------------------------------------------------------
# The Envoy gateway: the official distroless image (non-root), the descriptor set, and the probe for
# a grpc.health.v1 health check through the gateway's own listener. The configuration is mounted
# (Compose: deploy/compose/generated/envoy.yaml; Kubernetes: the gateway-envoy ConfigMap).
FROM envoyproxy/envoy:distroless-${ENVOY_VERSION} AS gateway
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fintech-gateway" \
      org.opencontainers.image.description="Envoy API gateway of the fintech platform (gRPC, REST transcoding, grpc-web, JWT)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=descriptor /out/descriptor.binpb /etc/envoy/descriptor.binpb
COPY --from=builder /out/fintech-health-probe /usr/local/bin/fintech-health-probe
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/fintech-health-probe", "--addr", "127.0.0.1:8080", "--timeout-ms", "3000"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"]
