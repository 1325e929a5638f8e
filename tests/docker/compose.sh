# The compose scenario of tests/docker/run: compose.yml as a user runs it,
# on its own project name and ports so it cannot touch a user's stack.

compose_ports() {
  export ORDERSYS_PRODUCTS_PORT=18000 ORDERSYS_ORDERS_PORT=18081 ORDERSYS_RABBITMQ_UI_PORT=15673 \
    ORDERSYS_PROMETHEUS_PORT=19090 ORDERSYS_GRAFANA_PORT=13000
  products_url=http://127.0.0.1:$ORDERSYS_PRODUCTS_PORT
  orders_url=http://127.0.0.1:$ORDERSYS_ORDERS_PORT
  prometheus_url=http://127.0.0.1:$ORDERSYS_PROMETHEUS_PORT
}

# The targets Prometheus should report, as prometheus_targets prints them:
# every container of each mode, up.
compose_targets() {
  local service out=
  for service in orders products worker; do
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

  log "compose: up every service but Traefik and Grafana, and wait until healthy"
  t=$SECONDS
  "${compose[@]}" up -d --wait postgres rabbitmq products orders worker prometheus
  summary "compose up --wait: all healthy in $((SECONDS - t)) s (Prometheus included; not run here: Traefik, Grafana)"
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
  for service in migrate products orders worker prometheus; do
    for container in $("${compose[@]}" ps -a -q "$service"); do
      [[ $(hardening "$container") =~ ^true\ drop=ALL\ add=\ (.*,)?no-new-privileges(:true)?(,|$) ]] ||
        fail "$service container ${container:0:12} is not hardened: $(hardening "$container")"
    done
  done
  summary "migrate exited 0 before the services started; migrate, products, orders, worker, prometheus: read-only, CapDrop ALL, no-new-privileges"

  log "compose: Prometheus scrapes every container of every mode"
  t=$SECONDS
  local targets
  targets=$(compose_targets)
  [[ $targets == *"worker up 2" ]] || fail "expected 2 worker containers: $targets"
  wait_for_targets "$prometheus_url" 90 "$targets"
  summary "Prometheus (DNS discovery): every target up ($targets) in $((SECONDS - t)) s"

  log "compose: the walkthrough through the published ports"
  walkthrough "$products_url" "$orders_url"
  seed_client "$products_url" "$orders_url"
  validation_walkthrough "$products_url" "$orders_url"

  log "compose: ordersys load (the profile's service), with --verify"
  local load_out
  # --stock 100: the scenario's invariant checks take every product to start at 100.
  load_out=$("${compose[@]}" --profile load run --rm --no-deps load \
    --rate 100 --duration 5 --report-every 1 --stock 100 --verify 2>&1) ||
    fail "ordersys load failed: $load_out"
  grep -q '^all ' <<<"$load_out" || fail "no summary from ordersys load: $load_out"
  grep -q 'the stock invariant holds' <<<"$load_out" || fail "ordersys load --verify: $load_out"
  summary "load: $(grep '^achieved' <<<"$load_out"); $(grep '^verify' <<<"$load_out")"

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
  ids=$(create_products "$products_url" 8 100)
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  bash tests/docker/traffic.sh changes "$orders_url" "$ids" 4 "$state" &
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

  log "compose: down -v leaves nothing behind"
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1
  local left
  left=$( (docker ps -aq --filter "label=com.docker.compose.project=$project"
    docker volume ls -q --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "label=com.docker.compose.project=$project") | wc -l)
  [ "$left" = 0 ] || fail "compose down -v left $left containers, volumes or networks"
  summary "compose down -v: no container, volume or network left"
}
