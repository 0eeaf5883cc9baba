"""Service commands: token, automl-emulator, bigquery-init."""

from __future__ import annotations

import click


@click.command()
@click.option("--subject", required=True, help="who the token speaks for (the `sub` claim)")
@click.option(
    "--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="lifetime in seconds"
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["predict", "read", "admin"]),
    help="repeat for several; default: predict and read",
)
def token(subject: str, ttl: int, scopes: tuple[str, ...]) -> None:
    """Print a signed JWT for the API, with the service's own settings and keys."""
    from covidxray.settings import ConfigError, Settings
    from covidxray.web.auth import issue_token

    try:
        settings = Settings.from_env().validated()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(issue_token(settings, subject, ttl=ttl, scopes=scopes or ("predict", "read")))


@click.command(
    "automl-emulator",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def automl_emulator(args: tuple[str, ...]) -> None:
    """Local stand-in for the Vertex AI / AutoML prediction service (see --help)."""
    from covidxray.automl_standin.emulator import main as run

    run(list(args))


@click.command("bigquery-init")
def bigquery_init() -> None:
    """Create or migrate the BigQuery dataset, table, view and audit table of COVIDXRAY_REQUEST_LOG."""
    from covidxray.backends.bigquery import init_bigquery
    from covidxray.settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not settings.request_log.startswith("bigquery://"):
        raise click.UsageError("set COVIDXRAY_REQUEST_LOG=bigquery://project/dataset/table")
    init_bigquery(settings.request_log, retention_days=settings.retention_days)
    click.echo(f"ready: {settings.request_log}")
