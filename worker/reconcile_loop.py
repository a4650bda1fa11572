"""`python -m worker.reconcile_loop [--once] [--interval SECONDS]`: the reconciler as a process
of its own (docker-compose's `reconciler` service).

A process of its own rather than a beat task on the job queue: GPU workers run one long job at a
time, so a reconcile message queued behind jobs would wait exactly when workers are lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from worker.reconciler import run_reconciler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.reconcile_loop", description=__doc__)
    parser.add_argument("--once", action="store_true", help="one pass, print its counts, exit")
    parser.add_argument("--interval", type=float, default=None, help="seconds between passes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        counts = run_reconciler(once=args.once, interval=args.interval)
    except KeyboardInterrupt:
        return 0
    if args.once:
        print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
