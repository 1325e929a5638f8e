# The Swarm scenario of tests/docker/run: swarm/stack.yml deployed on a
# single-node swarm as the README says, with tests/docker/swarm-test.yml on
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
  docker volume rm "${stack}_postgres-data" "${stack}_rabbitmq-data" >/dev/null 2>&1 || true

  log "swarm: the image, the secrets, the node label"
  read -r -a compose <<<"$(compose_bin)"
  "${compose[@]}" -p ordersys-ci -f compose.yml build products >/dev/null
  docker tag ordersys:local ordersys:ci-1
  docker secret rm ordersys_postgres_password ordersys_database_url ordersys_amqp_url \
    ordersys_rabbitmq_conf >/dev/null 2>&1 || true
  POSTGRES_PASSWORD="pg-$RANDOM$RANDOM" RABBITMQ_PASSWORD="mq-$RANDOM$RANDOM" \
    swarm/create-secrets.sh >/dev/null
  docker node update --label-add ordersys.data=true "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null

  log "swarm: docker stack deploy"
  t=$SECONDS
  at_exit "docker volume rm ${stack}_postgres-data ${stack}_rabbitmq-data"
  at_exit "swarm_remove_stack"
  ORDERSYS_IMAGE=ordersys:ci-1 docker stack deploy -c swarm/stack.yml \
    -c tests/docker/swarm-test.yml "$stack" >/dev/null 2>&1
  wait_until "every service with an image to run n/n" 300 \
    all_running postgres rabbitmq products orders worker
  summary "stack deploy: postgres, rabbitmq, products 2/2, orders 2/2, worker 2/2 running in $((SECONDS - t)) s"
  summary "not run here: traefik and visualizer (no image can be had; deployed with 0 replicas)"

  docker rm -f "$client" >/dev/null 2>&1 || true
  local state
  state=$(mktemp -d)
  at_exit "rm -rf $state"
  docker run -d --name "$client" --network "$network" -v "$root/tests/docker:/t:ro" \
    -v "$state:/state" ordersys-test/client:1 sleep infinity >/dev/null
  at_exit "docker rm -f $client"
  CURL=(docker exec "$client" curl)
  PSQL=(swarm_exec postgres psql -U ordersys -d ordersys)
  queue_depth() { swarm_queue messages; }
  wait_until "products and orders to be ready" 120 eval \
    'http GET http://products:8000/readyz && http GET http://orders:8081/readyz'

  log "swarm: the walkthrough from a container on the overlay network"
  walkthrough http://products:8000 http://orders:8081

  log "swarm: docker service scale ${stack}_worker=6"
  docker service scale "${stack}_worker=6" >/dev/null
  wait_until "6 worker tasks running" 120 eval '[ "$(running_tasks worker | wc -l)" = 6 ]'
  wait_until "12 consumers on product_queue (6 tasks x 2 replicas)" 120 \
    eval '[ "$(swarm_queue consumers)" = 12 ]'
  summary "scale worker=6: 6 tasks running, 12 consumers on product_queue"

  log "swarm: kill a worker task's container under load"
  local ids victim answers
  ids=$(create_products http://products:8000 8 100)
  docker exec -d "$client" bash /t/traffic.sh changes http://orders:8081 "$ids" 4 /state
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
  docker exec -d "$client" bash /t/traffic.sh steady http://orders:8081 "$product" 2 /state
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
