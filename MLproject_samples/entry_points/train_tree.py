"""Entry point ``train_tree`` of a multi-entry-point project: DecisionTree on wine.

Demonstrates a non-default entry point with an int and a string param; it
logs ``accuracy`` and ``f1_macro`` (the ``main`` entry point logs only
``accuracy``), so running the wrong entry point is visible in the metrics.
"""

from __future__ import annotations

import argparse

import mlflow
from sklearn.datasets import load_wine
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--max-depth', type=int, default=3)
    parser.add_argument('--criterion', choices=['gini', 'entropy', 'log_loss'], default='gini')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_wine(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    model = DecisionTreeClassifier(
        max_depth=args.max_depth, criterion=args.criterion, random_state=0
    )
    model.fit(X_train, y_train)
    pred = model.predict(X_test)
    mlflow.log_metric('accuracy', float(accuracy_score(y_test, pred)))
    mlflow.log_metric('f1_macro', float(f1_score(y_test, pred, average='macro')))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
