"""Deterministic linear regression on a CSV file that may live outside the commit.

Demonstrates drift: the code and the params stay the same, but the data they
name changes. ``--data`` is a CSV path (default: the committed ``data.csv``,
a slice of scikit-learn's diabetes data: four features, then the target).
The first three quarters of the rows train an ordinary least-squares model,
the rest test it, so the same file always gives the same ``mae``, ``r2`` and
``n_rows``. Point ``-P data=/some/file.csv`` at a file, make a reference run,
then edit the file: every reproduction agrees with the others and differs
from the reference, which is what ``drifted`` means.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data', default='data.csv')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = np.loadtxt(args.data, delimiter=',', skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1]
    split = len(table) * 3 // 4
    pred = LinearRegression().fit(X[:split], y[:split]).predict(X[split:])
    mlflow.log_metric('mae', float(mean_absolute_error(y[split:], pred)))
    mlflow.log_metric('r2', float(r2_score(y[split:], pred)))
    mlflow.log_metric('n_rows', float(len(table)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
