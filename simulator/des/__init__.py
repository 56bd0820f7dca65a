"""edgecloud.simulator.des: the discrete-event fleet mode (``edgecloud simulate --des``).

A SimPy model of thousands of edge devices and a cloud with limited batched capacity. Links
come from the experiment's profiles (the pure ``link_model``), compute times from a
``ComputeProfile`` (measured defaults), and the routing decisions from the coordinator's real
``HybridRouter`` and policies replayed over recorded SLM features.

Modules: ``traces`` (trace files, synthetic traces), ``replay`` (the router over traces →
round-trip patterns), ``config`` (``[fleet]`` table, compute profile), ``model`` (the SimPy
processes), ``fleet`` (``run_fleet``), ``report`` (``FleetReport``), ``record`` (record traces
from the real model pair), ``__main__`` (``python -m edgecloud.simulator.des``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecloud.simulator.des.fleet import run_fleet
    from edgecloud.simulator.des.report import FleetReport

__all__ = ["FleetReport", "run_fleet"]


def __getattr__(name: str) -> Any:
    """Import lazily, so that importing the package costs nothing (SimPy and NumPy load on use)."""
    if name == "run_fleet":
        from edgecloud.simulator.des.fleet import run_fleet

        return run_fleet
    if name == "FleetReport":
        from edgecloud.simulator.des.report import FleetReport

        return FleetReport
    raise AttributeError(name)
