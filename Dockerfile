# syntax=docker/dockerfile:1
# The flashmall image: one binary runs every component, chosen by its
# arguments: `flashmall proxy`, `flashmall engine`, `flashmall service
# orders`, `flashmall up` (everything, embedded stores), ...
#
#   docker build -t flashmall .
#   docker run --rm -p 8080:8080 -e FLASHMALL_PROXY__LISTEN=0.0.0.0:8080 \
#     flashmall up --data-dir /home/nonroot/data
#
# The edge listens on 127.0.0.1 by default, which a published port cannot
# reach from outside the container: FLASHMALL_PROXY__LISTEN opens it.
#
# Stage 1 builds the release binary; stage 2 is distroless (glibc and
# libgcc, no shell, no package manager) and runs as the non-root user
# 65532. The image carries flashmall.example.toml (every field at its
# documented default) as /etc/flashmall/flashmall.toml; a component reads a
# config only when given `--config FILE` (Kubernetes mounts its ConfigMap
# and passes it), and FLASHMALL_* variables override either.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flashmall \
 && install -D -m 0755 target/release/flashmall /out/flashmall

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/flashmall /usr/local/bin/flashmall
COPY flashmall.example.toml /etc/flashmall/flashmall.toml
USER 65532:65532
WORKDIR /home/nonroot
# proxy 8080; engine 8081; auth 8082, orders 8083, payments 8084,
# products 8085, cart 8086, checkout 8087 (the defaults of each section)
EXPOSE 8080 8081 8082 8083 8084 8085 8086 8087
ENTRYPOINT ["/usr/local/bin/flashmall"]
CMD ["--help"]
