#!/usr/bin/env bash
# The canary judge's cost on the consume path, counted rather than timed
# (wall time on this VM spreads by ±20 % between identical passes): one
# bench pass each of inference events from JSON through decode and the
# engine with the playbook's rules, and with the judge's rules too (every
# one of 1,000 models judged), under cachegrind. Estimated cycles weigh a
# first-level miss 10 and a last-level miss 100 instructions.
# Needs valgrind (Debian).
#
# Run: tests/bench/judge-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$(cargo bench --locked -p canaryd-tests --bench kafka --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kafka":
        print(m["executable"])')
counts() {
  local out=$work/$1.out
  BENCH_ONLY=judge BENCH_PASS=$1 valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$out" "$bin" >/dev/null 2>&1
  cg_annotate "$out" | python3 -c 'import re,sys
line = next(l for l in sys.stdin if "PROGRAM TOTALS" in l)
ir, i1, il, dr, d1r, dlr, dw, d1w, dlw = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) \(", line))
print(ir, i1 + d1r + d1w, il + dlr + dlw)'
}
read -r s_ir s_l1 s_ll < <(counts setup)
read -r a_ir a_l1 a_ll < <(counts without)
read -r b_ir b_l1 b_ll < <(counts with)
python3 - "$s_ir" "$s_l1" "$s_ll" "$a_ir" "$a_l1" "$a_ll" "$b_ir" "$b_l1" "$b_ll" <<'PY'
import sys
s_ir, s_l1, s_ll, a_ir, a_l1, a_ll, b_ir, b_l1, b_ll = map(int, sys.argv[1:])
events = 500_000
a, b = a_ir - s_ir, b_ir - s_ir
cyc = lambda ir, l1, ll: ir + 10 * l1 + 100 * ll
ca = cyc(a, a_l1 - s_l1, a_ll - s_ll)
cb = cyc(b, b_l1 - s_l1, b_ll - s_ll)
print(f"judge on decode + engine, 1,000 models all judged: {b/events:.0f} instructions an event against {a/events:.0f} "
      f"({100*(b-a)/a:+.1f}%); estimated cycles {cb/events:.0f} against {ca/events:.0f} ({100*(cb-ca)/ca:+.1f}%)")
PY
