"""The fp16 variant: fp16 weights and activations, fp32 inputs and logits; for GPUs."""

from __future__ import annotations

from pathlib import Path

import onnx

from pipeline.export.onnx_export import save_checked, set_metadata
from pipeline.export.safety import check_onnx_file
from pipeline.export.variants import ConvertContext, VariantInfo, derived_metadata


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    ready = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    ready.add("")  # an omitted optional input
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(name in ready for name in n.input)]
        if not runnable:  # a cycle, or an input nothing produces: leave it to the checker
            ordered += pending
            break
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def to_fp16(src: str | Path, dst: str | Path) -> dict:
    """fp16 weights and activations; the inputs and the logits keep their dtype (keep_io_types),
    so a deployer feeds the same arrays as to the fp32 model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = check_onnx_file(src)
    # Ops whose fp16 form loses too much (the library's default block list) stay fp32.
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    # It appends the Cast of a float32 graph input after the nodes that read it.
    _sort_topologically(fp16.graph)
    set_metadata(fp16, derived_metadata(model, "fp16"))
    save_checked(fp16, dst)
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}


def convert(fp32_path: Path, out_path: Path, context: ConvertContext) -> VariantInfo:
    return VariantInfo({"conversion": to_fp16(fp32_path, out_path)})
