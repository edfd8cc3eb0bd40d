# The eds container image: a release build with every driver, on a small Debian runtime, run as
# a non-root user with the data directory on a volume.
#
#   docker build --build-arg EDS_VERSION="$(git describe --tags --always --dirty)" -t eds .
#   docker run -d --name eds -v eds-data:/data -p 8080:8080 eds server --data-dir /data --url …
#
# HQ's self-upgrade is refused inside a container (pull a new image instead); the health check
# asks eds's own `/` (200 while serving, 503 while stopping or unhealthy).

FROM rust:1-slim-bookworm AS build
# librdkafka (kafka) builds from source with cmake; it and the Azure AMQP stack use OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG EDS_VERSION=""
ARG FEATURES="s3,kafka,eventhub"
RUN EDS_VERSION="${EDS_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)}" \
    cargo build --release --locked --features "$FEATURES" \
 && install -m 0755 target/release/eds /eds

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin eds \
 && install -d -o eds -g eds -m 0750 /data
COPY --from=build /eds /usr/local/bin/eds
USER eds
VOLUME ["/data"]
ENV EDS_BIND=0.0.0.0
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["eds"]
CMD ["server", "--data-dir", "/data"]
