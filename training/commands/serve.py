"""`learnrec serve`, `learnrec mlflow-ui` and `learnrec api-key`: run the API, the MLflow UI, make keys."""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI


def worker_app() -> FastAPI:
    """The app of one `learnrec serve --workers N` process (uvicorn imports this factory in each)."""
    from service.logs import configure_logging
    from service.main import create_app

    configure_logging(os.environ.get("LEARNREC_LOG_LEVEL", "INFO"), everything=True)
    return create_app()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command()
    def serve(
        host: Annotated[str | None, typer.Option(help="Interface (default: settings.service.host).")] = None,
        port: Annotated[int | None, typer.Option(help="Port (default: settings.service.port).")] = None,
        log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                help="Worker processes on the one port, each with its own answer cache (kept honest by "
                "Redis's key-change reports) and exposure writer; about one per core.",
            ),
        ] = 1,
    ) -> None:
        """Run the recommendation API with uvicorn (embedded Redis unless REDIS_URL is set)."""
        import uvicorn

        from features.settings import get_settings
        from service.errors import ServiceConfigError
        from service.logs import configure_logging
        from service.main import create_app

        settings = get_settings()
        configure_logging(log_level.upper(), everything=True)
        try:
            api = create_app(settings)
        except ServiceConfigError as exc:
            typer.echo(f"refusing to start: {exc}", err=True)
            raise typer.Exit(2) from exc
        bind_host = host or settings.service.host
        bind_port = port or settings.service.port
        typer.echo(
            f"learnrec API on http://{bind_host}:{bind_port} (docs: /docs), {workers} worker(s); "
            "Ctrl-C stops",
            err=True,
        )
        # our middleware logs every request as JSON; uvicorn's own access log would repeat it in text
        level = log_level.lower()
        common: dict[str, Any] = {
            "host": bind_host,
            "port": bind_port,
            "log_config": None,
            "access_log": False,
        }
        if workers == 1:
            uvicorn.run(api, log_level=level, **common)
            return
        # several processes: each imports the app factory itself and gets its own lifespan (Redis pool,
        # answer cache and its key-change listener, exposure writer, model). They share one Redis: the
        # embedded server is started here once and its URL handed down, so workers never race to start it.
        if settings.redis.url is None:
            from features.redis_server import redis_url

            os.environ["LEARNREC_REDIS__URL"] = redis_url(settings)
        os.environ["LEARNREC_LOG_LEVEL"] = log_level.upper()
        uvicorn.run(
            "training.commands.serve:worker_app", factory=True, workers=workers, log_level=level, **common
        )

    @app.command("mlflow-ui")
    def mlflow_ui(
        host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port.")] = 5000,
    ) -> None:
        """Open the MLflow UI on the project's tracking store (the same registry `serve` loads from)."""
        from features.settings import get_settings

        settings = get_settings()
        uri = settings.tracking_uri()
        if uri.startswith("sqlite:"):
            settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "ui",
            "--backend-store-uri", uri,
            "--default-artifact-root", settings.artifact_root(),
            "--host", host,
            "--port", str(port),
        ]  # fmt: skip
        telemetry = "on" if settings.mlflow.telemetry else "off (LEARNREC_MLFLOW__TELEMETRY=true allows it)"
        typer.echo(f"MLflow UI on http://{host}:{port} for {uri}; usage telemetry {telemetry}", err=True)
        typer.echo("Ctrl-C to stop", err=True)
        sys.stderr.flush()
        # become `mlflow ui` (no wrapper process): signals reach MLflow and its workers directly; the
        # server and the page it serves report usage unless these variables say no
        os.execve(sys.executable, cmd, {**os.environ, **settings.mlflow.telemetry_environment()})

    @app.command("api-key")
    def api_key(
        name: Annotated[str, typer.Option(help="Client name, e.g. portal-taebaek.")],
        region: Annotated[
            list[str], typer.Option(help="Region the key may read and write (repeat; '*' = all).")
        ],
        admin: Annotated[bool, typer.Option(help="May call /admin routes.")] = False,
    ) -> None:
        """Make a new API key: prints the key once (give it to the client) and the entry for the keys file."""
        from features.api_keys import hash_key

        key = secrets.token_urlsafe(32)
        entry = {"name": name, "sha256": hash_key(key), "regions": region, "admin": admin}
        typer.echo(f"key (shown once): {key}")
        typer.echo('add to the keys file (settings.service.api_keys_file) under "keys":')
        typer.echo(json.dumps(entry, ensure_ascii=False))
