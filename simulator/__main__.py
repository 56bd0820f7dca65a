"""``python -m edgecloud.simulator``: the netem command line (argument parsing only)."""

from edgecloud.simulator.cli import app

if __name__ == "__main__":
    app(prog_name="python -m edgecloud.simulator")
