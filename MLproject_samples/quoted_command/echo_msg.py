"""Logs ``msg_length`` = len(msg), and nothing else.

Demonstrates an MLproject command that wraps a placeholder in single quotes
(``--msg '{msg}'``). MLflow shell-quotes param values itself, so the quotes of
a value that needs quoting cancel the author's: ``hello world`` fails with an
unknown argument, and ``x; touch /tmp/pwned`` runs ``touch`` in the shell.
Tests use it to show that replaying such a param is shell injection.
"""

from __future__ import annotations

import argparse

import mlflow


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--msg', default='hello')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mlflow.log_metric('msg_length', float(len(args.msg)))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
