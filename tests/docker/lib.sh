# Helpers of tests/docker/run: logging, waiting on conditions, HTTP with
# curl, the stock invariant, and the summary. Sourced, not run.

summary_lines=()
cleanups=()

log() { printf '\n== [docker %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '   %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}
summary() {
  summary_lines+=("$*")
  info "$*"
}

# Cleanups run at exit, last registered first, whether the run passed or not.
at_exit() { cleanups+=("$*"); }
run_cleanups() {
  local i
  # Each in a subshell: one that fails (or calls fail) does not stop the others.
  for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
    (eval "${cleanups[i]}") >/dev/null 2>&1 || true
  done
  cleanups=()
}
on_exit() {
  local status=$1
  run_cleanups
  printf '\n== Docker scenarios: summary\n'
  local line
  for line in "${summary_lines[@]}"; do printf '   %s\n' "$line"; done
  if [ "$status" = 0 ]; then printf '   all passed\n'; else printf '   FAILED (exit %s)\n' "$status"; fi
}

# wait_until DESCRIPTION SECONDS COMMAND...: polls COMMAND (in a subshell,
# so that a failing check cannot end the run) until it succeeds.
wait_until() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until ("$@") >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not true after ${seconds}s"
    sleep 0.5
  done
}

# Compose v2, as the docker CLI plugin.
compose_bin() {
  docker compose version >/dev/null 2>&1 || fail "Compose v2 is not installed (docker compose)"
  echo "docker compose"
}

# http METHOD URL [JSON]: the body on stdout; fails the run
# unless the answer is 2xx. CURL (an array) may run curl elsewhere, e.g. in
# a container on the Swarm network. TOKEN, when set, is sent as a bearer
# token (the Swarm stack's APIs need one for reads and writes; compose's
# are open).
CURL=(curl)
TOKEN=
http() {
  local method=$1 url=$2 body=${3:-} out status
  out=$("${CURL[@]}" -sS -m 15 -X "$method" -H 'content-type: application/json' \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} \
    ${body:+-d "$body"} -w '\n%{http_code}' "$url" 2>&1) || fail "$method $url: no answer: ${out//$'\n'/ }"
  status=${out##*$'\n'}
  [ "${status:0:1}" = 2 ] || fail "$method $url answered $status: ${out%$'\n'*}"
  printf '%s' "${out%$'\n'*}"
}

# http_status METHOD URL [JSON]: only the answer's HTTP status (000 when
# none came), whatever it is; TOKEN as for http.
http_status() {
  local method=$1 url=$2 body=${3:-}
  "${CURL[@]}" -s -o /dev/null -m 15 -X "$method" -H 'content-type: application/json' \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} \
    ${body:+-d "$body"} -w '%{http_code}' "$url" || true
}

# value METHOD URL JSON FIELD: one field of a 2xx answer (fails the run otherwise).
value() {
  local out
  out=$(http "$1" "$2" "$3") || exit 1
  jq -er ".$4" <<<"$out" || fail "$1 $2: no $4 in $out"
}

# The seed system's own client, unchanged: its paths (the /api/v1 aliases),
# an order created EN_COURS, listed by status, a line added and changed,
# the order cancelled (the moves the transition table keeps for it).
seed_client() { # seed_client PRODUCTS_URL ORDERS_URL
  local products=$1 orders=$2 product order line listed
  # Stock 100: the scenarios' invariant checks expect it of every product.
  product=$(value POST "$products/produits/" '{"nom":"Cahier","prix":2.00,"quantite_en_stock":100}' id)
  order=$(value POST "$orders/api/v1/commandes" '{"status":"EN_COURS"}' id)
  [ "$(value GET "$orders/api/v1/commandes/$order" "" statut)" = EN_COURS ] ||
    fail "the seed client's order $order is not EN_COURS"
  listed=$(http GET "$orders/api/v1/commandes/statut/EN_COURS?limit=1000" | jq "[.[].id] | index($order)")
  [ "$listed" != null ] || fail "order $order is not listed by status EN_COURS"
  line=$(value POST "$orders/api/v1/commandes_produits" \
    "{\"commande_id\":$order,\"produit_id\":$product,\"quantite\":4}" id)
  http PUT "$orders/api/v1/commandes_produits/$line" '{"quantite":5}' >/dev/null
  wait_until "the seed client's line $line to be RESERVE" 60 line_is "$orders" "$line" RESERVE
  [ "$(value GET "$products/produits/$product" "" quantite_en_stock)" = 95 ] ||
    fail "stock of product $product is not 95 after the seed client's line of 5"
  http PUT "$orders/api/v1/commandes/$order" '{"status":"ANNULEE"}' >/dev/null
  wait_until "the seed client's line $line to be LIBERE" 60 line_is "$orders" "$line" LIBERE
  [ "$(value GET "$products/produits/$product" "" quantite_en_stock)" = 100 ] ||
    fail "stock of product $product did not come back to 100 after the seed client cancelled"
  summary "the seed's client (its /api/v1 paths): order EN_COURS, listed by status, line added and changed (stock 100 -> 95), cancelled (back to 100)"
}

# The order-line walkthrough of docs/tour.md ("A session"): create a product, an order and
# a line; the worker reserves it; cancelling gives the stock back.
walkthrough() { # walkthrough PRODUCTS_URL ORDERS_URL
  local products=$1 orders=$2 product order line
  product=$(value POST "$products/produits/" '{"nom":"Stylo","prix":1.50,"quantite_en_stock":100}' id)
  order=$(value POST "$orders/commandes" '{}' id)
  line=$(value POST "$orders/commandes-produits" \
    "{\"commande_id\":$order,\"produit_id\":$product,\"quantite\":3}" id)
  wait_until "line $line to be RESERVE" 60 line_is "$orders" "$line" RESERVE
  [ "$(value GET "$products/produits/$product" "" quantite_en_stock)" = 97 ] ||
    fail "stock of product $product is not 97 after reserving 3"
  http PUT "$orders/commandes/$order" '{"statut":"ANNULEE"}' >/dev/null
  wait_until "line $line to be LIBERE" 60 line_is "$orders" "$line" LIBERE
  [ "$(value GET "$products/produits/$product" "" quantite_en_stock)" = 100 ] ||
    fail "stock of product $product did not come back to 100 after cancelling"
  [ "$(value GET "$orders/commandes/$order" "" total)" = 4.5 ] ||
    fail "order $order total is not 4.50"
  summary "walkthrough: line RESERVE, stock 100 -> 97; cancelled: LIBERE, stock back to 100"
}

line_is() { [ "$(value GET "$1/commandes-produits/$2" "" statut_stock)" = "$3" ]; }

# The order validation of docs/tour.md: an order whose line the stock covers is
# confirmed; one asking more than the stock is refused, naming the line,
# and its line released (the stock starts at 100, as the invariant
# checks expect of every product).
validation_walkthrough() { # validation_walkthrough PRODUCTS_URL ORDERS_URL
  local products=$1 orders=$2 product ok short big motif
  product=$(value POST "$products/produits/" '{"nom":"Cahier","prix":2,"quantite_en_stock":100}' id)
  ok=$(value POST "$orders/commandes" '{}' id)
  http POST "$orders/commandes-produits" "{\"commande_id\":$ok,\"produit_id\":$product,\"quantite\":3}" >/dev/null
  short=$(value POST "$orders/commandes" '{}' id)
  big=$(value POST "$orders/commandes-produits" \
    "{\"commande_id\":$short,\"produit_id\":$product,\"quantite\":200}" id)
  http POST "$orders/commandes/$ok/validation" '{}' >/dev/null
  http POST "$orders/commandes/$short/validation" '{}' >/dev/null
  wait_until "order $ok's validation to be CONFIRMEE" 60 validation_is "$orders" "$ok" CONFIRMEE
  wait_until "order $short's validation to be REFUSEE" 60 validation_is "$orders" "$short" REFUSEE
  [ "$(value GET "$orders/commandes/$ok" "" statut)" = EN_COURS ] || fail "order $ok is not EN_COURS"
  [ "$(value GET "$orders/commandes/$short" "" statut)" = ANNULEE ] || fail "order $short is not ANNULEE"
  motif=$(value GET "$orders/commandes/$short" "" motif)
  grep -q "line $big: asked 200 of product $product" <<<"$motif" || fail "order $short's motif: $motif"
  wait_until "line $big to be LIBERE" 60 line_is "$orders" "$big" LIBERE
  [ "$(value GET "$products/produits/$product" "" quantite_en_stock)" = 97 ] ||
    fail "stock of product $product is not 97 after one confirmed order of 3"
  summary "validation: an order CONFIRMEE (stock 100 -> 97); one asking 200 REFUSEE (\"$motif\"), its line LIBERE"
}

validation_is() { [ "$(value GET "$1/commandes/$2" "" validation)" = "$3" ]; }

# create_products PRODUCTS_URL N STOCK: comma-separated ids.
create_products() {
  local ids=() i id
  for ((i = 0; i < $2; i++)); do
    id=$(value POST "$1/produits/" "{\"nom\":\"load-$i\",\"prix\":1.25,\"quantite_en_stock\":$3}" id)
    ids+=("$id")
  done
  (
    IFS=,
    echo "${ids[*]}"
  )
}

# check_answers ANSWERS WHAT: fails unless requests were answered and none
# failed (5xx or no answer).
check_answers() {
  [[ $1 == *" failed=0" ]] || fail "requests failed $2: $1"
  [[ $1 != "ok=0 "* ]] || fail "no request succeeded $2: $1"
  local ok=${1#ok=} refused=${1#*refused=}
  ok=${ok%% *} refused=${refused%% *}
  ((refused * 10 <= ok)) || fail "too many requests refused $2 (the traffic is wrong): $1"
}

# count_answers STATE_DIR: "ok=N refused=N failed=N" over every traffic loop.
count_answers() {
  cat "$1"/answers.* 2>/dev/null | awk '
    /^2/ {ok++} /^4/ {refused++} !/^[24]/ {failed++}
    END {printf "ok=%d refused=%d failed=%d\n", ok, refused, failed}'
}

# SQL run by PSQL (an array: how to reach psql in the deployment).
PSQL=()
sql() { "${PSQL[@]}" -Atc "$1"; }

# Nothing in flight: every outbox row sent, no line waiting for the worker,
# and product_queue empty (QUEUE_DEPTH is a function printing its depth).
settled() {
  [ "$(sql "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL)
              + (SELECT count(*) FROM commandes_produits WHERE statut_stock = 'EN_ATTENTE')")" = 0 ] &&
    [ "$(queue_depth)" = 0 ]
}

# The system's promise: for every product created with STOCK units and never
# corrected by hand, stock = STOCK - units held by its RESERVE lines.
check_invariant() { # check_invariant STOCK LABEL
  local bad products lines
  bad=$(sql "SELECT count(*) FROM produits p WHERE p.quantite_en_stock <> $1 - coalesce(
               (SELECT sum(quantite) FROM commandes_produits l
                 WHERE l.produit_id = p.id AND l.statut_stock = 'RESERVE'), 0)")
  products=$(sql "SELECT count(*) FROM produits")
  lines=$(sql "SELECT string_agg(statut_stock || ' ' || n, ', ' ORDER BY statut_stock) FROM
               (SELECT statut_stock, count(*) AS n FROM commandes_produits GROUP BY 1) s")
  [ "$bad" = 0 ] || fail "$2: stock invariant broken for $bad of $products products"
  summary "$2: invariant holds for all $products products (lines: ${lines:-none})"
}

# How Prometheus's API is reached (an array, as CURL): from this machine in
# compose, from a container on the stack's network in Swarm.
PROM=(curl)

# prometheus_targets PROMETHEUS_URL: Prometheus's active scrape targets,
# counted by job and health, e.g. "orders up 1, products up 1, worker up 2"
# (jq runs here).
prometheus_targets() {
  "${PROM[@]}" -sf -m 10 "$1/api/v1/targets?state=active" |
    jq -er '[.data.activeTargets[] | "\(.labels.job) \(.health)"]
      | group_by(.) | map("\(.[0]) \(length)") | join(", ")'
}

# wait_for_targets PROMETHEUS_URL SECONDS EXPECTED: polls until
# prometheus_targets prints EXPECTED (every target of every job up, as many
# as expected); fails the run with what it saw last.
wait_for_targets() {
  local url=$1 seconds=$2 expected=$3 got
  local deadline=$((SECONDS + seconds))
  while :; do
    got=$(prometheus_targets "$url" 2>/dev/null) || got="no answer"
    [ "$got" = "$expected" ] && return 0
    ((SECONDS < deadline)) ||
      fail "Prometheus targets after ${seconds}s: ${got:-none}; expected $expected"
    sleep 0.5
  done
}

answered_at_least() { [ "$(cat "$1"/answers.* 2>/dev/null | wc -l)" -ge "$2" ]; }

# hardening CONTAINER: "READ_ONLY drop=CAPS add=CAPS SECURITY_OPTS" as Docker
# set them on the container, e.g. "true drop=ALL add= no-new-privileges:true".
hardening() {
  docker inspect --format \
    '{{.HostConfig.ReadonlyRootfs}} drop={{join .HostConfig.CapDrop ","}} add={{join .HostConfig.CapAdd ","}} {{join .HostConfig.SecurityOpt ","}}' "$1"
}

image_size() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1 / 1e6}'; }

# --- The front door ---------------------------------------------------------

# swagger_renders URL OPERATION: Swagger UI at URL, rendered by headless
# Chromium (it loads its scripts, styles and the OpenAPI document, all
# through the same address), shows OPERATION (a path of the API) among its
# operations.
swagger_renders() {
  local dom
  dom=$(chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --virtual-time-budget=15000 --dump-dom "$1" 2>/dev/null) || return 1
  grep -q "data-path=\"$2\"" <<<"$dom"
}

# Answers by HTTP status of CLIENTS concurrent loops of N requests each
# (curl --parallel), e.g. "200 412\n429 188" (CURL and TOKEN as for http).
burst() { # burst URL REQUESTS PARALLEL
  local i args=()
  for ((i = 0; i < $2; i++)); do args+=(-o /dev/null -w '%{http_code}\n' "$1"); done
  # (A transfer that fails prints 000 and makes curl exit non-zero: counted.)
  { "${CURL[@]}" -s -m 30 --parallel --parallel-immediate --parallel-max "$3" \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "${args[@]}" || true; } | sort | uniq -c | awk '{print $2, $1}'
}

# served_by_instance PROMETHEUS_URL JOB: "INSTANCE REQUESTS" per replica of
# JOB, as Prometheus last scraped them: the API's requests only (not the
# probes, nor the scrapes).
served_by_instance() {
  "${PROM[@]}" -sf -m 10 -G "$1/api/v1/query" --data-urlencode \
    "query=sum by (instance) (ordersys_http_request_duration_seconds_count{job=\"$2\",route!~\"/readyz|/healthz|/metrics\"})" |
    jq -r '.data.result[] | "\(.metric.instance) \(.value[1])"' | sort
}

# scraped_since PROMETHEUS_URL JOB EPOCH: every target of JOB scraped after EPOCH.
scraped_since() {
  local oldest
  oldest=$("${PROM[@]}" -sf -m 10 -G "$1/api/v1/query" --data-urlencode \
    "query=min(timestamp(up{job=\"$2\"}))" | jq -r '.data.result[0].value[1] // 0')
  awk -v a="$oldest" -v b="$3" 'BEGIN {exit !(a > b)}'
}

# shares BEFORE AFTER REPLICAS: the requests each replica served between two
# served_by_instance readings, as "INSTANCE N (P%)" joined by ", "; fails
# unless exactly REPLICAS replicas served and each served at least 20%.
shares() {
  join -a 2 -e 0 -o 0,1.2,2.2 <(echo "$1") <(echo "$2") | awk -v want="$3" '
    {n[$1] = $3 - $2; total += $3 - $2}
    END {
      for (i in n) if (n[i] > 0) served++
      for (i in n) if (n[i] > 0) {
        out = out sep sprintf("%s %d (%.0f%%)", i, n[i], 100 * n[i] / total); sep = ", "
        if (n[i] * 5 < total) low = 1
      }
      print out
      exit !(served == want && !low)
    }'
}

# Traefik's access log line (JSON) of the request whose answer carried
# X-Request-Id ID, read from LOGS (a command printing Traefik's log).
edge_log_line() { # edge_log_line ID LOGS...
  local id=$1
  shift
  "$@" 2>&1 | grep -F "\"downstream_X-Request-Id\":\"$id\"" | sed -n 1p
}

# socket_proxy_checks URL PROVIDER CURL...: the socket proxy at URL answers
# the read calls Traefik's PROVIDER (docker or swarm) makes, refuses (403)
# the other provider's, and every write and every other read; CURL is how
# to run curl where the proxy is reachable.
socket_proxy_checks() {
  local base=$1 provider=$2 call status via=("${@:3}") docker=200 swarm=403
  [ "$provider" = docker ] || { docker=403 swarm=200; }
  while read -r call; do
    # shellcheck disable=SC2086 # METHOD PATH EXPECTED
    set -- $call
    status=$("${via[@]}" -s --path-as-is -o /dev/null -m 10 -X "$1" -w '%{http_code}' "$base$2") || status=000
    [ "$status" = "$(eval echo "$3")" ] || fail "socket proxy ($provider): $1 $2 answered $status, not $(eval echo "$3")"
  done <<'CALLS'
GET /version 200
GET /_ping 200
GET /v1.41/version 200
GET /v1.41/containers/json $docker
GET /v1.41/services $swarm
GET /v1.41/tasks $swarm
POST /containers/create 403
POST /v1.41/containers/create 403
DELETE /v1.41/containers/anything 403
POST /v1.41/services/create 403
PUT /v1.41/containers/anything/archive 403
GET /v1.41/containers/anything/logs 403
GET /v1.41/secrets 403
GET /v1.41/swarm 403
GET /v1.41/containers/../secrets 403
CALLS
}

# One request followed from the edge to the stock: a line's creation
# through Traefik at EDGE_URL; the X-Request-Id of its answer in Traefik's
# access log (JSON; LOGS is a command printing it) and on the product's
# stock movement. The order is cancelled after, the stock back to 100.
edge_trace() { # edge_trace EDGE_URL LOGS...
  local edge_url=$1 product order headers id line logs=("${@:2}")
  product=$(value POST "$edge_url/produits/" '{"nom":"Trace","prix":1,"quantite_en_stock":100}' id)
  order=$(value POST "$edge_url/commandes" '{}' id)
  headers=$("${CURL[@]}" -s -D - -o /dev/null -m 15 -H 'content-type: application/json' \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} \
    -d "{\"commande_id\":$order,\"produit_id\":$product,\"quantite\":1}" "$edge_url/commandes-produits")
  id=$(awk -F': ' 'tolower($1) == "x-request-id" {print $2}' <<<"$headers" | tr -d '\r')
  [ -n "$id" ] || fail "no X-Request-Id on the answer: $headers"
  wait_until "the request $id in Traefik's access log" 30 eval \
    '[ -n "$(edge_log_line "$id" "${logs[@]}")" ]'
  line=$(edge_log_line "$id" "${logs[@]}")
  jq -e '.RequestMethod == "POST" and .DownstreamStatus == 201 and (.ServiceName | startswith("orders"))' \
    <<<"$line" >/dev/null || fail "Traefik's access line for $id: $line"
  wait_until "the stock movement of request $id" 60 eval \
    '[ "$(sql "SELECT count(*) FROM mouvements WHERE request_id = '"'$id'"' AND produit_id = '"$product"'")" = 1 ]'
  summary "request $id followed: Traefik's JSON access line (POST /commandes-produits 201, service $(jq -r .ServiceName <<<"$line"), $(jq -r .ClientHost <<<"$line")), then product $product's stock movement"
  http PUT "$edge_url/commandes/$order" '{"statut":"ANNULEE"}' >/dev/null
  wait_until "the traced line to be released" 60 eval \
    '[ "$(value GET "$edge_url/produits/$product" "" quantite_en_stock)" = 100 ]'
}
