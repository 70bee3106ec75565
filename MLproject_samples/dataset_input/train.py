"""Deterministic Ridge regression on a CSV file whose path is a param.

Logs the file as an MLflow dataset input (name ``train``, context
``training``), so that a changed file shows as a changed digest, and logs the
model with ``mlflow.sklearn.log_model``, so that the run has a logged model
whose ``requirements.txt`` pins the versions that trained it.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version

import mlflow
import mlflow.sklearn
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score

# What the model needs, at the versions that trained it: named, not
# inferred (MLflow would load the model again in a second interpreter).
PINS = [
    f'{name}=={version(name)}'
    for name in (
        'scikit-learn',
        'numpy',
        'scipy',
        'pandas',
        'cloudpickle',
    )
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--data', default='data.csv')
    parser.add_argument('--alpha', type=float, default=0.1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    df = pd.read_csv(args.data)
    dataset = mlflow.data.from_pandas(df, source=args.data, name='train')
    mlflow.log_input(dataset, context='training')
    X, y = df[['x1', 'x2']], df['y']
    model = Ridge(alpha=args.alpha).fit(X, y)
    pred = model.predict(X)
    mlflow.log_metric('mae', float(mean_absolute_error(y, pred)))
    mlflow.log_metric('r2', float(r2_score(y, pred)))
    mlflow.sklearn.log_model(model, name='model', pip_requirements=PINS)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
