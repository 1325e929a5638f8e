#!/bin/sh
# The official Traefik image's entrypoint logic: flags alone run traefik
# with them; a Traefik subcommand (version, healthcheck) runs through
# traefik; anything else runs as given.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- traefik "$@"
fi
if traefik "$1" --help >/dev/null 2>&1; then
  set -- traefik "$@"
fi
exec "$@"
