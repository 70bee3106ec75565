"""Unseeded RandomForestRegressor on scikit-learn's bundled diabetes data.

Demonstrates a run that cannot be reproduced exactly, like a Keras model
with unseeded weight initialisation: the data split is fixed, but the forest
has no ``random_state``, so ``test_mae`` and ``test_r2`` differ on
(essentially) every run even though the params are identical.
"""

from __future__ import annotations

import argparse

import mlflow
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n-estimators', type=int, default=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    # Deliberately no random_state: bootstrap samples and feature picks vary per run.
    model = RandomForestRegressor(n_estimators=args.n_estimators)
    model.fit(X_train, y_train)
    pred = model.predict(X_test)
    mlflow.log_metric('test_mae', float(mean_absolute_error(y_test, pred)))
    mlflow.log_metric('test_r2', float(r2_score(y_test, pred)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
