"""Request bodies to image tensors: PNG/JPEG files, JSON pixel arrays and .npy arrays, with errors naming the problem.

Shapes, channels, NaN and range are checked afterwards by `GuardedClassifier.check_images`; here only
what is specific to the wire format (decodable, image mode, nesting) is.
"""

from __future__ import annotations

import io
import json
import math
import tokenize
import warnings
from typing import Any

import numpy as np
import orjson
import torch
from PIL import Image, UnidentifiedImageError

from .guarded import InputError

IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
MULTIPART_TYPE = "multipart/form-data"
ACCEPTED_TYPES = (*IMAGE_TYPES, JSON_TYPE, NPY_TYPE, MULTIPART_TYPE)
_CHANNELS = {"L": 1, "1": 1, "RGB": 3}


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header; 415 unless it is one we accept."""
    bare = (content_type or "").split(";")[0].strip().lower()
    if bare == "image/jpg":
        bare = "image/jpeg"
    if bare not in ACCEPTED_TYPES:
        raise InputError(f"unsupported content type {content_type or '(none)'!r}; send one of "
                         f"{', '.join(ACCEPTED_TYPES)}", status=415)
    return bare


def decode_image(data: bytes, shape: tuple[int, int, int], name: str = "body") -> torch.Tensor:
    """A PNG or JPEG file as float32 (C, H, W) in [0, 1]; the size is checked before the pixels are decoded."""
    if not data:
        raise InputError(f"{name} is empty", status=400)
    try:
        with warnings.catch_warnings():     # a header claiming a huge size: refused below before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:      # Pillow refuses > 2x MAX_IMAGE_PIXELS at open, from the header
        raise InputError(f"{name}: the image header claims {err}; the model expects {shape[1]}x{shape[2]}",
                         status=413) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:    # ValueError: e.g. a truncated IHDR chunk
        raise InputError(f"{name} is not a PNG or JPEG image ({len(data)} bytes starting {data[:8]!r})",
                         status=400) from err
    if image.format not in ("PNG", "JPEG"):
        raise InputError(f"{name} is a {image.format} image; send PNG or JPEG", status=415)
    c, h, w = shape
    if image.size != (w, h):
        raise InputError(f"{name}: image is {image.size[1]}x{image.size[0]} (HxW), the model expects {h}x{w}")
    if image.mode not in _CHANNELS:
        bands = len(image.getbands())
        raise InputError(f"{name}: image mode {image.mode} ({bands} channel{'s' * (bands != 1)}) is not supported; "
                         f"the model expects {c} channel{'s' * (c != 1)} ({'L' if c == 1 else 'RGB'}, 8 bit)")
    if _CHANNELS[image.mode] != c:
        raise InputError(f"{name}: image has {_CHANNELS[image.mode]} channel{'s' * (_CHANNELS[image.mode] != 1)} "
                         f"({image.mode}), the model expects {c}")
    try:
        pixels = np.asarray(image.convert("L") if image.mode == "1" else image, dtype=np.float32) / 255.0
    except (OSError, ValueError) as err:                # truncated or corrupt after a valid header
        raise InputError(f"{name} is a damaged {image.format} image ({err})", status=400) from err
    return torch.from_numpy(pixels.reshape(h, w, c)).permute(2, 0, 1).contiguous()   # (C, H, W)


def decode_json(data: bytes) -> torch.Tensor:
    """{"image": (C, H, W) nested lists} or {"images": (N, C, H, W)} as a float32 tensor (N, C, H, W)."""
    if not data:
        raise InputError("request body is empty", status=400)
    try:      # orjson parses big pixel arrays fastest; what it refuses, json.loads answers (its errors, or NaN /
        body: Any = _fast_json(data)  # Infinity literals, which check_images then rejects by name)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:   # RecursionError: absurd nesting
        raise InputError(f"request body is not valid JSON ({err})", status=400) from err
    if not isinstance(body, dict) or len({"image", "images"} & body.keys()) != 1:
        raise InputError('JSON body must be an object with exactly one of "image" (C, H, W) or '
                         '"images" (N, C, H, W): nested arrays of pixel values in [0, 1]')
    key = "image" if "image" in body else "images"
    try:
        array = np.asarray(body[key])
    except (ValueError, TypeError) as err:
        raise InputError(f'"{key}" must be a rectangular nested array of numbers ({err})') from err
    if array.dtype.kind not in "iuf":
        raise InputError(f'"{key}" must be a rectangular nested array of numbers, got '
                         f'{"a ragged or mixed array" if array.dtype.kind == "O" else f"values of type {array.dtype}"}')
    want = 3 if key == "image" else 4
    if array.ndim != want:
        raise InputError(f'"{key}" must have {want} dimensions ({"C, H, W" if want == 3 else "N, C, H, W"}), '
                         f"got shape {list(array.shape)}")
    tensor = torch.from_numpy(array.astype(np.float32))
    return tensor.unsqueeze(0) if key == "image" else tensor


def _check_npy_header(data: bytes) -> None:
    """The shape and dtype a .npy header declares must account for exactly the bytes that follow it, checked in
    Python integers before numpy allocates anything (a 3 KB body claiming (10**7, 1, 28, 28) float64 once made
    numpy try 58 GiB)."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        raise ValueError(f".npy format version {version} is not supported")
    shape, _, dtype = reader(stream)
    if dtype.hasobject:
        raise ValueError("object arrays (pickles) are refused")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != len(data) - stream.tell():
        raise ValueError(f"its header declares shape {list(shape)} of {dtype} ({claimed} bytes) but "
                         f"{len(data) - stream.tell()} bytes follow it")


def _fast_json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def decode_npy(data: bytes) -> torch.Tensor:
    """A `numpy.save` file (no pickles) of float pixels (C, H, W) or (N, C, H, W) as float32 (N, C, H, W)."""
    if not data:
        raise InputError("request body is empty", status=400)
    if not data.startswith(b"\x93NUMPY"):
        raise InputError("request body is not a .npy file (numpy.save format)", status=400)
    try:
        _check_npy_header(data)
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as err:  # truncated, object, bad header
        raise InputError(f"request body is not a readable .npy array ({err})", status=400) from err
    if array.dtype.kind != "f":
        raise InputError(f".npy array must hold floating point pixels in [0, 1], got dtype {array.dtype}")
    if array.ndim not in (3, 4):
        raise InputError(f".npy array must be shaped (C, H, W) or (N, C, H, W), got {list(array.shape)}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.unsqueeze(0) if array.ndim == 3 else tensor
