# syntax=docker/dockerfile:1.7
# One image recipe for every service: `docker build --build-arg SERVICE=cloud-identity-access .`
# The runtime recipe (a glibc binary on distroless/cc, uid 65532, read-only root, nothing added
# but the binary) is proven without a Docker engine by `cargo xtask ci --step image-runtime`;
# see docs/ci-cd.md.

ARG RUST_VERSION=1.95.0

# --- chef: the toolchain plus cargo-chef and cargo-auditable, shared by the next two stages ---
# bookworm on purpose: the binary links against the builder's glibc (2.36), and the runtime
# base below is Debian 12 too, so every glibc symbol the binary uses exists at run time.
FROM rust:${RUST_VERSION}-bookworm AS chef
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN cargo install --locked cargo-chef@0.1.78 cargo-auditable@0.7.7
WORKDIR /src

# --- planner: reduce the workspace to the manifests that decide the dependency graph ---
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies first (a cached layer while Cargo.lock is unchanged), then the service ---
FROM chef AS builder
ARG SERVICE
COPY --from=planner /src/recipe.json recipe.json
RUN test -n "${SERVICE}" \
    && cargo chef cook --release --locked --package "${SERVICE}" --recipe-path recipe.json
COPY . .
ARG GIT_SHA=unknown
ENV CLOUD_GIT_SHA=${GIT_SHA}
RUN cargo auditable build --release --locked --package "${SERVICE}" --bin "${SERVICE}" \
    && mkdir -p /out \
    && cp "target/release/${SERVICE}" /out/service

# --- runtime: distroless cc (glibc, libgcc_s, libstdc++, libssl, CA bundle, tzdata; no shell,
# no package manager), plus the binary and nothing else ---
FROM gcr.io/distroless/cc-debian12:nonroot
ARG SERVICE
ARG VERSION=0.0.0-dev
ARG GIT_SHA=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="${SERVICE}" \
      org.opencontainers.image.description="Multi-tenant cloud platform service ${SERVICE}" \
      org.opencontainers.image.source="https://github.com/cloud-platform/cloud-platform" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="cloud-platform"
# Both services read <PREFIX>_SERVER__HOST; in a container they listen on every interface.
ENV IDENTITY_SERVER__HOST=0.0.0.0 \
    GATEWAY_SERVER__HOST=0.0.0.0
COPY --from=builder /out/service /usr/local/bin/service
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/service"]
