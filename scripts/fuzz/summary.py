#!/usr/bin/env python3
"""Summarises a schemathesis NDJSON report: requests sent, answers by status class, and each
operation that got a 5xx. Usage: summary.py REPORT.ndjson"""

import collections
import json
import sys


def main():
    statuses = collections.Counter()
    server_errors = collections.Counter()
    for line in open(sys.argv[1], encoding="utf-8"):
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        label = finished["recorder"]["label"]
        for interaction in finished["recorder"].get("interactions", {}).values():
            response = interaction.get("response")
            if response is None:
                statuses["no response"] += 1
                continue
            code = response["status_code"]
            statuses[f"{code // 100}xx"] += 1
            if code >= 500:
                server_errors[f"{label} -> {code}"] += 1
    total = sum(statuses.values())
    by_class = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(f"fuzz: {total} requests recorded ({by_class})")
    for what, count in server_errors.most_common():
        print(f"fuzz:   5xx {count}x {what}")


if __name__ == "__main__":
    main()
