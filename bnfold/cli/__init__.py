"""Command-line interface: a thin skin over the public API in ``bnfold``."""
