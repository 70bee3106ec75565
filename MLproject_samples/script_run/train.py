"""A plain training script, with no MLproject file: run it as a person does,
`python train.py --alpha 0.3 --epochs 5`.

Like most training code it picks its own experiment (``mlflow.set_experiment``)
and logs params it derived (``n_rows``) besides its options. Gradient descent
on scikit-learn's diabetes data is fully deterministic: the ``loss`` history
is identical on every run.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from sklearn.datasets import load_diabetes

EXPERIMENT = 'script-run-sample'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--alpha', type=float, default=0.1, help='learning rate')
    parser.add_argument('--epochs', type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    w = np.zeros(X.shape[1])
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run():
        mlflow.log_params({'alpha': args.alpha, 'epochs': args.epochs, 'n_rows': len(X)})
        for epoch in range(args.epochs):
            residual = X @ w - y
            w -= args.alpha * X.T @ residual / len(X)
            mlflow.log_metric('loss', float(np.mean(residual**2)), step=epoch)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
