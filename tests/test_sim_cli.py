"""``python -m edgecloud.simulator serve`` as a real process: links from a file, control API, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from edgecloud.simulator.cli import app


def test_serve_process_with_links_file(tmp_path: Path) -> None:
    links = tmp_path / "links.toml"
    links.write_text('[links.edge0-cloud]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:9"\npreset = "4g"\n'
                     "latency_ms = 30\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "edgecloud.simulator", "serve", "--control", "127.0.0.1:0",
                                "--config", str(links)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("control API on http://127.0.0.1:"), first + (process.stderr.read()
                                                                               if process.poll() is not None else "")
        url = first.split()[3]
        assert "link edge0-cloud: 127.0.0.1:" in process.stdout.readline()
        with urllib.request.urlopen(f"{url}/links", timeout=10) as response:
            listing = json.load(response)
        assert listing["edge0-cloud"]["profile"]["uplink"]["latency_ms"] == 30
        request = urllib.request.Request(f"{url}/links/edge0-cloud", data=b'{"rate_mbps": 2}', method="PATCH",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["profile"]["downlink"]["rate_mbps"] == 2
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            assert b"edgecloud_netem_configured_rate_bits_per_second" in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_serve_rejects_bad_links_file(tmp_path: Path) -> None:
    links = tmp_path / "links.toml"
    links.write_text('[links.a]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:9"\nrate_mbps = -4\n')
    result = CliRunner().invoke(app, ["serve", "--control", "127.0.0.1:0", "--config", str(links)])
    assert result.exit_code == 2
    assert "links.toml:4: links.a.rate_mbps: must be > 0" in result.output


def test_presets_command() -> None:
    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("lan", "wifi", "4g", "5g", "3g-poor", "satellite"))


HEAVY = ("edgecloud.simulator", "torch", "simpy", "matplotlib", "numpy", "grpc")


def _imported_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(sorted({{m.split('.')[0] if m.split('.')[0] != 'edgecloud' else m for m in sys.modules}}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    modules = eval(out.strip().splitlines()[-1])  # a list of names printed by the probe
    return [m for m in modules if m.startswith(HEAVY)]


def test_cli_imports_no_part_until_a_command_needs_it() -> None:
    assert _imported_after("import edgecloud.cli") == []
    help_run = ("from typer.testing import CliRunner\nfrom edgecloud.cli import app\n"
                "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'netem' in r.output, r.output")
    assert _imported_after(help_run) == []


def test_netem_runs_through_the_main_cli() -> None:
    from edgecloud.cli import app as main_app

    result = CliRunner().invoke(main_app, ["netem", "presets"])
    assert result.exit_code == 0, result.output
    assert "4g" in result.output and "satellite" in result.output
    result = CliRunner().invoke(main_app, ["netem", "--help"])
    assert result.exit_code == 0 and "serve" in result.output and "check" in result.output
    result = CliRunner().invoke(main_app, ["netem", "check", "/nonexistent.toml"])
    assert result.exit_code == 2
