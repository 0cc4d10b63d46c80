"""After folding: drop what nothing reads any more — constant-only nodes (Constant, Identity, Cast,
Reshape ... of constants), initializers that are neither read nor graph inputs — and value_info for
tensors that no longer exist. Subgraphs first, so their outer-scope reads are counted correctly.
"""

from __future__ import annotations

import onnx

from bnfold.constants import CONSTANT_OPS
from bnfold.graph import names_used_inside, subgraphs


def _reads(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        names = [n for n in node.input if n]
        for _, sub in subgraphs(node):
            names.extend(names_used_inside(sub))
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _remove_dead_constant_nodes(graph: onnx.GraphProto, reads: dict[str, int]) -> bool:
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):  # consumers before producers: one pass frees whole chains
        dead = node.op_type in CONSTANT_OPS and node.domain in ("", "ai.onnx") and not any(
            reads.get(out, 0) for out in node.output if out)
        if dead:
            for name in node.input:
                if name:
                    reads[name] -= 1
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        kept = list(reversed(keep))
        del graph.node[:]
        graph.node.extend(kept)
        return True
    return False


def clean_graph(graph: onnx.GraphProto) -> bool:
    """Remove dead constant nodes, unread initializers and stale value_info from *graph* and its
    subgraphs; True if anything was removed."""
    changed = False
    for node in graph.node:
        for _, sub in subgraphs(node):
            changed |= clean_graph(sub)
    reads = _reads(graph)
    changed |= _remove_dead_constant_nodes(graph, reads)
    inputs = {i.name for i in graph.input}
    dead_inits = [i for i, t in enumerate(graph.initializer) if not reads.get(t.name) and t.name not in inputs]
    for i in reversed(dead_inits):
        del graph.initializer[i]
    alive = {o for node in graph.node for o in node.output} | inputs | {t.name for t in graph.initializer}
    stale = [i for i, v in enumerate(graph.value_info) if v.name not in alive]
    for i in reversed(stale):
        del graph.value_info[i]
    return changed or bool(dead_inits) or bool(stale)
