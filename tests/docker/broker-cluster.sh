# The broker cluster of the Swarm scenario (sourced by swarm.sh): three
# RabbitMQ nodes, every queue a quorum queue with a member on each; then a
# node killed, and a node partitioned away (every packet dropped, no
# reset), each under a recorded load through Traefik (faults.sh's
# under_fault): nothing lost or doubled, and no write refused — the
# services are given the three addresses and the outbox holds what cannot
# be published for the moment.

BROKER_NODES=(rabbitmq1 rabbitmq2 rabbitmq3)
# The stack's stock partitions (amqp.stock_partitions in swarm/stack.yml):
# product_queue.0 .. product_queue.N-1, in the order jq sorts names.
STACK_PARTITIONS=$(grep -m1 'ORDERSYS__AMQP__STOCK_PARTITIONS:' swarm/stack.yml | grep -o '[0-9]\+')
BROKER_QUEUES="order_events order_events.dlq product_queue $(
  seq -f 'product_queue.%g' 0 $((STACK_PARTITIONS - 1)) | paste -sd' ') product_queue.dlq stock_alerts"

# broker_exec COMMAND...: COMMAND in the first broker node whose RabbitMQ
# runs (a paused minority or a restarting node does not answer).
broker_exec() {
  local node
  for node in "${BROKER_NODES[@]}"; do
    if swarm_exec "$node" rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
      swarm_exec "$node" "$@"
      return
    fi
  done
  return 1
}

# The nodes NODE sees running (sorted, comma-separated: rabbit@rabbitmq1,...).
broker_running_nodes() { # broker_running_nodes NODE
  swarm_exec "$1" rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
    jq -r '.running_nodes | sort | join(",")'
}
all_nodes=rabbit@rabbitmq1,rabbit@rabbitmq2,rabbit@rabbitmq3
# brokers_whole SECONDS: waits until each broker node sees the three running.
brokers_whole() {
  local node
  for node in "${BROKER_NODES[@]}"; do
    wait_until "$node to see the three broker nodes running" "$1" \
      eval '[ "$(broker_running_nodes '"$node"')" = '"$all_nodes"' ]'
  done
}

# Every queue and its online members, one line each: "NAME TYPE n/3".
queue_members() {
  broker_exec rabbitmqctl -q list_queues name type online --formatter json |
    jq -r 'sort_by(.name)[] | "\(.name) \(.type) \(.online | length)/3"'
}
# Every queue of ordersys a quorum queue with its three members online.
queues_replicated() {
  local expected
  expected=$(for q in $BROKER_QUEUES; do echo "$q quorum 3/3"; done)
  [ "$(queue_members)" = "$expected" ]
}

swarm_broker_cluster() {
  log "swarm: the broker cluster (three RabbitMQ nodes, quorum queues on each)"
  local t=$SECONDS
  brokers_whole 120
  # A queue declared before every node had joined gets its missing members
  # within a minute (continuous membership reconciliation).
  wait_until "every queue replicated on the three nodes" 150 queues_replicated
  summary "broker cluster: rabbit@rabbitmq1..3 running, each seeing the three; $(queue_members | paste -sd, - | sed 's/,/, /g') (in $((SECONDS - t)) s)"
}

# The AMQP connections of ordersys's processes CONTAINER holds (each
# process starts at a random node: the fault may hit few or none).
amqp_clients() { # amqp_clients CONTAINER
  nsenter -t "$(pid_of "$1")" -n ss -Htn state established '( sport = :5672 or sport = :5671 )' | wc -l
}

# The faults: each sets $detected (what noticed, how fast).
fault_broker_node_killed() {
  local victim clients
  victim=$(running_tasks rabbitmq2)
  [ -n "$victim" ] || fail "no running rabbitmq2 task"
  clients=$(amqp_clients "$victim")
  docker kill "$victim" >/dev/null
  fault_t0=$SECONDS
  wait_until "rabbitmq1 to see rabbitmq2 gone" 60 \
    eval '[ "$(broker_running_nodes rabbitmq1)" = rabbit@rabbitmq1,rabbit@rabbitmq3 ]'
  local gone=$((SECONDS - fault_t0))
  # Swarm starts a new task on the same volume: the same node, back in.
  wait_until "rabbitmq2 to be back in the cluster" 120 \
    eval '[ "$(broker_running_nodes rabbitmq1)" = '"$all_nodes"' ]'
  detected="it held $clients client connections; the others saw it gone in $gone s; Swarm's new task rejoined $((SECONDS - fault_t0)) s after the kill"
}

fault_broker_node_partitioned() {
  local node pid
  node=$(running_tasks rabbitmq3)
  [ -n "$node" ] || fail "no running rabbitmq3 task"
  pid=$(pid_of "$node")
  local clients
  clients=$(amqp_clients "$node")
  # Everything in and out of the node but its own loopback: its peers and
  # its clients hear nothing, and get no reset.
  nsenter -t "$pid" -n iptables -w -I INPUT ! -i lo -j DROP
  nsenter -t "$pid" -n iptables -w -I OUTPUT ! -o lo -j DROP
  at_exit "nsenter -t $pid -n iptables -w -D INPUT ! -i lo -j DROP; nsenter -t $pid -n iptables -w -D OUTPUT ! -o lo -j DROP"
  fault_t0=$SECONDS
  wait_until "the majority to declare rabbitmq3 down" 90 \
    eval '[ "$(broker_running_nodes rabbitmq1)" = rabbit@rabbitmq1,rabbit@rabbitmq2 ]'
  detected="it held $clients client connections; the majority declared it down in $((SECONDS - fault_t0)) s"
  hold_until 35
  nsenter -t "$pid" -n iptables -w -D INPUT ! -i lo -j DROP
  nsenter -t "$pid" -n iptables -w -D OUTPUT ! -o lo -j DROP
  local healed=$SECONDS
  wait_until "rabbitmq3 to rejoin after the heal" 120 \
    eval '[ "$(broker_running_nodes rabbitmq1)" = '"$all_nodes"' ]'
  detected+="; it rejoined $((SECONDS - healed)) s after the heal"
}

# under_broker_fault NAME DESCRIPTION: under_fault, then the issue's
# promise for a lost broker node: not one write refused or left unanswered.
under_broker_fault() {
  under_fault "$@"
  [ "$fault_unknown" = 0 ] || fail "$2: $fault_unknown changes got no answer"
  [ "$fault_writes_failed_for" = 0.0 ] || fail "$2: writes failed for $fault_writes_failed_for s"
  wait_until "$2: every queue replicated on the three nodes again" 150 queues_replicated
}

swarm_broker_faults() {
  log "swarm: a broker node killed, and one partitioned away, each under a recorded load"
  local t=$SECONDS
  faults_begin
  under_broker_fault broker_node_killed "RabbitMQ node rabbitmq2 killed"
  under_broker_fault broker_node_partitioned "RabbitMQ node rabbitmq3 partitioned away (every packet dropped)"
  faults_table "swarm broker faults: every history checked clean, no write failed, in $((SECONDS - t)) s"
}
