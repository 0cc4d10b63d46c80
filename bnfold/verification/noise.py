"""The model's own noise floor: how far two legitimate evaluations of the reference are apart.

Measured only where an output fails its dtype/depth tolerance (it costs one more session): the reference is
run again with onnxruntime's graph optimisations enabled (ORT then fuses BatchNormalization, reorders and
fuses element-wise work itself) and the largest channel-scaled difference from the plain run is the floor.
The failing outputs are then judged again under ``max(tolerance, FLOOR_FACTOR * floor)``
(:func:`bnfold.verification.output_tolerance.with_floor`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from bnfold.run.lending import DetachedModel, attach
from bnfold.run.sessions import create_session
from bnfold.verification.compare import WorstCase, compare_arrays, scale_of
from bnfold.verification.output_tolerance import with_floor


def rejudge_with_floor(trackers: dict[str, WorstCase], outputs: Sequence[str], feeds: Sequence[dict[str, np.ndarray]],
                       reference, ref_model, ref_session, cand_session, provider: str) -> None:
    failing = [n for n in outputs if n in trackers and trackers[n].note is None and not trackers[n].result().passed
               and trackers[n].tolerance.atol > 0]
    if not failing or not feeds:
        return
    if isinstance(reference, (onnx.ModelProto, DetachedModel)):  # optimisations read lent weights from the
        whole = attach(reference) if isinstance(reference, DetachedModel) else reference  # placeholder file:
        reference = whole.SerializeToString()  # this (failure-only) path serialises the reference once
    try:
        optimised = create_session(reference, provider=provider, opt_level="all", graph=ref_model)
    except Exception:  # noqa: BLE001 - no second evaluation, no floor: the dtype/depth tolerance stands
        return
    floors = dict.fromkeys(failing, 0.0)
    for feed in feeds:
        plain = ref_session.run(failing, feed)
        fused = optimised.run(failing, feed)
        for name, r, o in zip(failing, plain, fused, strict=True):
            if r.shape != o.shape:
                continue
            sample = compare_arrays(r, o, trackers[name].tolerance)
            floors[name] = max(floors[name], float((sample.channel_error / scale_of(sample.channel_magnitude)).max()))
    for name in failing:
        old = trackers[name]
        tolerance = with_floor(old.tolerance, floors[name], None)
        if tolerance == old.tolerance:
            continue
        fresh = WorstCase(old.name, old.dtype, old.shape, tolerance)
        fresh.basis = f"{old.basis}; noise floor {floors[name]:.3g} (onnxruntime optimised vs not)"
        trackers[name] = fresh
    redo = [n for n in failing if not trackers[n].samples]
    for index, feed in enumerate(feeds if redo else ()):
        for name, r, c in zip(redo, ref_session.run(redo, feed), cand_session.run(redo, feed), strict=True):
            trackers[name].add(index, compare_arrays(r, c, trackers[name].tolerance))
