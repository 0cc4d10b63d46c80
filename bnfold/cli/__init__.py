"""cli: the ``bnfold`` command, a thin skin over the public API (the highest stage).

What it does: parses options (shared option groups in ``options``), calls the same library functions a
Python user calls, renders their reports as text or JSON, and turns every typed error into one
``Error: ...`` line and its exit code. One command per file: ``optimize`` (with ``optimize_file`` for one
model and ``folder`` for many), ``verify``, ``inspect``, ``check``, ``bench``. Shared by them:
``report_output`` (``--json PATH|-``, and the refusal to write a report over a file in use),
``batch_report`` (a batch's JSON), ``shard`` (``--shard K/N``), ``verbosity`` (``-q``/``-v``),
``input_shapes`` (bare ``--input-shape`` dims), ``version`` (``--version``), ``render`` (text).

May import: every stage below it.

Entry points: ``main.main`` (the console script), ``main.cli`` (the click group).
"""
