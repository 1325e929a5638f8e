# Silent faults under a recorded load, in the compose scenario
# (docs/faults.md). Each fault runs inside its own `ordersys load
# --history` through Traefik; the load's own check then compares that
# history with the settled state: nothing acknowledged lost, nothing
# applied twice, nothing refused applied, every validation decided. A
# partition is a DROP rule (no reset: the peer hears nothing) in the
# container's own network namespace; a freeze is `docker pause`.

# The load during a fault: every kind of change, validations included.
FAULT_MIX=read_order=10,create_order=8,create_line=35,change_quantity=15,change_product=10,delete_line=8,cancel_order=4,validate_order=10
# Every fault starts 5 s into its load and is healed by 40 s: the last
# 15 s show the system recovering under load.
FAULT_LOAD_SECS=55

pid_of() { docker inspect --format '{{.State.Pid}}' "$1"; }
ip_of() { docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'; }

# What each scenario defines for itself (compose's here; swarm.sh
# redefines them after sourcing this file): one_of SERVICE, a running
# container of it; fault_load ARGS..., `ordersys load` through the front
# door with $fault_dir mounted at /history.
one_of() { "${compose[@]}" ps -q "$1" | sed -n 1p; }
fault_load() { "${compose[@]}" --profile load run --rm --no-deps -v "$fault_dir:/history" load "$@"; }

# drop CONTAINER -I|-D PEER_CONTAINER in|out: adds (-I) or removes (-D)
# a rule in CONTAINER's network namespace dropping what it receives from
# (in) or sends to (out) the peer.
drop() {
  local chain=OUTPUT side=-d
  [ "$4" = in ] && chain=INPUT side=-s
  nsenter -t "$(pid_of "$1")" -n iptables -w "$2" "$chain" "$side" "$(ip_of "$(one_of "$3")")" -j DROP
}

# cut|heal PEER both|replies CONTAINER...: silently partitions each
# CONTAINER from PEER both ways, or drops only PEER's replies (what the
# container sends arrives; nothing comes back); heal removes those rules.
rules() { # rules -I|-D PEER both|replies CONTAINER...
  local op=$1 peer=$2 how=$3 c
  shift 3
  for c in "$@"; do
    drop "$c" "$op" "$peer" in
    [ "$how" = replies ] || drop "$c" "$op" "$peer" out
  done
}
cut() { rules -I "$@"; }
heal() { rules -D "$@"; }

# PostgreSQL sessions from any of the CONTAINERs, and broker connections.
sessions_from() {
  local c ips=
  for c in "$@"; do ips+="${ips:+,}'$(ip_of "$c")'"; done
  sql "SELECT count(*) FROM pg_stat_activity WHERE client_addr IN ($ips)"
}
broker_connections_from() {
  local c peers
  peers=$("${compose[@]}" exec -T rabbitmq rabbitmqctl -q list_connections peer_host) || return 1
  for c in "$@"; do grep -xF "$(ip_of "$c")" <<<"$peers" || true; done | wc -l
}
# Waits for all 8 consumers (4 workers x 2) on product_queue.
all_consumers() { wait_until "8 consumers on product_queue" 90 eval '[ "$(queue consumers)" = 8 ]'; }

# hold_until SECONDS: a fault lasts until $fault_t0 + SECONDS.
hold_until() {
  local left=$((fault_t0 + $1 - SECONDS))
  ((left <= 0)) || sleep "$left"
}

# The faults: each sets $detected (what noticed the silence, how fast).
fault_worker_cut_from_postgres() {
  local w
  w=$(one_of worker)
  cut postgres both "$w"
  fault_t0=$SECONDS
  wait_until "PostgreSQL to end the silent worker's sessions" 60 \
    eval '[ "$(sessions_from "$w")" = 0 ]'
  detected="PostgreSQL ended its sessions in $((SECONDS - fault_t0)) s"
  hold_until 30
  heal postgres both "$w"
}

fault_worker_cut_from_rabbitmq() {
  local w
  all_consumers
  w=$(one_of worker)
  cut rabbitmq both "$w"
  fault_t0=$SECONDS
  wait_until "the broker to give up on the silent worker's consumers" 90 \
    eval '[ "$(queue consumers)" -lt 8 ]'
  detected="the broker requeued its deliveries in $((SECONDS - fault_t0)) s"
  hold_until 35
  heal rabbitmq both "$w"
}

fault_orders_lose_rabbitmq_replies() {
  local orders
  mapfile -t orders < <("${compose[@]}" ps -q orders)
  [ "$(broker_connections_from "${orders[@]}")" -gt 0 ] || fail "orders holds no broker connection"
  cut rabbitmq replies "${orders[@]}"
  fault_t0=$SECONDS
  wait_until "the relay to give up on the silent broker" 90 \
    eval '[ "$(broker_connections_from "${orders[@]}")" = 0 ]'
  detected="the relay dropped its connection in $((SECONDS - fault_t0)) s"
  hold_until 35
  heal rabbitmq replies "${orders[@]}"
}

fault_orders_cut_from_postgres() {
  local orders
  mapfile -t orders < <("${compose[@]}" ps -q orders)
  cut postgres both "${orders[@]}"
  fault_t0=$SECONDS
  wait_until "PostgreSQL to end the silent orders' sessions" 60 \
    eval '[ "$(sessions_from "${orders[@]}")" = 0 ]'
  detected="PostgreSQL ended its sessions in $((SECONDS - fault_t0)) s"
  hold_until 25
  heal postgres both "${orders[@]}"
}

fault_worker_paused() {
  local w
  all_consumers
  w=$(one_of worker)
  docker pause "$w" >/dev/null
  at_exit "docker unpause $w"
  fault_t0=$SECONDS
  wait_until "the broker to hand the frozen worker's deliveries on" 90 \
    eval '[ "$(queue consumers)" -lt 8 ]'
  detected="the broker requeued its deliveries in $((SECONDS - fault_t0)) s"
  hold_until 35
  docker unpause "$w" >/dev/null
}

fault_rabbitmq_paused() {
  docker pause "$("${compose[@]}" ps -q rabbitmq)" >/dev/null
  at_exit "docker unpause $("${compose[@]}" ps -q rabbitmq)"
  fault_t0=$SECONDS
  detected="-"
  hold_until 30
  docker unpause "$("${compose[@]}" ps -q rabbitmq)" >/dev/null
}

fault_postgres_paused() {
  docker pause "$("${compose[@]}" ps -q postgres)" >/dev/null
  at_exit "docker unpause $("${compose[@]}" ps -q postgres)"
  fault_t0=$SECONDS
  detected="-"
  hold_until 20
  docker unpause "$("${compose[@]}" ps -q postgres)" >/dev/null
}

# under_fault NAME DESCRIPTION: the fault fault_NAME inside a recorded
# load; fails unless the history checks clean; appends a table row.
under_fault() {
  local name=$1 what=$2 out=$fault_dir/$1.out load figures held
  fault_load --rate 40 --duration "$FAULT_LOAD_SECS" --report-every 5 --products 8 --mix "$FAULT_MIX" \
    --max-error-rate 1 --verify --settle-timeout 120 --history "/history/$name.jsonl" >"$out" 2>&1 &
  load=$!
  wait_until "5 s of load before $what" 60 grep -q '^load: t=5' "$out"
  # A fault that waits for the system to be whole again after its heal
  # says when it healed (fault_healed, seconds after fault_t0).
  fault_healed=
  "fault_$name"
  held=${fault_healed:-$((SECONDS - fault_t0))}
  wait "$load" || fail "$what: the load or its check failed: $(grep -A30 -E '^(history|verify)' "$out" || tail -20 "$out")"
  figures=$(grep '^history: ' "$out") || fail "$what: no history check in: $(tail -20 "$out")"
  # The last changes' own events (stock alerts, line events) may still be
  # on their way out of the outbox.
  wait_until "$what: the outbox and product_queue to drain" 30 settled
  local n='([0-9]+)' s='([0-9.]+)s'
  [[ $figures =~ ^history:\ $n\ changes:\ ok\ $n,\ failed\ $n,\ unknown\ $n\;\ lost\ $n,\ doubled\ $n,\ unexpected\ $n,\ undecided\ $n\;\ writes\ failed\ for\ $s\ \(settled\ in\ $s\)$ ]] ||
    fail "$what: unexpected check line: $figures"
  local m=("${BASH_REMATCH[@]}")
  # For the caller's own assertions.
  fault_unknown=${m[4]} fault_writes_failed_for=${m[9]}
  fault_rows+=("| $what | $held s | ${m[1]} | ${m[2]} | ${m[3]} | ${m[4]} | ${m[5]} | ${m[6]} | ${m[7]} | ${m[8]} | ${m[9]} s | ${m[10]} s | $detected |")
  summary "$what (held ${held} s; $detected): $figures"
}

# faults_begin: a directory for the histories (the load runs as uid
# 10001) and an empty table.
faults_begin() {
  fault_dir=$(mktemp -d)
  chmod 0777 "$fault_dir"
  at_exit "rm -rf $fault_dir"
  fault_rows=()
}

# faults_table TITLE: the table of every fault run since faults_begin.
faults_table() {
  summary "$1:
| fault | held | changes | ok | failed | unknown | lost | doubled | unexpected | undecided | writes failed for | settled in | detected |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${fault_rows[@]}")"
}

compose_faults() {
  log "compose: silent partitions and pauses, each under a recorded load (ordersys load --history)"
  local t=$SECONDS
  faults_begin
  [ "$(queue consumers)" = 8 ] || fail "expected 8 consumers before the faults, found $(queue consumers)"
  under_fault worker_cut_from_postgres "worker cut from PostgreSQL (both ways)"
  under_fault worker_cut_from_rabbitmq "worker cut from RabbitMQ (both ways)"
  under_fault orders_lose_rabbitmq_replies "orders: RabbitMQ's replies dropped (one way)"
  under_fault orders_cut_from_postgres "orders cut from PostgreSQL (both ways)"
  under_fault worker_paused "worker frozen past its heartbeat (zombie)"
  all_consumers
  under_fault rabbitmq_paused "RabbitMQ frozen"
  under_fault postgres_paused "PostgreSQL frozen"
  faults_table "compose faults: every history checked clean in $((SECONDS - t)) s"
}
