# The Swarm scenario of tests/docker/run: swarm/stack.yml deployed on a
# single-node swarm as docs/deployment.md says, with tests/docker/swarm-test.yml on
# top (DNS round-robin instead of virtual IPs: this kernel has no IPVS).
# Requests come from a client container on the stack's overlay network.

stack=ordersys
network=${stack}_ordersys
client=ordersys-ci-client

# swarm_exec SERVICE COMMAND...: runs COMMAND in a running task of SERVICE.
swarm_exec() {
  local container
  container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1" | sed -n 1p)
  [ -n "$container" ] || return 1
  docker exec -i "$container" "${@:2}"
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

swarm_queue() { swarm_exec rabbitmq rabbitmqctl -q list_queues name "$1" |
  awk '$1 == "product_queue" {print $2}'; }

# The targets Prometheus should report, as prometheus_targets prints them:
# every running task of each mode, up.
swarm_targets() {
  local service out=
  for service in orders products worker; do
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
  docker volume rm "${stack}_postgres-data" "${stack}_rabbitmq-data" "${stack}_prometheus-data" >/dev/null 2>&1 || true

  log "swarm: the image, the secrets, the node label"
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
    swarm/create-secrets.sh --replace >/dev/null
  docker node update --label-add ordersys.data=true "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
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
  printf 'header = "Authorization: Bearer %s"\n' "$token" >"$jwt/curl/.curlrc"

  log "swarm: docker stack deploy"
  t=$SECONDS
  at_exit "docker volume rm ${stack}_postgres-data ${stack}_rabbitmq-data ${stack}_prometheus-data"
  at_exit "swarm_remove_stack"
  local deployed
  deployed=$(ORDERSYS_IMAGE=ordersys:ci-1 docker stack deploy -c swarm/stack.yml \
    -c tests/docker/swarm-test.yml "$stack" 2>&1) || fail "docker stack deploy: $deployed"
  [[ $deployed != *"Ignoring"* ]] || fail "docker stack deploy ignored part of the stack: $deployed"
  wait_until "migrate to complete" 300 migrate_completed
  summary "migrate completed in $((SECONDS - t)) s (after $(migrate_tasks Failed) failed attempts while the database or broker was starting)"
  wait_until "every service with an image to run n/n" 300 \
    all_running postgres rabbitmq products orders worker prometheus
  summary "stack deploy (no option ignored): postgres, rabbitmq, products 2/2, orders 2/2, worker 2/2, prometheus running in $((SECONDS - t)) s"
  summary "not run here: traefik, visualizer and grafana (no image can be had; deployed with 0 replicas)"

  docker rm -f "$client" >/dev/null 2>&1 || true
  local state
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  docker run -d --name "$client" --network "$network" -v "$root/tests/docker:/t:ro" \
    -v "$state:/state" -v "$jwt/curl:/auth:ro" ordersys-test/client:1 sleep infinity >/dev/null
  at_exit "docker rm -f $client"
  CURL=(docker exec "$client" curl)
  PSQL=(swarm_exec postgres psql -U ordersys -d ordersys)
  queue_depth() { swarm_queue messages; }
  wait_until "products and orders to be ready" 120 eval \
    'http GET http://products:8000/readyz && http GET http://orders:8081/readyz'

  log "swarm: Prometheus scrapes every task of every mode"
  t=$SECONDS
  local targets
  targets=$(swarm_targets)
  [ "$targets" = "orders up 2, products up 2, worker up 2" ] || fail "running tasks: $targets"
  wait_for_targets http://prometheus:9090 90 "$targets"
  summary "Prometheus (tasks.<service> discovery): every target up ($targets) in $((SECONDS - t)) s"

  swarm_who_may_do_what

  log "swarm: the walkthrough from a container on the overlay network"
  walkthrough http://products:8000 http://orders:8081
  validation_walkthrough http://products:8000 http://orders:8081

  log "swarm: ordersys load from a container on the overlay network, with a token"
  local load_token load_out
  # --stock 100: the scenario's invariant checks take every product to start at 100.
  load_token=$(mint products:read,products:write,orders:read,orders:write swarm-load) || fail "ordersys token failed"
  load_out=$(docker run --rm --network "$network" --read-only --cap-drop ALL \
    -e ORDERSYS_LOAD_TOKEN="$load_token" ordersys:ci-1 load \
    --products-url http://products:8000 --orders-url http://orders:8081 \
    --rate 100 --duration 5 --report-every 1 --stock 100 --verify 2>&1) || fail "ordersys load failed: $load_out"
  grep -q '^all ' <<<"$load_out" || fail "no summary from ordersys load: $load_out"
  grep -q 'the stock invariant holds' <<<"$load_out" || fail "ordersys load --verify: $load_out"
  summary "load: $(grep '^achieved' <<<"$load_out"); $(grep '^verify' <<<"$load_out")"

  log "swarm: docker service scale ${stack}_worker=6"
  docker service scale "${stack}_worker=6" >/dev/null
  wait_until "6 worker tasks running" 120 eval '[ "$(running_tasks worker | wc -l)" = 6 ]'
  wait_until "12 consumers on product_queue (6 tasks x 2 replicas)" 120 \
    eval '[ "$(swarm_queue consumers)" = 12 ]'
  targets=$(swarm_targets)
  wait_for_targets http://prometheus:9090 90 "$targets"
  summary "scale worker=6: 6 tasks running, 12 consumers on product_queue, Prometheus targets: $targets"

  log "swarm: kill a worker task's container under load"
  local ids victim answers
  ids=$(create_products http://products:8000 8 100)
  docker exec -d -e CURL_HOME=/auth "$client" bash /t/traffic.sh changes http://orders:8081 "$ids" 4 /state
  at_exit "touch $state/stop"
  wait_until "traffic to flow" 60 answered_at_least "$state" 200
  victim=$(running_tasks worker | sed -n 1p)
  docker kill "$victim" >/dev/null
  info "killed worker task container ${victim:0:12}"
  wait_until "Swarm to replace the killed task" 120 eval \
    '[ "$(running_tasks worker | grep -vc '"$victim"')" = 6 ]'
  wait_until "more traffic" 60 answered_at_least "$state" 600
  touch "$state/stop"
  wait_until "the traffic loops to stop" 60 eval '! docker exec '"$client"' pgrep -f traffic.sh'
  answers=$(count_answers "$state")
  check_answers "$answers" "while a worker task was killed"
  t=$SECONDS
  wait_until "the pipeline to settle" 240 settled
  summary "load ($answers) with a worker task killed: Swarm replaced it; settled $((SECONDS - t)) s after the load"
  check_invariant 100 "swarm after the kill"

  log "swarm: rolling update of orders to a new image tag under steady requests"
  printf 'FROM ordersys:ci-1\nLABEL org.ordersys.test.revision=2\n' |
    DOCKER_BUILDKIT=0 docker build -q -t ordersys:ci-2 - >/dev/null 2>&1
  rm -f "$state"/answers.* "$state/stop"
  local product=${ids%%,*}
  docker exec -d -e CURL_HOME=/auth "$client" bash /t/traffic.sh steady http://orders:8081 "$product" 2 /state
  wait_until "steady traffic to flow" 60 answered_at_least "$state" 100
  t=$SECONDS
  docker service update --detach --quiet --image ordersys:ci-2 "${stack}_orders" >/dev/null
  wait_until "the rolling update of orders to end" 300 update_ended
  [ "$(update_state)" = completed ] || fail "the rolling update of orders ended $(update_state)"
  wait_until "more traffic after the update" 60 answered_at_least "$state" \
    "$(($(cat "$state"/answers.* | wc -l) + 100))"
  touch "$state/stop"
  wait_until "the traffic loops to stop" 60 eval '! docker exec '"$client"' pgrep -f traffic.sh'
  answers=$(count_answers "$state")
  local images
  images=$(docker service ps "${stack}_orders" --filter desired-state=running --format '{{.Image}}' | sort -u)
  [ "$images" = ordersys:ci-2 ] || fail "orders tasks run $images after the update"
  check_answers "$answers" "during the rolling update (start-first; the goal is zero)"
  summary "rolling update of orders (start-first) in $((SECONDS - t)) s, requests through DNS round-robin (not Traefik): $answers"

  log "swarm: docker stack rm"
  docker rm -f "$client" >/dev/null
  swarm_remove_stack
  summary "stack rm: no task, network or container left"
}

# The stack's promises on who may do what, checked on the running stack.
swarm_who_may_do_what() {
  log "swarm: who may do what"
  local product status container service h request

  # The APIs: reads and writes need a token with the route's scope, signed
  # by the private key no service holds.
  product=$(value POST http://products:8000/produits/ '{"nom":"Gomme","prix":0.80,"quantite_en_stock":100}' id)
  for request in "POST http://products:8000/produits/" "DELETE http://products:8000/produits/$product" \
    "POST http://orders:8081/commandes"; do
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
  for url in http://products:8000/produits/ "http://products:8000/produits/$product" \
    "http://products:8000/produits/$product/mouvements" http://orders:8081/commandes \
    http://orders:8081/commandes/1 http://orders:8081/commandes-produits \
    http://orders:8081/commandes-produits/1/historique; do
    status=$(TOKEN='' http_status GET "$url")
    [ "$status" = 401 ] || fail "GET $url without a token answered $status, not 401"
    status=$(TOKEN=$narrow http_status GET "$url")
    [ "$status" = 403 ] || fail "GET $url with only products:write answered $status, not 403"
  done
  status=$(TOKEN=$narrow http_status POST http://orders:8081/commandes '{}')
  [ "$status" = 403 ] || fail "POST /commandes with only products:write answered $status, not 403"
  status=$(TOKEN=$narrow http_status PUT "http://products:8000/produits/$product" '{"quantite_en_stock":5}')
  [ "$status" = 403 ] || fail "a stock correction without stock:correct answered $status, not 403"
  [ "$(value GET "http://products:8000/produits/$product" "" quantite_en_stock)" = 100 ] ||
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
  # (A retry or two: pg_isready of the health check connects now and then.)
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
  users=$(swarm_exec rabbitmq rabbitmqctl -q list_users | awk '$1 != "user" {print $1 "=" $2}' | sort | paste -sd, -)
  [ "$users" = "ordersys_migrate=[],ordersys_orders=[],ordersys_worker=[]" ] ||
    fail "RabbitMQ users (name=tags): $users"
  connections=$(swarm_exec rabbitmq rabbitmqctl -q list_connections user | awk '$1 != "user" {print $1}' | sort -u | paste -sd, -)
  [ "$connections" = ordersys_orders,ordersys_worker ] ||
    fail "connected to RabbitMQ as: $connections (expected ordersys_orders and ordersys_worker)"
  summary "RabbitMQ: users ordersys_migrate, ordersys_orders, ordersys_worker without tags (no guest, no administrator); orders and worker connect as their own"

  # Published ports: Traefik's 81 and the visualizer's 8085, nothing else
  # (neither the management UI nor a dashboard).
  local published
  published=$(docker service ls -q --filter "label=com.docker.stack.namespace=$stack" |
    xargs -r docker service inspect --format \
      '{{$name := .Spec.Name}}{{with .Spec.EndpointSpec}}{{range .Ports}}{{$name}}:{{.PublishedPort}} {{end}}{{end}}' |
    tr ' ' '\n' | sed '/^$/d' | sort | paste -sd, -)
  [ "$published" = "${stack}_traefik:81,${stack}_visualizer:8085" ] || fail "published ports: $published"
  [ -z "$(docker port "$(running_tasks rabbitmq | sed -n 1p)")" ] || fail "rabbitmq's container publishes a port"
  summary "published: ${published//,/, } only (no RabbitMQ management UI, no Traefik dashboard)"

  # Containers: read-only, no capability; healthy.
  for service in products orders worker prometheus; do
    for container in $(running_tasks "$service"); do
      h=$(hardening "$container")
      [[ $h == "true drop=ALL add= "* ]] || fail "$service task ${container:0:12} is not hardened: $h"
    done
    wait_until "the $service tasks to be healthy" 60 tasks_healthy "$service"
  done
  [ "$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.ReadOnly}} {{join .Spec.TaskTemplate.ContainerSpec.CapabilityDrop ","}}' "${stack}_migrate")" = "true ALL" ] ||
    fail "the migrate service is not read-only without capabilities"
  for container in $(docker ps -aq --filter "label=com.docker.swarm.service.name=${stack}_migrate"); do
    h=$(hardening "$container")
    [[ $h == "true drop=ALL add= "* ]] || fail "migrate task ${container:0:12} is not hardened: $h"
  done
  summary "migrate, products, orders, worker, prometheus: read-only root filesystem, CapDrop ALL; products, orders, worker, prometheus healthy"
}

# The roles PostgreSQL's client connections logged in as, but this one.
connected_roles() {
  sql "SELECT string_agg(DISTINCT usename::text, ',' ORDER BY usename::text) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
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

update_state() { docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${stack}_orders"; }
# The update has started (a state is set) and ended, well or not.
update_ended() {
  case "$(update_state)" in
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
