"""Per-epoch metric history from a seeded SGDRegressor on the diabetes data.

Demonstrates metrics with a history: ``loss`` (train MSE) and ``val_loss``
(test MSE) are logged at steps ``0 .. epochs-1``, one ``partial_fit`` pass per
step, on standardised features and target. Everything is seeded, so the
whole history is identical on every run.

Test hook: if the environment variable ``SAMPLE_PERTURB_STEP`` is set to an
integer ``k``, 1.0 is added to the logged ``loss`` at step ``k`` only; the
model and every other logged value are untouched. This simulates
nondeterminism hidden from the params, so tests can show a history that
diverges mid-way while the final values still agree (when ``k < epochs-1``).
"""

from __future__ import annotations

import argparse
import os

import mlflow
from sklearn.datasets import load_diabetes
from sklearn.linear_model import SGDRegressor
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--epochs', type=int, default=10)
    return parser.parse_args(argv)


def perturbed_step() -> int | None:
    """Step whose ``loss`` the test hook shifts by 1.0, or None when unset."""
    raw = os.environ.get('SAMPLE_PERTURB_STEP')
    return int(raw) if raw not in (None, '') else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    perturb = perturbed_step()
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=42)
    x_scaler = StandardScaler().fit(X_train)
    y_mean, y_std = y_train.mean(), y_train.std()
    X_train, X_test = x_scaler.transform(X_train), x_scaler.transform(X_test)
    y_train, y_test = (y_train - y_mean) / y_std, (y_test - y_mean) / y_std

    model = SGDRegressor(learning_rate='constant', eta0=0.001, random_state=0)
    for step in range(args.epochs):
        model.partial_fit(X_train, y_train)
        loss = float(mean_squared_error(y_train, model.predict(X_train)))
        val_loss = float(mean_squared_error(y_test, model.predict(X_test)))
        if step == perturb:
            loss += 1.0
        mlflow.log_metric('loss', loss, step=step)
        mlflow.log_metric('val_loss', val_loss, step=step)
        print(f'epoch {step}: loss {loss:.6f} val_loss {val_loss:.6f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
