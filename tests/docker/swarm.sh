# The Swarm scenario of tests/docker/run: swarm/stack.yml deployed on a
# single-node swarm as docs/deployment.md says, with tests/docker/swarm-test.yml on
# top (DNS round-robin instead of virtual IPs: this kernel has no IPVS).
# Every API request goes through Traefik, HTTPS on this machine's 443 with
# the certificate create-secrets made, carrying a token; a client container
# on the stack's networks reads Prometheus and tries the socket proxy.

source tests/docker/faults.sh
source tests/docker/broker-cluster.sh
source tests/docker/db-cluster.sh

stack=ordersys
network=${stack}_ordersys
client=ordersys-ci-client
volumes="${stack}_etcd1-data ${stack}_etcd2-data ${stack}_etcd3-data ${stack}_pg1-data ${stack}_pg2-data ${stack}_rabbitmq1-data ${stack}_rabbitmq2-data ${stack}_rabbitmq3-data ${stack}_prometheus-data"

# swarm_exec SERVICE COMMAND...: runs COMMAND in a running task of SERVICE.
swarm_exec() {
  local container
  container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1" | sed -n 1p)
  [ -n "$container" ] || return 1
  docker exec -i "$container" "${@:2}"
}

# The stack's networks as the engine made them, e.g. "ordersys overlay
# internal=false encrypted=true,socket-proxy ...".
stack_networks() {
  local n
  for n in ordersys socket-proxy patroni; do
    docker network inspect "${stack}_$n" --format "$n {{.Driver}} internal={{.Internal}} encrypted={{index .Options \"encrypted\"}}"
  done | paste -sd, -
}

# "running/desired" of a service, e.g. 2/2.
replicas() { docker service ls --filter "name=${stack}_$1" --format '{{.Name}} {{.Replicas}}' |
  awk -v n="${stack}_$1" '$1 == n {print $2}'; }
all_running() {
  local service r
  for service in "$@"; do
    r=$(replicas "$service")
    [ -n "$r" ] && [ "${r%%/*}" = "${r##*/}" ] && [ "${r##*/}" != 0 ] || return 1
  done
}
running_tasks() { docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1"; }

# swarm_queue consumers|messages: product_queue's consumers (every worker
# consumer consumes it), or the messages of product_queue and of its
# partitions (the stack's amqp.stock_partitions), summed.
swarm_queue() { broker_exec rabbitmqctl -q list_queues name "$1" |
  awk -v what="$1" '$1 == "product_queue" || (what == "messages" && $1 ~ /^product_queue\.[0-9]+$/) {
    n += $2 } END { print n + 0 }'; }

# The targets Prometheus should report, as prometheus_targets prints them:
# every running task of each mode, up.
swarm_targets() {
  local service out=
  for service in orders products traefik worker; do
    out+="${out:+, }$service up $(running_tasks "$service" | wc -l)"
  done
  echo "$out"
}

scenario_swarm() {
  local t
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "swarm: docker swarm init"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    at_exit "docker swarm leave --force"
  fi
  if docker stack ls --format '{{.Name}}' | grep -qx "$stack"; then
    fail "a stack named $stack already runs on this machine; remove it first"
  fi
  # shellcheck disable=SC2086 # the volumes' names
  docker volume rm $volumes >/dev/null 2>&1 || true

  log "swarm: the image, the secrets, the node labels"
  read -r -a compose <<<"$(compose_bin)"
  "${compose[@]}" -p ordersys-ci -f compose.yml build products >/dev/null
  docker tag ordersys:local ordersys:ci-1
  # Passwords with characters a URL must percent-encode (and one a SQL
  # literal must escape). The tokens' Ed25519 private key is written where
  # the operator's would be, outside every secret: here a directory of the
  # run's own.
  local run=$RANDOM$RANDOM jwt token
  jwt=$(mktemp -d)
  at_exit "rm -rf $jwt"
  at_exit "swarm/create-secrets.sh --remove"
  POSTGRES_PASSWORD="pg-$run:/@?#%+ &é" \
    PRODUCTS_DB_PASSWORD="products-$run'\"%/" ORDERS_DB_PASSWORD="orders-$run@:" \
    WORKER_DB_PASSWORD="worker-$run" \
    RABBITMQ_MIGRATE_PASSWORD="migrate-$run" RABBITMQ_ORDERS_PASSWORD="orders-$run/@:%" \
    RABBITMQ_WORKER_PASSWORD="worker-$run?#" JWT_PRIVATE_KEY_FILE="$jwt/ed25519.pem" \
    TLS_CERT_OUT="$jwt/edge-cert.pem" swarm/create-secrets.sh --replace >/dev/null
  # One node here: it holds the data, both PostgreSQL nodes and all three
  # broker nodes (and so the etcd members).
  docker node update --label-add ordersys.data=true --label-add ordersys.rabbitmq1=true \
    --label-add ordersys.rabbitmq2=true --label-add ordersys.rabbitmq3=true \
    --label-add ordersys.pg1=true --label-add ordersys.pg2=true \
    "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
  [ "$(stat -c %a "$jwt/ed25519.pem")" = 600 ] ||
    fail "create-secrets wrote the private key with mode $(stat -c %a "$jwt/ed25519.pem"), not 0600"

  # Tokens minted as docs/deployment.md says: the image's `token` mode with the
  # private key (read as the file's owner, the key staying 0600).
  mint() { # mint SCOPES [SUBJECT [TTL]]
    docker run --rm --network none --read-only --cap-drop ALL --user "$(id -u):$(id -g)" \
      -v "$jwt/ed25519.pem:/run/secrets/jwt-private.pem:ro" \
      ordersys:ci-1 token --private-key /run/secrets/jwt-private.pem \
      --scope "$1" --subject "${2:-swarm-ci}" --ttl "${3:-3600}"
  }
  token=$(mint products:read,products:write,stock:correct,orders:read,orders:write) ||
    fail "ordersys token failed"
  [ -n "$token" ] || fail "ordersys token printed nothing"
  local refused
  if refused=$(mint orders:read swarm-ci 315360000 2>&1); then
    fail "ordersys token minted a ten-year token"
  fi
  [[ $refused == *"auth.max_token_age_secs"* ]] || fail "a ten-year --ttl was refused without naming the cap: $refused"
  # Every request of the scenario carries it (http for lib.sh, a curl
  # config file for traffic.sh in the client container).
  local TOKEN=$token
  mkdir -p "$jwt/curl"
  printf 'header = "Authorization: Bearer %s"\ncacert = "%s"\n' "$token" "$jwt/edge-cert.pem" >"$jwt/curl/.curlrc"

  log "swarm: docker stack deploy"
  t=$SECONDS
  at_exit "docker volume rm $volumes"
  at_exit "swarm_remove_stack"
  local deployed
  deployed=$(ORDERSYS_IMAGE=ordersys:ci-1 docker stack deploy -c swarm/stack.yml \
    -c tests/docker/swarm-test.yml "$stack" 2>&1) || fail "docker stack deploy: $deployed"
  [[ $deployed != *"Ignoring"* ]] || fail "docker stack deploy ignored part of the stack: $deployed"
  wait_until "migrate to complete" 300 migrate_completed
  summary "migrate completed in $((SECONDS - t)) s (after $(migrate_tasks Failed) failed attempts while the database or broker was starting)"
  wait_until "every service with an image to run n/n" 300 \
    all_running etcd1 etcd2 etcd3 pg1 pg2 rabbitmq1 rabbitmq2 rabbitmq3 products orders worker traefik socket-proxy prometheus
  summary "stack deploy (no option ignored): etcd1..3, pg1, pg2, rabbitmq1..3, products 2/2, orders 2/2, worker 2/2, traefik, socket-proxy, prometheus running in $((SECONDS - t)) s"
  summary "not run here: visualizer and grafana (no image can be had; deployed with 0 replicas)"
  local networks
  networks=$(stack_networks)
  [ "$networks" = "ordersys overlay internal=false encrypted=true,socket-proxy overlay internal=true encrypted=true,patroni overlay internal=true encrypted=true" ] ||
    fail "the stack's networks are not as swarm/stack.yml has them: $networks"
  summary "networks as the stack has them: ${networks//,/, }"

  docker rm -f "$client" >/dev/null 2>&1 || true
  local state
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  docker run -d --name "$client" --network "$network" ordersys-test/client:1 sleep infinity >/dev/null
  at_exit "docker rm -f $client"
  docker network connect "${stack}_socket-proxy" "$client"
  # The client of every API request: curl on this machine, through
  # Traefik's HTTPS, trusting the certificate create-secrets made.
  edge=https://localhost
  CURL=(curl --cacert "$jwt/edge-cert.pem")
  PROM=(docker exec "$client" curl)
  PSQL=(pg_psql)
  queue_depth() { swarm_queue messages; }
  wait_until "products and orders to be ready through Traefik" 120 eval \
    'http GET $edge/produits/ && http GET $edge/commandes'

  log "swarm: Prometheus scrapes every task of every mode"
  t=$SECONDS
  local targets
  targets=$(swarm_targets)
  [ "$targets" = "orders up 2, products up 2, traefik up 1, worker up 2" ] || fail "running tasks: $targets"
  wait_for_targets http://prometheus:9090 90 "$targets"
  summary "Prometheus (tasks.<service> discovery): every target up ($targets) in $((SECONDS - t)) s"

  swarm_broker_cluster
  swarm_db_cluster

  swarm_who_may_do_what

  swarm_front_door

  log "swarm: the walkthroughs through Traefik (HTTPS, with a token)"
  walkthrough "$edge" "$edge"
  validation_walkthrough "$edge" "$edge"
  edge_trace "$edge" docker service logs --raw "${stack}_traefik"

  log "swarm: ordersys load through Traefik (HTTPS, the certificate verified), with a token"
  local load_token load_out
  load_token=$(mint products:read,products:write,orders:read,orders:write swarm-load) || fail "ordersys token failed"
  # load ARGS...: ordersys load on this machine's network, through Traefik.
  # --stock 100: the scenario's invariant checks take every product to start at 100.
  local load_mounts=(-v "$jwt/edge-cert.pem:/run/edge-cert.pem:ro")
  swarm_load() {
    docker run --rm --network host --read-only --cap-drop ALL \
      "${load_mounts[@]}" -e ORDERSYS_LOAD_TOKEN="$load_token" ordersys:ci-1 load \
      --products-url "$edge" --orders-url "$edge" --ca-file /run/edge-cert.pem --stock 100 "$@"
  }
  # faults.sh's hooks: a running task of a service; the recorded load,
  # with the histories' directory mounted.
  one_of() { running_tasks "$1" | sed -n 1p; }
  fault_load() {
    local load_mounts=("${load_mounts[@]}" -v "$fault_dir:/history")
    swarm_load "$@"
  }
  load_out=$(swarm_load --rate 50 --duration 5 --report-every 1 --verify 2>&1) || fail "ordersys load failed: $load_out"
  grep -q '^all ' <<<"$load_out" || fail "no summary from ordersys load: $load_out"
  grep -q 'the stock invariant holds' <<<"$load_out" || fail "ordersys load --verify: $load_out"
  summary "load through Traefik: $(grep '^achieved' <<<"$load_out"); $(grep '^verify' <<<"$load_out")"

  swarm_balance

  log "swarm: docker service scale ${stack}_worker=6"
  docker service scale "${stack}_worker=6" >/dev/null
  wait_until "6 worker tasks running" 120 eval '[ "$(running_tasks worker | wc -l)" = 6 ]'
  wait_until "12 consumers on product_queue (6 tasks x 2 replicas)" 120 \
    eval '[ "$(swarm_queue consumers)" = 12 ]'
  targets=$(swarm_targets)
  wait_for_targets http://prometheus:9090 90 "$targets"
  summary "scale worker=6: 6 tasks running, 12 consumers on product_queue, Prometheus targets: $targets"

  log "swarm: kill a worker task's container under load"
  local ids victim answers traffic
  ids=$(create_products "$edge" 8 100)
  CURL_HOME=$jwt/curl bash tests/docker/traffic.sh changes "$edge" "$ids" 2 "$state" &
  traffic=$!
  at_exit "touch $state/stop; kill $traffic"
  wait_until "traffic to flow" 60 answered_at_least "$state" 200
  victim=$(running_tasks worker | sed -n 1p)
  docker kill "$victim" >/dev/null
  info "killed worker task container ${victim:0:12}"
  wait_until "Swarm to replace the killed task" 120 eval \
    '[ "$(running_tasks worker | grep -vc '"$victim"')" = 6 ]'
  wait_until "more traffic" 60 answered_at_least "$state" 600
  touch "$state/stop"
  wait "$traffic"
  answers=$(count_answers "$state")
  check_answers "$answers" "while a worker task was killed"
  t=$SECONDS
  wait_until "the pipeline to settle" 240 settled
  summary "load through Traefik ($answers) with a worker task killed: Swarm replaced it; settled $((SECONDS - t)) s after the load"
  check_invariant 100 "swarm after the kill"

  swarm_rolling
  swarm_rate_limit
  swarm_broker_faults
  swarm_db_faults

  log "swarm: docker stack rm"
  docker rm -f "$client" >/dev/null
  swarm_remove_stack
  summary "stack rm: no task, network or container left"
}

# The stack's promises on who may do what, checked on the running stack.
swarm_who_may_do_what() {
  log "swarm: who may do what"
  local product status container service h request node

  # The APIs: reads and writes need a token with the route's scope, signed
  # by the private key no service holds.
  product=$(value POST $edge/produits/ '{"nom":"Gomme","prix":0.80,"quantite_en_stock":100}' id)
  for request in "POST $edge/produits/" "DELETE $edge/produits/$product" \
    "POST $edge/commandes"; do
    # shellcheck disable=SC2086 # METHOD URL
    status=$(TOKEN='' http_status $request '{"nom":"X","prix":1,"quantite_en_stock":100}')
    [ "$status" = 401 ] || fail "$request without a token answered $status, not 401"
    # shellcheck disable=SC2086
    status=$(TOKEN=not.a.token http_status $request '{}')
    [ "$status" = 401 ] || fail "$request with a malformed token answered $status, not 401"
  done
  # The token is checked before any handler runs: the order and line ids
  # need not exist (no line is made here: the stock must stay 100).
  local narrow url
  narrow=$(mint products:write) || fail "ordersys token failed"
  for url in $edge/produits/ "$edge/produits/$product" \
    "$edge/produits/$product/mouvements" $edge/commandes \
    $edge/commandes/1 $edge/commandes-produits \
    $edge/commandes-produits/1/historique; do
    status=$(TOKEN='' http_status GET "$url")
    [ "$status" = 401 ] || fail "GET $url without a token answered $status, not 401"
    status=$(TOKEN=$narrow http_status GET "$url")
    [ "$status" = 403 ] || fail "GET $url with only products:write answered $status, not 403"
  done
  status=$(TOKEN=$narrow http_status POST $edge/commandes '{}')
  [ "$status" = 403 ] || fail "POST /commandes with only products:write answered $status, not 403"
  status=$(TOKEN=$narrow http_status PUT "$edge/produits/$product" '{"quantite_en_stock":5}')
  [ "$status" = 403 ] || fail "a stock correction without stock:correct answered $status, not 403"
  [ "$(value GET "$edge/produits/$product" "" quantite_en_stock)" = 100 ] ||
    fail "a refused stock correction changed the stock"
  # The private key is in no secret a service mounts: products and orders
  # hold the public key only, and every access line names the token's sub.
  local mounted public_key
  public_key=$(openssl pkey -in "$jwt/ed25519.pem" -pubout)
  for service in products orders; do
    mounted=$(swarm_exec "$service" cat /run/secrets/ordersys_jwt_public_key) ||
      fail "$service mounts no ordersys_jwt_public_key"
    [ "$mounted" = "$public_key" ] || fail "$service verifies with another key than the private key's"
    mounted=$(swarm_exec "$service" sh -c 'cat /run/secrets/*') || fail "cannot read $service's secrets"
    [[ $mounted != *"PRIVATE KEY"* ]] || fail "a secret $service mounts holds a private key"
  done
  # (grep without -q: it reads all of the logs, so no SIGPIPE fails the pipeline.)
  wait_until "the write's access line to name the token's subject" 60 eval \
    'docker service logs --raw '"${stack}"'_products 2>&1 | grep "POST /produits/ 201" | grep "sub=swarm-ci" >/dev/null'
  summary "APIs: reads and writes without a token or with a malformed one 401; a token without the route's scope 403 (reads, stock:correct too); EdDSA tokens, the services holding only the public key (private key 0600 on the operator's side); ten-year --ttl refused; access lines carry sub"

  # PostgreSQL: each service logs in as its own role; only migrate used the owner.
  # (A retry or two: a health check or Patroni's callback may be connected for a moment.)
  wait_until "PostgreSQL connections as the three service roles only" 30 eval \
    '[ "$(connected_roles)" = ordersys_orders,ordersys_products,ordersys_worker ]'
  local check expect out
  while IFS='|' read -r check expect; do
    if out=$("${PSQL[@]}" -v ON_ERROR_STOP=1 -Atc "$check" 2>&1); then
      [ "$expect" = allowed ] || fail "allowed, should not be: $check"
    else
      if [ "$expect" != denied ] || [[ $out != *"permission denied"* ]]; then fail "$check: $out"; fi
    fi
  done <<'CHECKS'
SET ROLE ordersys_products; SELECT count(*) FROM produits|allowed
SET ROLE ordersys_products; SELECT count(*) FROM outbox|denied
SET ROLE ordersys_products; UPDATE commandes_produits SET quantite = quantite WHERE false|denied
SET ROLE ordersys_orders; UPDATE produits SET quantite_en_stock = 0 WHERE false|denied
SET ROLE ordersys_worker; UPDATE produits SET quantite_en_stock = quantite_en_stock WHERE false|allowed
SET ROLE ordersys_worker; UPDATE produits SET prix = 0 WHERE false|denied
SET ROLE ordersys_worker; DELETE FROM produits WHERE false|denied
CHECKS
  summary "PostgreSQL: services connected as ordersys_products/orders/worker only; each role denied what it does not need (products cannot read the outbox)"

  # RabbitMQ: the three users of the definitions, no guest, no administrator;
  # the services connect as their own.
  local users connections
  users=$(broker_exec rabbitmqctl -q list_users | awk '$1 != "user" {print $1 "=" $2}' | sort | paste -sd, -)
  [ "$users" = "ordersys_migrate=[],ordersys_orders=[],ordersys_worker=[]" ] ||
    fail "RabbitMQ users (name=tags): $users"
  connections=$(broker_exec rabbitmqctl -q list_connections user | awk '$1 != "user" {print $1}' | sort -u | paste -sd, -)
  [ "$connections" = ordersys_orders,ordersys_worker ] ||
    fail "connected to RabbitMQ as: $connections (expected ordersys_orders and ordersys_worker)"
  summary "RabbitMQ: users ordersys_migrate, ordersys_orders, ordersys_worker without tags (no guest, no administrator); orders and worker connect as their own"

  # Published ports: Traefik's 81 and 443 and the visualizer's 8085, nothing else
  # (neither the management UI nor a dashboard).
  local published
  published=$(docker service ls -q --filter "label=com.docker.stack.namespace=$stack" |
    xargs -r docker service inspect --format \
      '{{$name := .Spec.Name}}{{with .Spec.EndpointSpec}}{{range .Ports}}{{$name}}:{{.PublishedPort}} {{end}}{{end}}' |
    tr ' ' '\n' | sed '/^$/d' | sort | paste -sd, -)
  [ "$published" = "${stack}_traefik:443,${stack}_traefik:81,${stack}_visualizer:8085" ] || fail "published ports: $published"
  for node in "${BROKER_NODES[@]}"; do
    [ -z "$(docker port "$(running_tasks "$node" | sed -n 1p)")" ] || fail "$node's container publishes a port"
  done
  summary "published: ${published//,/, } only (no RabbitMQ management UI, no Traefik dashboard)"

  # Containers: read-only, no capability; healthy.
  for service in products orders worker traefik socket-proxy prometheus; do
    for container in $(running_tasks "$service"); do
      h=$(hardening "$container")
      [[ $h == "true drop=ALL add= "* ]] || fail "$service task ${container:0:12} is not hardened: $h"
    done
    [ "$service" = socket-proxy ] || wait_until "the $service tasks to be healthy" 60 tasks_healthy "$service"
  done
  [ "$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.ReadOnly}} {{join .Spec.TaskTemplate.ContainerSpec.CapabilityDrop ","}}' "${stack}_migrate")" = "true ALL" ] ||
    fail "the migrate service is not read-only without capabilities"
  for container in $(docker ps -aq --filter "label=com.docker.swarm.service.name=${stack}_migrate"); do
    h=$(hardening "$container")
    [[ $h == "true drop=ALL add= "* ]] || fail "migrate task ${container:0:12} is not hardened: $h"
  done
  summary "migrate, products, orders, worker, traefik, socket-proxy, prometheus: read-only root filesystem, CapDrop ALL; products, orders, worker, traefik, prometheus healthy"
}

# The roles PostgreSQL's client connections logged in as, but this one.
connected_roles() {
  sql "SELECT string_agg(DISTINCT usename::text, ',' ORDER BY usename::text) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND application_name NOT IN ('Patroni', 'Patroni heartbeat', 'Patroni restapi', 'patroni-roles')"
}

# tasks_healthy SERVICE: every running task's container is healthy.
tasks_healthy() {
  local container
  for container in $(running_tasks "$1"); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" = healthy ] || return 1
  done
}

# migrate_tasks STATE: how many of migrate's tasks are in STATE (Complete, Failed...).
migrate_tasks() {
  docker service ps "${stack}_migrate" --format '{{.CurrentState}}' | grep -c "^$1" || true
}
migrate_completed() { [ "$(migrate_tasks Complete)" -ge 1 ]; }

update_state() { # update_state SERVICE
  docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${stack}_$1"
}
# The update of SERVICE has started (a state is set) and ended, well or not.
update_ended() { # update_ended SERVICE
  case "$(update_state "$1")" in
    completed | paused | rollback_completed | rollback_paused) true ;;
    *) false ;;
  esac
}

swarm_remove_stack() {
  docker stack rm "$stack" >/dev/null 2>&1 || true
  wait_until "the stack's containers to go" 120 eval \
    '[ -z "$(docker ps -aq --filter label=com.docker.stack.namespace='"$stack"')" ]'
  wait_until "the stack's network to go" 60 eval '! docker network inspect '"$network"
}

# The edge: HTTPS with the certificate create-secrets made, plain HTTP
# redirected, HSTS, Traefik without the Docker socket, and a socket proxy
# that refuses what Traefik does not need.
swarm_front_door() {
  log "swarm: the front door (Traefik: HTTPS on 443, HTTP on 81 redirected)"
  local answer headers container
  answer=$(curl -s -o /dev/null -m 10 -w '%{http_code} %{redirect_url}' http://localhost:81/produits/?skip=0)
  [ "$answer" = "301 https://localhost/produits/?skip=0" ] || fail "http://localhost:81/produits/ answered $answer"
  answer=$(curl -s -o /dev/null -m 10 -X POST -w '%{http_code} %{redirect_url}' http://localhost:81/commandes)
  [ "$answer" = "308 https://localhost/commandes" ] || fail "POST http://localhost:81/commandes answered $answer"
  # Without the certificate a client refuses the edge (self-signed).
  curl -s -o /dev/null -m 10 https://localhost/produits/ && fail "curl trusted the edge without its certificate"
  headers=$("${CURL[@]}" -s -D - -o /dev/null -m 10 -H "Authorization: Bearer $TOKEN" "$edge/produits/")
  grep -qi '^strict-transport-security: max-age=31536000; includeSubDomains' <<<"$headers" ||
    fail "no HSTS header on an HTTPS answer: $headers"
  [ "$(openssl x509 -in "$jwt/edge-cert.pem" -noout -ext subjectAltName | tail -1 | tr -d ' ')" = \
    "IPAddress:127.0.0.1,DNS:localhost" ] || fail "the edge certificate's names: $(openssl x509 -in "$jwt/edge-cert.pem" -noout -ext subjectAltName)"
  summary "edge: HTTPS on 443 with create-secrets' self-signed certificate (verified; refused without it), HTTP on 81 redirected (GET 301, POST 308), HSTS one year"

  container=$(running_tasks traefik | sed -n 1p)
  [ "$(docker inspect --format '{{.Config.User}}' "$container")" = 65534:65534 ] || fail "traefik does not run as nobody"
  ! docker inspect --format '{{range .Mounts}}{{.Source}} {{end}}' "$container" | grep -q docker.sock ||
    fail "traefik mounts the Docker socket"
  socket_proxy_checks http://socket-proxy:2375 swarm docker exec "$client" curl
  summary "socket proxy: Traefik runs as nobody without the Docker socket; the proxy (manager, internal network) answers the swarm provider's reads (version, services, tasks) and refuses (403) containers, container create, delete, archive, logs, service create, secrets, swarm, a path with .."
}

# Load balancing you can watch: products and orders scaled to 3, a run of
# ordersys load through Traefik, each task's share from Prometheus; then
# back to 2.
swarm_balance() {
  log "swarm: products and orders scaled to 3, ordersys load through Traefik"
  docker service scale --detach "${stack}_products=3" "${stack}_orders=3" >/dev/null
  wait_until "3 products and 3 orders tasks running" 120 eval \
    '[ "$(running_tasks products | wc -l)" = 3 ] && [ "$(running_tasks orders | wc -l)" = 3 ] && all_running products orders'
  wait_for_targets http://prometheus:9090 90 "$(swarm_targets)"
  # Traefik lists the tasks every 5 s: wait until it routes to all three.
  wait_until "Traefik to route to 3 products and 3 orders tasks" 60 eval \
    '[ "$(traefik_servers products)" = 3 ] && [ "$(traefik_servers orders)" = 3 ]'
  local before_p before_o out end=$(date +%s) p o
  wait_until "Prometheus to scrape products and orders once more" 30 eval \
    'scraped_since http://prometheus:9090 products '"$end"' && scraped_since http://prometheus:9090 orders '"$end"
  before_p=$(served_by_instance http://prometheus:9090 products)
  before_o=$(served_by_instance http://prometheus:9090 orders)
  out=$(swarm_load --rate 50 --duration 10 --report-every 5 2>&1) || fail "ordersys load through Traefik failed: $out"
  end=$(date +%s)
  wait_until "Prometheus to scrape every task after the load" 60 eval \
    'scraped_since http://prometheus:9090 products '"$end"' && scraped_since http://prometheus:9090 orders '"$end"
  p=$(shares "$before_p" "$(served_by_instance http://prometheus:9090 products)" 3) ||
    fail "products: not every one of 3 tasks served 20% of the load: $p"
  o=$(shares "$before_o" "$(served_by_instance http://prometheus:9090 orders)" 3) ||
    fail "orders: not every one of 3 tasks served 20% of the load: $o"
  summary "load balancing in Swarm (ordersys load through Traefik, Prometheus per task): products $p; orders $o"
  docker service scale --detach "${stack}_products=2" "${stack}_orders=2" >/dev/null
  wait_until "2 products and 2 orders tasks again" 120 eval \
    '[ "$(running_tasks products | wc -l)" = 2 ] && [ "$(running_tasks orders | wc -l)" = 2 ]'
}

# traefik_servers SERVICE: how many servers Traefik's metrics show up for
# SERVICE (traefik_service_server_up, from its health checks).
traefik_servers() {
  docker exec "$client" curl -sf -m 5 http://tasks.traefik:8082/metrics |
    grep -c "^traefik_service_server_up{service=\"$1@swarm\",url=.*} 1$" || true
}

# Zero failed requests while products and orders roll to a new image,
# start-first: ordersys load through Traefik the whole time, every answer
# 2xx.
swarm_rolling() {
  log "swarm: rolling update of products and orders under ordersys load through Traefik"
  printf 'FROM ordersys:ci-1\nLABEL org.ordersys.test.revision=2\n' |
    DOCKER_BUILDKIT=0 docker build -q -t ordersys:ci-2 - >/dev/null 2>&1
  local state load t out service images
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  swarm_load --rate 50 --duration 100 --report-every 5 --max-error-rate 0 >"$state/load" 2>&1 &
  load=$!
  wait_until "the load to run" 60 grep -q '^load: t=' "$state/load"
  t=$SECONDS
  for service in products orders; do
    docker service update --detach --quiet --image ordersys:ci-2 "${stack}_$service" >/dev/null
  done
  wait_until "the rolling updates to end" 300 eval 'update_ended products && update_ended orders'
  for service in products orders; do
    [ "$(update_state "$service")" = completed ] || fail "the rolling update of $service ended $(update_state "$service")"
    images=$(docker service ps "${stack}_$service" --filter desired-state=running --format '{{.Image}}' | sort -u)
    [ "$images" = ordersys:ci-2 ] || fail "$service tasks run $images after the update"
  done
  kill -0 "$load" 2>/dev/null || fail "the load ended before the updates did: $(tail -5 "$state/load")"
  summary "rolling update of products and orders (start-first, 2 tasks each) in $((SECONDS - t)) s, under load"
  wait "$load" || fail "requests failed during the rolling update: $(tail -20 "$state/load")"
  out=$(cat "$state/load")
  summary "rolling update under load through Traefik: $(grep '^all ' <<<"$out" | head -1) (non-2xx allowed: 0)"
}

# The edge's limits: requests in flight beyond the limit, and a burst
# beyond the rate, from one client, get 429 from Traefik; the services stay
# healthy, and the client is served again once it slows down.
swarm_rate_limit() {
  log "swarm: more requests in flight than the edge allows, then a burst beyond its rate limit"
  local product answers held
  product=$(value POST "$edge/produits/" '{"nom":"Burst","prix":1,"quantite_en_stock":100}' id)
  # 60 requests at once, each sending its body slowly (2 kB at 300 B/s:
  # about 7 s in flight, within ordersys's 10 s body timeout, which answers
  # a slower body 408), well within the rate limit's burst: 50 are let
  # through, the others get 429 at once.
  held=$(slow_requests "$edge/produits/" 60 | sort | uniq -c | awk '{print $2, $1}')
  info "answers: $(tr '\n' ' ' <<<"$held")"
  [ "$(awk '$1 == 429 {print $2}' <<<"$held")" = 10 ] || fail "60 requests held in flight: not 10 answered 429: $held"
  [ "$(awk '$1 == 201 {print $2}' <<<"$held")" = 50 ] || fail "60 requests held in flight: not 50 answered 201: $held"
  summary "edge in-flight limit (50 per client): 60 slow requests at once, answered $(awk '{printf "%s%s x%s", sep, $1, $2; sep = ", "}' <<<"$held")"
  answers=$(burst "$edge/produits/$product" 1500 40)
  info "answers: $(tr '\n' ' ' <<<"$answers")"
  grep -q '^429 ' <<<"$answers" || fail "no 429 in a burst of 1500 requests: $answers"
  [ -z "$(grep -v '^200 \|^429 ' <<<"$answers")" ] || fail "answers other than 200 and 429 in the burst: $answers"
  local container
  for container in $(running_tasks products); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" = healthy ] ||
      fail "a products task is not healthy after the burst"
  done
  wait_until "the client to be served again" 30 eval '[ "$(http_status GET "$edge/produits/'"$product"'")" = 200 ]'
  summary "edge rate limit (100/s, burst 200 per client): a burst of 1500 requests, 40 at a time, answered $(awk '{printf "%s%s x%s", sep, $1, $2; sep = ", "}' <<<"$answers"); services healthy, served again after"
}

# slow_requests URL N: N product creations at once, each body (2 kB of
# JSON, mostly spaces) sent at 300 bytes a second; prints each one's HTTP
# status (CURL and TOKEN as for http).
slow_requests() {
  local body i pids=()
  body=$(mktemp)
  { printf '{"nom":"Slow","prix":1,"quantite_en_stock":100'; printf '%2000s' ''; printf '}'; } >"$body"
  for ((i = 0; i < $2; i++)); do
    "${CURL[@]}" -s -o /dev/null -m 60 -w '%{http_code}\n' --limit-rate 300 \
      -H 'content-type: application/json' -H "Authorization: Bearer $TOKEN" \
      --data-binary "@$body" "$1" &
    pids+=($!)
  done
  wait "${pids[@]}"
  rm -f "$body"
}
