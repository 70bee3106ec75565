"""A run that logs a little and then fails with exit status 1.

Demonstrates a failed run: ``loss`` is logged at steps ``0 .. fail_at-1``,
then a few lines go to stderr, the last one being
``sample failure: giving up at step N`` (N = fail_at), and the process exits
with status 1, so a reproduction of it must be reported as failed.
"""

from __future__ import annotations

import argparse
import sys

import mlflow


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--fail-at', type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for step in range(args.fail_at):
        mlflow.log_metric('loss', 1.0 / (step + 1), step=step)
    print(f'sample warning: loss stopped improving after {args.fail_at} steps', file=sys.stderr)
    print('sample warning: data looks corrupted', file=sys.stderr)
    print(f'sample failure: giving up at step {args.fail_at}', file=sys.stderr)
    return 1


if __name__ == '__main__':
    raise SystemExit(main())
