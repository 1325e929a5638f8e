#!/usr/bin/env bash
# Creates the Docker secrets swarm/stack.yml reads. Run on a manager, once
# per cluster (before the first `docker stack deploy`):
#
#   swarm/create-secrets.sh              create them; fails if one exists
#   swarm/create-secrets.sh --replace    remove the existing ones first
#   swarm/create-secrets.sh --remove     only remove them
#
# A secret in use by a service cannot be removed: `docker stack rm ordersys`
# first (volumes stay). Changing passwords on an existing deployment: the
# PostgreSQL nodes set the passwords of the owner, `postgres` and
# `replicator` from their secrets whenever one starts as, or becomes, the
# primary, the service roles' passwords are set by `ordersys migrate` at
# every deploy, and RabbitMQ re-imports its users from the definitions at
# every start.
#
# Every value is generated (openssl rand) unless given in the environment;
# nothing secret is printed, and nothing is written to disk but the private
# key that signs the APIs' tokens (below):
#
#   POSTGRES_PASSWORD       PostgreSQL owner `ordersys` (creates roles, owns the
#                           database; used by migrate only)
#   POSTGRES_SUPERUSER_PASSWORD    PostgreSQL superuser `postgres` (Patroni, pg_rewind,
#                                  operators; no service has it)
#   POSTGRES_REPLICATION_PASSWORD  PostgreSQL role `replicator` (the standby's streaming)
#   PATRONI_RESTAPI_PASSWORD       user `patroni` of the PostgreSQL nodes' REST API writes
#                                  (switchover, restart, configuration; reads need none)
#   PRODUCTS_DB_PASSWORD    login role ordersys_products
#   ORDERS_DB_PASSWORD      login role ordersys_orders
#   WORKER_DB_PASSWORD      login role ordersys_worker
#   RABBITMQ_MIGRATE_PASSWORD  broker user ordersys_migrate (declares the topology)
#   RABBITMQ_ORDERS_PASSWORD   broker user ordersys_orders (publishes to product_exchange, consumes order_events)
#   RABBITMQ_WORKER_PASSWORD   broker user ordersys_worker (consumes product_queue and its partitions)
#   RABBITMQ_ERLANG_COOKIE     the shared secret of the broker cluster's nodes (and
#                              of rabbitmqctl inside their tasks): 20 to 255 letters
#                              and digits
#   JWT_PRIVATE_KEY_FILE    where the Ed25519 private key that signs the APIs' bearer
#                           tokens is kept, on this machine only (default
#                           ${XDG_CONFIG_HOME:-$HOME/.config}/ordersys/jwt-ed25519.pem)
#   GRAFANA_ADMIN_PASSWORD  Grafana's `admin` (the dashboards, through Traefik at /grafana/)
#   TLS_CERT_FILE, TLS_KEY_FILE  the edge's certificate (PEM, with its chain) and
#                           private key, for HTTPS on 443 (ordersys_tls_cert,
#                           ordersys_tls_key). Without them a self-signed
#                           server certificate (not a CA: it can vouch for
#                           nothing else) is made for TLS_HOSTNAMES (default
#                           localhost; comma-separated names or IP addresses;
#                           127.0.0.1 is always included), valid 397 days, and
#                           written (the certificate only: clients trust it
#                           with curl --cacert, ordersys load --ca-file) to
#                           TLS_CERT_OUT (default ${XDG_CONFIG_HOME:-$HOME/.config}/ordersys/edge-cert.pem).
#                           Its private key goes into the secret only.
#   DATABASE_URL_PARAMS     optional query string for every PostgreSQL URL, e.g. sslmode=require
#                           (target_session_attrs=read-write is always there)
#   PG_HOSTS                the PostgreSQL nodes, comma-separated names without
#                           ports (5432): default pg1,pg2
#   AMQP_SCHEME             amqp (default) or amqps (TLS; port 5671 unless AMQP_PORT is set)
#
# Generated values cannot be read back from here; what needs them reads
# them from the secrets. Grafana's password, to sign in: give
# GRAFANA_ADMIN_PASSWORD here, or read it in the grafana task:
#
#   docker exec "$(docker ps -q -f label=com.docker.swarm.service.name=ordersys_grafana | head -n1)" \
#     cat /run/secrets/ordersys_grafana_admin_password
#
# The APIs' tokens are EdDSA (Ed25519) signatures. The key pair is made
# here (openssl genpkey): only the public key goes into a secret
# (ordersys_jwt_public_key, which products and orders mount to verify
# tokens); the private key is written to JWT_PRIVATE_KEY_FILE, mode 0600,
# and stays on this machine: no service holds it, so no service can mint a
# token. A key file that already exists is kept and its public key used
# (with --replace too); to change the key pair, delete the file and rerun
# with --replace. --remove leaves the file. To mint a token (scopes
# products:read, products:write, stock:correct, orders:read, orders:write;
# at most a day, auth.max_token_age_secs), with the image:
#
#   docker run --rm --network none --user "$(id -u)" \
#     -v "$HOME/.config/ordersys/jwt-ed25519.pem:/key.pem:ro" ordersys:latest \
#     token --private-key /key.pem --scope products:read,orders:read --subject "$USER" --ttl 3600
#
# RabbitMQ gets no default user and no administrator: when definitions are
# imported at boot it creates neither `guest` nor RABBITMQ_DEFAULT_USER.
# For an operator's session, `docker exec` into a broker node's task and use
# rabbitmqctl (it authenticates with the Erlang cookie, not a user).
set -euo pipefail
umask 077

secrets=(
  ordersys_postgres_password
  ordersys_pg_superuser_password
  ordersys_pg_replication_password
  ordersys_patroni_restapi_password
  ordersys_migrate_database_url
  ordersys_products_database_url
  ordersys_orders_database_url
  ordersys_worker_database_url
  ordersys_products_db_password
  ordersys_orders_db_password
  ordersys_worker_db_password
  ordersys_migrate_amqp_url
  ordersys_orders_amqp_url
  ordersys_worker_amqp_url
  ordersys_jwt_public_key
  ordersys_rabbitmq_conf
  ordersys_rabbitmq_definitions
  ordersys_rabbitmq_cookie
  ordersys_grafana_admin_password
  ordersys_tls_cert
  ordersys_tls_key
)

# Made by earlier versions, removed with the others: the stack's former
# HS256 secret (every service holding it could mint any scope).
retired=(ordersys_jwt_secret)

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

action=create
case ${1:-} in
  "") ;;
  --replace) action=replace ;;
  --remove) action=remove ;;
  # Print the RabbitMQ definitions (users, hashed passwords, permissions)
  # and create nothing: for review, and for ordersys's tests.
  --definitions) action=definitions ;;
  *) usage ;;
esac

if [ "$action" != definitions ]; then
  command -v docker >/dev/null || { echo "create-secrets: docker is not installed" >&2; exit 1; }
  if [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" != true ]; then
    echo "create-secrets: run this on a Swarm manager (docker swarm init)" >&2
    exit 1
  fi
fi

remove_all() {
  local name used
  # All or nothing: a secret that a service uses cannot be removed.
  used=$(docker service ls -q | xargs -r docker service inspect \
    --format '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{println .SecretName}}{{end}}')
  for name in "${secrets[@]}" "${retired[@]}"; do
    if grep -qx "$name" <<<"$used"; then
      echo "create-secrets: secret $name is in use by a service; docker stack rm ordersys first" >&2
      exit 1
    fi
  done
  for name in "${secrets[@]}" "${retired[@]}"; do
    if docker secret inspect "$name" >/dev/null 2>&1; then
      docker secret rm "$name" >/dev/null
      echo "removed secret $name"
    fi
  done
}

if [ "$action" = remove ]; then
  remove_all
  exit 0
fi
command -v openssl >/dev/null || { echo "create-secrets: openssl is needed" >&2; exit 1; }

# value NAME: $NAME, or 32 random bytes in hex. A password must be one line.
value() {
  local v=${!1:-}
  if [ -z "$v" ]; then
    v=$(openssl rand -hex 32)
  fi
  case $v in
    *$'\n'* | *$'\r'*) echo "create-secrets: $1 must not contain a line break" >&2; exit 1 ;;
  esac
  printf '%s' "$v"
}

# urlencode STRING: RFC 3986 percent-encoding of every byte but the
# unreserved characters (A-Z a-z 0-9 - . _ ~), for passwords inside URLs.
urlencode() {
  local LC_ALL=C
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *)
        printf -v c '%%%02X' "'$c"
        out+=$c
        ;;
    esac
  done
  printf '%s' "$out"
}

# rabbit_hash PASSWORD: RabbitMQ's rabbit_password_hashing_sha256,
# base64(salt || sha256(salt || password)) with a random 4-byte salt.
rabbit_hash() {
  local salt
  salt=$(openssl rand -hex 4 | sed 's/../\\x&/g')
  {
    printf '%b' "$salt"
    {
      printf '%b' "$salt"
      printf '%s' "$1"
    } | openssl dgst -sha256 -binary
  } | openssl base64 -A
}

create() { # create NAME VALUE: the value goes through stdin, never argv
  printf '%s' "$2" | docker secret create --label org.ordersys.stack=ordersys "$1" - >/dev/null
  echo "created secret $1"
}

if [ -n "${JWT_SECRET:-}" ]; then
  echo "create-secrets: JWT_SECRET is ignored: the stack's tokens are signed with an Ed25519" \
    "private key (JWT_PRIVATE_KEY_FILE) and verified with its public key" >&2
fi
if [ -n "${RABBITMQ_PASSWORD:-}" ]; then
  echo "create-secrets: RABBITMQ_PASSWORD is ignored: each broker user has its own" \
    "(RABBITMQ_MIGRATE_PASSWORD, RABBITMQ_ORDERS_PASSWORD, RABBITMQ_WORKER_PASSWORD)" >&2
fi

postgres_password=$(value POSTGRES_PASSWORD)
products_db=$(value PRODUCTS_DB_PASSWORD)
orders_db=$(value ORDERS_DB_PASSWORD)
worker_db=$(value WORKER_DB_PASSWORD)
mq_migrate=$(value RABBITMQ_MIGRATE_PASSWORD)
mq_orders=$(value RABBITMQ_ORDERS_PASSWORD)
mq_worker=$(value RABBITMQ_WORKER_PASSWORD)
erlang_cookie=$(value RABBITMQ_ERLANG_COOKIE)
# Erlang refuses a cookie of other characters, and the nodes would not boot.
[[ $erlang_cookie =~ ^[[:alnum:]]{20,255}$ ]] || {
  echo "create-secrets: RABBITMQ_ERLANG_COOKIE must be 20 to 255 letters and digits" >&2
  exit 1
}
grafana_admin=$(value GRAFANA_ADMIN_PASSWORD)
pg_superuser=$(value POSTGRES_SUPERUSER_PASSWORD)
pg_replication=$(value POSTGRES_REPLICATION_PASSWORD)
patroni_restapi=$(value PATRONI_RESTAPI_PASSWORD)
# Patroni (Debian's 4.0.7) quotes the superuser's and the replication
# role's passwords as Latin-1: a non-ASCII character fails the cluster's
# bootstrap. Printable ASCII only for these two.
for v in POSTGRES_SUPERUSER_PASSWORD POSTGRES_REPLICATION_PASSWORD; do
  [[ -z ${!v:-} || ${!v} =~ ^[[:print:]]+$ && ${!v} != *[^[:ascii:]]* ]] || {
    echo "create-secrets: $v must be printable ASCII (Patroni cannot bootstrap with another character)" >&2
    exit 1
  }
done

user_json() { # user_json NAME PASSWORD
  printf '    {"name": "%s", "password_hash": "%s", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}' \
    "$1" "$(rabbit_hash "$2")"
}
permission_json() { # permission_json USER CONFIGURE WRITE READ (JSON-escaped regexes)
  printf '    {"user": "%s", "vhost": "/", "configure": "%s", "write": "%s", "read": "%s"}' "$1" "$2" "$3" "$4"
}
topology='^(product_exchange|product_queue|product_queue\\.[0-9]+|product_queue\\.dlq|product_dlx|stock_alerts|order_events|order_events\\.dlq|order_events_dlx)$'
definitions=$(
  printf '{\n  "vhosts": [{"name": "/"}],\n  "users": [\n'
  user_json ordersys_migrate "$mq_migrate"
  printf ',\n'
  user_json ordersys_orders "$mq_orders"
  printf ',\n'
  user_json ordersys_worker "$mq_worker"
  printf '\n  ],\n  "permissions": [\n'
  permission_json ordersys_migrate "$topology" "$topology" "$topology"
  printf ',\n'
  permission_json ordersys_orders '^$' '^(product_exchange|order_events_dlx)$' '^order_events$'
  printf ',\n'
  permission_json ordersys_worker '^$' '^(product_dlx|stock_alerts|order_events)$' '^product_queue(\\.[0-9]+)?$'
  printf '\n  ]\n}\n'
)
if [ "$action" = definitions ]; then
  printf '%s' "$definitions"
  exit 0
fi

# Every PostgreSQL URL names both nodes; libpq tries them in turn and keeps
# the one that takes writes (the primary), so a service follows a failover
# at its next connection. Names without ports: ordersys reads the URL
# (Rust's url crate), which takes "pg1,pg2" as one host but refuses
# "pg1:5432,pg2:5432" (an invalid port): the process would not start.
pg_hosts=${PG_HOSTS:-pg1,pg2}
[[ $pg_hosts =~ ^[A-Za-z0-9.-]+(,[A-Za-z0-9.-]+)*$ ]] || {
  echo "create-secrets: PG_HOSTS must be host names separated by commas, without ports (5432)" >&2
  exit 1
}
params=target_session_attrs=read-write${DATABASE_URL_PARAMS:+&${DATABASE_URL_PARAMS#\?}}
case ${AMQP_SCHEME:=amqp} in
  amqp) amqp_port=${AMQP_PORT:-5672} ;;
  amqps) amqp_port=${AMQP_PORT:-5671} ;;
  *) echo "create-secrets: AMQP_SCHEME must be amqp or amqps" >&2; exit 1 ;;
esac

# Work files (the edge's key before it goes into its secret; a new token
# key before it is moved into place) in a directory of our own, mode 0700
# (umask 077), removed at exit.
tls_dir=$(mktemp -d)
new_key=
trap 'rm -rf "$tls_dir"; rm -f "${new_key:-}"' EXIT

# The tokens' key pair: the private key kept (or made, 0600) in
# JWT_PRIVATE_KEY_FILE on this machine, its public key for the secret. A
# new key is written beside the file and moved into place only once every
# secret is created.
key_file=${JWT_PRIVATE_KEY_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/ordersys/jwt-ed25519.pem}
if [ -e "$key_file" ]; then
  [[ $(openssl pkey -in "$key_file" -noout -text 2>/dev/null) == "ED25519 Private-Key"* ]] || {
    echo "create-secrets: $key_file (JWT_PRIVATE_KEY_FILE) is not an Ed25519 private key" >&2
    exit 1
  }
  jwt_public_key=$(openssl pkey -in "$key_file" -pubout)
else
  mkdir -p "$(dirname "$key_file")"
  new_key="$key_file.new.$$"
  openssl genpkey -algorithm ed25519 -out "$new_key" 2>/dev/null || {
    echo "create-secrets: openssl cannot make an Ed25519 key (OpenSSL 1.1.1 or later is needed)" >&2
    exit 1
  }
  chmod 0600 "$new_key"
  jwt_public_key=$(openssl pkey -in "$new_key" -pubout)
fi

# The edge's certificate: given (the key must match it), or self-signed
# for TLS_HOSTNAMES, in the work directory.
tls_cert_out=
if [ -n "${TLS_CERT_FILE:-}${TLS_KEY_FILE:-}" ]; then
  [ -r "${TLS_CERT_FILE:-}" ] && [ -r "${TLS_KEY_FILE:-}" ] || {
    echo "create-secrets: TLS_CERT_FILE and TLS_KEY_FILE must both name readable PEM files" >&2
    exit 1
  }
  [ "$(openssl x509 -in "$TLS_CERT_FILE" -noout -pubkey 2>/dev/null)" = \
    "$(openssl pkey -in "$TLS_KEY_FILE" -pubout 2>/dev/null)" ] || {
    echo "create-secrets: TLS_KEY_FILE is not the private key of TLS_CERT_FILE's certificate" >&2
    exit 1
  }
  cp "$TLS_CERT_FILE" "$tls_dir/cert.pem"
  # Unencrypted, as Traefik reads it (a passphrase-protected key fails here).
  openssl pkey -passin pass: -in "$TLS_KEY_FILE" -out "$tls_dir/key.pem" 2>/dev/null || {
    echo "create-secrets: TLS_KEY_FILE cannot be read without a passphrase; give it unencrypted" >&2
    exit 1
  }
else
  san="IP:127.0.0.1"
  IFS=, read -r -a tls_names <<<"${TLS_HOSTNAMES:-localhost}"
  for name in "${tls_names[@]}"; do
    if [[ $name =~ ^[0-9.]+$|: ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
  done
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 397 \
    -subj "/CN=${tls_names[0]}" -addext "subjectAltName=$san" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" 2>/dev/null || {
    echo "create-secrets: openssl could not make the edge's self-signed certificate" >&2
    exit 1
  }
  tls_cert_out=${TLS_CERT_OUT:-${XDG_CONFIG_HOME:-$HOME/.config}/ordersys/edge-cert.pem}
fi

# Every value is valid: only now is anything removed or created.
if [ "$action" = replace ]; then
  remove_all
fi
for name in "${secrets[@]}"; do
  if docker secret inspect "$name" >/dev/null 2>&1; then
    echo "create-secrets: secret $name exists; rerun with --replace (after docker stack rm)" >&2
    exit 1
  fi
done

pg_url() { printf 'postgres://%s:%s@%s/ordersys?%s' "$1" "$(urlencode "$2")" "$pg_hosts" "$params"; }
# Every node of the broker cluster, comma-separated: a service connects to
# the first it reaches (each process starts at a random one, each further connection at the next).
amqp_url() {
  local node sep=
  for node in rabbitmq1 rabbitmq2 rabbitmq3; do
    printf '%s%s://%s:%s@%s:%s/%%2f' "$sep" "$AMQP_SCHEME" "$1" "$(urlencode "$2")" "$node" "$amqp_port"
    sep=,
  done
}

create ordersys_postgres_password "$postgres_password"
create ordersys_pg_superuser_password "$pg_superuser"
create ordersys_pg_replication_password "$pg_replication"
create ordersys_patroni_restapi_password "$patroni_restapi"
create ordersys_migrate_database_url "$(pg_url ordersys "$postgres_password")"
create ordersys_products_database_url "$(pg_url ordersys_products "$products_db")"
create ordersys_orders_database_url "$(pg_url ordersys_orders "$orders_db")"
create ordersys_worker_database_url "$(pg_url ordersys_worker "$worker_db")"
create ordersys_products_db_password "$products_db"
create ordersys_orders_db_password "$orders_db"
create ordersys_worker_db_password "$worker_db"
create ordersys_migrate_amqp_url "$(amqp_url ordersys_migrate "$mq_migrate")"
create ordersys_orders_amqp_url "$(amqp_url ordersys_orders "$mq_orders")"
create ordersys_worker_amqp_url "$(amqp_url ordersys_worker "$mq_worker")"
create ordersys_jwt_public_key "$jwt_public_key"

# RabbitMQ: the definitions (users, their permissions on vhost "/") are
# imported at every boot; with them RabbitMQ creates no default user.
create ordersys_rabbitmq_conf "# Written by swarm/create-secrets.sh.
load_definitions = /run/secrets/ordersys_rabbitmq_definitions
# No guest (it is not created anyway); no login from elsewhere if it ever is.
loopback_users.guest = true
# The cluster: three nodes that find each other by name.
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = rabbit@rabbitmq1
cluster_formation.classic_config.nodes.2 = rabbit@rabbitmq2
cluster_formation.classic_config.nodes.3 = rabbit@rabbitmq3
# A node that cannot see a majority pauses (closes its clients' connections,
# which go on with the others) until it sees one again: never two sides
# taking writes.
cluster_partition_handling = pause_minority
# A silent peer is declared down after 15 s (+/- 25%), not 60.
net_ticktime = 15
# Every quorum queue is brought back to a member on each of the three
# nodes (one declared while a node was away, a node replaced), every minute.
quorum_queue.continuous_membership_reconciliation.enabled = true
quorum_queue.continuous_membership_reconciliation.target_group_size = 3
quorum_queue.continuous_membership_reconciliation.interval = 60000
"
create ordersys_rabbitmq_cookie "$erlang_cookie"

create ordersys_rabbitmq_definitions "$definitions"
create ordersys_grafana_admin_password "$grafana_admin"
create ordersys_tls_cert "$(cat "$tls_dir/cert.pem")"
create ordersys_tls_key "$(cat "$tls_dir/key.pem")"
if [ -n "$tls_cert_out" ]; then
  mkdir -p "$(dirname "$tls_cert_out")"
  install -m 0644 "$tls_dir/cert.pem" "$tls_cert_out"
  echo "wrote the edge's self-signed certificate to $tls_cert_out (trust it: curl --cacert, ordersys load --ca-file)"
fi

if [ -n "$new_key" ]; then
  mv "$new_key" "$key_file"
  echo "wrote the tokens' Ed25519 private key to $key_file (mode 0600; keep it here, no service has it)"
else
  echo "kept the tokens' Ed25519 private key $key_file (its public key is in ordersys_jwt_public_key)"
fi
