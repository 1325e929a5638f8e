#!/usr/bin/env bash
# Every metric name the Grafana dashboard's PromQL queries, one per line,
# sorted: the exact series names (ordersys_http_request_duration_seconds_bucket,
# not the histogram's base name), so that a test can look each one up in a
# live /metrics.
#
#   tests/docker/dashboard-metrics.sh [DASHBOARD_JSON]
#       default: config/grafana/dashboards/ordersys.json
#
# Reads with jq every "expr" of every panel (rows' nested panels too) and
# the query of every query variable, then keeps the PromQL names: quoted
# strings, label matchers, ranges, Grafana variables and grouping clauses
# are removed first, then functions and aggregations (a name followed by
# "(") and keywords. Fails if the file has no query, or if a panel's query
# names no metric.
set -euo pipefail
dashboard=${1:-$(dirname "$0")/../../config/grafana/dashboards/ordersys.json}

# One query per line: "panel<TAB>PromQL" or "variable<TAB>query".
queries=$(jq -r '
  ( [.. | objects | select(has("expr")) | .expr | strings | select(length > 0)]
    | map("panel\t" + gsub("\n"; " ")) ),
  ( [.templating.list[]? | select(.type == "query") | .query
      | if type == "object" then .query else . end | strings | select(length > 0)]
    | map("variable\t" + gsub("\n"; " ")) )
  | .[]' "$dashboard")
[ -n "$queries" ] || { echo "dashboard-metrics: no PromQL query in $dashboard" >&2; exit 1; }

keywords='^(by|without|on|ignoring|group_left|group_right|bool|offset|and|or|unless|inf|nan)$'
# shellcheck disable=SC2016 # the backquotes are PromQL strings, not expansions
names() { # names QUERY: the metric names QUERY selects, one per line
  printf '%s\n' "$1" |
    sed -E 's/"([^"\\]|\\.)*"//g; s/'\''([^'\''\\]|\\.)*'\''//g; s/`[^`]*`//g' |
    sed -E 's/\{[^}]*\}//g; s/\[[^]]*\]//g' |
    sed -E 's/\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*//g' |
    sed -E 's/label_values\(([^,()]*),[^)]*\)/\1/g; s/label_values\([^)]*\)//g' |
    sed -E 's/(^|[^A-Za-z0-9_:])(by|without|on|ignoring|group_left|group_right)[[:space:]]*\([^)]*\)/\1/g' |
    grep -oE '[A-Za-z0-9_:.]+[[:space:]]*\(?' |
    grep -vE '\($' | sed -E 's/[[:space:]]+$//' |
    grep -E '^[A-Za-z_:]' | grep -viE "$keywords" || true
}

while IFS=$'\t' read -r kind query; do
  found=$(names "$query")
  if [ -z "$found" ] && [ "$kind" = panel ]; then
    echo "dashboard-metrics: no metric name in: $query" >&2
    exit 1
  fi
  [ -z "$found" ] || printf '%s\n' "$found"
done <<<"$queries" | sort -u
