#!/bin/sh
# The official HAProxy image's entrypoint logic: flags alone run haproxy
# with them; haproxy runs in the foreground (-db) under its master (-W).
set -e
if [ "${1#-}" != "$1" ]; then
  set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
