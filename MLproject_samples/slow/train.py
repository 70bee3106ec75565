"""A slow run that ticks once a second, for interrupting a reproduction.

Demonstrates a long-running run: logs metric ``tick`` (value i) at step i
about once a second for ``seconds`` seconds, so tests can send SIGINT or
SIGTERM mid-run. If the environment variable ``SAMPLE_PID_FILE`` is set, the
script first writes its own PID there, so tests can check afterwards that the
process is gone. Default signal handling is kept: SIGTERM kills the process,
SIGINT raises KeyboardInterrupt (non-zero exit).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import mlflow


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--seconds', type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pid_file = os.environ.get('SAMPLE_PID_FILE')
    if pid_file:
        with open(pid_file, 'w', encoding='utf-8') as handle:
            handle.write(f'{os.getpid()}\n')
    start = time.monotonic()
    for step in range(math.ceil(args.seconds)):
        mlflow.log_metric('tick', float(step), step=step)
        # Sleep until the next whole second since start, capped at `seconds`.
        wake = start + min(step + 1, args.seconds)
        time.sleep(max(0.0, wake - time.monotonic()))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
