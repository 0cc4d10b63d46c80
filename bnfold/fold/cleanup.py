"""After folding: drop what nothing reads any more — constant-only nodes (Constant, Identity, Cast,
Reshape ... of constants), initializers that are neither read nor graph inputs — and value_info for
tensors that no longer exist. Subgraphs first, so their outer-scope reads are counted correctly.
"""

from __future__ import annotations

import onnx

from bnfold.fold.constant_eval import CONSTANT_OPS, DEFAULT_DOMAINS
from bnfold.fold.graph import node_reads, subgraphs


def _reads(graph: onnx.GraphProto) -> dict[str, int]:
    """How many nodes (and graph outputs) read each name."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node_reads(node):
            counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _remove_dead_constant_nodes(graph: onnx.GraphProto, reads: dict[str, int]) -> bool:
    dead: list[int] = []
    for index in range(len(graph.node) - 1, -1, -1):  # consumers before producers: one pass frees chains
        node = graph.node[index]
        if (node.op_type in CONSTANT_OPS and node.domain in DEFAULT_DOMAINS
                and not any(reads.get(out, 0) for out in node.output if out)):
            dead.append(index)
            for name in node_reads(node):
                reads[name] -= 1
    for index in dead:  # descending: deleting in place, never copying the nodes kept (Constant weights)
        del graph.node[index]
    return bool(dead)


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
