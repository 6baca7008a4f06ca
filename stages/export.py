"""Stage export: the trained model -> a checked ONNX file whose logits match PyTorch's."""

from pipeline import paths
from pipeline.config import Params
from pipeline.data.storage import read_split_tensors
from pipeline.export.onnx_export import export_onnx, metadata_props
from pipeline.export.parity import compare, enforce
from pipeline.export.session import make_session, session_logits
from pipeline.inference import predict_logits
from pipeline.io import sha256_file, write_json
from pipeline.model_io import load_trained
from pipeline.stage import run_stage
from pipeline.versioning import params_hash


def export(params: Params) -> None:
    model, card = load_trained(paths.MODELS_DIR)
    images, labels = read_split_tensors(paths.PREPARED_DIR, "test")
    graph = model if params.export.include_preprocessing else model.model
    example = images[:2] if params.export.include_preprocessing else model.normalize(images[:2])
    props = metadata_props(card, params.export.include_preprocessing, params_hash(params))
    export_onnx(graph, example, paths.ONNX_MODEL, params.export.opset, props)

    onnx_input = images if params.export.include_preprocessing else model.normalize(images)
    onnx_logits = session_logits(make_session(paths.ONNX_MODEL), onnx_input.numpy())
    torch_logits = predict_logits(model, images, params.evaluate.batch_size).numpy()
    parity = compare(torch_logits, onnx_logits, labels.numpy())
    metrics = {
        "opset": params.export.opset,
        "include_preprocessing": params.export.include_preprocessing,
        "size_bytes": paths.ONNX_MODEL.stat().st_size,
        "sha256": sha256_file(paths.ONNX_MODEL),
        "parity": parity.as_dict(),
    }
    # Metrics first: a failed gate still leaves its evidence for the person reading the error.
    write_json(paths.EXPORT_METRICS, metrics)
    enforce(parity, params.export.max_abs_logit_diff, params.export.min_top1_agreement, "fp32")
    print(f"export: {paths.ONNX_MODEL} max|diff| {parity.max_abs_logit_diff:.2e}")


if __name__ == "__main__":
    run_stage("export", export)
