#!/usr/bin/env python3
"""Writes deploy/examples/rollout.jsonl: 90 hours of a summarizer canary
(v2.1.0) against its stable, one sample every 9 minutes (inside the
example's 10-minute staleness), for `canaryd replay --config
deploy/examples/canaryd.yaml` to carry through the playbook's plan.

Healthy, except for two episodes that the plan must handle:
- hours 2:00-2:30: the error rate at 1.2 %, above the playbook's 1 % health
  criterion (a low rule): the hold clock stops until it clears;
- hours 10:00-10:40: p95 latency 30 % over the stable's (a medium rule,
  reduce_traffic): the rollout steps back one stage.

Deterministic: run it again and the file is the same.
"""
import json
import random
from datetime import datetime, timedelta, timezone

START = datetime(2026, 3, 2, tzinfo=timezone.utc)
STEP = timedelta(minutes=9)
HOURS = 90


def main():
    rng = random.Random(7)
    lines = []
    t = START
    while t < START + timedelta(hours=HOURS):
        h = (t - START).total_seconds() / 3600
        ts = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        stable_p95 = round(1200 + rng.uniform(-40, 40), 1)
        error = 0.012 if 2.0 <= h < 2.5 else round(0.004 + rng.uniform(-0.001, 0.001), 5)
        slow = 10.0 <= h < 10 + 40 / 60
        canary_p95 = round(stable_p95 * (1.3 if slow else 1.0 + rng.uniform(-0.03, 0.03)), 1)
        canary = {"model": "summarizer", "namespace": "ml-serving", "version": "v2.1.0"}
        stable = {"model": "summarizer", "namespace": "ml-serving"}
        for name, value, labels in (
            ("canary_error_rate", error, canary),
            ("canary_p95_latency", canary_p95, canary),
            ("stable_p95_latency", stable_p95, stable),
        ):
            lines.append(json.dumps(
                {"type": "metric", "ts": ts, "name": name, "value": value, "labels": labels},
                separators=(",", ":"),
            ))
        t += STEP
    with open("deploy/examples/rollout.jsonl", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
