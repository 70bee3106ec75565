"""Entry point ``main`` of a multi-entry-point project: LogisticRegression on iris.

Demonstrates that a reproduction must run the same entry point as the
original (``mlflow.project.entryPoint`` tag): this one logs only
``accuracy``, while ``train_tree`` also logs ``f1_macro``.
"""

from __future__ import annotations

import argparse

import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--C', type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    model = LogisticRegression(C=args.C, max_iter=1000)
    model.fit(X_train, y_train)
    mlflow.log_metric('accuracy', float(accuracy_score(y_test, model.predict(X_test))))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
