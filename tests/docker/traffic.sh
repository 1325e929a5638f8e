#!/usr/bin/env bash
# Order traffic for the Docker scenarios, with nothing but curl and jq, so
# it runs on the host (compose) and in a container on the Swarm overlay
# network alike.
#
#   traffic.sh changes ORDERS_URL PRODUCT_IDS CLIENTS STATE_DIR
#       CLIENTS loops, each creating an order, then adding, changing and
#       deleting lines on the comma-separated products, cancelling or
#       deleting the order and starting another, until STATE_DIR/stop exists.
#   traffic.sh steady ORDERS_URL PRODUCT_ID CLIENTS STATE_DIR
#       CLIENTS loops alternating GET /commandes/{id} and POST
#       /commandes-produits on an open order, a new one every 50 lines (the
#       rolling-update client).
#
# Each loop appends one line per request to STATE_DIR/answers.<n>: the HTTP
# status, or 000 when no answer came (refused, reset, timed out). The
# caller counts them. Refusals (4xx) are expected under concurrent
# cancellations; 5xx and 000 are failures.
set -uo pipefail

mode=$1 orders=$2 products=$3 clients=$4 state=$5
IFS=, read -r -a product_ids <<<"$products"

request() { # request METHOD PATH [JSON] -> prints the body; status to $answers
  local out status
  out=$(curl -s -m 10 -X "$1" -H 'content-type: application/json' ${3:+-d "$3"} \
    -w '\n%{http_code}' "$orders$2" 2>/dev/null) || true
  status=${out##*$'\n'}
  [ -n "$status" ] || status=000
  echo "$status" >>"$answers"
  if [ "${status:0:1}" = 2 ]; then printf '%s' "${out%$'\n'*}"; fi
}

pick() { echo "${product_ids[RANDOM % ${#product_ids[@]}]}"; }

changes() {
  local order="" lines=() roll line body
  while [ ! -e "$state/stop" ]; do
    if [ -z "$order" ]; then
      order=$(request POST /commandes '{}' | jq -r '.id // empty')
      lines=()
      continue
    fi
    roll=$((RANDOM % 100))
    if ((roll < 40)) || ((${#lines[@]} == 0)); then
      body=$(printf '{"commande_id":%s,"produit_id":%s,"quantite":%s}' "$order" "$(pick)" $((1 + RANDOM % 5)))
      line=$(request POST /commandes-produits "$body" | jq -r '.id // empty')
      [ -n "$line" ] && lines+=("$line")
    elif ((roll < 65)); then
      request PUT "/commandes-produits/${lines[RANDOM % ${#lines[@]}]}" \
        "{\"quantite\":$((1 + RANDOM % 5))}" >/dev/null
    elif ((roll < 75)); then
      request PUT "/api/v1/commandes_produits/${lines[RANDOM % ${#lines[@]}]}" \
        "{\"produit_id\":$(pick)}" >/dev/null
    elif ((roll < 88)); then
      local i=$((RANDOM % ${#lines[@]}))
      request DELETE "/commandes-produits/${lines[i]}" >/dev/null
      lines=("${lines[@]:0:i}" "${lines[@]:i+1}")
    elif ((roll < 95)); then
      request PUT "/commandes/$order" '{"statut":"ANNULEE"}' >/dev/null
      order=""
    else
      request DELETE "/commandes/$order" >/dev/null
      order=""
    fi
  done
}

steady() {
  local order="" lines=0
  while [ ! -e "$state/stop" ]; do
    # A fresh order every 50 lines: an order holds at most 100.
    if [ -z "$order" ] || ((lines >= 50)); then
      order=$(request POST /commandes '{}' | jq -r '.id // empty')
      lines=0
      continue
    fi
    request GET "/commandes/$order" >/dev/null
    request POST /commandes-produits \
      "{\"commande_id\":$order,\"produit_id\":${product_ids[0]},\"quantite\":1}" >/dev/null
    lines=$((lines + 1))
  done
}

# Stopped or killed: the loops go too.
trap 'kill $(jobs -p) 2>/dev/null' EXIT TERM INT

for n in $(seq 1 "$clients"); do
  answers="$state/answers.$n"
  : >"$answers"
  case $mode in
    changes) changes & ;;
    steady) steady & ;;
    *) echo "traffic.sh: unknown mode $mode" >&2; exit 2 ;;
  esac
done
wait
