"""run: onnxruntime sessions and the inputs they are fed.

What it does: creates onnxruntime sessions (providers, optimization level, extra outputs for intermediate
tensors), lends a model's weights to onnxruntime as numpy arrays instead of serialising them, and builds
feeds for a model's inputs (.npz files, ``--input-shape`` spellings, seeded random data of every element type
and rank, drawn one sample at a time after a memory estimate: ``random_inputs``).

May import: ``bnfold.fold``, ``bnfold.io`` and the shared modules. This is the first stage that imports
onnxruntime, and it does so only when a session is made.

Entry points: ``sessions.create_session``, ``sessions.available_providers``, ``lending.detach``,
``inputs.input_specs``, ``inputs.make_feeds``.
"""
