#!/bin/bash
# ordersys's PostgreSQL node (pg1, pg2 of swarm/stack.yml): writes Patroni's
# configuration from the environment and the secrets, then becomes Patroni
# (PID 1: Patroni then reaps its children and passes signals on to its
# daemon). Anything but `patroni` runs as given.
#
# Environment (every password from a file, a Docker secret; a password is
# one line, a trailing line break is ignored):
#   PG_NODE_NAME                  this member's name (default: the hostname, pg1 / pg2)
#   PG_CLUSTER                    the cluster's name, Patroni's scope (default ordersys)
#   PG_ETCD_HOSTS                 etcd's client endpoints, host:port,... (required)
#   PG_CONNECT_ADDRESS            the address the other node reaches this one at
#                                 (default: this task's address on the network it
#                                 shares with etcd, found by routing towards etcd)
#   PG_SUPERUSER_PASSWORD_FILE    `postgres` (superuser: Patroni, pg_rewind, operators)
#   PG_REPLICATION_PASSWORD_FILE  `replicator` (streaming replication, pg_basebackup)
#   PG_RESTAPI_PASSWORD_FILE      user `patroni` of the REST API's writes (switchover,
#                                 restart, config); its reads need none
#   POSTGRES_USER                 the database owner, which migrates (default ordersys)
#   POSTGRES_DB                   its database (default: POSTGRES_USER)
#   POSTGRES_PASSWORD_FILE        the owner's password
# The owner and its database are created when the cluster is first
# bootstrapped (patroni-roles bootstrap); every password is set again from
# its secret whenever a node starts as, or becomes, the primary
# (patroni-roles as Patroni's callback): a renewed secret takes effect at the
# next deploy.
set -euo pipefail

if [ "${1:-}" != patroni ]; then
  exec "$@"
fi

umask 077
python3 - /tmp/patroni.yml <<'PY'
import os
import socket
import sys
import time

import yaml


def fail(message):
    print(f"patroni-entrypoint: {message}", file=sys.stderr)
    sys.exit(1)


def secret(var):
    path = os.environ.get(var)
    if not path:
        fail(f"{var} must name the file of a password")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as e:
        fail(f"cannot read {var} ({path}): {e}")
    if not value or "\n" in value or "\r" in value:
        fail(f"the password in {path} ({var}) must be one non-empty line")
    return value


def ascii_secret(var):
    # Patroni quotes these two passwords as Latin-1 when it bootstraps the
    # cluster: any other character fails the bootstrap, obscurely.
    value = secret(var)
    if not (value.isascii() and value.isprintable()):
        fail(f"the password of {var} must be printable ASCII (Patroni cannot bootstrap with another character)")
    return value


def host_port(endpoint, default_port):
    host, sep, port = endpoint.strip().rpartition(":")
    return (host, int(port)) if sep else (endpoint.strip(), default_port)


name = os.environ.get("PG_NODE_NAME") or socket.gethostname()
scope = os.environ.get("PG_CLUSTER") or "ordersys"
etcd = [e.strip() for e in os.environ.get("PG_ETCD_HOSTS", "").split(",") if e.strip()]
if not etcd:
    fail("PG_ETCD_HOSTS must list etcd's client endpoints (etcd1:2379,etcd2:2379,...)")
owner = os.environ.get("POSTGRES_USER") or "ordersys"
if owner in ("postgres", "replicator"):
    fail(f"POSTGRES_USER must not be {owner}: Patroni's own roles are postgres and replicator")

# The address the other node and etcd see this one at: the source address
# of a route towards an etcd member, i.e. this task's address on the network
# it shares with etcd (pg1 and pg2 are on two). An address, not a name:
# Patroni caches what names resolve to for ten minutes, and a task that
# Swarm replaces comes back at another address; the member key Patroni
# refreshes every loop carries the new one. Swarm gives the etcd tasks
# their names once healthy: wait for one (Patroni would wait for etcd anyway).
address = os.environ.get("PG_CONNECT_ADDRESS")
deadline = time.monotonic() + 300
while not address:
    for endpoint in etcd:
        try:
            info = socket.getaddrinfo(*host_port(endpoint, 2379), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(info[0][4])  # UDP: no packet is sent
        address = probe.getsockname()[0]
        probe.close()
        break
    else:
        if time.monotonic() > deadline:
            fail(f"none of {','.join(etcd)} resolves after 300 s")
        time.sleep(1)

roles = "/usr/local/bin/patroni-roles"
config = {
    "scope": scope,
    "name": name,
    "log": {"level": "INFO"},
    "restapi": {
        "listen": "0.0.0.0:8008",
        "connect_address": f"{address}:8008",
        "authentication": {"username": "patroni", "password": secret("PG_RESTAPI_PASSWORD_FILE")},
    },
    "etcd3": {"hosts": etcd},
    "bootstrap": {
        # Written to etcd by the node that bootstraps the cluster, once;
        # afterwards `patronictl edit-config` changes them (docs/deployment.md).
        "dcs": {
            # Leader lock: 20 s (Patroni's minimum). A primary that cannot
            # renew it demotes itself within loop_wait + 2 * retry_timeout
            # = 19 s, before the lock expires and the replica may promote.
            "ttl": 20,
            "loop_wait": 5,
            "retry_timeout": 7,
            "maximum_lag_on_failover": 1048576,
            # A crashed PostgreSQL on the primary gets 10 s to come back
            # before the replica takes over (default 300).
            "primary_start_timeout": 10,
            # Only the synchronous standby may be promoted; with it gone the
            # primary goes on alone (not strict: docs/deployment.md,
            # "The database cluster", says why).
            "synchronous_mode": True,
            "synchronous_mode_strict": False,
            "synchronous_node_count": 1,
            # etcd unreachable (all three restarting, say): the primary
            # stays primary while it can reach the replica's REST API.
            "failsafe_mode": True,
            "check_timeline": True,
            "postgresql": {
                "use_pg_rewind": True,
                "use_slots": True,
                "parameters": {
                    "max_connections": 100,
                    "wal_level": "replica",
                    "hot_standby": "on",
                    "wal_log_hints": "on",
                    "max_wal_senders": 10,
                    "max_replication_slots": 10,
                    "wal_keep_size": "128MB",
                    # A slot of an absent replica keeps at most this much WAL.
                    "max_slot_wal_keep_size": "2GB",
                    # A silent standby (partitioned) is dropped after 10 s,
                    # not 60: Patroni then stops waiting for it.
                    "wal_sender_timeout": "10s",
                    "wal_receiver_timeout": "10s",
                    "synchronous_commit": "on",
                    "password_encryption": "scram-sha-256",
                },
            },
        },
        "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        "post_bootstrap": f"{roles} bootstrap",
    },
    "postgresql": {
        "listen": "0.0.0.0:5432",
        "connect_address": f"{address}:5432",
        "data_dir": "/var/lib/postgresql/data/pgdata",
        "bin_dir": "/usr/lib/postgresql/17/bin",
        "pgpass": "/tmp/pgpass",
        "use_unix_socket": True,
        "authentication": {
            "superuser": {"username": "postgres", "password": ascii_secret("PG_SUPERUSER_PASSWORD_FILE")},
            "replication": {"username": "replicator", "password": ascii_secret("PG_REPLICATION_PASSWORD_FILE")},
        },
        "parameters": {"unix_socket_directories": "/run/postgresql"},
        # The overlay networks carry only the stack's tasks (and are
        # encrypted); every network login needs a SCRAM password. Inside
        # the container (docker exec), as with the official image: trust.
        "pg_hba": [
            "local all all trust",
            "host replication replicator all scram-sha-256",
            "host all all all scram-sha-256",
        ],
        "use_pg_rewind": True,
        "remove_data_directory_on_rewind_failure": True,
        # A new replica copies the primary at once (no spread checkpoint).
        "basebackup": [{"checkpoint": "fast"}],
        "callbacks": {"on_start": roles, "on_role_change": roles},
    },
    # No /dev/watchdog in a container. Patroni is PID 1: if it dies, the
    # container and PostgreSQL with it stop.
    "watchdog": {"mode": "off"},
    "tags": {"nofailover": False, "nosync": False, "noloadbalance": False, "clonefrom": False},
}

# The owner's password is read here too, so that a missing secret stops
# the node now rather than in the middle of a bootstrap.
secret("POSTGRES_PASSWORD_FILE")

path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as f:
    yaml.safe_dump(config, f, default_flow_style=False, sort_keys=False, allow_unicode=True)
print(f"patroni-entrypoint: member {name} of {scope} at {address}, etcd {','.join(etcd)}", file=sys.stderr)
PY

exec patroni /tmp/patroni.yml
