#!/usr/bin/env bash
# The rollout controller's overhead, counted rather than timed: wall time on
# a shared VM spreads by ±20 % between identical passes, more than the 5 %
# target. Each bench pass (events set up only; the engine alone; the engine
# and a controller carrying all 1,000 models through the playbook's plan)
# runs once under cachegrind, whose instruction and simulated cache-miss
# counts are the same on every run. Two paths:
#   - metric events, already decoded, through the engine (the strict one:
#     the controller is set against the engine alone);
#   - inference events from JSON: decode, engine, controller (the consume
#     path without Kafka).
# The estimated cycles weigh a first-level miss 10 and a last-level miss
# 100 instructions, a usual rough cost.
# Needs valgrind (Debian).
#
# Run: tests/bench/controller-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The bench executable cargo builds for package $1, bench $2.
bench_bin() {
  cargo bench --locked -p "$1" --bench "$2" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2"
}

# Counts of one pass: instructions, first-level misses (I and D), last-level misses.
counts() {
  local out=$work/$RANDOM.out
  valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$out" "$@" >/dev/null 2>&1
  cg_annotate "$out" | python3 -c 'import re,sys
line = next(l for l in sys.stdin if "PROGRAM TOTALS" in l)
ir, i1, il, dr, d1r, dlr, dw, d1w, dlw = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) \(", line))
print(ir, i1 + d1r + d1w, il + dlr + dlw)'
}

report() {
  python3 - "$@" <<'PY'
import sys
name, events = sys.argv[1], int(sys.argv[2])
setup, without, with_ = ([int(x) for x in a.split()] for a in sys.argv[3:6])
def cycles(c): return c[0] + 10 * c[1] + 100 * c[2]
engine = [b - a for a, b in zip(setup, without)]
controller = [b - a for a, b in zip(without, with_)]
print(f"{name}: controller {100 * controller[0] / engine[0]:+.1f}% instructions, "
      f"{100 * cycles(controller) / cycles(engine):+.1f}% estimated cycles "
      f"({engine[0] / events:.0f} instructions an event without it, {controller[0] / events:.0f} more with it)")
PY
}

engine=$(bench_bin canaryd-rules engine)
kafka=$(bench_bin canaryd-tests kafka)
# The three passes of each path run side by side: counts do not depend on it.
for mode in setup without with; do
  (BENCH_PASS=$mode counts "$engine" >"$work/engine.$mode") &
  (BENCH_ONLY=rollout BENCH_PASS=$mode counts "$kafka" >"$work/kafka.$mode") &
  wait
done
report "metric events, engine alone" 200000 "$(cat "$work/engine.setup")" "$(cat "$work/engine.without")" "$(cat "$work/engine.with")"
report "inference events, decode + engine" 500000 "$(cat "$work/kafka.setup")" "$(cat "$work/kafka.without")" "$(cat "$work/kafka.with")"
