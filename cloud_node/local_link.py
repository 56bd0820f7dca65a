"""An in-process ``CloudLink`` over a ``SessionStore``: the router's transport without a network.

Used where the edge and the cloud model share one process (evaluation engine, tests of the
router itself); the daemons talk gRPC instead (``edge_node.cloud_client``).
"""

from __future__ import annotations

import asyncio

from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.routing.router import LinkVerdict


class InProcessCloudLink:
    """One cloud session, opened on the first verification."""

    def __init__(self, store: SessionStore, *, temperature: float = 0.0, seed: int | None = None) -> None:
        self.store = store
        self.temperature = temperature
        self.seed = seed
        self.session_id: str | None = None

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        if self.session_id is None:
            verdict = await asyncio.to_thread(self.store.start, context, draft, temperature=self.temperature,
                                              seed=self.seed)
            self.session_id = verdict.session_id
        else:
            verdict = await asyncio.to_thread(self.store.verify, self.session_id, context, draft)
        return LinkVerdict(verdict.accepted, verdict.next_token, cloud_compute_s=verdict.compute_s)

    def prefetch(self, unseen: list[int]) -> None:
        """In-process there is no round trip to hide: nothing to do."""

    async def settle(self) -> LinkVerdict:
        return LinkVerdict(accepted=0, next_token=-1)

    async def close(self) -> None:
        if self.session_id is not None:
            self.store.close(self.session_id)
            self.session_id = None
