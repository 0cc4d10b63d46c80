"""verification: does the candidate compute what the reference computes?

What it does: decides which tensors to compare (outputs, folded tensors, per-layer pairs), runs both models
in onnxruntime on the same feeds, compares them with dtype-aware tolerances (max abs/rel error, error vs
magnitude, cosine, top-1) and finds the first divergence; ``truth`` compares both against a float64
evaluation.

May import: ``bnfold.run``, ``bnfold.fold``, ``bnfold.io`` and the shared modules.

Entry points: ``verifier.verify`` (public as ``bnfold.verify``) and ``verifier.VerifyReport``,
``compare.compare_arrays``, ``truth.compare_to_truth``.
"""
