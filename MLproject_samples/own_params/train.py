"""KNeighborsClassifier on iris that logs many params of its own.

Demonstrates a run whose params go beyond what the MLproject declares: besides
the declared ``n_neighbors`` (logged by MLflow itself), the code logs
``model_type``, data sizes and every other estimator param (``algorithm``,
``leaf_size``, ``metric``, ...), much like ``mlflow.sklearn.autolog`` does.
A reproduction must pass only the declared params back to the entry point:
the script's strict argparse rejects any other ``--key``.

The estimator params are logged by hand rather than with autolog, because
autolog would re-log ``n_neighbors`` as ``str(int)``: a run started with
``-P n_neighbors=05`` then hits "Changing param values is not allowed", which
autolog turns into a warning while silently dropping all of its params.
"""

from __future__ import annotations

import argparse

import mlflow
from sklearn.datasets import load_iris
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

DECLARED_PARAMS = {'n_neighbors'}  # logged by `mlflow run` from the MLproject


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n-neighbors', type=int, default=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    model = KNeighborsClassifier(n_neighbors=args.n_neighbors)
    model.fit(X_train, y_train)

    own_params: dict[str, str] = {
        'model_type': type(model).__name__,
        'n_train_rows': str(len(X_train)),
        'n_test_rows': str(len(X_test)),
        'n_features': str(X.shape[1]),
    }
    own_params.update(
        (key, str(value)) for key, value in model.get_params().items() if key not in DECLARED_PARAMS
    )
    mlflow.log_params(own_params)
    mlflow.log_metric('accuracy', float(accuracy_score(y_test, model.predict(X_test))))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
