"""The HTTP service around a `GuardedClassifier` (FastAPI): predict, model card, health, audit of flagged inputs.

Every request is decoded and validated on arrival (4xx with a message naming the problem, see
`inputs.py` and `GuardedClassifier.check_images`); valid images go to the `MicroBatcher`, which runs
one guarded forward pass per coalesced batch in a worker thread and commits that batch's flagged
inputs to the audit log before any of its requests is answered.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .alarm import AlarmConfig, FlagRateCUSUM, null_rate
from .audit import AuditLog, image_sha256, open_audit_log
from .auth import AccessConfig, RequireKey
from .batching import MicroBatcher
from .connections import BodyDeadline, ConnectionLimits
from .guarded import GuardedClassifier, InputError
from .inputs import (ACCEPTED_TYPES, IMAGE_TYPES, JSON_TYPE, MULTIPART_TYPE, NPY_TYPE, decode_image, decode_json,
                     decode_npy, media_type)
from .metrics import ServiceMetrics
from .review import TrainingImages, png, render, to_csv
from .v2 import error_json
from .v2 import router as v2_router

log = logging.getLogger(__name__)
DEFAULT_AUDIT_DB = Path("latentdefence-audit.sqlite")
SQLITE_MAX = 2**63 - 1                     # the largest integer SQLite stores: larger ids/labels are a 422
_DAY = (r"([1-9][0-9]{3}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        r"|02-(0[1-9]|1[0-9]|2[0-8]))"
        r"|[1-9][0-9](0[48]|[2468][048]|[13579][26])-02-29|([2468][048]|[13579][26])00-02-29)")   # leap days
TIME_PATTERN = (rf"^$|^{_DAY}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{{1,6}})?)?"
                r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?$")   # every ISO 8601 time the audit query reads
_TIME = Query(None, pattern=TIME_PATTERN,
              description="ISO 8601 date or date-time, UTC if it has no offset; empty: no bound")


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the service (`latentdefence serve` flags map onto these)."""

    audit_db: str | Path = DEFAULT_AUDIT_DB   # SQLite file of flagged inputs, or a postgresql:// URL (replicas)
    keep_images: bool = False              # also store each flagged input's pixels in the audit log
    show_neighbours: bool = False          # the console shows the neighbours' training images (loads the cited set)
    data_dir: str | None = None            # where the cited training set's files are (file datasets only)
    max_body_bytes: int = 8 * 2**20        # larger bodies get 413 (a 256-image JSON batch of 28x28 is ~4 MB)
    max_images: int = 256                  # images per request
    max_batch: int = 64                    # images per coalesced forward pass
    max_wait_ms: float = 2.0               # how long a batch waits for more requests to join
    model_name: str = "guard"              # the model's name in the Open Inference Protocol (/v2/models/NAME)
    alarm: AlarmConfig = AlarmConfig()     # the flag-rate alarm (alarm.py)
    access: AccessConfig = AccessConfig()  # API keys (auth.py)
    connections: ConnectionLimits = ConnectionLimits()   # timeouts and the connection cap (connections.py)


class Neighbours(BaseModel):
    """One layer's evidence: the k nearest indexed training points, nearest first."""

    indices: list[int]                     # positions in the artifact's index (the pruned training set, in order)
    labels: list[int]                      # their training labels
    rows: list[int] | None = None          # their rows in the training set the artifact cites (GET /v1/model)


class Prediction(BaseModel):
    """The guarded model's answer for one image."""

    label: int
    probabilities: list[float]
    is_adversarial: bool
    credibility: float
    nonconformity: float
    per_layer: dict[str, float]
    sha256: str                            # of the decoded image as float32 (C, H, W) bytes
    audit_id: int | None                   # id of the audit record when flagged, else null
    neighbours: dict[str, Neighbours] | None = None   # with ?explain=true: per layer, the k nearest training points


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ModelCard(BaseModel):
    """What GET /v1/model reports (absent metadata is null)."""

    artifact: str | None
    artifact_sha256: str | None
    architecture: str
    input_shape: list[int]
    num_classes: int
    dataset: Any                           # as the artifact's metadata records them (free-form), else null
    threat_model: Any
    kind: str                              # the detector's registry name (dld, dknn, mahalanobis, lid, ...)
    taps: list[str]
    k: int | None                          # neighbours per layer (k-NN detectors), else null
    knn_backend: str | None
    cited_training_set: dict[str, str] | None = None   # {"dataset", "split"} the neighbours' rows count, else null
    threshold: float
    target_fpr: float | None
    calibration_fpr: float
    calibration_size: int
    git_revision: str | None
    server_git_revision: str
    metadata: dict[str, Any]
    limits: dict[str, Any]
    alarm: dict[str, Any]                  # the flag-rate alarm's state now (alarm.py)


class Health(BaseModel):
    status: str
    requests: int                          # predict requests answered by the batcher so far
    forward_passes: int                    # guarded forward passes run for them (fewer when batched)


class ErrorBody(BaseModel):
    detail: str


class Verdict(BaseModel):
    """An operator's review of a flagged input."""

    verdict: Literal["confirmed", "false_positive"] | None   # null clears it


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in [
        (400, "empty body, not an image, invalid JSON or .npy, damaged file"),
        (413, "body or image count over the server's limit"),
        (415, "content type other than " + ", ".join(ACCEPTED_TYPES)),
        (422, "wrong size or channel count, NaN/Inf, values outside [0, 1], wrong nesting")]}
_PIXELS = {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}
_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    JSON_TYPE: {"schema": {"type": "object", "description": 'exactly one of "image" (C, H, W) or "images" '
                           "(N, C, H, W), pixel values in [0, 1]",
                           "properties": {"image": _PIXELS, "images": {"type": "array", "items": _PIXELS}}}},
    NPY_TYPE: {"schema": {"type": "string", "format": "binary", "description": "numpy.save file of float pixels "
                          "(C, H, W) or (N, C, H, W) in [0, 1]; no pickles"}},
    MULTIPART_TYPE: {"schema": {"type": "object", "description": "a batch: one PNG/JPEG file per part, in order",
                                "properties": {"files": {"type": "array",
                                                         "items": {"type": "string", "format": "binary"}}}},
                     "encoding": {"files": {"contentType": "image/png, image/jpeg"}}},
}}}


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length or while it streams in."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            status, detail = (413, self._too_large(int(length))) if length.isdigit() else (400, "bad Content-Length")
            await error_json(scope["path"], detail, status)(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise InputError(self._too_large(received), status=413)
            return message

        await self.app(scope, limited, send)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes (serve --max-body-bytes)"


def create_app(guard: GuardedClassifier, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The FastAPI app serving `guard`; the audit log opens and the batcher starts with the app."""
    card = {**guard.info(), "limits": {"max_body_bytes": config.max_body_bytes, "max_images": config.max_images,
                                       "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms}}
    threshold, model_id = float(guard.detector.threshold_), card["artifact_sha256"] or str(guard.source)
    audit = open_audit_log(config.audit_db, keep_images=config.keep_images)
    alarm = FlagRateCUSUM.from_config(config.alarm, null_rate(card["calibration_fpr"], card["calibration_size"]))
    metrics = ServiceMetrics(card["k"], card["calibration_fpr"], alarm)
    metrics.track_verdicts(audit.verdict_counts)
    training = (TrainingImages.load(guard.cited_training_set, guard.citations, config.data_dir, guard.input_shape[0])
                if config.show_neighbours else None)

    def infer(images: torch.Tensor) -> list[dict[str, Any]]:
        """One guarded forward pass; flagged inputs are durably recorded before the results are returned."""
        out, evidence = guard.predict_with_evidence(images)                     # evidence of the flagged ones
        flagged = out.is_adversarial.nonzero().flatten()                        # (F,)
        ids = audit.record(images[flagged], out.label[flagged], out.nonconformity[flagged],
                           out.credibility[flagged], {t: v[flagged] for t, v in out.per_layer.items()},
                           threshold, model_id, evidence)
        audit_ids: list[int | None] = [None] * len(out)
        for i, record_id in zip(flagged.tolist(), ids):
            audit_ids[i] = record_id
        metrics.observe_batch(out.is_adversarial, out.per_layer)
        for _ in range(alarm.update(out.is_adversarial.tolist())):     # one audit row per raise
            log.warning("flag-rate alarm raised: %s", alarm.state())
            audit.record_alarm(alarm.state(), model_id)
        return [{**row, "sha256": image_sha256(images[i]), "audit_id": audit_ids[i]}
                for i, row in enumerate(out.rows())]

    batcher: MicroBatcher[dict[str, Any]] = MicroBatcher(infer, config.max_batch, config.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        log.info("serving %s (%s, threshold %g), audit log %s", guard.source, card["architecture"], threshold,
                 audit.location)
        try:
            yield
        finally:
            await batcher.stop()
            audit.close()

    app = FastAPI(title="latentdefence guarded classifier", version="1",
                  description="A classifier guarded by Deep Latent Defence (arXiv:1910.03334): every prediction "
                              "carries the detector's verdict; flagged inputs are recorded in an audit log.",
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(BodyDeadline, seconds=config.connections.body_timeout_s)
    app.add_middleware(RequireKey, access=config.access)
    app.add_middleware(metrics.middleware)              # outermost: counts refused requests too
    app.state.batcher, app.state.audit, app.state.alarm = batcher, audit, alarm

    @app.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return error_json(request.url.path, str(err), err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:   # 404, 405: unknown paths
        return error_json(request.url.path, str(err.detail), err.status_code, dict(err.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """One error shape on every route: a string naming each bad field (400 on /v2, as the protocol says)."""
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return error_json(request.url.path, message, 400 if request.url.path.startswith("/v2") else 422)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, Any]:
        """Liveness, and how many requests shared how many forward passes."""
        return {"status": "ok", "requests": batcher.requests, "forward_passes": batcher.batches}

    @app.get("/v1/model", response_model=ModelCard)
    async def model() -> dict[str, Any]:
        """Architecture, dataset, threat model, threshold, calibration FPR, git revision, limits."""
        return {**card, "alarm": alarm.state()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus text exposition: requests, latency, batch sizes, images scored and flagged, alarm state."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS, openapi_extra=_REQUEST_BODY)
    async def predict(request: Request, response: Response, explain: bool = False) -> dict[str, Any]:
        """Classify and screen one image (PNG/JPEG body, JSON "image") or a batch (JSON "images", .npy, multipart);
        `explain=true` adds each layer's k nearest training points (indices, labels) to every prediction."""
        start = time.perf_counter()
        images = await _read_images(request, guard.input_shape, config.max_images)
        if len(images) > config.max_images:
            raise InputError(f"{len(images)} images in one request; the limit is {config.max_images} "
                             "(serve --max-images)", status=413)
        images = guard.check_images(images)
        decoded = time.perf_counter()
        out = await batcher.submit(images)
        if explain:
            for row, neighbours in zip(out.results, await batcher.call(guard.explain, images)):
                row["neighbours"] = neighbours
        response.headers["Server-Timing"] = (
            f"read;dur={1e3 * (decoded - start):.2f}, wait;dur={1e3 * out.wait_s:.2f}, "
            f"infer;dur={1e3 * out.run_s:.2f};desc=\"batch of {out.batch_images}\"")
        return {"predictions": out.results}

    @app.get("/v1/audit", responses={
        200: {"description": "the records (JSON; CSV with format=csv)",
              "content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}}},
        400: {"model": ErrorBody, "description": "a time that is not ISO 8601"}})
    async def audit_records(since: str | None = _TIME, until: str | None = _TIME,
                            label: int | None = Query(None, ge=0, le=SQLITE_MAX),
                            limit: int = Query(100, ge=1, le=10_000),
                            before: int | None = Query(None, ge=1, le=SQLITE_MAX, description="only ids below this "
                                                       "(the next page)"),
                            format: Literal["json", "csv"] = "json") -> Response:
        """Flagged inputs, newest first, filtered by time (ISO 8601, UTC) and F's class; `format=csv` for CSV."""
        records = await run_in_threadpool(_query, audit, since, until, label, limit, before)
        if format == "csv":
            return Response(to_csv(records), media_type="text/csv",
                            headers={"content-disposition": 'attachment; filename="flagged.csv"'})
        return JSONResponse([r.as_dict() for r in records])

    @app.get("/v1/audit/alarms")
    async def audit_alarms() -> list[dict[str, Any]]:
        """Raised flag-rate alarms, oldest first, with the CUSUM's state when each was raised."""
        return await run_in_threadpool(audit.alarms)

    @app.post("/v1/audit/alarms/reset")
    async def reset_alarm() -> dict[str, Any]:
        """Clear the flag-rate alarm and its statistic (an operator's decision; admin key); the state after."""
        alarm.reset()
        log.warning("flag-rate alarm reset by an operator")
        return alarm.state()

    @app.post("/v1/audit/{record}/verdict", responses={400: {"model": ErrorBody, "description": "not JSON"},
                                                       404: {"model": ErrorBody}})
    async def verdict(body: Verdict, record: int = PathParam(ge=0, le=SQLITE_MAX)) -> dict[str, Any]:
        """An operator's review of audit record `record`: confirmed (an attack), false_positive, or null (none)."""
        if not await run_in_threadpool(audit.set_verdict, record, body.verdict):
            raise InputError(f"no audit record {record}", 404)
        return {"id": record, "verdict": body.verdict}

    @app.post("/review/{record}/verdict", response_class=RedirectResponse, status_code=303,
              responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def review_verdict(request: Request, record: int = PathParam(ge=0, le=SQLITE_MAX),
                             verdict: str = Form("", pattern="^(confirmed|false_positive)?$",
                                                 description="empty: clear the verdict"),
                             back: str = Form("", pattern=r"^[^\r\n]{0,2000}$")) -> RedirectResponse:
        """The console's buttons (a plain HTML form): store the review, then back to the same page."""
        _same_origin(request)
        if not await run_in_threadpool(audit.set_verdict, record, verdict or None):
            raise InputError(f"no audit record {record}", 404)
        query = back if back.startswith("?") else ""
        return RedirectResponse(f"/review{query}#record-{record}", status_code=303)

    @app.get("/v1/audit/{record}/image", response_class=Response, responses={404: {"model": ErrorBody}})
    async def audit_image(record: int = PathParam(ge=0, le=SQLITE_MAX)) -> Response:
        """The stored input of audit record `record` as PNG (only with serve --keep-images)."""
        stored = await run_in_threadpool(audit.images, [record])
        if record not in stored:
            raise InputError(f"no stored image for audit record {record} (serve --keep-images stores them)", 404)
        return Response(png(stored[record]), media_type="image/png")

    @app.get("/review", response_class=HTMLResponse,
             responses={400: {"model": ErrorBody, "description": "a time that is not ISO 8601"}})
    async def review(since: str | None = _TIME, until: str | None = _TIME,
                     label: str | None = Query(None, pattern=r"^[0-9]{0,18}$",
                                               description="F's class; empty: every class"),
                     limit: str = Query("100", pattern=r"^(|[1-9][0-9]{0,2}|1000)$",
                                        description="at most this many records, 1-1000; empty: 100"),
                     before: int | None = Query(None, ge=1, le=SQLITE_MAX, description="only ids below this "
                                                "(the next page)")) -> HTMLResponse:
        """The review console: flagged inputs with their image, what F said and what the neighbours say per
        layer, an operator's verdict buttons, pages of older records, the alarm's history."""
        wanted, most = int(label) if label else None, int(limit) if limit else 100
        records = await run_in_threadpool(_query, audit, since, until, wanted, most, before)
        images = await run_in_threadpool(audit.images, [r.id for r in records])
        page = render(records, images, {"since": since, "until": until, "label": label, "limit": most,
                                        "before": before},
                      alarm.state(), await run_in_threadpool(audit.alarms), await run_in_threadpool(audit.count),
                      training)
        return HTMLResponse(page)

    async def submit(images: torch.Tensor) -> list[dict[str, Any]]:
        return (await batcher.submit(images)).results

    app.openapi = lambda: _string_errors(FastAPI.openapi(app))   # type: ignore[method-assign]
    app.include_router(v2_router(config.model_name, guard.input_shape, card["num_classes"], card["taps"],
                                 config.max_images, guard.check_images, submit))
    return app


def _string_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the service answers: a 422 is `{"detail": string}` (FastAPI documents its own
    list shape), and /v2 answers bad requests with 400 `{"error": string}`, never 422."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if path.startswith("/v2"):
                responses.pop("422", None)
                continue
            for status, response in responses.items():
                if status >= "400":             # errors are JSON even where the route answers HTML or CSV
                    response["content"] = error
    schemas = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _same_origin(request: Request) -> None:
    """Refuse a form posted from another site (a browser may send cached credentials with it: CSRF)."""
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise InputError(f"a review from another origin ({origin!r}) is refused", status=403)


def _query(audit: AuditLog, since: str | None, until: str | None, label: int | None, limit: int,
           before: int | None = None) -> list[Any]:
    """`AuditLog.query` with a bad time as a 400; an empty field (an HTML form's) filters nothing."""
    try:
        return audit.query(since or None, until or None, label, limit, before)
    except ValueError as err:
        raise InputError(str(err), status=400) from err


async def _read_images(request: Request, shape: tuple[int, int, int], max_images: int) -> torch.Tensor:
    """The request's images (N, C, H, W), decoded off the event loop."""
    kind = media_type(request.headers.get("content-type"))
    if kind == MULTIPART_TYPE:
        form = await request.form(max_files=max_images, max_fields=max_images)   # more: 400 "Too many files"
        files = [(value.filename or key, await value.read()) for key, value in form.multi_items()
                 if isinstance(value, UploadFile)]
        await form.close()
        if not files:
            raise InputError("multipart body holds no image files (send one file part per image)", status=400)
        return await run_in_threadpool(
            lambda: torch.stack([decode_image(data, shape, f"file {name!r}") for name, data in files]))
    body = await request.body()
    if kind in IMAGE_TYPES:
        return (await run_in_threadpool(decode_image, body, shape)).unsqueeze(0)
    return await run_in_threadpool(decode_npy if kind == NPY_TYPE else decode_json, body)
