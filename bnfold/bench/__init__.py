"""bench: latency and throughput, original against folded, on every provider that can run.

What it does: plans the runs (variants, providers, batch sizes, optimization levels), times them in
interleaved rounds with host feeds or IO binding, computes paired bootstrap statistics of the speedup,
records machine facts, and renders the report as text, JSON or an ECDF plot.

May import: ``bnfold.optimizer`` (to fold in memory), ``bnfold.run``, ``bnfold.io`` and the shared modules.

Entry points: ``benchmark.benchmark`` (public as ``bnfold.benchmark``), ``report.BenchReport``,
``render`` and ``plot`` for the CLI.
"""
