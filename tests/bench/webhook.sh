#!/usr/bin/env bash
# Alertmanager webhook throughput and latency: wrk (Debian) posts 10-alert
# payloads to a release `canaryd run` on 127.0.0.1, canaryd pinned to one
# core and wrk to the other. Needs Tansu (tests/run installs it) and wrk.
#
# Run: tests/bench/webhook.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${CANARYD_CACHE:-$HOME/.cache/canaryd}"
TANSU="${TANSU_BIN:-$CACHE/tansu-0.6.0/bin/tansu}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked -p canaryd >/dev/null

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kafka=$(port); http=$(port)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$kafka" --advertised-listener-url "tcp://127.0.0.1:$kafka" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$kafka") 2>/dev/null && break; sleep 0.1; done
for t in events events-dlq; do "$TANSU" topic create --broker "tcp://127.0.0.1:$kafka" --partitions 1 "$t" >/dev/null; done

echo -n bench-token >"$work/token"
cat >"$work/canaryd.yaml" <<YAML
rules: [$PWD/deploy/examples/canary-alerts.yaml, $PWD/deploy/examples/playbook-triggers.yaml]
dry_run: true
http:
  listen: 127.0.0.1:$http
  auth: {bearer: {file: $work/token}}
kafka:
  brokers: 127.0.0.1:$kafka
  topics: [events]
  dead_letter_topic: events-dlq
YAML
taskset -c 0 target/release/canaryd run --config "$work/canaryd.yaml" 2>"$work/canaryd.log" &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$http/-/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$http/-/ready" >/dev/null || { cat "$work/canaryd.log"; exit 1; }

CANARYD_TOKEN=bench-token taskset -c 1 wrk -t1 -c16 -d10s --latency -s tests/bench/alertmanager.lua \
  "http://127.0.0.1:$http" | tail -1
curl -s "http://127.0.0.1:$http/metrics" | grep '^canaryd_alertmanager_payloads_total'
