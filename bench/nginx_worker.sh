#!/usr/bin/env bash
# The benchmark's reference worker: one nginx process honouring lbproxy's worker contract.
#
# Environment (as lbproxy's local backend sets it): PORT (app port), PORT_HEALTH (where GET /ping answers;
# default PORT). Optional: BENCH_TMP, a directory to create the worker's files in (the bench deletes it at
# the end; default: a new mktemp directory, which nothing deletes, since this script execs nginx).
#
# Routes: GET /ping -> 200 (ready at once), /small -> 13 bytes, /64k -> 64 KiB, /1m -> 1 MiB (static files,
# sendfile). One worker process, no access log, keep-alive without a request cap, so that the "direct" row of
# the benchmark is limited by this server and nothing else.
#
# The script ends with `exec nginx`: the worker's process is nginx itself, so lbproxy's SIGTERM to the
# process group reaches it (SIGTERM = nginx's fast shutdown).
set -euo pipefail

: "${PORT:?PORT is required (the worker contract)}"
PORT_HEALTH="${PORT_HEALTH:-$PORT}"
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"

if [[ -n "${BENCH_TMP:-}" ]]; then
  mkdir -p "$BENCH_TMP"
  dir="$(mktemp -d "$BENCH_TMP/nginx-worker-$PORT.XXXXXX")"
else
  dir="$(mktemp -d -t lbproxy-bench-worker.XXXXXX)"
fi
mkdir -p "$dir/www" "$dir/tmp"
head -c 65536 /dev/zero | tr '\0' 'x' >"$dir/www/64k"
head -c 1048576 /dev/zero | tr '\0' 'x' >"$dir/www/1m"
# Started as root, nginx's worker process would drop to user nobody, which may not reach a private BENCH_TMP:
# keep the starting user (a benchmark on loopback, not a public server).
user_line=""
if [[ "$(id -u)" == 0 ]]; then
  user_line="user $(id -un) $(id -gn);"
fi

# Never ask for more descriptors than the hard limit allows (nginx logs an alert and goes on otherwise).
nofile="$(ulimit -Hn)"
[[ "$nofile" == unlimited || "$nofile" -gt 70000 ]] && nofile=70000
# nginx starts closing fresh connections once fewer than 1/16 of worker_connections are free: leave that
# margin above the descriptor limit, so that the descriptors are what binds.
connections=$(( nofile + nofile / 15 + 64 ))

health_listen=""
if [[ "$PORT_HEALTH" != "$PORT" ]]; then
  health_listen="server { listen 127.0.0.1:$PORT_HEALTH; location = /ping { return 200; } }"
fi

cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes 1;
worker_rlimit_nofile $nofile;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections $connections; multi_accept on; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  default_type application/octet-stream;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location = /ping { return 200; }
    location = /small { default_type text/plain; return 200 "hello, world\n"; }
    location / { root $dir/www; }
  }
  $health_listen
}
EOF

echo "nginx worker: port $PORT, health port $PORT_HEALTH, config $dir/nginx.conf"
exec "$NGINX" -e stderr -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
