"""What a rule's test module offers the tier that folds without verification
(tests/fold/rules/test_safe_without_verification.py): ``SAFETY_CASES``, a dict of id -> SafetyCase, in the
rule's test module or, where that module is long already, in ``cases_<rule>.py`` beside it.

Every rule's test module lists its positive cases (``reason=None``: *rule* must fold something) and one
negative case per refusal it can give (*reason*: the site is refused for it). The tier folds each with
``verify=False`` and compares the result with the original in onnxruntime, so no rule can lean on
verification to stay exact; it also checks that every rule has a positive case and every static refusal
reason a negative one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import onnx

from bnfold.reasons import Reason


class SafetyCase(NamedTuple):
    build: Callable[[], onnx.ModelProto]
    rule: str | None  # the rule that folds (positive) or refuses (negative; None: no rule was asked)
    reason: Reason | None = None  # None: a positive case
    runnable: bool = True  # False where onnxruntime cannot run the original (invalid model, inf outputs)
