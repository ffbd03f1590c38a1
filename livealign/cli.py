"""``livealign``: run the local stack, chat with it, and the odd chore."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from livealign.config import Settings

app = typer.Typer(help="LiveAlign: online LLM serving that learns from its users' feedback.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]


@app.command()
def up(
    kafka: Annotated[
        str | None, typer.Option(help="HOST:PORT of an existing Kafka (no embedded broker).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help='HF-format model folder, or "smollm2" / "tiny".')
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port of the API.")] = None,
    home: Annotated[Path | None, typer.Option(help="State folder (cache, spool, logs).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Start broker, Ray and the serving app; stop them all on Ctrl-C."""
    from livealign.stack import LocalStack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.load(config, kafka=kafka, model=model, port=port, home=home)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalStack(settings) as stack:
        typer.echo(f"\nLiveAlign is up: {stack.url}/v1  (OpenAPI: {stack.url}/docs)")
        typer.echo(f"Kafka: {stack.bootstrap}   Ctrl-C stops everything.\n")
        stop.wait()
        typer.echo("shutting down...")


@app.command()
def chat(
    message: Annotated[str, typer.Argument(help="What to say.")],
    url: Annotated[str, typer.Option(help="LiveAlign base URL.")] = "http://127.0.0.1:8000",
    thumb: Annotated[int | None, typer.Option(help="Then send a thumb, +1 or -1.")] = None,
) -> None:
    """Send one message, print the answer (streamed), optionally rate it."""
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=120)
    stream = client.chat.completions.create(
        model="livealign", messages=[{"role": "user", "content": message}], stream=True
    )
    info: dict[str, str] = {}
    for chunk in stream:
        info = info or (chunk.model_extra or {}).get("livealign") or {}
        if chunk.choices and chunk.choices[0].delta.content:
            typer.echo(chunk.choices[0].delta.content, nl=False)
    typer.echo(f"\n[response {info.get('response_id')} adapter {info.get('adapter')}]")
    if thumb is not None:
        r = httpx.post(
            f"{url}/v1/feedback",
            json={
                "response_id": info["response_id"],
                "feedback_token": info["feedback_token"],
                "kind": "thumb",
                "value": thumb,
            },
            timeout=30,
        )
        typer.echo(f"feedback: {r.status_code} {r.text}")


@app.command()
def prepare(
    model: Annotated[str, typer.Option(help='"smollm2" or "tiny".')] = "smollm2",
    config: ConfigOpt = None,
) -> None:
    """Convert the packaged model into the local cache (``up`` does this too)."""
    from livealign.stack import resolve_model

    logging.basicConfig(level=logging.INFO)
    typer.echo(resolve_model(Settings.load(config, model=model)))


@app.command()
def schemas() -> None:
    """Regenerate the event JSON Schema files in streaming/schemas/."""
    from streaming.events import write_schemas

    for path in write_schemas():
        typer.echo(path)


if __name__ == "__main__":
    app()
