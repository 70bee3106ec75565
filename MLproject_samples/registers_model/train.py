"""Seeded Ridge regression on scikit-learn's bundled diabetes data that
registers its model in the MLflow model registry.

Demonstrates a side effect of reproducing: ``log_model(...,
registered_model_name=...)`` adds a version of the model ``--model-name`` to
the registry on every run.  The metrics ``mae`` and ``r2`` are identical on
every run.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version

import mlflow
import mlflow.sklearn
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

# What the model needs, at the versions that trained it: named, not
# inferred (MLflow would load the model again in a second interpreter).
PINS = [
    f'{name}=={version(name)}'
    for name in (
        'scikit-learn',
        'numpy',
        'scipy',
        'cloudpickle',
    )
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--alpha', type=float, default=1.0)
    parser.add_argument('--model-name', default='reproduce-sample')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    model = Ridge(alpha=args.alpha, random_state=42).fit(X_train, y_train)
    pred = model.predict(X_test)
    mlflow.log_metric('mae', float(mean_absolute_error(y_test, pred)))
    mlflow.log_metric('r2', float(r2_score(y_test, pred)))
    mlflow.sklearn.log_model(
        model,
        name='model',
        registered_model_name=args.model_name,
        input_example=X_test[:2],
        pip_requirements=PINS,
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
