"""The int8 variant: static int8 QDQ calibrated on a seeded train sample, its recipe chosen for
the CPU it is made on."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pipeline.export.onnx_export import save_checked, set_metadata
from pipeline.export.safety import check_onnx_file
from pipeline.export.variants import ConvertContext, VariantInfo, derived_metadata
from pipeline.hardware.cpu import CpuFeatures
from pipeline.hardware.cpu import detect as detect_cpu

if TYPE_CHECKING:  # pydantic stays out of torch-only users
    from pipeline.core.config import Int8Params


def _calibration_reader(input_name: str, images: np.ndarray, batch_size: int = 64):
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self):
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = iter(
                {input_name: images[start : start + batch_size]}
                for start in range(0, len(images), batch_size)
            )

    return ArrayReader()


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """The quantiser's pre-processing imports every domain it knows; keep the ones in use."""
    used = {node.domain for node in model.graph.node} | {""}
    keep = [opset for opset in model.opset_import if opset.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _output_op_types(model: onnx.ModelProto) -> list[str]:
    outputs = {value.name for value in model.graph.output}
    return sorted({node.op_type for node in model.graph.node if set(node.output) & outputs})


def _pre_process(quant_pre_process, src, dst) -> str:
    """onnxruntime's symbolic shape inference trips on some graphs (ReduceMax with axes as an
    input, for one); ONNX's own inference is enough for fixed-size images."""
    try:
        quant_pre_process(str(src), str(dst))
        return "symbolic"
    except Exception:  # its failures are bare TypeErrors and the like, deep in its code
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "onnx"


def choose_reduce_range(setting: str | bool, cpu: CpuFeatures) -> tuple[bool, str]:
    """(reduce_range, why). onnxruntime's x86 int8 kernels without VNNI (AVX2, AVX-512F) add
    pairs of u8*s8 products in int16 (vpmaddubsw), which saturates with full 8-bit weights:
    measured on the default model, max |logit diff| 1.66 on AVX2 against 0.14 on AVX-512 VNNI.
    7-bit weights cannot saturate and give the same logits on every CPU (0.176 on both)."""
    if setting != "auto":
        return bool(setting), "set by export.int8.reduce_range"
    if cpu.int8_dot_product:
        return False, f"auto: {cpu.profile} CPU has VNNI dot products, which do not saturate"
    return True, f"auto: {cpu.profile} CPU has no VNNI; 8-bit weights could saturate int16 sums"


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    return methods[name]


def _quantize(
    src: str | Path,
    input_name: str,
    calibration: np.ndarray,
    settings: Int8Params,
    reduce_range: bool,
) -> tuple[onnx.ModelProto, list[str], str]:
    """(the QDQ model, the op types whose outputs stay float, the shape inference used)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    activation = QuantType.QUInt8 if settings.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="pipeline-int8.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        # Constant folding and shape inference first, so each Conv's folded weights are
        # quantised once and every activation has a known shape.
        shapes = _pre_process(quant_pre_process, src, prepared)
        # The logits stay float: quantising them adds error, clips any logit beyond the
        # calibrated range and saves nothing. (The option works per op type: in a CNN that is
        # the classifier head alone.)
        output_ops = _output_op_types(onnx.load(str(prepared)))
        quantize_static(
            prepared,
            quantized,
            _calibration_reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=list(settings.op_types),
            calibrate_method=_calibration_method(settings.method),
            extra_options={"OpTypesToExcludeOutputQuantization": output_ops},
        )
        return onnx.load(str(quantized)), output_ops, shapes


def to_int8(
    src: str | Path,
    dst: str | Path,
    calibration: np.ndarray,
    settings: Int8Params,
    cpu: CpuFeatures | None = None,
) -> dict:
    """Static QDQ quantisation calibrated on ``calibration`` (already in the model's input dtype).

    Deterministic: the same model, calibration images and recipe give the same bytes. The recipe
    follows ``cpu`` (default: this machine's) where ``settings.reduce_range`` is auto.
    """
    cpu = cpu or detect_cpu()
    reduce_range, reduce_range_why = choose_reduce_range(settings.reduce_range, cpu)
    source = check_onnx_file(src)
    input_name = source.graph.input[0].name
    model, output_ops, shapes = _quantize(src, input_name, calibration, settings, reduce_range)
    _drop_unused_opsets(model)
    described = {
        "format": "QDQ",
        "activations": settings.activations,
        "weights": "int8",
        "per_channel": settings.per_channel,
        "reduce_range": reduce_range,
        "reduce_range_reason": reduce_range_why,
        "cpu": cpu.profile,
        "op_types": list(settings.op_types),
        "method": settings.method,
        "calibration_images": len(calibration),
        "outputs_not_quantised": output_ops,
        "shape_inference": shapes,
    }
    set_metadata(model, derived_metadata(source, "int8", quantization=json.dumps(described)))
    save_checked(model, dst)
    return described


def convert(fp32_path: Path, out_path: Path, context: ConvertContext) -> VariantInfo:
    """:func:`to_int8` on ``export.int8.calibration_images`` train images drawn with ``seed``."""
    settings = context.params.export.int8
    calibration = context.calibration_inputs(settings.calibration_images)
    described = to_int8(fp32_path, out_path, calibration, settings)
    facts = {"quantization": described | {"calibration_seed": context.params.seed}}
    # The setting most likely to bring it inside its gate: 7-bit weights first, where they
    # were off (int16 sums saturate on CPUs without VNNI); else the catalog's advice.
    if described["reduce_range"]:
        return VariantInfo(facts)
    return VariantInfo(
        facts, remedy="set export.int8.reduce_range: true, the recipe for CPUs without VNNI"
    )
