"""The things being timed: PyTorch eager (the baseline) and onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.export.session import PROVIDER_NAMES, make_session, session_logits
from pipeline.inference import predict_logits
from pipeline.preprocess import Normalize


class TorchBackend:
    """PyTorch eager, fp32: what most users deploy first, and the baseline of every ratio."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.name = "pytorch_eager"
        self.variant = "fp32"
        self.provider = str(device)
        self.providers_used = [str(device)]
        self.status, self.reason = "ok", ""
        self.model = model.to(device).eval()
        self.device = device

    def bind(self, images: np.ndarray):
        batch = torch.from_numpy(images).to(self.device)

        @torch.inference_mode()
        def call():
            return self.model(batch)

        return call

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return predict_logits(self.model, torch.from_numpy(images), 256, self.device).numpy()


class OrtBackend:
    """One onnxruntime session for one model variant and one requested provider."""

    def __init__(self, path: Path, variant: str, provider: str, threads: int, mean, std) -> None:
        self.name = f"onnxruntime_{provider}"
        self.variant = variant
        self.provider = provider
        self.session = make_session(path, provider, threads)
        self.providers_used = self.session.get_providers()
        wanted = PROVIDER_NAMES[provider]
        # A GPU provider that failed to start leaves the session on the CPU: say so.
        if self.providers_used[0] == wanted:
            self.status, self.reason = "ok", ""
        else:
            self.status = "fallback"
            self.reason = f"{wanted} unavailable; session runs on {self.providers_used[0]}"
        self.input_name = self.session.get_inputs()[0].name
        self.takes_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.normalize = Normalize(mean, std)

    def _feed(self, images: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return images
        return self.normalize(torch.from_numpy(images)).numpy()

    def bind(self, images: np.ndarray):
        feed = {self.input_name: self._feed(images)}

        def call():
            return self.session.run(None, feed)

        return call

    def sync(self) -> None:
        """session.run returns host arrays, so it has already waited for the device."""

    def logits(self, images: np.ndarray) -> np.ndarray:
        return session_logits(self.session, self._feed(images))
