# cutover container image: builds librdkafka from its bundled source (SSL, SASL, zstd).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev libsasl2-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin cutover

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 libsasl2-2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 cutover
COPY --from=build /src/target/release/cutover /usr/local/bin/cutover
USER cutover
EXPOSE 9464
ENTRYPOINT ["cutover"]
CMD ["--help"]
