"""Deterministic Ridge regression whose reported metrics get a bounded, centred jitter.

Demonstrates nondeterminism whose spread is known: the model and the data
split are fixed, but each run multiplies both metrics by ``1 + k * jitter``
with one offset ``k`` drawn from {-1, 0, +1} by an unseeded random number
generator. So ``test_mae`` and ``test_r2`` take one of three values, and a
reference run lies within the spread of its repetitions whenever they do not
all draw the same ``k``: for N repetitions that happens with probability
``1 - 3 ** (1 - N)`` (8/9 for N = 3); otherwise they all agree, and the
diagnosis says ``reproducible`` or ``drifted``. With three values, any two
different repetitions widen to a range that holds all three (see
``reproduce_run.py``'s "Is it nondeterminism or drift?").

Test hook: if ``SAMPLE_JITTER_COUNTER`` names a file, ``k`` is not drawn: the
run takes the next value of a counter kept in that file (under an exclusive
lock, so parallel runs get different values) and uses ``k = count % 3 - 1``.
Any two consecutive runs then differ, and a reference followed by N >= 2
repetitions is ``nondeterministic`` every time.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random

import mlflow
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--jitter', type=float, default=0.01)
    return parser.parse_args(argv)


def next_count(path: str) -> int:
    """Read, increment and write back the counter in ``path``; 0 the first time."""
    with open(path, 'a+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        count = int(f.read() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(count + 1))
    return count


def offset() -> int:
    """-1, 0 or +1: from the counter when the test hook is set, else at random."""
    counter = os.environ.get('SAMPLE_JITTER_COUNTER')
    if counter:
        return next_count(counter) % 3 - 1
    return random.SystemRandom().choice((-1, 0, 1))  # unseeded, by design


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    pred = Ridge(alpha=0.1).fit(X_train, y_train).predict(X_test)
    factor = 1 + offset() * args.jitter
    mlflow.log_metric('test_mae', float(mean_absolute_error(y_test, pred)) * factor)
    mlflow.log_metric('test_r2', float(r2_score(y_test, pred)) * factor)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
