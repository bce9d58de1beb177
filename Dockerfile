# syntax=docker/dockerfile:1
# One image for every Quiver process: `quiver coordinator`, `quiver executor`, `quiver serve`,
# `quiver sql`. Build with `docker build -t quiver .` (BuildKit); see README "Deploying".

# Build stage: the release binary. The generated protobuf code is checked in, so no protoc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p quiver-server --bin quiver \
    && cp target/release/quiver /usr/local/bin/quiver

# Runtime stage: the binary, CA certificates (S3 over TLS) and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 quiver \
    && useradd --system --uid 10001 --gid quiver --home-dir /var/lib/quiver --create-home quiver
COPY --from=build /usr/local/bin/quiver /usr/local/bin/quiver
USER 10001:10001
WORKDIR /var/lib/quiver
# Flight SQL and executor membership (coordinator), worker service (executor), HTTP admin
# (/metrics, /healthz, /readyz, the status page; --http-listen).
EXPOSE 50051 50052 9090
ENTRYPOINT ["quiver"]
CMD ["--help"]
