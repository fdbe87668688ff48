"""The Open Inference Protocol (KServe v2, also spoken by Triton) over the guarded model: wire format only.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ : one input ``images``
(FP32 pixels in [0, 1] or UINT8 pixels in 0..255, NCHW, batched) in the JSON tensor format, or with the
binary tensor data extension (``Inference-Header-Content-Length``); outputs are the label, probabilities,
flag, credibility, summed and per-layer non-conformity, and the audit id. Errors are ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .guarded import InputError

INPUT = "images"
PREFIX = "/v2"
VERSION = "1"          # the one version of the served model
HEADER_LENGTH = "inference-header-content-length"
INPUT_TYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_TYPES = {"BOOL": np.dtype("?"), "INT64": np.dtype("<i8"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}


@dataclass(frozen=True)
class Output:
    """One output tensor of the model: its name, datatype and how a result row fills it."""

    name: str
    datatype: str
    key: str                               # field of a prediction row (`GuardedPrediction.rows` plus audit_id)
    tap: str | None = None                 # per-layer outputs read row["per_layer"][tap]

    def column(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        values = [row[self.key][self.tap] if self.tap else row[self.key] for row in rows]
        if self.key == "audit_id":
            values = [-1 if v is None else v for v in values]
        return np.asarray(values, dtype=OUTPUT_TYPES[self.datatype])


def outputs(taps: Sequence[str]) -> list[Output]:
    """The model's outputs, in order; per-layer scores are `nonconformity_<tap>`."""
    return [Output("label", "INT64", "label"), Output("probabilities", "FP32", "probabilities"),
            Output("is_adversarial", "BOOL", "is_adversarial"), Output("credibility", "FP64", "credibility"),
            Output("nonconformity", "FP32", "nonconformity"),
            *[Output(f"nonconformity_{tap}", "FP32", "per_layer", tap) for tap in taps],
            Output("audit_id", "INT64", "audit_id")]


def metadata(name: str, shape: Sequence[int], num_classes: int, taps: Sequence[str]) -> dict[str, Any]:
    """GET /v2/models/{name}: inputs and outputs with datatypes and shapes (-1: the batch dimension)."""
    dims = {"probabilities": [-1, num_classes]}
    return {"name": name, "versions": [VERSION], "platform": "latentdefence-dld",
            # one entry per input name (the protocol's metadata_tensor has one datatype): FP32; UINT8 is accepted too
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *shape],
                        "parameters": {"also_accepts": [dt for dt in INPUT_TYPES if dt != "FP32"]}}],
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": dims.get(o.name, [-1])}
                        for o in outputs(taps)]}


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: the images (N, C, H, W) float32 in [0, 1] and what to send back."""

    images: torch.Tensor
    id: str | None
    wanted: list[tuple[str, bool]] | None  # (output name, as binary); None: all outputs
    binary: bool                           # default for outputs not asking (binary_data_output)


def _fail(message: str) -> InputError:
    return InputError(message, status=400)


def parse_request(body: bytes, header_length: str | None, shape: Sequence[int],
                  output_names: Sequence[str]) -> InferRequest:
    """Decode an infer request body; an InputError (400) names what is wrong."""
    if not body:
        raise _fail("request body is empty; send a JSON inference request")
    try:
        split = len(body) if header_length is None else int(header_length)
    except ValueError as err:
        raise _fail(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from err
    if not 0 < split <= len(body):
        raise _fail(f"Inference-Header-Content-Length {split} is outside the body's {len(body)} bytes")
    try:
        request = json.loads(body[:split])
    except (ValueError, RecursionError) as err:          # RecursionError: absurdly deep nesting
        raise _fail(f"inference request is not valid JSON ({str(err)[:200]})") from err
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or len(request["inputs"]) != 1:
        raise _fail(f'inference request must be a JSON object whose "inputs" is a list of one tensor "{INPUT}"')
    images = _input(request["inputs"][0], body[split:], shape)
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail('"parameters" must be an object')
    return InferRequest(images, _request_id(request), _wanted(request.get("outputs"), output_names),
                        bool(params.get("binary_data_output", False)))


def _request_id(request: dict[str, Any]) -> str | None:
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _fail(f'"id" must be a string, got {type(rid).__name__}')
    return rid


def _input(tensor: Any, binary: bytes, shape: Sequence[int]) -> torch.Tensor:
    if not isinstance(tensor, dict):
        raise _fail("each input must be a JSON object with name, shape, datatype and data")
    if tensor.get("name") != INPUT:
        raise _fail(f'unknown input {tensor.get("name")!r}; the model has one input "{INPUT}"')
    datatype = tensor.get("datatype")
    if datatype not in INPUT_TYPES:
        raise _fail(f"input datatype {datatype!r} is not supported; send one of {', '.join(INPUT_TYPES)}")
    dims = tensor.get("shape")
    c, h, w = shape
    if (not isinstance(dims, list) or len(dims) != 4 or not all(type(d) is int for d in dims)
            or dims[0] < 1 or dims[1:] != [c, h, w]):
        raise _fail(f"input shape must be [N, {c}, {h}, {w}] with N >= 1 (NCHW), got {dims!r}")
    array = _data(tensor, binary, INPUT_TYPES[datatype], dims)
    if datatype == "UINT8":
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    return torch.from_numpy(array.astype(np.float32, copy=True))


def _data(tensor: dict[str, Any], binary: bytes, dtype: np.dtype, dims: list[int]) -> np.ndarray:
    count = math.prod(dims)          # Python integers: a claimed [2**60 + 1, ...] must not wrap around
    size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor.get("parameters"), dict) \
        else None
    if size is not None:
        if size != len(binary) or size != count * dtype.itemsize:
            raise _fail(f"binary input is {len(binary)} bytes (binary_data_size {size!r}); shape {dims} of "
                        f"{dtype.name} needs {count * dtype.itemsize}")
        return np.frombuffer(binary, dtype=dtype).reshape(dims)
    if binary:
        raise _fail("binary data follows the JSON header but the input has no binary_data_size parameter")
    if "data" not in tensor:
        raise _fail('input has no "data" (or binary_data_size parameter)')
    try:
        array = np.asarray(tensor["data"])
    except (ValueError, TypeError, RecursionError) as err:
        raise _fail(f'input "data" must be a flat or nested array of numbers ({str(err)[:200]})') from err
    if array.dtype.kind not in ("iu" if dtype.kind == "u" else "iuf") or array.size != count:
        raise _fail(f'input "data" must hold {count} {"integers" if dtype.kind == "u" else "numbers"} for shape '
                    f"{dims}, got {array.size} values of type {array.dtype}")
    if dtype.kind == "u" and (array.min() < 0 or array.max() > 255):
        raise _fail(f"UINT8 input values must lie in 0..255, got values in [{array.min()}, {array.max()}]")
    return array.astype(dtype).reshape(dims)


def _wanted(requested: Any, names: Sequence[str]) -> list[tuple[str, bool]] | None:
    if requested is None:
        return None
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise _fail('"outputs" must be a list of objects with a "name"')
    wanted = []
    for o in requested:
        if o.get("name") not in names:
            raise _fail(f"unknown output {o.get('name')!r}; the model's outputs are {', '.join(names)}")
        params = o.get("parameters") or {}
        wanted.append((o["name"], bool(params.get("binary_data", False)) if isinstance(params, dict) else False))
    return wanted


def encode_response(request: InferRequest, rows: Sequence[dict[str, Any]], model: str,
                    taps: Sequence[str]) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary tensors follow it) of the infer response."""
    by_name = {o.name: o for o in outputs(taps)}
    wanted = request.wanted if request.wanted is not None else [(name, request.binary) for name in by_name]
    tensors, blobs = [], []
    for name, binary in wanted:
        out = by_name[name]
        array = out.column(rows)
        entry: dict[str, Any] = {"name": name, "datatype": out.datatype, "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.flatten().tolist()
        tensors.append(entry)
    head = json.dumps({"model_name": model, "model_version": "1", **({"id": request.id} if request.id else {}),
                       "outputs": tensors}).encode()
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string", "enum": [INPUT]}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": list(INPUT_TYPES)}, "data": {"type": "array"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description":
                                            "JSON header then binary tensors (Inference-Header-Content-Length)"}}}}}
_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request, wrong input name, datatype, shape or values"},
    404: {"description": "no such model"}, 413: {"description": "body or image count over the server's limit"}}


def error_json(path: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in the protocol's shape on /v2 (`{"error": "..."}`, what tritonclient decodes), FastAPI's
    `{"detail": "..."}` elsewhere: the one place middlewares and handlers build error bodies."""
    key = "error" if path == PREFIX or path.startswith(PREFIX + "/") else "detail"
    return JSONResponse({key: message}, status_code=status, headers=headers)


def router(name: str, shape: Sequence[int], num_classes: int, taps: Sequence[str], max_images: int,
           check: Callable[[torch.Tensor], torch.Tensor],
           submit: Callable[[torch.Tensor], Awaitable[list[dict[str, Any]]]]) -> APIRouter:
    """The /v2 routes for model `name`: health, server and model metadata, infer (through `submit`)."""
    api = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (v2)"])
    card = metadata(name, shape, num_classes, taps)
    names = [o.name for o in outputs(taps)]

    def model_or_404(model: str, version: str = VERSION) -> JSONResponse | None:
        if model != name:
            return JSONResponse({"error": f"unknown model {model!r}; this server serves {name!r}"}, status_code=404)
        if version != VERSION:
            return JSONResponse({"error": f"unknown version {version!r} of model {name!r}; it has version "
                                          f"{VERSION!r}"}, status_code=404)
        return None

    @api.get("")
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return {"name": "latentdefence", "version": "1", "extensions": ["binary_tensor_data"]}

    @api.get("/health/live")
    async def live() -> dict[str, bool]:
        """200 while the process answers."""
        return {"live": True}

    @api.get("/health/ready")
    async def ready() -> dict[str, bool]:
        """200 once the model is loaded (it is loaded before the server listens)."""
        return {"ready": True}

    @api.get("/models/{model}", responses=_V2_ERRORS)
    async def model_metadata(model: str) -> Any:
        """Inputs and outputs of the model, with datatypes and shapes."""
        return model_or_404(model) or card

    @api.get("/models/{model}/versions/{version}", responses=_V2_ERRORS)
    async def model_version_metadata(model: str, version: str) -> Any:
        """The same, for the model's one version ("1")."""
        return model_or_404(model, version) or card

    @api.get("/models/{model}/ready", responses=_V2_ERRORS)
    async def model_ready(model: str) -> Any:
        """200 when `model` is served and ready."""
        return model_or_404(model) or {"name": name, "ready": True}

    @api.get("/models/{model}/versions/{version}/ready", responses=_V2_ERRORS)
    async def model_version_ready(model: str, version: str) -> Any:
        """The same, for the model's one version ("1")."""
        return model_or_404(model, version) or {"name": name, "ready": True}

    @api.post("/models/{model}/infer", responses=_V2_ERRORS, openapi_extra=_INFER_BODY)
    async def infer(model: str, request: Request) -> Response:
        """Classify and screen a batch of images given as a tensor `images` (FP32 or UINT8, NCHW)."""
        return await infer_version(model, VERSION, request)

    @api.post("/models/{model}/versions/{version}/infer", responses=_V2_ERRORS, openapi_extra=_INFER_BODY)
    async def infer_version(model: str, version: str, request: Request) -> Response:
        """The same, for the model's one version ("1")."""
        missing = model_or_404(model, version)
        if missing:
            return missing
        try:
            parsed = await run_in_threadpool(parse_request, await request.body(), request.headers.get(HEADER_LENGTH),
                                             shape, names)
            if len(parsed.images) > max_images:
                raise InputError(f"{len(parsed.images)} images in one request; the limit is {max_images} "
                                 "(serve --max-images)", status=413)
            images = check(parsed.images)
        except InputError as err:
            return JSONResponse({"error": str(err)}, status_code=400 if err.status == 422 else err.status)
        body, head = encode_response(parsed, await submit(images), name, taps)
        if head is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)})

    return api
