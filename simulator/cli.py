"""``edgecloud netem``: serve shaped links with a control API; list presets; check files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Network emulation: shaping TCP proxies with a control API.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


async def _serve(control: str, config: Path | None) -> None:
    from edgecloud.simulator.config import load_links
    from edgecloud.simulator.control import NetemServer

    links = load_links(config) if config is not None else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with NetemServer.create(control=control, links=links) as server:
        typer.echo(f"control API on {server.control_url} (metrics at {server.control_url}/metrics)")
        for link in server.links.values():
            typer.echo(f"link {link.name}: {link.address} -> {link.upstream[0]}:{link.upstream[1]}")
        await stop.wait()


@app.command()
def serve(
    control: Annotated[str, typer.Option(help="HOST:PORT of the HTTP control API")] = "127.0.0.1:8474",
    config: Annotated[Path | None, typer.Option(help="links.toml with \\[links.NAME] tables",
                                                exists=True, dir_okay=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log link events")] = False,
) -> None:
    """Serve the links of CONFIG (and any created later through the control API) until stopped."""
    from edgecloud.simulator.errors import ConfigError

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(control, config))
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:
        raise _fail(f"cannot listen: {exc}") from exc


@app.command()
def presets() -> None:
    """List the named link presets."""
    from edgecloud.simulator.presets import PRESETS

    for name, profile in PRESETS.items():
        parts = []
        for direction in ("uplink", "downlink"):
            d = profile.direction(direction)
            rate = f"{d.rate_mbps:g} Mbit/s" if d.rate_mbps else "unlimited"
            parts.append(f"{direction} {d.latency_ms:g}±{d.jitter_ms:g} ms {rate} loss {d.loss_pct:g}%")
        typer.echo(f"{name:10s} " + "; ".join(parts))


@app.command()
def check(path: Annotated[Path, typer.Argument(help="links.toml or an experiment .toml", exists=True,
                                               dir_okay=False)]) -> None:
    """Validate a links file or an experiment file; print what it holds."""
    from edgecloud.simulator.config import load_links, load_toml
    from edgecloud.simulator.errors import ConfigError
    from edgecloud.simulator.experiment import load_experiment

    try:
        data, _ = load_toml(path)
        if set(data) <= {"links"}:
            specs = load_links(path)
            typer.echo(f"{path}: {len(specs)} links: {', '.join(s.name for s in specs)}")
        else:
            experiment = load_experiment(path)
            typer.echo(f"{path}: experiment {experiment.name!r}: {len(experiment.edges)} edges, "
                       f"{len(experiment.links)} links, {len(experiment.timeline)} timeline events, "
                       f"{experiment.workload.duration_s:g} s")
    except ConfigError as exc:
        raise _fail(str(exc)) from exc
