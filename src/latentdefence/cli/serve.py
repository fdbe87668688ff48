"""`latentdefence serve` and `latentdefence export-classifier`: thin commands over `latentdefence.serving`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..validation import check_output
from .errors import cli_errors


def register(app: typer.Typer) -> None:
    """Add `serve` and `export-classifier` to the main app."""
    app.command("serve")(serve)
    app.command("export-classifier")(export_classifier)


def serve(
    artifact: Path = typer.Argument(..., help="Calibrated detector artifact of any registered detector "
                                    "(DeepLatentDefence.save, DeepKNN.save, ...)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; the default serves this machine only."),
    port: int = typer.Option(8000, help="TCP port."),
    audit_db: str = typer.Option("latentdefence-audit.sqlite", help="Audit log of flagged inputs: a SQLite file, "
                                 "or postgresql://USER@HOST/DB shared by several replicas."),
    keep_images: bool = typer.Option(False, help="Also store each flagged input's pixels in the audit log."),
    show_neighbours: bool = typer.Option(False, help="Show each flagged input's nearest training images in the "
                                         "review console (loads the training set the artifact cites)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder of the cited training set's files (file datasets; "
                                           "default $LATENTDEFENCE_DATA_DIR)."),
    knn_backend: Optional[str] = typer.Option(None, help="Override the artifact's k-NN backend: sklearn | faiss | "
                                              "faiss-hnsw (approximate, faster)."),
    max_body_bytes: int = typer.Option(8 * 2**20, help="Larger request bodies get 413."),
    max_images: int = typer.Option(256, help="Images per request."),
    max_batch: int = typer.Option(64, help="Images per coalesced forward pass."),
    max_wait_ms: float = typer.Option(2.0, help="How long a batch waits for concurrent requests to join."),
    threads: Optional[int] = typer.Option(None, help="torch threads for inference (default: torch's)."),
    access_log: bool = typer.Option(False, help="Log every request (uvicorn access log)."),
    api_key: Optional[str] = typer.Option(None, envvar="LATENTDEFENCE_API_KEY", show_default=False,
                                          help="Key for every route but health probes (prefer the env variable)."),
    admin_key: Optional[str] = typer.Option(None, envvar="LATENTDEFENCE_ADMIN_KEY", show_default=False,
                                            help="Separate key for /metrics, /review and /v1/audit (default: "
                                            "the API key)."),
    insecure: bool = typer.Option(False, help="Allow serving beyond loopback without an API key."),
    alarm_shift: float = typer.Option(0.05, help="Flag-rate rise (over the calibrated FPR) the alarm detects."),
    alarm_false_alarm_rate: float = typer.Option(1e-6, help="Alarm false alarms per clean input (at most)."),
    model_name: Optional[str] = typer.Option(None, help="Model name in the Open Inference Protocol "
                                             "(/v2/models/NAME); default: the artifact's file name stem."),
    header_timeout: float = typer.Option(10.0, help="Seconds a client has to send a request's head (line and "
                                         "headers); slower connections are closed."),
    body_timeout: float = typer.Option(30.0, help="Seconds a client has to send a request's body; slower: 408."),
    keep_alive: float = typer.Option(5.0, help="Seconds an idle kept-alive connection stays open."),
    max_connections: int = typer.Option(512, help="Connections or requests in flight at once; more get 503."),
    require_signature: Optional[Path] = typer.Option(None, help="Ed25519 public key (PEM): serve the artifact only "
                                                     "if `latentdefence sign` signed it with the matching key."),
) -> None:
    """Serve a guarded classifier over HTTP: POST /v1/predict, GET /v1/model, GET /healthz (OpenAPI at /docs)."""
    with cli_errors():
        import torch
        import uvicorn

        from ..serving import GuardedClassifier
        from ..serving.alarm import AlarmConfig
        from ..serving.app import ServeConfig, create_app
        from ..serving.auth import AccessConfig, check_binding
        from ..serving.connections import ConnectionLimits
        from ..validation import check_count, check_number

        check_count("--port", port, 1, 65535)   # before the model loads, not in asyncio afterwards
        for name, value in (("--max-body-bytes", max_body_bytes), ("--max-images", max_images),
                            ("--max-batch", max_batch), ("--threads", 1 if threads is None else threads)):
            check_count(name, value)
        check_number("--max-wait-ms", max_wait_ms, low=0.0)
        check_count("--max-connections", max_connections)
        for name, seconds in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout),
                              ("--keep-alive", keep_alive)):
            check_number(name, seconds, low=0.0, low_open=True)
        access = AccessConfig(api_key=api_key, admin_key=admin_key)
        check_binding(host, access, insecure)
        if threads:
            torch.set_num_threads(threads)
        config = ServeConfig(audit_db=audit_db, keep_images=keep_images, show_neighbours=show_neighbours,
                             data_dir=data_dir, max_body_bytes=max_body_bytes,
                             max_images=max_images, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             model_name=model_name or artifact.stem, access=access,
                             connections=ConnectionLimits(header_timeout, body_timeout, keep_alive, max_connections),
                             alarm=AlarmConfig(shift=alarm_shift, false_alarm_rate=alarm_false_alarm_rate))
        guard = GuardedClassifier.load(artifact, knn_backend=knn_backend, public_key=require_signature)
        app = create_app(guard, config)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info",
                **config.connections.uvicorn_settings())


def export_classifier(
    artifact: Path = typer.Argument(..., help="Detector artifact (DeepLatentDefence.save)."),
    out: Path = typer.Option(..., help="Checkpoint path for the classifier alone (`load_checkpoint` reads it)."),
) -> None:
    """Write the guarded classifier alone as a plain checkpoint, for users who do not want the detector."""
    with cli_errors():
        check_output(out, "checkpoint", [artifact])
        from ..serving import GuardedClassifier

        typer.echo(f"wrote {GuardedClassifier.load(artifact).export_classifier(out)}")
