# The compose scenario of tests/docker/run: compose.yml as a user runs it,
# on its own project name and ports so it cannot touch a user's stack.

source tests/docker/faults.sh

compose_ports() {
  export ORDERSYS_HTTP_PORT=18001 ORDERSYS_TRAEFIK_UI_PORT=18080 ORDERSYS_RABBITMQ_UI_PORT=15673 \
    ORDERSYS_PROMETHEUS_PORT=19090 ORDERSYS_GRAFANA_PORT=13000
  # Every API request goes through Traefik, as a user's do.
  edge_url=http://127.0.0.1:$ORDERSYS_HTTP_PORT
  prometheus_url=http://127.0.0.1:$ORDERSYS_PROMETHEUS_PORT
}

# The targets Prometheus should report, as prometheus_targets prints them:
# every container of each mode, up.
compose_targets() {
  local service out=
  for service in orders products traefik worker; do
    out+="${out:+, }$service up $("${compose[@]}" ps -q "$service" | wc -l)"
  done
  echo "$out"
}

scenario_compose() {
  local project=ordersys-ci t
  read -r -a compose <<<"$(compose_bin)"
  # The observability profile on, so that `down` removes Prometheus too;
  # every `up` names its services, so Grafana (no image here) never starts.
  compose+=(-p "$project" -f compose.yml --profile observability)
  compose_ports
  PSQL=("${compose[@]}" exec -T postgres psql -U ordersys -d ordersys)
  queue() { "${compose[@]}" exec -T rabbitmq rabbitmqctl -q list_queues name "$1" |
    awk '$1 == "product_queue" {print $2}'; }
  queue_depth() { queue messages; }

  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  at_exit "${compose[*]} down -v --remove-orphans"

  log "compose: build the image from the real Dockerfile"
  t=$SECONDS
  "${compose[@]}" build products >/dev/null
  summary "compose build: $((SECONDS - t)) s; image ordersys:local is $(image_size ordersys:local)"

  log "compose: up every service but Grafana, and wait until healthy"
  t=$SECONDS
  "${compose[@]}" up -d --wait postgres rabbitmq products orders worker traefik socket-proxy prometheus
  summary "compose up --wait: all healthy in $((SECONDS - t)) s (Traefik $(docker run --rm traefik:v3.7.15 version | awk '/^Version/ {print $2}') and Prometheus included; not run here: Grafana)"
  local service uid health
  for service in products orders worker; do
    uid=$("${compose[@]}" exec -T "$service" id -u)
    [ "$uid" = 10001 ] || fail "$service runs as uid $uid, not 10001"
  done
  # orders keeps the image's own HEALTHCHECK (compose does not override it).
  health=$(docker inspect --format '{{.State.Health.Status}}' "$("${compose[@]}" ps -q orders)")
  [ "$health" = healthy ] || fail "the image's HEALTHCHECK left orders $health"
  summary "containers run as uid 10001; the image's HEALTHCHECK turned orders healthy"

  # migrate ran, exited 0, and only then did the services start.
  local migrate finished container
  migrate=$("${compose[@]}" ps -a -q migrate)
  [ -n "$migrate" ] || fail "no migrate container"
  [ "$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$migrate")" = "exited 0" ] ||
    fail "migrate is $(docker inspect --format '{{.State.Status}}, exit code {{.State.ExitCode}}' "$migrate")"
  finished=$(date -d "$(docker inspect --format '{{.State.FinishedAt}}' "$migrate")" +%s%N)
  for service in products orders worker; do
    for container in $("${compose[@]}" ps -q "$service"); do
      (($(date -d "$(docker inspect --format '{{.State.StartedAt}}' "$container")" +%s%N) >= finished)) ||
        fail "$service container ${container:0:12} started before migrate had finished"
    done
  done
  for service in migrate products orders worker traefik socket-proxy prometheus; do
    for container in $("${compose[@]}" ps -a -q "$service"); do
      [[ $(hardening "$container") =~ ^true\ drop=ALL\ add=\ (.*,)?no-new-privileges(:true)?(,|$) ]] ||
        fail "$service container ${container:0:12} is not hardened: $(hardening "$container")"
    done
  done
  summary "migrate exited 0 before the services started; migrate, products, orders, worker, traefik, socket-proxy, prometheus: read-only, CapDrop ALL, no-new-privileges"
  compose_front_door

  log "compose: Prometheus scrapes every container of every mode"
  t=$SECONDS
  local targets
  targets=$(compose_targets)
  [[ $targets == *"worker up 2" ]] || fail "expected 2 worker containers: $targets"
  wait_for_targets "$prometheus_url" 90 "$targets"
  summary "Prometheus (DNS discovery): every target up ($targets) in $((SECONDS - t)) s"

  log "compose: the walkthroughs through Traefik"
  walkthrough "$edge_url" "$edge_url"
  seed_client "$edge_url" "$edge_url"
  validation_walkthrough "$edge_url" "$edge_url"
  edge_trace "$edge_url" "${compose[@]}" logs --no-log-prefix traefik

  log "compose: ordersys load (the profile's service), with --verify"
  local load_out
  # --stock 100: the scenario's invariant checks take every product to start at 100.
  load_out=$("${compose[@]}" --profile load run --rm --no-deps load \
    --rate 100 --duration 5 --report-every 1 --stock 100 --verify 2>&1) ||
    fail "ordersys load failed: $load_out"
  grep -q '^all ' <<<"$load_out" || fail "no summary from ordersys load: $load_out"
  grep -q 'the stock invariant holds' <<<"$load_out" || fail "ordersys load --verify: $load_out"
  summary "load through Traefik: $(grep '^achieved' <<<"$load_out"); $(grep '^verify' <<<"$load_out")"

  compose_balance
  compose_rolling

  log "compose: --scale worker=4"
  "${compose[@]}" up -d --wait --no-recreate --scale worker=4 worker
  local workers
  workers=$("${compose[@]}" ps -q worker | wc -l)
  [ "$workers" = 4 ] || fail "$workers worker containers after --scale worker=4"
  wait_until "8 consumers on product_queue (4 workers x 2 replicas)" 60 \
    eval '[ "$(queue consumers)" = 8 ]'
  targets=$(compose_targets)
  wait_for_targets "$prometheus_url" 90 "$targets"
  summary "--scale worker=4: 4 worker containers, 8 consumers on product_queue, Prometheus targets: $targets"

  log "compose: docker kill a worker, then restart rabbitmq, under load"
  local ids state traffic victim answers
  ids=$(create_products "$edge_url" 8 100)
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  bash tests/docker/traffic.sh changes "$edge_url" "$ids" 4 "$state" &
  traffic=$!
  at_exit "touch $state/stop; kill $traffic"
  wait_until "traffic to flow" 60 answered_at_least "$state" 200
  victim=$("${compose[@]}" ps -q worker | sed -n 1p)
  docker kill "$victim" >/dev/null
  info "killed worker container ${victim:0:12}"
  wait_until "more traffic" 60 answered_at_least "$state" 500
  t=$SECONDS
  "${compose[@]}" restart rabbitmq >/dev/null
  info "restarted rabbitmq in $((SECONDS - t)) s"
  wait_until "more traffic" 60 answered_at_least "$state" 900
  touch "$state/stop"
  wait "$traffic"
  answers=$(count_answers "$state")
  info "traffic: $answers"
  check_answers "$answers" "while a worker and the broker went down"
  t=$SECONDS
  wait_until "the pipeline to settle" 240 settled
  summary "load ($answers) with a worker killed and rabbitmq restarted: settled $((SECONDS - t)) s after the load"
  check_invariant 100 "compose faults"
  # Docker counts a kill as a manual stop: no restart policy brings the
  # container back. compose does, as it would after any crash.
  "${compose[@]}" up -d --wait --scale worker=4 worker >/dev/null 2>&1
  wait_until "8 consumers again" 60 eval '[ "$(queue consumers)" = 8 ]'
  summary "the killed worker container brought back by compose up: 8 consumers again"

  compose_faults

  log "compose: down -v leaves nothing behind"
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1
  local left
  left=$( (docker ps -aq --filter "label=com.docker.compose.project=$project"
    docker volume ls -q --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "label=com.docker.compose.project=$project") | wc -l)
  [ "$left" = 0 ] || fail "compose down -v left $left containers, volumes or networks"
  summary "compose down -v: no container, volume or network left"
}

# The front door as a user meets it: the seed's routes and aliases through
# Traefik, both Swagger UIs rendered by a browser through it, and a socket
# proxy that refuses what Traefik does not need.
compose_front_door() {
  log "compose: the front door (Traefik on :$ORDERSYS_HTTP_PORT)"
  local traefik path status
  traefik=$("${compose[@]}" ps -q traefik)
  [ "$(docker inspect --format '{{.Config.User}}' "$traefik")" = 65534:65534 ] ||
    fail "traefik does not run as nobody"
  ! docker inspect --format '{{range .Mounts}}{{.Source}} {{end}}' "$traefik" | grep -q docker.sock ||
    fail "traefik mounts the Docker socket"
  # Every route prefix of each API, and the seed's aliases.
  for path in /produits/ /commandes /commandes-produits/1 /api/v1/commandes /api/v1/commandes_produits/1 \
    /products/openapi.json /orders/openapi.json /products/docs /orders/docs; do
    status=$(http_status GET "$edge_url$path")
    # (404: no line 1 yet; 308: the docs redirect to their index page.)
    [[ $status == 200 || ($status == 404 && $path == *1) || ($status == 308 && $path == */docs) ]] ||
      fail "GET $path through Traefik answered $status"
  done
  [ "$(http_status GET "$edge_url/not-an-api")" = 404 ] || fail "Traefik routed an unknown path"
  http GET "$edge_url/products/openapi.json" | jq -e '.paths["/produits/"]' >/dev/null ||
    fail "the products OpenAPI document through Traefik has no /produits/"
  http GET "$edge_url/orders/openapi.json" | jq -e '.paths["/commandes"]' >/dev/null ||
    fail "the orders OpenAPI document through Traefik has no /commandes"
  wait_until "Swagger UI of products to render /produits/ in Chromium" 60 \
    swagger_renders "$edge_url/products/docs" /produits/
  wait_until "Swagger UI of orders to render /commandes in Chromium" 60 \
    swagger_renders "$edge_url/orders/docs" /commandes
  summary "through Traefik: every route prefix and /api/v1 alias; both Swagger UIs render their operations in headless Chromium (scripts, styles and OpenAPI documents through :81)"

  local network=ordersys-ci_socket-proxy
  socket_proxy_checks http://socket-proxy:2375 docker docker run --rm --network "$network" ordersys-test/client:1 curl
  summary "socket proxy: Traefik runs as nobody without the Docker socket; the proxy answers the docker provider's reads (version, containers) and refuses (403) the swarm provider's, container create, delete, archive, logs, service create, secrets, swarm, a path with .."
}

# Load balancing you can watch: products and orders scaled to 3, a run of
# ordersys load through Traefik, each replica's share from Prometheus.
compose_balance() {
  log "compose: --scale products=3 orders=3, ordersys load through Traefik"
  "${compose[@]}" up -d --wait --no-recreate --no-deps --scale products=3 --scale orders=3 products orders
  wait_for_targets "$prometheus_url" 90 "$(compose_targets)"
  local before_p before_o out end=$(date +%s)
  wait_until "Prometheus to scrape products and orders once more" 30 eval \
    'scraped_since "$prometheus_url" products '"$end"' && scraped_since "$prometheus_url" orders '"$end"
  before_p=$(served_by_instance "$prometheus_url" products)
  before_o=$(served_by_instance "$prometheus_url" orders)
  out=$("${compose[@]}" --profile load run --rm --no-deps load \
    --rate 100 --duration 10 --report-every 5 --stock 100 2>&1) || fail "ordersys load through Traefik failed: $out"
  end=$(date +%s)
  wait_until "Prometheus to scrape every replica after the load" 60 eval \
    'scraped_since "$prometheus_url" products '"$end"' && scraped_since "$prometheus_url" orders '"$end"
  local p o
  p=$(shares "$before_p" "$(served_by_instance "$prometheus_url" products)" 3) ||
    fail "products: not every one of 3 replicas served 20% of the load: $p"
  o=$(shares "$before_o" "$(served_by_instance "$prometheus_url" orders)" 3) ||
    fail "orders: not every one of 3 replicas served 20% of the load: $o"
  summary "load balancing (ordersys load through Traefik, Prometheus per replica): products $p; orders $o"
  local series
  for series in $(tests/docker/dashboard-metrics.sh | grep '^traefik_'); do
    "${PROM[@]}" -sf -G "$prometheus_url/api/v1/query" --data-urlencode "query=count($series)" |
      jq -e '.data.result | length == 1' >/dev/null || fail "Prometheus has no $series (the dashboard's Traefik row)"
  done
  summary "Traefik's metrics scraped: every traefik_ series the dashboard queries is in Prometheus"
}

# compose_roll SERVICE: recreates every container of SERVICE without
# downtime, as docs/deployment.md shows: as many new containers started
# beside the old ones and healthy (Traefik routes to them once healthy),
# then each old one stopped (it drains: /readyz 503, still serving, then
# stops) and removed.
compose_roll() {
  local old n container out
  old=$("${compose[@]}" ps -q "$1")
  n=$(wc -l <<<"$old")
  out=$("${compose[@]}" up -d --wait --no-recreate --no-deps --scale "$1=$((2 * n))" "$1" 2>&1) ||
    fail "$1: the new containers did not become healthy: $out"
  for container in $old; do
    docker stop -t 30 "$container" >/dev/null
    docker rm "$container" >/dev/null
  done
  [ "$("${compose[@]}" ps -q "$1" | wc -l)" = "$n" ] || fail "$1: not $n containers after the roll"
}

# Zero failed requests while products and orders are recreated: a load
# long enough to outlast both rolls (checked), every answer 2xx.
compose_rolling() {
  log "compose: products and orders recreated under ordersys load through Traefik"
  local state load t out
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  "${compose[@]}" --profile load run --rm --no-deps load --rate 50 --duration 90 \
    --report-every 5 --stock 100 --max-error-rate 0 >"$state/load" 2>&1 &
  load=$!
  wait_until "the load to run" 60 grep -q '^load: t=' "$state/load"
  t=$SECONDS
  compose_roll products
  compose_roll orders
  kill -0 "$load" 2>/dev/null || fail "the load ended before the roll did: $(tail -5 "$state/load")"
  summary "rolled 3 products and 3 orders containers in $((SECONDS - t)) s, under load"
  wait "$load" || fail "requests failed while products and orders were recreated: $(tail -20 "$state/load")"
  out=$(cat "$state/load")
  summary "rolling recreate under load through Traefik: $(grep '^all ' <<<"$out" | head -1) (non-2xx allowed: 0)"
}
