"""The edge node's domain logic: one request = tokenizer + SLM drafter + policy + cloud link.

``EdgeEngine.generate`` turns a validated request into a stream of ``TextEvent``s (text
pieces with their token and source) followed by the request's ``Accounting``. The gRPC
servicer only translates; the cloud is reached through whatever ``CloudLink`` factory the
node was given (gRPC in the daemon, in-process in tests and the evaluation engine).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass

from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.edge_node.scheduler import SlmScheduler
from edgecloud.errors import InvalidInput, LimitExceeded
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
ARENA_MAX_TOKENS = 1024  # requests up to this many tokens (prompt + max_tokens) share the cache arena
MAX_CHARS_PER_TOKEN = 16  # a prompt longer than this many characters per allowed token is refused unread


class RequestError(InvalidInput):
    """A generation request that cannot be served as asked (bad policy, empty prompt, ...)."""


class RequestTooLarge(RequestError, LimitExceeded):
    """A request over a size limit of this node (prompt length)."""


class EdgeBusy(LimitExceeded):
    """Every request slot of this edge node is taken."""


@dataclass(frozen=True)
class EngineLimits:
    max_tokens: int = 4096  # new tokens per request
    max_prompt_tokens: int = 8192
    max_active_requests: int = 16  # in progress at once (queued for the SLM included)
    prefill_chunk_tokens: int = 256  # prompt tokens per SLM forward


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
    """The SLM with its tokenizer, serving requests one router per request.

    Requests share the SLM forward by forward (``scheduler``); at most ``limits.max_active_requests``
    are in progress, more are refused with ``EdgeBusy``.
    """

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, *, max_tokens_limit: int = 4096,
                 limits: EngineLimits | None = None, reward_head=None, model_name: str = "") -> None:
        self.model = model
        self.model_name = model_name  # cache key of calibration features ("" = do not cache)
        self.tokenizer = tokenizer
        self.limits = limits or EngineLimits(max_tokens=max_tokens_limit)
        self.reward_head = reward_head
        self._calibration: list[TokenFeatures] | None = None
        self._calibration_lock = threading.Lock()  # computed once, whoever asks first
        self.scheduler = SlmScheduler()  # the SLM's forwards, all requests' in turn, batched where possible
        # The requests' SLM caches, in shared buffers so that a batched step attends in one op per layer;
        # every slot is as long as the longest request in it, so longer requests keep caches of their own.
        self.arena = model.new_arena(max_tokens=ARENA_MAX_TOKENS)
        self.active_requests = 0

    @property
    def max_tokens_limit(self) -> int:
        return self.limits.max_tokens

    def check(self, request: GenerationRequest) -> None:
        """Cheap checks of a request, before any tokenization or model work (``RequestError``)."""
        limits = self.limits
        if not request.prompt.strip():
            raise RequestError("prompt is empty")
        chars = len(request.prompt) + len(request.assistant_prefix)
        if chars > limits.max_prompt_tokens * MAX_CHARS_PER_TOKEN:
            raise RequestTooLarge(f"prompt of {chars} characters is over this node's limit of "
                                  f"{limits.max_prompt_tokens} tokens")
        if not 0 < request.max_tokens <= limits.max_tokens:
            raise RequestError(f"max_tokens must be in [1, {limits.max_tokens}], got {request.max_tokens}")
        try:
            SamplingParams(temperature=request.temperature, seed=request.seed)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        share = request.target_cloud_share
        if share is not None and not (math.isfinite(share) and 0 <= share <= 1):
            raise RequestError(f"target_cloud_share must be in [0, 1], got {share}")
        if not 0 <= request.draft_window <= 64:
            raise RequestError(f"draft_window must be in [0, 64], got {request.draft_window}")
        if len(request.stop) > 8 or any(len(stop) > 64 for stop in request.stop):
            raise RequestError("at most 8 stop strings of at most 64 characters each")
        self._policy(request, None)  # the policy name and threshold

    def _policy(self, request: GenerationRequest, threshold: float | None) -> RoutingPolicy:
        options = {"reward_head": self.reward_head} if request.policy == "reward" else {}
        if request.policy == "speculative" and request.draft_window:
            options["window"] = request.draft_window
        try:
            policy = make_policy(request.policy, threshold if threshold is not None else request.threshold,
                                 seed=request.seed, **options)
        except PolicyError as exc:
            raise RequestError(str(exc)) from exc
        if request.draft_window and request.policy != "speculative":
            policy.max_window = request.draft_window
        return policy

    def policy_for(self, request: GenerationRequest) -> RoutingPolicy:
        """The request's policy, its threshold calibrated to ``target_cloud_share`` if asked.

        Calibration may run the SLM for a minute the first time: call this off the event loop.
        """
        policy = self._policy(request, None)
        if request.target_cloud_share is None:
            return policy
        try:
            threshold = policy.calibrate(self.calibration_features(policy.needs_hidden),
                                         request.target_cloud_share)
        except PolicyError as exc:
            raise RequestError(str(exc)) from exc
        return self._policy(request, threshold)

    def validate(self, request: GenerationRequest) -> RoutingPolicy:
        """``check`` then ``policy_for``: the request's policy, or ``RequestError`` saying what is wrong."""
        self.check(request)
        return self.policy_for(request)

    def prepare(self, request: GenerationRequest) -> tuple[list[int], RoutingPolicy]:
        """``prompt_ids`` and ``policy_for`` together: one trip off the event loop per request."""
        return self.prompt_ids(request), self.policy_for(request)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids, within this node's limits (``RequestTooLarge``)."""
        ids = self.tokenizer.prompt_ids(request.prompt, chat=request.chat,
                                        assistant_prefix=request.assistant_prefix)
        limit = min(self.limits.max_prompt_tokens, self.model.config.max_position_embeddings - request.max_tokens)
        if len(ids) > limit:
            raise RequestTooLarge(f"prompt is {len(ids)} tokens; this node takes at most {limit} "
                                  f"with max_tokens={request.max_tokens}")
        return ids

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the node's request slots (``EdgeBusy`` when all are taken)."""
        if self.active_requests >= self.limits.max_active_requests:
            raise EdgeBusy(f"edge node is serving {self.active_requests} requests, its limit; retry later")
        self.active_requests += 1
        try:
            yield
        finally:
            self.active_requests -= 1

    def calibration_features(self, with_hidden: bool = False) -> list[TokenFeatures]:
        """The SLM's features while it writes answers to the calibration tasks.

        Computed once per model (about a minute on a small CPU) and cached under
        ``$EDGECLOUD_HOME/calibration/`` (scalar features only; hidden states are recomputed).
        """
        with self._calibration_lock:
            return self._calibration_features(with_hidden)

    def _calibration_features(self, with_hidden: bool) -> list[TokenFeatures]:
        if self._calibration is not None and (self._calibration[0].hidden is not None or not with_hidden):
            return self._calibration
        cache = edgecloud_home() / "calibration" / f"{self.model_name}-{CALIBRATION_VERSION}.json"
        if not with_hidden and self.model_name and cache.is_file():
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
                       policy: RoutingPolicy | None = None, prompt_ids: list[int] | None = None,
                       arrived_s: float | None = None) -> AsyncIterator[TextEvent | Accounting]:
        """Events for each new token, then the request's accounting.

        ``policy`` and ``prompt_ids``: what ``policy_for`` and ``prompt_ids`` gave for this request
        (computed here if None). ``arrived_s``: ``time.perf_counter()`` when the request arrived, where
        the request's clocks start (default: now).
        """
        arrived_s = time.perf_counter() if arrived_s is None else arrived_s
        policy = policy or self.validate(request)
        prompt_ids = prompt_ids if prompt_ids is not None else self.prompt_ids(request)
        sampling = SamplingParams(temperature=request.temperature, seed=request.seed)
        capacity = len(prompt_ids) + request.max_tokens

        async def drafter_for(tokens: list[int], with_hidden: bool = False) -> ThreadedDrafter:
            """An SLM drafter with ``tokens`` cached (the prompt; or, when the cloud is down, all so far)."""
            made = ThreadedDrafter(Drafter(self.model, tokens, sampling=sampling, with_hidden=with_hidden,
                                           prefill=False, capacity=capacity, arena=self.arena), self.scheduler)
            await made.prefill(self.limits.prefill_chunk_tokens)
            return made

        drafter = await drafter_for(prompt_ids, policy.needs_hidden) if policy.uses_edge_draft else None
        router = HybridRouter(policy, cloud(request), prompt_ids, drafter=drafter,
                              max_new_tokens=request.max_tokens, stop_ids=self.tokenizer.eos_token_ids,
                              prefetch=request.cloud_prefetch, started_s=arrived_s, fallback=drafter_for)
        async with aclosing(text_events(router, self.tokenizer, request.stop)) as items:
            async for item in items:
                yield item


async def text_events(router: HybridRouter, tokenizer: Tokenizer,
                      stops: tuple[str, ...]) -> AsyncIterator[TextEvent | Accounting]:
    """A router's tokens as text events until a stop string or its end, then its accounting.

    ``router``: anything with the router's ``run()``, ``runs`` and ``accounting`` (the split run too).
    """
    decoder = tokenizer.stream_decoder()
    last = None
    async with aclosing(until_stop(router, decoder, stops)) as stream:
        async for event, piece in stream:
            last = event
            yield TextEvent(piece, event.token_id, event.source, event.checked)
    if last is not None and (rest := decoder.flush()):
        yield TextEvent(rest, NO_TOKEN, last.source, last.checked)
    yield router.accounting
