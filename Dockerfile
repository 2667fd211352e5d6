# Build: a release binary from the locked dependency set.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY askama.toml ./
COPY benches benches
RUN cargo build --release --locked --bin autofollow

# Run: a small Debian image, a non-root user, rules in /app/rules, data in /app/data.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin autofollow \
 && mkdir -p /app/data \
 && chown autofollow /app/data \
 && chmod 700 /app/data
COPY --from=build /src/target/release/autofollow /usr/local/bin/autofollow
COPY rules /app/rules
WORKDIR /app
USER autofollow
# The public listener (webhooks, health) and the admin listener (admin API, metrics), which
# only the container network reaches: publish 8080 alone.
ENV AUTOFOLLOW_LISTEN=0.0.0.0:8080 \
    AUTOFOLLOW_ADMIN_LISTEN=0.0.0.0:9090 \
    AUTOFOLLOW_RULES=/app/rules \
    AUTOFOLLOW_DATABASE_URL=sqlite:///app/data/autofollow.db \
    AUTOFOLLOW_LOG_FORMAT=json
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["autofollow", "healthcheck"]
# autofollow handles SIGTERM itself (it runs as PID 1): intake answers 429, in-flight work
# finishes, leases are released, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["autofollow"]
CMD ["serve"]
