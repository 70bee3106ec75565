"""Plain script, not declared in the MLproject: a script-file entry point.

Run it as ``mlflow run . -e score.py -P threshold=0.3``: MLflow then builds
the command ``python score.py --threshold 0.3`` from the extra param (the
``--key`` keeps the param's exact name) and logs ``threshold`` as a param
only when it is passed. Logs ``score``: the share of test samples that a
scaled LogisticRegression, fitted on a fixed split of the bundled breast-cancer
data, scores positive (probability >= threshold). Deterministic, and it moves
with the threshold (0.5 -> 0.6199, 0.3 -> 0.6433).
"""

from __future__ import annotations

import argparse

import mlflow
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--threshold', type=float, default=0.5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(X_train, y_train)
    flagged = model.predict_proba(X_test)[:, 1] >= args.threshold
    mlflow.log_metric('score', float(flagged.mean()))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
