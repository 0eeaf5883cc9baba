"""DICOM node commands: dicom-listen."""

from __future__ import annotations

import signal
import threading

import click


@click.command("dicom-listen")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=11112, show_default=True)
@click.option(
    "--ae-title", default=None, help="our AE title [default: COVIDXRAY_DICOM_AE_TITLE or COVIDXRAY]"
)
@click.option("--backend", type=click.Choice(["keras", "automl"]), default="keras", show_default=True)
def dicom_listen(host: str, port: int, ae_title: str | None, backend: str) -> None:
    """Receive radiographs from a PACS (DIMSE C-STORE), predict, send SR and SC results back."""
    from dataclasses import replace

    from covidxray.dicomnode.listener import start, tls_context
    from covidxray.settings import ConfigError, Settings
    from covidxray.web.app import create_app

    try:
        settings = Settings.from_env()
        settings = replace(settings, dicom_ae_title=ae_title) if ae_title else settings
        app = create_app(backend=backend, settings=settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    services, sender = app.extensions["covidxray"], app.extensions.get("covidxray.dicom")
    settings = services.settings
    allowed, tls = settings.dicom_allowed_aes, tls_context(settings)
    server = start(services, sender, host, port, settings.dicom_ae_title, allowed, tls)
    click.echo(f"listening as {settings.dicom_ae_title} on {host}:{port}{' (TLS)' if tls else ''}", err=True)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.shutdown()
    if sender is not None:
        sender.stop()
