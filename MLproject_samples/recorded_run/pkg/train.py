"""Fit y = a x + b by gradient descent, deterministically.

    python -m pkg.train LEARNING_RATE EPOCHS

Run from MLproject_samples/recorded_run, as a module (a relative import),
with positional arguments: a run MLflow alone cannot say how to start again,
and one the recorder records exactly (see ../README.md).
"""

import sys

import mlflow

from .data import points


def train(learning_rate: float, epochs: int) -> None:
    data, a, b = points(50, seed=0), 0.0, 0.0
    with mlflow.start_run() as run:
        for step in range(epochs):
            errors = [(a * x + b - y, x) for x, y in data]
            a -= learning_rate * 2 * sum(e * x for e, x in errors) / len(data)
            b -= learning_rate * 2 * sum(e for e, _ in errors) / len(data)
            loss = sum((a * x + b - y) ** 2 for x, y in data) / len(data)
            mlflow.log_metric('loss', loss, step=step)
        mlflow.log_metrics({'a': a, 'b': b})
        print(f'run {run.info.run_id}')


if __name__ == '__main__':
    train(float(sys.argv[1]), int(sys.argv[2]))
