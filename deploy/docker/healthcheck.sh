#!/bin/bash
# gdnserve-healthcheck [PORT] [PATH] [HOST]: exits 0 when GET http://HOST:PORT/PATH
# answers 200 (defaults: 8000, /healthz, 127.0.0.1), else 1 with one line on
# stderr. The image's HEALTHCHECK.
#
# It speaks HTTP/1.0 over bash's /dev/tcp, so the image needs neither curl
# (and libcurl's dozen libraries) nor wget; and it asks the HTTP front end
# itself, unlike `gdnserve-cli --info`, which would test the gRPC port.
# Docker's --timeout bounds it.
set -u
port=${1:-8000}
path=${2:-/healthz}
host=${3:-127.0.0.1}

if ! { exec 3<>"/dev/tcp/${host}/${port}"; } 2>/dev/null; then
  echo "gdnserve-healthcheck: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
status=""
IFS= read -r -t 5 status <&3 2>/dev/null
exec 3<&-
status=${status%$'\r'}
case "$status" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
esac
echo "gdnserve-healthcheck: GET ${path}: ${status:-no response}" >&2
exit 1
