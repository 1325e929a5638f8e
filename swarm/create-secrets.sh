#!/usr/bin/env bash
# Creates the Docker secrets swarm/stack.yml reads. Run once on a manager:
#   POSTGRES_PASSWORD=... RABBITMQ_PASSWORD=... swarm/create-secrets.sh
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
: "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}"
printf '%s' "$POSTGRES_PASSWORD" | docker secret create ordersys_postgres_password -
printf 'postgres://ordersys:%s@postgres:5432/ordersys' "$POSTGRES_PASSWORD" | docker secret create ordersys_database_url -
printf 'amqp://ordersys:%s@rabbitmq:5672/%%2f' "$RABBITMQ_PASSWORD" | docker secret create ordersys_amqp_url -
printf 'default_user = ordersys\ndefault_pass = %s\n' "$RABBITMQ_PASSWORD" | docker secret create ordersys_rabbitmq_conf -
