# syntax=docker/dockerfile:1
# Multi-stage build of the single `ds` binary (gateway, agent, model-proxy, CLI).
# Not built in this project's CI (no container engine there); kept conventional.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
COPY src src
COPY deploy deploy
# The `dist` profile (Cargo.toml): release plus thin LTO, for a smaller resident agent.
# Without the default `dev` feature: the image carries no simulated cluster (`ds dev`,
# `ds sim-cluster`), which is for tests and local tries.
RUN cargo build --profile dist --locked --no-default-features --bin ds \
 && strip target/dist/ds

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/ds /usr/local/bin/ds
# The distroless "nonroot" user; manifests set the same IDs.
USER 65532:65532
EXPOSE 8800 9090 9501 9502
ENTRYPOINT ["/usr/local/bin/ds"]
