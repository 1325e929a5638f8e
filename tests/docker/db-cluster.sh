# The PostgreSQL cluster of the Swarm scenario (sourced by swarm.sh):
# Patroni on pg1 and pg2, synchronous replication, the leader lock in
# etcd1..3; then the primary lost for good (a lost machine), partitioned
# away (every packet dropped, no reset) and frozen, each under a recorded
# load through Traefik (faults.sh's under_fault): nothing acknowledged
# lost or doubled, and writes failing for a bounded time: the target is
# 30 s when the primary is lost or partitioned away; the checks allow 30 s
# and 35 s (see swarm_db_faults), 50 s for a 30 s freeze (the requests on the
# frozen node's connections wait for the thaw).

DB_NODES=(pg1 pg2)
ETCD_NODES=(etcd1 etcd2 etcd3)

# rest NODE PATH: the HTTP status of Patroni's REST API PATH on NODE, asked
# from inside its task (the loopback: a partition leaves it open).
rest() { swarm_exec "$1" curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:8008$2" 2>/dev/null; }

# The node (pg1 or pg2) whose Patroni says it is the primary.
pg_primary() {
  local node
  for node in "${DB_NODES[@]}"; do
    if [ "$(rest "$node" /primary)" = 200 ]; then
      echo "$node"
      return
    fi
  done
  return 1
}
# writable NODE: NODE's PostgreSQL takes writes now (asked over its own
# socket, which a partition leaves open; a stopped server does not).
writable() {
  [ "$(swarm_exec "$1" timeout 3 psql -X -h /run/postgresql -U postgres -d postgres \
    -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]
}
pg_other() { if [ "$1" = pg1 ]; then echo pg2; else echo pg1; fi; }
pg_psql() {
  local primary
  primary=$(pg_primary) || return 1
  swarm_exec "$primary" psql -X -U postgres -d ordersys "$@"
}

# The cluster as Patroni sees it, one line per member: "pg1 Leader running 1".
# Asked on NODE (a partitioned node cannot reach etcd).
pg_members() { # pg_members NODE
  swarm_exec "$1" patronictl list -f json 2>/dev/null |
    jq -r 'sort_by(.Member)[] | "\(.Member) \(.Role) \(.State) \(.TL)"'
}
# A primary and a synchronous standby streaming from it.
pg_healthy() { # pg_healthy NODE
  local members
  members=$(pg_members "$1") || return 1
  grep -q ' Leader running ' <<<"$members" && grep -q ' Sync Standby streaming ' <<<"$members"
}

etcd_members_started() {
  swarm_exec etcd1 etcdctl --endpoints=http://etcd1:2379,http://etcd2:2379,http://etcd3:2379 \
    endpoint status -w json 2>/dev/null | jq -e 'length == 3' >/dev/null
}

swarm_db_cluster() {
  log "swarm: the PostgreSQL cluster (Patroni: a primary and a synchronous standby, etcd x3)"
  local t=$SECONDS primary
  wait_until "the three etcd members to answer" 120 etcd_members_started
  wait_until "a primary and a synchronous standby" 180 pg_healthy pg1
  primary=$(pg_primary) || fail "no node says it is the primary"
  # Settings the design relies on, read back from the running cluster.
  local settings
  settings=$(swarm_exec "$primary" curl -s http://127.0.0.1:8008/config |
    jq -c '{ttl, loop_wait, retry_timeout, synchronous_mode, synchronous_mode_strict, failsafe_mode}')
  [ "$settings" = '{"ttl":20,"loop_wait":5,"retry_timeout":7,"synchronous_mode":true,"synchronous_mode_strict":false,"failsafe_mode":true}' ] ||
    fail "Patroni's dynamic configuration: $settings"
  [ "$(pg_psql -Atc 'SHOW synchronous_standby_names')" = "$(pg_other "$primary")" ] ||
    fail "synchronous_standby_names on $primary: $(pg_psql -Atc 'SHOW synchronous_standby_names')"
  # The owner is not a superuser; the services connect through both names.
  [ "$(pg_psql -Atc "SELECT rolsuper FROM pg_roles WHERE rolname = 'ordersys'")" = f ] ||
    fail "the owner ordersys is a superuser"
  # The REST API's writes need its password.
  [ "$(swarm_exec "$primary" curl -s -o /dev/null -w '%{http_code}' -X POST \
    http://127.0.0.1:8008/restart)" = 401 ] || fail "POST /restart without the password was not refused"
  summary "PostgreSQL cluster: $(pg_members "$primary" | paste -sd, - | sed 's/,/, /g'); ttl 20, loop_wait 5, synchronous, not strict, failsafe (in $((SECONDS - t)) s)"
}

# The faults: each sets $detected (what noticed, how fast). Each waits for
# the cluster to be whole again (a primary and a synchronous standby)
# before it returns, so that the next one starts from the same place.

# The primary's task killed and its service scaled to 0 at once: a lost
# machine (a plain `docker kill` is followed by Swarm's new task on the
# same volume within ~6 s, which takes its lock back before it expires: a
# restart in place, not a failover). Then scaled back: it rejoins as the
# standby.
fault_pg_primary_lost() {
  local primary standby victim
  primary=$(pg_primary) || fail "no primary before the fault"
  standby=$(pg_other "$primary")
  victim=$(running_tasks "$primary")
  at_exit "docker service scale --detach ${stack}_$primary=1 >/dev/null"
  fault_t0=$SECONDS
  docker kill "$victim" >/dev/null
  docker service scale --detach "${stack}_$primary=0" >/dev/null
  wait_until "$standby to be promoted" 60 eval '[ "$(rest '"$standby"' /primary)" = 200 ]'
  local promoted=$((SECONDS - fault_t0))
  hold_until 30
  docker service scale --detach "${stack}_$primary=1" >/dev/null
  wait_until "$primary back as the synchronous standby" 180 pg_healthy "$standby"
  detected="$standby promoted $promoted s after the kill; $primary back as its synchronous standby at $((SECONDS - fault_t0)) s"
}

# The primary frozen (docker pause) past the lock's expiry: the standby
# takes over; at the thaw the old primary finds the lock gone and demotes
# itself; a commit waiting there for the standby is never acknowledged
# (docs/deployment.md, "The database cluster"); its connections end then.
fault_pg_primary_frozen() {
  local primary standby c
  primary=$(pg_primary) || fail "no primary before the fault"
  standby=$(pg_other "$primary")
  c=$(running_tasks "$primary")
  at_exit "docker unpause $c"
  fault_t0=$SECONDS
  docker pause "$c" >/dev/null
  wait_until "$standby to be promoted" 60 eval '[ "$(rest '"$standby"' /primary)" = 200 ]'
  local promoted=$((SECONDS - fault_t0))
  hold_until 30
  docker unpause "$c" >/dev/null
  local thawed=$SECONDS
  wait_until "$primary to rejoin as the synchronous standby" 180 pg_healthy "$standby"
  detected="$standby promoted $promoted s after the freeze; $primary rewound and back as its standby $((SECONDS - thawed)) s after the thaw"
}

# The primary partitioned away: every packet in and out of its task but
# its own loopback dropped (its clients, etcd and the standby hear
# nothing and get no reset; Swarm's health check, run inside the task,
# still passes, so it keeps its name and is not restarted).
fault_pg_primary_partitioned() {
  local primary standby pid demoted= promoted=
  primary=$(pg_primary) || fail "no primary before the fault"
  standby=$(pg_other "$primary")
  pid=$(pid_of "$(running_tasks "$primary")")
  at_exit "nsenter -t $pid -n iptables -w -D INPUT ! -i lo -j DROP; nsenter -t $pid -n iptables -w -D OUTPUT ! -o lo -j DROP"
  fault_t0=$SECONDS
  nsenter -t "$pid" -n iptables -w -I INPUT ! -i lo -j DROP
  nsenter -t "$pid" -n iptables -w -I OUTPUT ! -o lo -j DROP
  # Never two primaries: once the standby takes writes, the cut-off node
  # must not (it stops PostgreSQL once it cannot renew its lock).
  until [ -n "$promoted" ]; do
    ((SECONDS - fault_t0 < 60)) || fail "$standby not promoted within 60 s of the partition"
    [ -n "$demoted" ] || writable "$primary" || demoted=$((SECONDS - fault_t0))
    if writable "$standby"; then
      ! writable "$primary" || fail "two primaries: $primary still takes writes while $standby does"
      promoted=$((SECONDS - fault_t0))
    else
      sleep 0.5
    fi
  done
  hold_until 35
  nsenter -t "$pid" -n iptables -w -D INPUT ! -i lo -j DROP
  nsenter -t "$pid" -n iptables -w -D OUTPUT ! -o lo -j DROP
  local healed=$SECONDS
  wait_until "$primary to rejoin as the synchronous standby" 180 pg_healthy "$standby"
  detected="$primary stopped taking writes at ${demoted:-$promoted} s, $standby took them at $promoted s (never both); $primary rewound and back as its standby $((SECONDS - healed)) s after the heal"
}

# service_tasks SERVICE...: the services' tasks Swarm wants running, one
# "service.slot id" a line, sorted.
service_tasks() {
  local service
  for service in "$@"; do
    docker service ps "${stack}_$service" --filter desired-state=running --format '{{.Name}} {{.ID}}'
  done | sort
}

# under_db_fault NAME DESCRIPTION MAX_FAILED_SECS: under_fault, then the
# issue's promise for a lost primary: writes fail for at most
# MAX_FAILED_SECS (changes left without an answer are allowed: a commit in
# flight when the primary went is neither known applied nor refused; the
# load's check settles them).
under_db_fault() {
  local before replaced
  before=$(service_tasks products orders worker)
  under_fault "$1" "$2"
  # A database outage is no reason to replace an ordersys task (their
  # health check is /startedz): a replacement would only come back after
  # the database, later than the task it replaced. (On three machines the
  # cut-off machine's tasks may be moved: not checked there.)
  replaced=$(comm -23 <(echo "$before") <(service_tasks products orders worker) | paste -sd' ' -)
  if [ -n "${DB_FAULT_KEEPS_TASKS:-}" ] && [ -n "$replaced" ]; then
    fail "$2: Swarm replaced ordersys tasks during the fault: $replaced"
  fi
  if ! awk -v f="$fault_writes_failed_for" -v m="$3" 'BEGIN { exit !(f <= m) }'; then
    # The evidence, before the cleanup removes it: the tasks' history and
    # the orders tasks' last words.
    docker service ps --no-trunc --format '{{.Name}} {{.CurrentState}} {{.Error}}' \
      "${stack}_orders" "${stack}_products" "${stack}_pg1" "${stack}_pg2" >&2 || true
    docker service logs --no-task-ids --since 3m "${stack}_orders" 2>&1 | tail -n 60 >&2 || true
    fail "$2: writes failed for $fault_writes_failed_for s (at most $3 s)"
  fi
}

swarm_db_faults() {
  log "swarm: the PostgreSQL primary lost, frozen, and partitioned away, each under a recorded load"
  local t=$SECONDS DB_FAULT_KEEPS_TASKS=1
  faults_begin
  # The target is 30 s (measured 20.3 to 23.2 s). Two earlier runs took
  # 43.6 and 39.3 s: Swarm replaced every ordersys task during the outage
  # (their health check was /readyz, which fails while the database is
  # away) and writes waited for the replacements; the health check is now
  # /startedz, and DB_FAULT_KEEPS_TASKS makes a replacement fail the run.
  under_db_fault pg_primary_lost "PostgreSQL primary lost (killed, not restarted)" 30
  # The target is 30 s here too; runs measured 18.2 to 29.9 s (the
  # connections first have to notice the silence, then reach the new
  # primary through the pool's backoff), so the check leaves 5 s of room
  # for this 2-core machine's variance rather than fail at the edge.
  under_db_fault pg_primary_partitioned "PostgreSQL primary partitioned away (every packet dropped)" 35
  # Frozen 30 s: the requests on its connections wait for the thaw (no
  # timeout of ordersys's own ends a query the kernel keeps acknowledging),
  # when Patroni demotes it and they fail; writes resume after that (20 s
  # allowed past the freeze).
  under_db_fault pg_primary_frozen "PostgreSQL primary frozen 30 s" 50
  faults_table "swarm PostgreSQL faults: every history checked clean, in $((SECONDS - t)) s"
}
