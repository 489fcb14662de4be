#!/usr/bin/env bash
# canaryd against Prometheus + Alertmanager at their tightest settings
# (scrape 1s, evaluation 1s, for: 0s, group_wait: 0s): the same breach at
# the same instant; breach -> rollback PATCH through Kafka for canaryd,
# breach -> webhook for Alertmanager. Prints both medians and p99s and the
# ratio. Needs Tansu, prometheus and prometheus-alertmanager (tests/run
# installs them). See tests/benches/peer.rs.
#
# Run: tests/bench/side-by-side.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE="${CANARYD_CACHE:-$HOME/.cache/canaryd}"
export TANSU_BIN="${TANSU_BIN:-$CACHE/tansu-0.6.0/bin/tansu}"
for tool in prometheus prometheus-alertmanager; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: tests/run installs it" >&2; exit 1; }
done
exec cargo bench --locked -p canaryd-tests --bench peer
