"""`latentdefence audit list|export|prune|reset-alarm`: what the service flagged, from its audit log (a SQLite file
or the PostgreSQL database its replicas share)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..validation import check_output
from .errors import cli_errors

if TYPE_CHECKING:
    from ..serving import AuditLog

app = typer.Typer(help="List and export the inputs a guarded service flagged.", no_args_is_help=True)
DB = typer.Option("latentdefence-audit.sqlite", "--db", help="Audit log written by `latentdefence serve`: a SQLite "
                  "file or a postgresql:// URL.")


def _open(db: str, read_only: bool = True) -> "AuditLog":
    from ..serving import open_audit_log

    if not db.startswith(("postgresql://", "postgres://")) and not Path(db).is_file():
        raise FileNotFoundError(f"{db}: no such audit log (pass --db; `serve --audit-db` sets where it is written)")
    return open_audit_log(db, read_only=read_only)


@app.command("list")
def list_(db: str = DB, limit: int = typer.Option(20, help="Show at most N records."),
          since_id: int = typer.Option(0, help="Only records with a larger id.")) -> None:
    """Print flagged records, oldest first: id, time, predicted class, non-conformity, credibility, hash."""
    with cli_errors():
        from ..validation import check_count

        check_count("--limit", limit)
        check_count("--since-id", since_id, minimum=0)
        log = _open(db)
        typer.echo(f"{log.count()} flagged inputs in {log.location}")
        for r in log.records(limit, since_id):
            typer.echo(f"{r.id:6d}  {r.time}  class {r.predicted}  score {r.nonconformity:g} "
                       f"(threshold {r.threshold:g})  credibility {r.credibility:.4f}  {r.sha256[:16]}")


@app.command("export")
def export(db: str = DB, out: Path = typer.Option(..., help="JSON Lines file, one record per line."),
           images: Optional[Path] = typer.Option(None, help="Also write the stored images here (.safetensors: "
                                                  "`images` (N, C, H, W), `ids` (N,)).")) -> None:
    """Export every flagged record (and, if kept, its image); files are written atomically."""
    with cli_errors():
        check_output(out, "file", [Path(db), images])
        if images is not None:
            check_output(images, "file", [Path(db), out], name="--images")
        import torch

        from .._io import atomic_path, save_tensors

        log = _open(db)
        records = list(log.records())
        stored = log.images([r.id for r in records]) if images is not None else {}
        if images is not None and not stored:     # refused before either file is written
            raise ValueError(f"{log.location} holds no images (serve --keep-images stores them)")
        with atomic_path(out) as tmp:
            tmp.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in records))
        message = f"wrote {len(records)} records to {out}"
        if images is not None:
            ids = sorted(stored)
            save_tensors(images, {"images": torch.stack([stored[i] for i in ids]), "ids": torch.tensor(ids)},
                         {"source": log.location})
            message += f" and {len(ids)} images to {images}"
        typer.echo(message)


@app.command("prune")
def prune(db: str = DB, older_than: str = typer.Option(..., help="Delete records and alarms older than this: "
                                                         "30d, 12h, 90m or 3600s.")) -> None:
    """Retention: delete flagged records and alarms older than --older-than (run it from cron)."""
    with cli_errors():
        from ..serving.audit import parse_duration

        age = parse_duration(older_than)        # a bad duration is refused before the log is opened
        log = _open(db, read_only=False)
        try:
            removed = log.prune(age)
            typer.echo(f"deleted {removed} flagged records older than {older_than} from {log.location}; "
                       f"{log.count()} remain")
        finally:
            log.close()


@app.command("reset-alarm")
def reset_alarm(url: str = typer.Option("http://127.0.0.1:8000", help="The running server's base URL."),
                admin_key: Optional[str] = typer.Option(None, envvar="LATENTDEFENCE_ADMIN_KEY", show_default=False,
                                                        help="The server's admin key (prefer the env variable).")
                ) -> None:
    """Clear a running server's flag-rate alarm (POST /v1/audit/alarms/reset); prints the alarm state after."""
    with cli_errors():
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{url.rstrip('/')}/v1/audit/alarms/reset", method="POST", data=b"",
                                         headers={"x-api-key": admin_key} if admin_key else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:   # noqa: S310 - the operator's own URL
                typer.echo(response.read().decode())
        except urllib.error.HTTPError as err:
            raise ValueError(f"{url}: the server answered {err.code} ({err.read().decode(errors='replace')[:200]})") \
                from None
