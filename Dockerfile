# Multi-stage build: compile in the Rust image, run from a small distroless
# image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# The build flags (the runtime's scheduler setting needs one).
COPY .cargo .cargo
COPY proto proto
COPY src src
COPY benches benches
# A workspace member: cargo reads its manifest to build any package.
COPY load load
RUN cargo build --release --locked -p arbiter --bin arbiter

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/arbiter /usr/local/bin/arbiter
COPY policies /etc/arbiter/policies
COPY deploy/docker/arbiter.toml /etc/arbiter/arbiter.toml
USER nonroot:nonroot
EXPOSE 9191 8181
ENTRYPOINT ["/usr/local/bin/arbiter"]
CMD ["serve", "--config", "/etc/arbiter/arbiter.toml"]
