"""A caller process for tests/test_debounce.py: makes debounced enqueues of one name and key
through a Client, in phases, as fast as it can, printing the id each returned, one a line::

    python debounceprog.py --url postgresql+psycopg://... --key k --go DIR --counts 20,10

It prints ``ready`` once its client is started, then for each phase ``i`` waits until the file
``DIR/go-<i>`` exists (the test creates it: every process starts the phase at once), makes that
phase's enqueues and prints ``end``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import durable

NAME = "debounceprog.job.v1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--go", type=Path, required=True)
    parser.add_argument("--counts", default="20")
    parser.add_argument("--debounce", type=float, default=30.0)
    args = parser.parse_args()
    with durable.Client(args.url) as client:
        print("ready", flush=True)
        for phase, count in enumerate(int(c) for c in args.counts.split(",")):
            while not (args.go / f"go-{phase}").exists():
                time.sleep(0.005)
            for n in range(count):
                wid = client.enqueue_sync(
                    NAME, f"{os.getpid()}-{n}", debounce=args.debounce, debounce_key=args.key
                )
                print(wid, flush=True)
            print("end", flush=True)


if __name__ == "__main__":
    main()
