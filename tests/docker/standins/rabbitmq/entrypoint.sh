#!/bin/bash
# The official image's contract, in short: default user and password from
# the environment, configuration from /etc/rabbitmq/conf.d, the server in
# the foreground as the rabbitmq user.
set -euo pipefail
if [ "${1:-}" = rabbitmq-server ]; then
  {
    echo "loopback_users.guest = false"
    echo "listeners.tcp.default = 5672"
    echo "management.tcp.port = 15672"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then echo "default_user = $RABBITMQ_DEFAULT_USER"; fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then echo "default_pass = $RABBITMQ_DEFAULT_PASS"; fi
  } > /etc/rabbitmq/conf.d/10-defaults.conf
  # Everything but the Erlang cookie, which may be a read-only secret.
  find /var/lib/rabbitmq -path /var/lib/rabbitmq/.erlang.cookie -prune \
    -o -exec chown rabbitmq:rabbitmq {} +
  unset RABBITMQ_DEFAULT_PASS
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
fi
exec "$@"
