"""Deterministic ElasticNet on scikit-learn's bundled diabetes data.

Demonstrates the happy path: a fully seeded run (fixed split, fixed model
seed) whose metrics ``mae``, ``r2`` and ``rmse`` are identical on every run,
so a reproduction must match the original exactly.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--alpha', type=float, default=0.005)
    parser.add_argument('--l1-ratio', type=float, default=0.5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    model = ElasticNet(alpha=args.alpha, l1_ratio=args.l1_ratio, random_state=42)
    model.fit(X_train, y_train)
    pred = model.predict(X_test)
    mlflow.log_metric('mae', float(mean_absolute_error(y_test, pred)))
    mlflow.log_metric('r2', float(r2_score(y_test, pred)))
    mlflow.log_metric('rmse', float(np.sqrt(mean_squared_error(y_test, pred))))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
