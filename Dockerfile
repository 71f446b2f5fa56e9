# syntax=docker/dockerfile:1
# One image with every TARS binary; the command picks the service:
#   docker run tars tars-ingress | tars-notifier | tars-decision | tars-governance-applier
#   (and tars-standins, the demo stand-ins for Slack, KBase and governance)
# No HEALTHCHECK: probes belong to the orchestrator (/livez, /readyz; see deploy/).
# Expected size: about 80 MB (distroless cc, ~23 MB, + five stripped binaries, 55.6 MB as
# `scripts/build-binaries.sh` printed in CI). The dev machines have no Docker engine: CI builds
# the same binaries with the same script, profile and features instead of this image.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

# The dependency graph alone, so the dependency layer below is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --locked --profile image --recipe-path recipe.json
COPY . .
RUN ./scripts/build-binaries.sh

# Non-root (uid 65532), no shell, no package manager; glibc and libgcc for the binaries.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/image/tars-ingress /src/target/image/tars-notifier \
     /src/target/image/tars-decision /src/target/image/tars-governance-applier \
     /src/target/image/tars-standins /usr/local/bin/
USER 65532:65532
EXPOSE 8000 9090
CMD ["/usr/local/bin/tars-ingress"]
