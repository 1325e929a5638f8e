# One image for every mode: `docker run ordersys orders|products|worker|migrate`.
#
# Builder and runtime are both Debian trixie: the rust:1 images are trixie,
# and a binary built there needs trixie's glibc (bookworm has 2.36, not 2.39).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-trixie AS builder
# DL3008 (pin apt versions) is ignored on purpose: each build should pick up
# trixie's security updates; the Rust toolchain and Cargo.lock pin the rest.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in their own layer: built against empty sources, so a
# change to src/ rebuilds only ordersys itself.
COPY Cargo.toml Cargo.lock ./
# The workspace's test kit and the benchmark only need to exist for the
# manifest; neither is built.
COPY tests/kit/Cargo.toml tests/kit/
RUN mkdir -p src benches/ordersys tests/kit/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/kit/src/lib.rs \
 && echo 'fn main() {}' > benches/ordersys/main.rs \
 && cargo build --release --locked --bin ordersys \
 && rm -rf src target/release/ordersys target/release/deps/ordersys-* target/release/deps/libordersys-* \
      target/release/.fingerprint/ordersys-*

# config/ and migrations/ are compiled in (include_str!, embed_migrations!).
COPY config ./config
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin ordersys \
 && strip target/release/ordersys

FROM debian:trixie-slim AS runtime
# DL3008: as above, security updates of libpq5 and ca-certificates are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ordersys
COPY --from=builder /src/target/release/ordersys /usr/local/bin/ordersys
COPY config /etc/ordersys
USER 10001:10001
# orders 8081, products 8000, worker health port 8082
EXPOSE 8081 8000 8082
ENV RUST_LOG=info
# Started (/startedz of the mode's default port: ready once): Swarm routes
# to a task, and a start-first rolling update stops the old one, only once
# the new one is healthy, so "healthy" first means "can serve". It then
# stays healthy through a database or broker outage: Swarm replaces an
# unhealthy task, and a new one would wait for the database just the same
# and serve later than the old one (a lost primary measured 39-44 s of
# failed writes instead of ~22 s when it did). Routing follows /readyz
# (Traefik checks it every second).
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD ["ordersys", "probe"]
ENTRYPOINT ["ordersys"]
CMD ["--help"]
