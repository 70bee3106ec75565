"""A package trained with `python -m pkg.train`: see ../README.md."""
