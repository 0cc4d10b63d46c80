"""fold: rewrite the graph so that BatchNormalization and per-channel affine blocks vanish into weights.

What it does: indexes a graph (producers, readers, constants through constant-only subgraphs and outer
scopes), evaluates constant subgraphs, runs the rules of ``fold/rules`` (one rule per file, an explicit
ordered tuple) to a fixed point with fold math in pure float64 rounded once, cleans up what the folds
left dead, infers ranks where a rule must prove an axis, and sizes models.

May import: ``bnfold.io`` and the shared modules (``errors``, ``reasons``, ``report``); never onnxruntime.

Entry points: ``driver.fold_model`` (the fixed-point driver), ``driver.fold_and_clean`` (that between two
cleanups, with initializers listed as graph inputs handled by ``initializer_inputs``: constants in IR 3,
overridable from IR 4 on unless frozen), ``rules.RULES`` / ``rules.RULE_NAMES``,
``cleanup.clean_graph``, ``sizes.model_stats``, ``graph.GraphIndex``, ``skeleton.skeleton``.
"""
