"""A fast, exact stand-in for the daemons when evaluating routing configurations offline.

Greedy decoding makes every model output a function of the token prefix, so one request
under every (policy, threshold) runs the real ``HybridRouter`` against two memo tables:

- ``PrefixOracle``: one model's greedy token (and, for the SLM, its router features) after
  every prefix of the prompt's continuations it has seen, filled teacher-forced. A miss
  runs the model over the missing prefix *plus a guessed continuation* in one forward pass
  (on a CPU a 32-token window costs about as much as one decode step), so a path is decoded
  at prefill speed wherever the guess holds, and configurations that share a trajectory
  share the work;
- guesses come from the other model's known greedy chain at that prefix, else from the
  longest n-gram match in text already seen for this prompt (prompt-lookup decoding).

``OracleDrafter`` and ``OracleCloudLink`` implement the router's ``EdgeDrafter`` and
``CloudLink`` interfaces on top of the oracles, with the byte sizes the real protobuf
messages would have, so the router's accounting (cloud share, round trips, windows, bytes)
is the daemons'.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import torch

from edgecloud.models.llama import LlamaModel
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.features import TokenFeatures, uncertainty
from edgecloud.routing.policies import RoutingPolicy
from edgecloud.routing.prompts import CLOSING_FENCE
from edgecloud.routing.router import Accounting, FeedsStepwise, HybridRouter, LinkVerdict, until_stop
from edgecloud.v1 import cloud_node_pb2 as pb

Prefix = tuple[int, ...]
GUESS_TOKENS = 32
NGRAM_ORDERS = (4, 3, 2, 1)
SESSION_ID_PLACEHOLDER = "0" * 32  # the cloud's session ids are uuid4 hex strings


@dataclass(frozen=True)
class Record:
    """A model's output for the position after one prefix."""

    token: int  # greedy choice
    entropy: float = 0.0
    max_prob: float = 0.0
    margin: float = 0.0
    hidden: torch.Tensor | None = None  # final-norm hidden state (C,), for the reward head


class NgramIndex:
    """Latest continuation of every n-gram (n in ``NGRAM_ORDERS``) of the text seen so far."""

    def __init__(self) -> None:
        self._texts: list[list[int]] = []
        self._where: dict[tuple[int, ...], tuple[int, int]] = {}  # n-gram -> (text, end position)

    def add(self, tokens: Sequence[int]) -> None:
        text = list(tokens)
        index = len(self._texts)
        self._texts.append(text)
        for n in NGRAM_ORDERS:
            for end in range(n, len(text)):  # an n-gram with at least one token after it
                self._where[tuple(text[end - n:end])] = (index, end)

    def guess(self, context: Sequence[int], limit: int) -> list[int]:
        """Tokens that followed the longest suffix of ``context`` seen before (may be empty)."""
        for n in NGRAM_ORDERS:
            if len(context) < n:
                continue
            hit = self._where.get(tuple(context[-n:]))
            if hit is not None:
                text, end = hit
                return self._texts[text][end:end + limit]
        return []


class PrefixOracle:
    """One model's greedy outputs after prefixes of one prompt's continuation, memoised."""

    def __init__(self, model: LlamaModel, prompt_ids: Sequence[int], *, features: bool, hidden: bool = False,
                 guess_tokens: int = GUESS_TOKENS) -> None:
        if not prompt_ids:
            raise ValueError("prompt is empty")
        self.model = model
        self.prompt = list(prompt_ids)
        self.features = features
        self.hidden = hidden
        self.guess_tokens = guess_tokens
        self.records: dict[Prefix, Record] = {}
        self.forward_calls = 0
        self.forward_tokens = 0
        self.compute_s = 0.0
        self._cache = model.new_cache(initial_capacity=len(self.prompt) + 512)
        self._seq: Prefix = ()  # continuation held in the cache after the prompt
        self._run(self.prompt, (), prompt=True)

    def get(self, prefix: Prefix) -> Record | None:
        return self.records.get(prefix)

    def chain(self, prefix: Prefix, limit: int) -> list[int]:
        """This model's known greedy continuation of ``prefix`` (stops at the first unknown position)."""
        out: list[int] = []
        while len(out) < limit and (record := self.records.get(prefix + tuple(out))) is not None:
            out.append(record.token)
        return out

    def compute(self, prefix: Prefix, guess: Sequence[int] = ()) -> list[int]:
        """Fill the records of ``prefix`` and of ``prefix`` + each leading part of ``guess``.

        Returns the verified text: ``prefix``'s continuation along ``guess`` while the model
        agrees with it, plus the model's own token where it stops agreeing.
        """
        full = prefix + tuple(guess)
        common = 0
        for a, b in zip(self._seq, full, strict=False):
            if a != b:
                break
            common += 1
        if common < len(full):
            self._cache.crop(len(self.prompt) + common)
            self._run(full[common:], full[:common])
            self._seq = full
        verified = list(prefix)
        for token in guess:
            record = self.records[tuple(verified)]
            verified.append(record.token)
            if record.token != token:
                return verified
        verified.append(self.records[tuple(verified)].token)
        return verified

    @torch.inference_mode()
    def _run(self, tokens: Sequence[int], before: Prefix, *, prompt: bool = False) -> None:
        """Forward ``tokens`` after the cache; record the output after each of them (``prompt``: the last only)."""
        started = time.perf_counter()
        model = self.model
        ids = torch.tensor([list(tokens)], device=model.device)
        states = model.forward_layers(model.embed(ids), 0, model.config.num_layers, self._cache)  # (1, T, C)
        if prompt:
            states = states[:, -1:]  # only the prompt's last position predicts a continuation token
            starts = [()]
        else:
            starts = [before + tuple(tokens[:i + 1]) for i in range(len(tokens))]
        logits = model.head(states)[0]  # (T', V)
        tokens_out = logits.argmax(-1).tolist()
        if self.features:
            entropy, max_prob, margin = (t.tolist() for t in uncertainty(logits))
        normed = model.norm(states)[0].float() if self.hidden else None  # (T', C)
        for i, key in enumerate(starts):
            if key in self.records:
                # First value wins: recomputing a prefix in another chunking can flip a bf16 near-tie,
                # and every configuration must see one consistent model.
                continue
            if self.features:
                self.records[key] = Record(tokens_out[i], entropy[i], max_prob[i], margin[i],
                                           None if normed is None else normed[i].clone())
            else:
                self.records[key] = Record(tokens_out[i])
        self.forward_calls += 1
        self.forward_tokens += len(tokens)
        self.compute_s += time.perf_counter() - started


class PairOracle:
    """The SLM's and the LLM's oracles for one prompt, guessing each from the other and from seen text."""

    def __init__(self, slm: LlamaModel, llm: LlamaModel, prompt_ids: Sequence[int], *, hidden: bool = False,
                 guess_tokens: int = GUESS_TOKENS) -> None:
        self.prompt = list(prompt_ids)
        self.slm = PrefixOracle(slm, prompt_ids, features=True, hidden=hidden, guess_tokens=guess_tokens)
        self.llm = PrefixOracle(llm, prompt_ids, features=False, guess_tokens=guess_tokens)
        self.guess_tokens = guess_tokens
        self.seen = NgramIndex()
        self.seen.add(self.prompt)

    def slm_at(self, prefix: Prefix) -> Record:
        return self._at(self.slm, self.llm, prefix)

    def llm_at(self, prefix: Prefix, draft: Sequence[int] = ()) -> Record:
        """The LLM's record at ``prefix``; on a miss ``draft`` (what the edge proposes next) leads the guess."""
        record = self.llm.get(prefix)
        if record is not None:
            return record
        guess = list(draft[:self.guess_tokens])
        if len(guess) < self.guess_tokens:
            guess += self._guess(self.slm, prefix + tuple(guess), self.guess_tokens - len(guess))
        self.seen.add(self.llm.compute(prefix, guess)[-self.guess_tokens - 8:])
        return self.llm.records[prefix]

    def _at(self, oracle: PrefixOracle, other: PrefixOracle, prefix: Prefix) -> Record:
        record = oracle.get(prefix)
        if record is None:
            guess = self._guess(other, prefix, self.guess_tokens)
            self.seen.add(oracle.compute(prefix, guess)[-self.guess_tokens - 8:])
            record = oracle.records[prefix]
        return record

    def _guess(self, other: PrefixOracle, prefix: Prefix, limit: int) -> list[int]:
        guess = other.chain(prefix, limit)
        if not guess:
            guess = self.seen.guess(self.prompt + list(prefix), limit)
        return guess

    def llm_agreement(self, tokens: Sequence[int]) -> float:
        """Share of ``tokens`` equal to the LLM's greedy token after the tokens before them (teacher-forced)."""
        if not tokens:
            return 1.0
        if any(tuple(tokens[:i]) not in self.llm.records for i in range(len(tokens))):
            self.llm.compute((), tokens)
        return sum(self.llm.records[tuple(tokens[:i])].token == t for i, t in enumerate(tokens)) / len(tokens)


class OracleDrafter(FeedsStepwise):
    """The router's ``EdgeDrafter`` over the SLM's oracle."""

    def __init__(self, oracle: PairOracle) -> None:
        self.oracle = oracle
        self.prefix: Prefix = ()
        self.compute_s = 0.0  # the daemons' edge time is not modelled here

    @property
    def num_tokens(self) -> int:
        return len(self.oracle.prompt) + len(self.prefix)

    async def draft(self) -> tuple[int, TokenFeatures]:
        record = self.oracle.slm_at(self.prefix)
        return record.token, TokenFeatures(record.entropy, record.max_prob, record.margin, len(self.prefix),
                                           record.hidden)

    async def feed(self, token: int) -> None:
        self.prefix += (token,)

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        self.prefix = self.prefix[:num_tokens - len(self.oracle.prompt)] + tuple(then_feed)


class OracleCloudLink:
    """The router's ``CloudLink`` over the LLM's oracle, accepting like the cloud node (exact match)."""

    def __init__(self, oracle: PairOracle, *, seed: int | None = None) -> None:
        self.oracle = oracle
        self.seed = seed  # the request's seed travels in the session's acceptance options
        self.calls = 0
        self._held: list[int] = []  # what the cloud session would hold (prompt included)

    def prefetch(self, unseen: list[int]) -> None:  # background pushes are not modelled
        return None

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        self._held += context
        prefix = tuple(self._held[len(self.oracle.prompt):])
        llm_tokens = []
        for i in range(len(draft) + 1):
            llm_tokens.append(self.oracle.llm_at(prefix + tuple(draft[:i]), draft[i:]).token)
        accepted = 0
        while accepted < len(draft) and draft[accepted] == llm_tokens[accepted]:
            accepted += 1
        request = pb.VerifyRequest(session_id=SESSION_ID_PLACEHOLDER if self.calls else "",
                                   context_token_ids=context, draft_token_ids=draft)
        if not self.calls:
            request.open_with.CopyFrom(pb.AcceptanceOptions(rule=pb.ACCEPTANCE_RULE_EXACT_MATCH, seed=self.seed))
        reply = pb.VerifyResponse(llm_token_ids=llm_tokens, accepted=accepted, next_token_id=llm_tokens[accepted],
                                  compute_s=0.1, session_tokens=len(self._held) + accepted,
                                  session_id=SESSION_ID_PLACEHOLDER)
        self.calls += 1
        self._held += draft[:accepted]
        return LinkVerdict(accepted=accepted, next_token=llm_tokens[accepted], bytes_up=request.ByteSize(),
                           bytes_down=reply.ByteSize())


@dataclass
class Completion:
    """What one routed request produced."""

    text: str
    token_ids: list[int]
    sources: list[str]
    accounting: Accounting
    cloud_calls: int
    llm_agreement: float = field(default=0.0)


async def complete(oracle: PairOracle, tokenizer: Tokenizer, policy: RoutingPolicy, *, max_tokens: int,
                   stop: Sequence[str] = (CLOSING_FENCE,), seed: int | None = None) -> Completion:
    """Run ``policy`` on the oracle's prompt through the real router, stopping like the edge engine does."""
    cloud = OracleCloudLink(oracle, seed=seed)
    drafter = OracleDrafter(oracle) if policy.uses_edge_draft else None
    router = HybridRouter(policy, cloud, oracle.prompt, drafter=drafter, max_new_tokens=max_tokens,
                          stop_ids=tokenizer.eos_token_ids)
    decoder = tokenizer.stream_decoder()
    text, ids, sources = "", [], []
    async with aclosing(until_stop(router, decoder, stop)) as stream:
        async for event, piece in stream:
            text += piece
            ids.append(event.token_id)
            sources.append(event.source)
    text += decoder.flush()
    return Completion(text, ids, sources, router.accounting, cloud.calls, oracle.llm_agreement(ids))


def cost_summary(oracle: PairOracle) -> dict[str, float]:
    """How much model work the oracle did (for the sweep's report)."""
    return {f"{role}_{key}": value for role, o in (("slm", oracle.slm), ("llm", oracle.llm))
            for key, value in (("forward_calls", o.forward_calls), ("forward_tokens", o.forward_tokens),
                               ("compute_s", round(o.compute_s, 3)), ("records", len(o.records)))}

