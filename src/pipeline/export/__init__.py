"""ONNX export, safety checks before any session, and parity against PyTorch."""
