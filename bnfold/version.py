"""bnfold's version, written once: packaging reads it from here (pyproject's dynamic version) and the
package re-exports it as ``bnfold.__version__``. Kept in a module of its own, importing nothing, so
that reading the version costs nothing and the build backend can read it without importing bnfold."""

__version__ = "0.1.0"
