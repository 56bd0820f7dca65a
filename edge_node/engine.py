"""The edge node's domain logic: one request = tokenizer + SLM drafter + policy + cloud link.

``EdgeEngine.generate`` turns a validated request into a stream of ``TextEvent``s (text
pieces with their token and source) followed by the request's ``Accounting``. The gRPC
servicer only translates; the cloud is reached through whatever ``CloudLink`` factory the
node was given (gRPC in the daemon, in-process in tests and the evaluation engine).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.models.generate import SamplingParams
from edgecloud.models.llama import LlamaModel
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.paths import edgecloud_home
from edgecloud.routing.calibration import calibration_tasks
from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import PolicyError, RoutingPolicy, make_policy
from edgecloud.routing.prompts import ends_answer
from edgecloud.routing.router import Accounting, CloudLink, HybridRouter, until_stop

CALIBRATION_TASKS = 8
CALIBRATION_TOKENS = 64
CALIBRATION_VERSION = "gen-v1"  # bump when the calibration recipe changes


class RequestError(ValueError):
    """A generation request that cannot be served as asked (bad policy, empty prompt, ...)."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int = 256
    policy: str = "slm-only"
    threshold: float | None = None
    target_cloud_share: float | None = None
    temperature: float = 0.0
    seed: int = 0
    chat: bool = True
    assistant_prefix: str = ""  # opens the assistant turn, e.g. "```python\n"
    stop: tuple[str, ...] = ()
    draft_window: int = 0  # 0 = the policy's default
    cloud_prefetch: bool = False  # push context to the cloud in the background while drafting


NO_TOKEN = -1  # a TextEvent that only flushes text held back for an incomplete character


@dataclass(frozen=True)
class TextEvent:
    text: str
    token_id: int
    source: str
    checked: bool


CloudLinkFactory = Callable[[GenerationRequest], CloudLink]


class EdgeEngine:
    """The SLM with its tokenizer, serving requests one router per request."""

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, *, max_tokens_limit: int = 4096,
                 reward_head=None, model_name: str = "") -> None:
        self.model = model
        self.model_name = model_name  # cache key of calibration features ("" = do not cache)
        self.tokenizer = tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.reward_head = reward_head
        self._calibration: list[TokenFeatures] | None = None
        self._model_lock = asyncio.Lock()  # one SLM forward at a time on this device

    def validate(self, request: GenerationRequest) -> RoutingPolicy:
        """Check a request and build its policy; ``RequestError`` says what is wrong."""
        if not request.prompt.strip():
            raise RequestError("prompt is empty")
        if not 0 < request.max_tokens <= self.max_tokens_limit:
            raise RequestError(f"max_tokens must be in [1, {self.max_tokens_limit}], got {request.max_tokens}")
        if request.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {request.temperature}")
        if request.target_cloud_share is not None and not 0 <= request.target_cloud_share <= 1:
            raise RequestError(f"target_cloud_share must be in [0, 1], got {request.target_cloud_share}")
        if not 0 <= request.draft_window <= 64:
            raise RequestError(f"draft_window must be in [0, 64], got {request.draft_window}")
        options = {"reward_head": self.reward_head} if request.policy == "reward" else {}
        if request.policy == "speculative" and request.draft_window:
            options["window"] = request.draft_window
        try:
            policy = make_policy(request.policy, request.threshold, seed=request.seed, **options)
            if request.target_cloud_share is not None:
                threshold = policy.calibrate(self.calibration_features(policy.needs_hidden),
                                             request.target_cloud_share)
                policy = make_policy(request.policy, threshold, seed=request.seed, **options)
        except PolicyError as exc:
            raise RequestError(str(exc)) from exc
        if request.draft_window and request.policy != "speculative":
            policy.max_window = request.draft_window
        return policy

    def calibration_features(self, with_hidden: bool = False) -> list[TokenFeatures]:
        """The SLM's features while it writes answers to the calibration tasks.

        Computed once per model (about a minute on a small CPU) and cached under
        ``$EDGECLOUD_HOME/calibration/`` (scalar features only; hidden states are recomputed).
        """
        if self._calibration is not None and (self._calibration[0].hidden is not None or not with_hidden):
            return self._calibration
        cache = edgecloud_home() / "calibration" / f"{self.model_name}-{CALIBRATION_VERSION}.json"
        if not with_hidden and cache.is_file():
            rows = json.loads(cache.read_text())
            self._calibration = [TokenFeatures(*row) for row in rows]
            return self._calibration
        features: list[TokenFeatures] = []
        for user, prefix in calibration_tasks(CALIBRATION_TASKS):
            features.extend(self.generation_features(user, prefix, with_hidden=with_hidden))
        self._calibration = features
        if self.model_name:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps([[f.entropy, f.max_prob, f.margin, f.position] for f in features]))
            tmp.replace(cache)
        return features

    def generation_features(self, user: str, prefix: str = "", *, with_hidden: bool = False,
                            max_tokens: int = CALIBRATION_TOKENS) -> list[TokenFeatures]:
        """Features of the SLM's greedy answer to one request, until ``` or the end token."""
        drafter = Drafter(self.model, self.tokenizer.prompt_ids(user, assistant_prefix=prefix),
                          with_hidden=with_hidden)
        features, ids = [], []
        for _ in range(max_tokens):
            token, feats = drafter.draft()
            features.append(feats)
            ids.append(token)
            if ends_answer(self.tokenizer, ids):
                break
            drafter.feed(token)
        return features

    async def generate(self, request: GenerationRequest, cloud: CloudLinkFactory, *,
                       policy: RoutingPolicy | None = None) -> AsyncIterator[TextEvent | Accounting]:
        """Events for each new token, then the request's accounting.

        ``policy``: the one ``validate`` built for this request (validated again if None).
        """
        policy = policy or self.validate(request)
        prompt_ids = self.tokenizer.prompt_ids(request.prompt, chat=request.chat,
                                               assistant_prefix=request.assistant_prefix)
        sampling = SamplingParams(temperature=request.temperature, seed=request.seed)
        async with self._model_lock:
            drafter = None
            if policy.uses_edge_draft:
                drafter = await asyncio.to_thread(Drafter, self.model, prompt_ids, sampling=sampling,
                                                  with_hidden=policy.needs_hidden)
            router = HybridRouter(policy, cloud(request), prompt_ids, drafter=drafter and ThreadedDrafter(drafter),
                                  max_new_tokens=request.max_tokens, stop_ids=self.tokenizer.eos_token_ids,
                                  prefetch=request.cloud_prefetch)
            decoder = self.tokenizer.stream_decoder()
            last = None
            async with aclosing(until_stop(router, decoder, request.stop)) as stream:
                async for event, piece in stream:
                    last = event
                    yield TextEvent(piece, event.token_id, event.source, event.checked)
            if last is not None and (rest := decoder.flush()):
                yield TextEvent(rest, NO_TOKEN, last.source, last.checked)
        yield router.accounting


