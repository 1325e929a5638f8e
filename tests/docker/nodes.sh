# The nodes scenario of tests/docker/run: swarm/stack.yml on a Swarm of
# three machines, each a Docker engine in a container (tests/docker/node),
# placed as docs/deployment.md says for a real cluster (a broker node and
# an etcd member on each machine, the two PostgreSQL nodes on the first
# two, Traefik on the third), with tests/docker/nodes-test.yml on top. Then a whole machine,
# the one holding the PostgreSQL primary, is partitioned away from the
# other two (every packet between them dropped, no reset) under a recorded
# load through Traefik, and healed: nothing acknowledged lost or doubled,
# and the cluster whole again afterwards.

source tests/docker/faults.sh
source tests/docker/broker-cluster.sh
source tests/docker/db-cluster.sh
source tests/docker/swarm.sh

NODES=(node1 node2 node3)
node_image=ordersys-test/node:1
node_network=ordersys-ci-nodes
node_subnet=192.168.77 # .11, .12, .13: node1..3
node_ip() { echo "$node_subnet.1${1#node}"; }
# The machine whose engine the scenario drives the Swarm through (a
# manager never partitioned away: the edge's).
control_node=node3

# node_docker NODE ARGS...: the docker CLI against NODE's engine.
node_docker() { DOCKER_HOST="unix://$nodes_dir/$1/docker.sock" docker "${@:2}"; }
# host_docker ARGS...: the docker CLI against the engine the run started
# with (this machine's own, or DOCKER_HOST's if it was set), which holds
# the images and runs the machines.
host_engine=${DOCKER_HOST:-}
host_docker() {
  if [ -n "$host_engine" ]; then DOCKER_HOST=$host_engine docker "$@"; else env -u DOCKER_HOST docker "$@"; fi
}

# swarm_exec SERVICE COMMAND...: runs COMMAND in SERVICE's running task,
# on whichever machine it runs (swarm.sh's looks on this engine only).
task_of() { # task_of SERVICE: "NODE CONTAINER" of its running task
  docker service ps "${stack}_$1" --filter desired-state=running --no-trunc \
    --format '{{.Node}} {{.Name}}.{{.ID}}' | awk 'NF == 2 && $1 != "" {print; exit}'
}
swarm_exec() {
  local node container
  read -r node container < <(task_of "$1") || return 1
  node_docker "$node" exec -i "$container" "${@:2}"
}

# partition -I|-D NODE: adds or removes DROP rules in NODE's own network
# namespace for every packet to or from the other machines (Swarm's
# control plane, the overlay's VXLAN, all of it); this machine still
# reaches it, as an operator's console would.
partition() {
  local other
  for other in "${NODES[@]}"; do
    [ "$other" != "$2" ] || continue
    host_docker exec "ordersys-ci-$2" iptables -w "$1" INPUT -s "$(node_ip "$other")" -j DROP
    host_docker exec "ordersys-ci-$2" iptables -w "$1" OUTPUT -d "$(node_ip "$other")" -j DROP
  done
}

node_status() { # node_status NODE: ready or down, as the control node's managers see it
  docker node inspect --format '{{.Status.State}}' "$1" 2>/dev/null
}
nodes_ready() {
  local node
  for node in "${NODES[@]}"; do [ "$(node_status "$node")" = ready ] || return 1; done
}

# writable_in NODE CONTAINER: that PostgreSQL takes writes (asked on its
# own machine, which a partition leaves reachable from here).
writable_in() {
  [ "$(node_docker "$1" exec -i "$2" timeout 3 psql -X -h /run/postgresql -U postgres -d postgres \
    -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]
}

# The machine holding the PostgreSQL primary, partitioned away from the
# other two for 45 s: its PostgreSQL
# node, broker node and etcd member, a task of each of products, orders
# and worker, and its Swarm manager all cut off at once.
fault_node_partitioned() {
  local primary standby victim container other_node other demoted= promoted= down=
  primary=$(pg_primary) || fail "no primary before the fault"
  standby=$(pg_other "$primary")
  read -r victim container < <(task_of "$primary") || fail "no running task of $primary"
  read -r other_node other < <(task_of "$standby") || fail "no running task of $standby"
  # The checks below ask each node itself; they must work before they
  # may be believed during the fault.
  writable_in "$victim" "$container" || fail "$primary on $victim does not answer as the primary"
  ! writable_in "$other_node" "$other" || fail "$standby on $other_node takes writes before the fault"
  at_exit "partition -D $victim"
  fault_t0=$SECONDS
  partition -I "$victim"
  # Never two primaries (as in db-cluster.sh's partition), checked until
  # the heal.
  while ((SECONDS - fault_t0 < 45)); do
    [ -n "$down" ] || [ "$(node_status "$victim")" != down ] || down=$((SECONDS - fault_t0))
    [ -n "$demoted" ] || writable_in "$victim" "$container" || demoted=$((SECONDS - fault_t0))
    if [ -n "$promoted" ] || writable_in "$other_node" "$other"; then
      ! writable_in "$victim" "$container" || fail "two primaries: $primary still takes writes while $standby does"
      promoted=${promoted:-$((SECONDS - fault_t0))}
    fi
    sleep 0.5
  done
  [ -n "$promoted" ] || fail "$standby not promoted within 45 s of the partition"
  partition -D "$victim"
  local healed=$SECONDS
  fault_healed=$((healed - fault_t0))
  wait_until "$victim back in the Swarm" 120 nodes_ready
  wait_until "$primary to rejoin as the synchronous standby" 180 pg_healthy "$standby"
  brokers_whole 180
  wait_until "every service at its replicas" 180 \
    all_running etcd1 etcd2 etcd3 pg1 pg2 rabbitmq1 rabbitmq2 rabbitmq3 products orders worker traefik socket-proxy
  local marked="Swarm had not marked $victim down by the heal"
  [ -z "$down" ] || marked="Swarm marked $victim down at $down s"
  detected="$marked; $primary stopped taking writes at ${demoted:-$promoted} s, $standby took them at $promoted s (never both); the cluster whole again $((SECONDS - healed)) s after the heal"
}

# The three machines: engines in containers on a network of their own,
# a Swarm of three managers (one may be lost), the images loaded into each.
nodes_up() {
  log "nodes: three Docker engines in containers, a Swarm of three managers"
  local t=$SECONDS node images=(ordersys:ci-1 ordersys-patroni:17 quay.io/coreos/etcd:v3.5.16
    rabbitmq:4.0-management traefik:v3.7.15 haproxy:3.0.11)
  host_docker build -q -t "$node_image" tests/docker/node >/dev/null
  for node in "${NODES[@]}"; do host_docker rm -f "ordersys-ci-$node" >/dev/null 2>&1 || true; done
  host_docker network rm "$node_network" >/dev/null 2>&1 || true
  host_docker network create --subnet "$node_subnet.0/24" "$node_network" >/dev/null
  at_exit "host_docker network rm $node_network"
  for node in "${NODES[@]}"; do
    mkdir -p "$nodes_dir/$node"
    at_exit "host_docker rm -f ordersys-ci-$node"
    host_docker run -d --name "ordersys-ci-$node" --hostname "$node" \
      --network "$node_network" --ip "$(node_ip "$node")" \
      --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
      --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
      --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /var/lib/docker:exec \
      -v "$nodes_dir/$node:/run/node" "$node_image" >/dev/null
  done
  for node in "${NODES[@]}"; do
    wait_until "the engine of $node" 60 node_docker "$node" info
  done
  node_docker node1 swarm init --advertise-addr "$(node_ip node1)" >/dev/null
  local join
  join=$(node_docker node1 swarm join-token -q manager)
  for node in node2 node3; do
    node_docker "$node" swarm join --token "$join" --advertise-addr "$(node_ip "$node")" \
      "$(node_ip node1):2377" >/dev/null
  done
  summary "nodes: node1..3 up, a Swarm of three managers, in $((SECONDS - t)) s"

  t=$SECONDS
  host_docker tag ordersys:local ordersys:ci-1
  host_docker save "${images[@]}" >"$nodes_dir/images.tar"
  local loads=()
  for node in "${NODES[@]}"; do
    node_docker "$node" load -q -i "$nodes_dir/images.tar" >/dev/null &
    loads+=($!)
  done
  for node in "${loads[@]}"; do wait "$node" || fail "docker load into a node failed"; done
  rm -f "$nodes_dir/images.tar"
  summary "nodes: ${images[*]} loaded into each in $((SECONDS - t)) s"
}

scenario_nodes() {
  local t
  nodes_dir=$(mktemp -d)
  at_exit "rm -rf $nodes_dir"
  if host_docker stack ls --format '{{.Name}}' 2>/dev/null | grep -qx "$stack"; then
    fail "a stack named $stack already runs on this machine's engine; remove it first"
  fi
  log "nodes: the image"
  compose_bin >/dev/null
  host_docker compose -p ordersys-ci -f compose.yml build products >/dev/null
  nodes_up
  # From here on the docker CLI drives the Swarm's manager on the edge's
  # machine; host_docker reaches this machine's own engine.
  local -x DOCKER_HOST="unix://$nodes_dir/$control_node/docker.sock"

  log "nodes: the secrets, the placement labels"
  local run=$RANDOM$RANDOM jwt
  jwt=$nodes_dir/jwt
  mkdir -p "$jwt"
  POSTGRES_PASSWORD="pg-$run" PRODUCTS_DB_PASSWORD="products-$run" ORDERS_DB_PASSWORD="orders-$run" \
    WORKER_DB_PASSWORD="worker-$run" RABBITMQ_MIGRATE_PASSWORD="migrate-$run" \
    RABBITMQ_ORDERS_PASSWORD="orders-$run" RABBITMQ_WORKER_PASSWORD="worker-$run" \
    JWT_PRIVATE_KEY_FILE="$jwt/ed25519.pem" TLS_HOSTNAMES="$(node_ip "$control_node")" \
    TLS_CERT_OUT="$jwt/edge-cert.pem" swarm/create-secrets.sh --replace >/dev/null
  # A broker node (and its etcd member) on each machine, a PostgreSQL node
  # on each of the first two; the edge on the third.
  docker node update --label-add ordersys.data=true --label-add ordersys.pg1=true \
    --label-add ordersys.rabbitmq1=true node1 >/dev/null
  docker node update --label-add ordersys.pg2=true --label-add ordersys.rabbitmq2=true node2 >/dev/null
  docker node update --label-add ordersys.rabbitmq3=true --label-add ordersys.edge=true node3 >/dev/null

  log "nodes: docker stack deploy"
  t=$SECONDS
  local deployed
  deployed=$(ORDERSYS_IMAGE=ordersys:ci-1 docker stack deploy -c swarm/stack.yml \
    -c tests/docker/swarm-test.yml -c tests/docker/nodes-test.yml "$stack" 2>&1) ||
    fail "docker stack deploy: $deployed"
  [[ $deployed != *"Ignoring"* ]] || fail "docker stack deploy ignored part of the stack: $deployed"
  local networks
  networks=$(stack_networks)
  [ "$networks" = "ordersys overlay internal=false encrypted=,socket-proxy overlay internal=true encrypted=,patroni overlay internal=true encrypted=" ] ||
    fail "the stack's networks are not as nodes-test.yml has them: $networks"
  wait_until "migrate to complete" 300 migrate_completed
  wait_until "every service to run n/n" 300 \
    all_running etcd1 etcd2 etcd3 pg1 pg2 rabbitmq1 rabbitmq2 rabbitmq3 products orders worker traefik socket-proxy
  local placed service
  for service in products orders worker; do
    [ "$(docker service ps "${stack}_$service" --filter desired-state=running --format '{{.Node}}' | sort -u | wc -l)" = 3 ] ||
      fail "$service does not run a task on each machine"
  done
  placed=$(docker stack ps "$stack" --filter desired-state=running --format '{{.Node}} {{.Name}}' |
    sed -E "s/ ${stack}_([a-z0-9-]+)\..*/ \1/" | sort |
    awk '$1 != n {printf "%s%s: %s", (n ? "; " : ""), $1, $2; n = $1; next} {printf ",%s", $2}')
  summary "nodes: stack running in $((SECONDS - t)) s: $placed"

  swarm_broker_cluster
  swarm_db_cluster

  edge=https://$(node_ip "$control_node")
  CURL=(curl --cacert "$jwt/edge-cert.pem")
  PSQL=(pg_psql)
  queue_depth() { swarm_queue messages; }
  mint() { # mint SCOPES SUBJECT
    host_docker run --rm --network none --read-only --cap-drop ALL --user "$(id -u):$(id -g)" \
      -v "$jwt/ed25519.pem:/run/secrets/jwt-private.pem:ro" \
      ordersys:ci-1 token --private-key /run/secrets/jwt-private.pem --scope "$1" --subject "$2" --ttl 3600
  }
  local TOKEN
  TOKEN=$(mint products:read,orders:read nodes-ci) || fail "ordersys token failed"
  wait_until "products and orders to be ready through Traefik on $control_node" 120 eval \
    'http GET $edge/produits/ && http GET $edge/commandes'

  local load_token
  load_token=$(mint products:read,products:write,orders:read,orders:write nodes-load) || fail "ordersys token failed"
  fault_load() {
    host_docker run --rm --network host --read-only --cap-drop ALL \
      -v "$jwt/edge-cert.pem:/run/edge-cert.pem:ro" -v "$fault_dir:/history" \
      -e ORDERSYS_LOAD_TOKEN="$load_token" ordersys:ci-1 load \
      --products-url "$edge" --orders-url "$edge" --ca-file /run/edge-cert.pem --stock 100 "$@"
  }
  log "nodes: a whole machine partitioned away, under a recorded load"
  t=$SECONDS
  faults_begin
  # A longer load: the heal comes 50 s in, and the load goes on 20 s past it.
  local FAULT_LOAD_SECS=70
  # Writes may fail longer than when only the primary's task is cut off
  # (db-cluster.sh's 30 s): the standby was promoted 19 to 30 s after the
  # cut in the runs so far (the lock's 20 s TTL, then Patroni's requests to
  # the lost etcd member and the lost primary time out before it promotes).
  under_db_fault node_partitioned "the PostgreSQL primary's machine partitioned away" 45
  faults_table "node faults: every history checked clean, in $((SECONDS - t)) s"
}
