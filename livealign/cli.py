"""``livealign``: run the local stack, chat with it, and the odd chore."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

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
    monitoring: Annotated[
        bool | None, typer.Option("--monitoring/--no-monitoring", help="Start Prometheus too.")
    ] = None,
    config: ConfigOpt = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Show every log line here (Ray Serve's access log, the Kafka clients', "
            "vLLM's, ...), not only each part starting, warnings, errors, training rounds "
            "and canary decisions. The log files get every line either way.",
        ),
    ] = False,
) -> None:
    """Start broker, Ray and the serving app; stop them all on Ctrl-C."""
    from livealign.stack import LocalStack
    from monitoring import logs

    settings = Settings.load(
        config, kafka=kafka, model=model, port=port, home=home, monitoring=monitoring
    )
    logs.setup(settings.home / "livealign.log", quiet=not verbose)
    stop = threading.Event()
    # SIGHUP too: a closed terminal no longer reaches the broker, processor and Prometheus
    # (they run in sessions of their own), so the stack must stop them.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(settings, quiet=not verbose)
    processor_log = logs.LogFollower(stack.processor_log)  # from its end: this run's lines
    shown = logs.WorkerLines()
    with stack:
        typer.echo(f"\nLiveAlign is up: {stack.url}/v1  (OpenAPI: {stack.url}/docs)")
        if stack.prometheus is not None:
            typer.echo(f"Prometheus: {stack.prometheus.url}  (targets: {settings.targets_dir})")
        typer.echo(f"Kafka: {stack.bootstrap}   Ctrl-C stops everything.\n")
        while not stop.wait(5.0):
            stack.supervise()
            lines = processor_log.new_lines()
            for line in lines if verbose else shown.keep("processor", lines):
                typer.echo(f"(processor) {line}", err=True)
        typer.echo("shutting down...")


@app.command()
def processor(
    kafka: Annotated[
        str | None, typer.Option(help="HOST:PORT[,HOST:PORT] of Kafka (or LIVEALIGN_KAFKA).")
    ] = None,
    store: Annotated[str | None, typer.Option(help="SQLAlchemy URL of the store.")] = None,
    group: Annotated[
        str | None, typer.Option(help="Consumer group (or LIVEALIGN_PROCESSOR_GROUP).")
    ] = None,
    fusion_mode: Annotated[str | None, typer.Option(help="explicit, implicit or fused.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus port; 0: none (or LIVEALIGN_PROCESSOR_METRICS_PORT)."),
    ] = None,
    session_timeout_ms: Annotated[int, typer.Option(help="Consumer group session.")] = 10_000,
    home: Annotated[Path | None, typer.Option(help="State folder.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the stream processor until SIGINT/SIGTERM. Start N of them (same --group) to
    split the partitions; each takes over the others' partitions when they stop. Settings
    not given as flags come from the environment (LIVEALIGN_*), the secrets folder
    (LIVEALIGN_SECRETS_DIR) and the --config file."""
    from prometheus_client import start_http_server

    from monitoring import logs
    from streaming.processor import Processor

    logs.setup()
    settings = Settings.load(
        config, kafka=kafka, store_url=store, fusion_mode=fusion_mode, home=home,
        processor_metrics_port=metrics_port, processor_group=group,
    )  # fmt: skip
    if settings.kafka is None:
        raise typer.BadParameter("give --kafka HOST:PORT (or LIVEALIGN_KAFKA)", param_hint="kafka")
    cfg = settings.processor_config(settings.kafka).model_copy(
        update={"session_timeout_ms": session_timeout_ms}
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if settings.processor_metrics_port:
        start_http_server(settings.processor_metrics_port, addr=settings.metrics_host)
    Processor(cfg).run(stop)


@app.command()
def status(
    store: Annotated[str | None, typer.Option(help="SQLAlchemy URL of the store.")] = None,
    home: Annotated[Path | None, typer.Option(help="State folder.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Show the preference store: record counts and the current fusion weights."""
    from rich.console import Console
    from rich.table import Table

    from streaming import store as s
    from streaming.fusion import Fuser

    settings = Settings.load(config, store_url=store, home=home)
    db = s.PreferenceStore(settings.processor_config("").store_url)
    console = Console()
    counts = Table("table", "rows", title=db.url)
    for t in (s.interactions, s.feedback, s.labels, s.pairs):
        counts.add_row(t.name, str(db.count(t)))
    console.print(counts)
    fuser = Fuser(settings.processor_config("").fusion)
    if saved := db.load_state("fuser"):
        fuser.load_state_dict(saved)
    weights = fuser.weights()
    signals = sorted({name for w in weights.values() for name in w})
    table = Table("signal", *weights, title="fusion weights by scenario")
    for name in signals:
        table.add_row(name, *(f"{weights[sc].get(name, 0.0):.3f}" for sc in weights))
    console.print(table)


@app.command()
def chat(
    message: Annotated[str, typer.Argument(help="What to say.")],
    url: Annotated[str, typer.Option(help="LiveAlign base URL.")] = "http://127.0.0.1:8000",
    thumb: Annotated[int | None, typer.Option(help="Then send a thumb, +1 or -1.")] = None,
    api_key: Annotated[
        str, typer.Option(envvar="LIVEALIGN_API_KEY", help="API key, if the server needs one.")
    ] = "none",
) -> None:
    """Send one message, print the answer (streamed), optionally rate it."""
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=120)
    stream = client.chat.completions.create(
        model="livealign", messages=[{"role": "user", "content": message}], stream=True
    )
    info: dict[str, str] = {}
    for chunk in stream:
        info = info or (chunk.model_extra or {}).get("livealign") or {}
        if chunk.choices and chunk.choices[0].delta.content:
            typer.echo(chunk.choices[0].delta.content, nl=False)
    typer.echo(
        f"\n[response {info.get('response_id')} adapter {info.get('adapter')}"
        f" arm {info.get('arm')}]"
    )
    if thumb is not None:
        r = httpx.post(
            f"{url}/v1/feedback",
            json={
                "response_id": info["response_id"],
                "feedback_token": info["feedback_token"],
                "kind": "thumb",
                "value": thumb,
            },
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        typer.echo(f"feedback: {r.status_code} {r.text}")


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Base URL of the LiveAlign API.")] = (
        "http://127.0.0.1:8000"
    ),
    chats: Annotated[int, typer.Option(help="Chats to run (regenerations not counted).")] = 200,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 100,
    concurrency: Annotated[int, typer.Option(help="Chats in flight at once.")] = 4,
    family: Annotated[
        list[str] | None,
        typer.Option(
            help="Hidden preference share, FAMILY=SHARE (concise, list, warm, "
            "avoid_phrase, summary, bold); repeatable. Default: concise=1."
        ),
    ] = None,
    adversarial: Annotated[float, typer.Option(help="Share of adversarial users.")] = 0.1,
    explicit_rate: Annotated[float, typer.Option(help="Thumb/rating per answer.")] = 0.05,
    max_tokens: Annotated[int, typer.Option(help="Answer length limit.")] = 64,
    seed: Annotated[int, typer.Option(help="Seeds users, prompts and behaviour.")] = 0,
    api_key: Annotated[
        str | None, typer.Option(envvar="LIVEALIGN_API_KEY", help="API key, if needed.")
    ] = None,
) -> None:
    """Simulated users chat and give feedback through the public API, with progress."""
    import asyncio

    from rich.progress import Progress

    from livealign.simulate import SimulationConfig, Simulator
    from livealign.users import PopulationConfig

    shares: dict[str, float] = {}
    for item in family or ["concise=1"]:
        name, _, share = item.partition("=")
        try:
            shares[name] = float(share or 1)
        except ValueError:
            raise typer.BadParameter(f"--family {item}: expected FAMILY=SHARE") from None
    population = PopulationConfig.model_validate(
        {"families": shares, "adversarial_share": adversarial, "explicit_rate": explicit_rate}
    )
    config = SimulationConfig(
        url=url, users=users, concurrency=concurrency, max_tokens=max_tokens, seed=seed,
        population=population, api_key=api_key,
    )  # fmt: skip
    with Progress() as bar:
        task = bar.add_task("chats", total=chats)

        def progress(stats: Any) -> None:
            bar.update(task, completed=stats.chats - stats.regenerations + stats.errors)

        result = asyncio.run(Simulator(config).run(chats, progress))
    typer.echo(json.dumps(result.summary(), indent=2))


@app.command()
def prepare(
    model: Annotated[str, typer.Option(help='"smollm2" or "tiny".')] = "smollm2",
    config: ConfigOpt = None,
) -> None:
    """Convert the packaged model into the local cache (``up`` does this too)."""
    from livealign.stack import resolve_model
    from monitoring import logs

    logs.setup()
    typer.echo(resolve_model(Settings.load(config, model=model)))


keys_app = typer.Typer(help="API keys of chat and feedback (used when api_keys is on).")
app.add_typer(keys_app, name="keys")


def _keys_file(config: Path | None, home: Path | None) -> Path:
    return Settings.load(config, home=home).api_keys_file


@keys_app.command("add")
def keys_add(
    principal: Annotated[str, typer.Argument(help="Tenant or app name: a-z, 0-9, . _ -")],
    chat_per_minute: Annotated[int, typer.Option(help="Chat requests a minute.")] = 600,
    feedback_per_minute: Annotated[int, typer.Option(help="Feedback events a minute.")] = 1200,
    config: ConfigOpt = None,
    home: Annotated[Path | None, typer.Option(help="State folder.")] = None,
) -> None:
    """Make a key for a new principal and print it: it is shown this once, only its
    SHA-256 is kept. Serving picks it up within seconds."""
    from serving import auth

    try:
        key = auth.add_key(
            _keys_file(config, home), principal,
            chat_per_minute=chat_per_minute, feedback_per_minute=feedback_per_minute,
        )  # fmt: skip
    except auth.KeysFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None,
    home: Annotated[Path | None, typer.Option(help="State folder.")] = None,
) -> None:
    """Each principal with its limits (never a key)."""
    from serving import auth

    for k in auth.read_keys(_keys_file(config, home)):
        typer.echo(
            f"{k.principal}\tchat {k.chat_per_minute}/min\tfeedback {k.feedback_per_minute}/min"
        )


@keys_app.command("revoke")
def keys_revoke(
    principal: Annotated[str, typer.Argument(help="Whose key to revoke.")],
    config: ConfigOpt = None,
    home: Annotated[Path | None, typer.Option(help="State folder.")] = None,
) -> None:
    """Remove a principal's key: its requests get 401 within seconds."""
    from serving import auth

    try:
        auth.revoke_key(_keys_file(config, home), principal)
    except auth.KeysFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


adapters_app = typer.Typer(help="Adapter versions: list, promote, roll back (admin API).")
app.add_typer(adapters_app, name="adapters")
UrlOpt = Annotated[str, typer.Option(help="LiveAlign base URL.")]
DEFAULT_URL = "http://127.0.0.1:8000"
KeyOpt = Annotated[
    str | None, typer.Option(help="Admin key; default: LIVEALIGN_ADMIN_KEY or the home's.")
]


def _admin_call(
    method: str,
    url: str,
    path: str,
    key: str | None,
    home: Path | None,
    body: dict[str, Any] | None = None,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Call the admin API; print the answer with ``show`` (JSON if none, or on an error)."""
    import httpx

    if key is None:
        settings = Settings.load(None, home=home)
        stored = settings.serving_config(Path("."), "").admin_key
        key = stored.get_secret_value() if stored else ""
    r = httpx.request(
        method, f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=300
    )
    if r.status_code >= 400 or show is None:
        typer.echo(json.dumps(r.json(), indent=2))
    else:
        show(r.json())
    if r.status_code >= 400:
        raise typer.Exit(1)


@adapters_app.command("list")
def adapters_list(
    url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None, home: Path | None = None
) -> None:
    """Every published version with its manifest, and which one serves."""
    _admin_call("GET", url, "/admin/adapters", admin_key, home)


@adapters_app.command("promote")
def adapters_promote(
    ref: str, url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None,
    home: Path | None = None,
) -> None:  # fmt: skip
    """Serve version REF (e.g. livealign@3) from now on."""
    _admin_call("POST", url, f"/admin/adapters/{ref}/promote", admin_key, home)


@adapters_app.command("rollback")
def adapters_rollback(
    ref: str, url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None,
    home: Path | None = None,
) -> None:  # fmt: skip
    """Go back to an earlier version REF, or to ``base``."""
    _admin_call("POST", url, f"/admin/adapters/{ref}/rollback", admin_key, home)


canary_app = typer.Typer(
    help="The canary rollout: status, promote, abort, pause, resume, set-weight (admin API)."
)
app.add_typer(canary_app, name="canary")


@canary_app.command("status")
def canary_status(
    url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None, home: Path | None = None
) -> None:
    """Stable, canary, weight, rollout, the last decisions, and what the replica loaded."""
    _admin_call("GET", url, "/admin/canary", admin_key, home, show=_show_canary)


def _canary_command(command: str, help_text: str) -> None:
    """``livealign canary COMMAND``: POST /admin/canary/COMMAND, then show the status."""

    def call(url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None, home: Path | None = None) -> None:
        _admin_call("POST", url, f"/admin/canary/{command}", admin_key, home, show=_show_canary)

    canary_app.command(command, help=help_text)(call)


for _command, _help in (
    ("promote", "Make the canary stable now."),
    ("abort", "Roll the canary back now."),
    ("pause", "Stop the controller's promotions (it still rolls back a harmful canary)."),
    ("resume", "Let the controller promote again."),
):
    _canary_command(_command, _help)


@canary_app.command("set-weight")
def canary_set_weight(
    weight: Annotated[float, typer.Argument(help="One of the policy's steps, e.g. 0.25.")],
    url: UrlOpt = DEFAULT_URL, admin_key: KeyOpt = None, home: Path | None = None,
) -> None:  # fmt: skip
    """Move the rollout to the step of WEIGHT (the canary's share of conversations)."""
    path, body = "/admin/canary/set-weight", {"weight": weight}
    _admin_call("POST", url, path, admin_key, home, body=body, show=_show_canary)


def _show_canary(status: dict[str, Any]) -> None:
    """The canary status of ``GET /admin/canary``, for a human."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"stable:  {status['stable'] or 'base'}")
    console.print(
        f"canary:  {_describe_canary(status['canary'], status['weight'], status['rollout'])}"
    )
    replica = status["replica"]
    console.print(
        f"replica: stable {replica['stable']}, canary "
        f"{_describe_canary(replica['canary'], replica['canary_weight'], None)}"
    )
    for ref, why in replica["refused"].items():
        console.print(f"refused: {ref}: {why}")
    if not status["decisions"]:
        console.print("no decisions yet")
        return
    table = Table("at", "action", "reason", "weight", "message", title="last decisions")
    for d in status["decisions"]:
        at = d.get("at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"
        weight = d.get("weight")
        table.add_row(
            when, str(d.get("action", "-")), str(d.get("reason", "-")),
            f"{weight:.0%}" if isinstance(weight, int | float) else "-",
            str(d.get("message", "")),
        )  # fmt: skip
    console.print(table)


def _describe_canary(ref: str | None, weight: float, rollout: dict[str, Any] | None) -> str:
    if ref is None:
        return "none"
    text = f"{ref} at {weight:.0%}"
    if rollout is not None:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(rollout["started_ms"] / 1000))
        text += f", step {rollout['step'] + 1} of the rollout started {since}"  # from 1
        text += " (paused)" if rollout["paused"] else ""
    return text


@app.command()
def schemas() -> None:
    """Regenerate the event JSON Schema files in streaming/schemas/."""
    from streaming.events import write_schemas

    for path in write_schemas():
        typer.echo(path)


if __name__ == "__main__":
    app()
