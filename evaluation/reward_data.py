"""Training data for the reward head: per token, the SLM's features and whether the LLM agrees.

For a sequence of token ids, one teacher-forced pass of each model gives, at every scored
position, the SLM's greedy token (what it would draft there), its uncertainty features and
final-norm hidden state, the LLM's greedy token and the LLM's log-probability of the SLM's
token; the label is ``agree = llm_token == slm_token``. Two sources of sequences:

- ``teacher-forced``: windows of standard-library files as written (cheap, broad);
- ``generated``: the SLM's own greedy answers to code-completion requests (``code_tasks``),
  only the answer positions recorded — the distribution the router actually sees.

Output: ``DIR/{split}-{source}-{index:05d}.safetensors`` shards (written atomically, one per
``sequences_per_shard`` sequences) and ``DIR/manifest.json``, which names the model pair and
the settings that define an item's records, and lists every shard with the items it covers,
so that a re-run resumes where the last one stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edgecloud.corpus import SPLITS, Split, stdlib_files, stdlib_relative
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.generate import generate_ids
from edgecloud.models.llama import LlamaModel
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.calibration import code_tasks, mixed_order, teacher_forced_pass
from edgecloud.routing.prompts import ends_answer

SOURCES = ("teacher-forced", "generated")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FP16_MAX = 65504.0
COLUMNS = {"hidden": torch.float16, "entropy": torch.float32, "max_prob": torch.float32, "margin": torch.float32,
           "llm_logprob": torch.float32, "position": torch.int32, "agree": torch.uint8, "slm_token": torch.int32,
           "llm_token": torch.int32, "sequence": torch.int32}


class RewardDataError(ValueError):
    """A data directory that cannot be used as asked (other models, other settings, damaged)."""


@dataclass(frozen=True)
class CollectConfig:
    """What to collect. Counts may grow between runs into one directory; the content settings may not."""

    slm: str  # model names, recorded in every shard and in the manifest
    llm: str
    splits: tuple[Split, ...] = SPLITS
    sources: tuple[str, ...] = SOURCES
    max_files: int = 50  # per split, for the teacher-forced source
    max_windows_per_file: int = 4
    window_tokens: int = 512
    tasks: int = 64  # per split, for the generated source
    tasks_per_file: int = 4
    max_new_tokens: int = 128
    sequences_per_shard: int = 16
    dtype: str = "bf16"  # of the models (loaded by the caller); recorded

    def __post_init__(self) -> None:
        if unknown := set(self.splits) - set(SPLITS):
            raise RewardDataError(f"unknown splits {sorted(unknown)}; choose from {', '.join(SPLITS)}")
        if unknown := set(self.sources) - set(SOURCES):
            raise RewardDataError(f"unknown sources {sorted(unknown)}; choose from {', '.join(SOURCES)}")
        try:
            parse_dtype(self.dtype)
        except ValueError as exc:
            raise RewardDataError(str(exc)) from None
        minimum = {"max_files": 0, "tasks": 0, "window_tokens": 2, "max_windows_per_file": 1, "tasks_per_file": 1,
                   "max_new_tokens": 1, "sequences_per_shard": 1}
        for name, least in minimum.items():
            if getattr(self, name) < least:
                raise RewardDataError(f"{name} must be at least {least}, got {getattr(self, name)}")

    def content_settings(self) -> dict[str, Any]:
        """The settings that define what an item's records are: a resumed run must use the same."""
        return {"window_tokens": self.window_tokens, "max_new_tokens": self.max_new_tokens, "dtype": self.dtype,
                "format_version": FORMAT_VERSION}


@dataclass(frozen=True)
class Item:
    """One sequence to record. ``generate``: ``ids`` is a prompt, to be followed by the SLM's answer."""

    key: str  # unique within its split and source
    file: str  # standard-library path it comes from
    ids: tuple[int, ...]
    generate: bool = False


@dataclass(frozen=True)
class Records:
    """Per-position columns (see ``COLUMNS``) of one or more sequences."""

    columns: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.columns["agree"].shape[0])

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        return cls({name: torch.cat([p.columns[name] for p in parts]) for name in COLUMNS})


@dataclass
class SourceStats:
    """Work done for one source: items, tokens through the models, positions recorded, seconds."""

    items: int = 0
    sequence_tokens: int = 0  # tokens each model was teacher-forced over
    generated_tokens: int = 0
    positions: int = 0  # recorded rows
    generate_s: float = 0.0
    slm_s: float = 0.0
    llm_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.generate_s + self.slm_s + self.llm_s


@dataclass
class CollectStats:
    by_source: dict[str, SourceStats] = field(default_factory=lambda: {s: SourceStats() for s in SOURCES})
    skipped_items: int = 0  # already in the directory
    shards_written: int = 0


# --- recording ---------------------------------------------------------------------------------------

def record_sequence(slm: LlamaModel, llm: LlamaModel, ids: Sequence[int], start: int = 0,
                    stats: SourceStats | None = None) -> Records:
    """Teacher-force both models over ``ids``; record positions ``start`` onwards (position 0 = ``start``)."""
    started = time.perf_counter()
    edge = teacher_forced_pass(slm, ids, start=start, with_hidden=True)
    middle = time.perf_counter()
    cloud = teacher_forced_pass(llm, ids, start=start, score_tokens=edge.greedy)
    if stats is not None:
        stats.slm_s += middle - started
        stats.llm_s += time.perf_counter() - middle
    count = edge.greedy.shape[0]
    return Records({
        "hidden": edge.hidden.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).cpu(),
        "entropy": edge.entropy.cpu(), "max_prob": edge.max_prob.cpu(), "margin": edge.margin.cpu(),
        "llm_logprob": cloud.logprob.cpu(),
        "position": torch.arange(count, dtype=torch.int32),
        "agree": (cloud.greedy == edge.greedy).to(torch.uint8).cpu(),
        "slm_token": edge.greedy.to(torch.int32).cpu(), "llm_token": cloud.greedy.to(torch.int32).cpu(),
        "sequence": torch.zeros(count, dtype=torch.int32),
    })


def generate_answer(slm: LlamaModel, tokenizer: Tokenizer, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """The SLM's greedy answer until a closing code fence or an end token (both included), or the limit."""
    answer: list[int] = []
    for token in generate_ids(slm, list(prompt_ids), max_new_tokens=max_new_tokens):
        answer.append(token)
        if ends_answer(tokenizer, answer):
            break
    return answer


def record_item(slm: LlamaModel, llm: LlamaModel, tokenizer: Tokenizer, item: Item, max_new_tokens: int,
                stats: SourceStats | None = None) -> Records:
    """Records of one item: all positions of a window, or the answer positions of a generated answer."""
    if not item.generate:
        if stats is not None:
            stats.sequence_tokens += len(item.ids)
        return record_sequence(slm, llm, item.ids, 0, stats)
    started = time.perf_counter()
    answer = generate_answer(slm, tokenizer, item.ids, max_new_tokens)
    ids = [*item.ids, *answer]
    if stats is not None:
        stats.generate_s += time.perf_counter() - started
        stats.generated_tokens += len(answer)
        stats.sequence_tokens += len(ids) - 1
    # The position predicting answer token i is len(prompt) - 1 + i; the last answer token predicts nothing kept.
    return record_sequence(slm, llm, ids[:-1], len(item.ids) - 1, stats)


# --- items -------------------------------------------------------------------------------------------

def window_starts(num_tokens: int, window_tokens: int, max_windows: int) -> list[int]:
    """Start offsets of up to ``max_windows`` non-overlapping windows, spread evenly over the text."""
    count = math.ceil(num_tokens / window_tokens)
    if count and num_tokens - (count - 1) * window_tokens < 2:
        count -= 1  # a last window of one token scores almost nothing
    chosen = min(count, max_windows)
    if chosen <= 1:
        return [0] if count else []
    return sorted({round(i * (count - 1) / (chosen - 1)) * window_tokens for i in range(chosen)})


def teacher_forced_items(tokenizer: Tokenizer, split: Split, config: CollectConfig) -> list[Item]:
    """Windows of the first ``max_files`` files of the split, in ``mixed_order``."""
    items = []
    for path in mixed_order(stdlib_files(split))[:config.max_files]:
        ids = tokenizer.encode(path.read_text(errors="replace"))
        rel = stdlib_relative(path)
        for start in window_starts(len(ids), config.window_tokens, config.max_windows_per_file):
            items.append(Item(f"{rel}@{start}", rel, tuple(ids[start:start + config.window_tokens])))
    return items


def generated_items(tokenizer: Tokenizer, split: Split, config: CollectConfig) -> list[Item]:
    """Code-completion prompts from the split's documented functions (chat template, answer opened)."""
    return [Item(f"{t.file}:{t.function}:{t.line}", t.file,
                 tuple(tokenizer.prompt_ids(t.user, assistant_prefix=t.assistant_prefix)), generate=True)
            for t in code_tasks(split, config.tasks, per_file=config.tasks_per_file, mixed=True)] if config.tasks else []


# --- the directory -----------------------------------------------------------------------------------

def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def shard_name(split: str, source: str, index: int) -> str:
    return f"{split}-{source}-{index:05d}.safetensors"


class DataDirectory:
    """A directory of shards and its manifest, opened for one model pair and content settings."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | Path, config: CollectConfig) -> DataDirectory:
        """Open (or start) ``root`` and record this run; refuses another model pair or other content settings."""
        root = Path(root)
        manifest = read_manifest(root, config)
        root.mkdir(parents=True, exist_ok=True)
        directory = cls(root, manifest)
        manifest["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": asdict(config)})
        directory.save_manifest()
        return directory

    def done_items(self, split: str, source: str) -> set[str]:
        return {key for entry in self.manifest["shards"].values()
                if entry["split"] == split and entry["source"] == source for key in entry["items"]}

    def next_index(self, split: str, source: str) -> int:
        used = [entry["index"] for entry in self.manifest["shards"].values()
                if entry["split"] == split and entry["source"] == source]
        return max(used, default=-1) + 1

    def save_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1)
        _write_atomically(self.root / MANIFEST, lambda tmp: tmp.write_text(text))

    def write_shard(self, split: str, source: str, items: Sequence[Item], records: Sequence[Records]) -> Path:
        """Write one shard (tmp + rename), then record it in the manifest."""
        index = self.next_index(split, source)
        name = shard_name(split, source, index)
        files = sorted({item.file for item in items})
        write_shard(self.root / name, records, {"slm": self.manifest["slm"], "llm": self.manifest["llm"],
                                                "source": source, "split": split, "files": files,
                                                "items": [item.key for item in items]})
        self.manifest["shards"][name] = {"split": split, "source": source, "index": index, "files": files,
                                         "items": [item.key for item in items],
                                         "positions": sum(len(r) for r in records)}
        self.save_manifest()
        return self.root / name


def read_manifest(root: str | Path, config: CollectConfig) -> dict[str, Any]:
    """The manifest of ``root`` (a fresh one if there is none), checked against ``config``; writes nothing."""
    root = Path(root)
    path = root / MANIFEST
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
            have_slm, have_llm = manifest["slm"], manifest["llm"]
            have_settings = manifest["settings"]
            if not isinstance(manifest["shards"], dict):
                raise TypeError("'shards' is not a mapping")
        except (ValueError, KeyError, TypeError) as exc:
            raise RewardDataError(f"{path} is not a reward-data manifest ({exc})") from exc
        if (have_slm, have_llm) != (config.slm, config.llm):
            raise RewardDataError(
                f"{root} holds data of SLM {have_slm!r} with LLM {have_llm!r}; this run uses SLM {config.slm!r} "
                f"with LLM {config.llm!r}. Use another --out directory: one model pair per directory.")
        if have_settings != config.content_settings():
            diff = {k: (have_settings.get(k), v) for k, v in config.content_settings().items()
                    if have_settings.get(k) != v}
            raise RewardDataError(f"{root} was collected with other settings (directory vs this run: {diff}); "
                                  "use the same settings to resume, or another --out directory")
    else:
        if root.is_dir() and any(root.glob("*.safetensors")):
            raise RewardDataError(f"{root} has shards but no {MANIFEST}; use an empty or new directory")
        manifest = {"slm": config.slm, "llm": config.llm, "settings": config.content_settings(), "shards": {},
                    "runs": []}
    return manifest


def write_shard(path: Path, records: Sequence[Records], metadata: dict[str, Any]) -> None:
    """One shard file: the sequences' records concatenated (``sequence`` = index among them), atomically."""
    parts = [Records({**r.columns, "sequence": torch.full((len(r),), i, dtype=torch.int32)})
             for i, r in enumerate(records)]
    merged = Records.concat(parts).columns
    tensors = {name: merged[name].to(dtype).contiguous() for name, dtype in COLUMNS.items()}
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    meta["format_version"] = str(FORMAT_VERSION)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)  # safetensors creates files readable by the owner only

    _write_atomically(path, write)


def read_shard(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A shard's tensors and metadata."""
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise RewardDataError(f"{path} is not a readable shard: {exc}") from exc
    if missing := set(COLUMNS) - set(tensors):
        raise RewardDataError(f"{path} is not a reward-data shard (missing {sorted(missing)})")
    return tensors, meta


# --- the run -----------------------------------------------------------------------------------------

def _progress(enabled: bool):  # -> rich.progress.Progress
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("items"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]


def collect(slm: LlamaModel, llm: LlamaModel, tokenizer: Tokenizer, config: CollectConfig, out: str | Path, *,
            progress: bool = True) -> CollectStats:
    """Record every item of the configured splits and sources not yet in ``out``; returns what was done."""
    if slm.config.vocab_size != llm.config.vocab_size:
        raise RewardDataError(f"the SLM's vocabulary ({slm.config.vocab_size}) differs from the LLM's "
                              f"({llm.config.vocab_size}): agreement needs one tokenizer")
    wanted = parse_dtype(config.dtype)
    if slm.dtype != wanted or llm.dtype != wanted:
        raise RewardDataError(f"config.dtype is {config.dtype!r} but the models are {slm.dtype} and {llm.dtype}")
    directory = DataDirectory.open(out, config)
    stats = CollectStats()
    builders = {"teacher-forced": teacher_forced_items, "generated": generated_items}
    with _progress(progress) as bar:
        for split in config.splits:
            for source in config.sources:
                items = builders[source](tokenizer, split, config)
                done = directory.done_items(split, source)
                todo = [item for item in items if item.key not in done]
                stats.skipped_items += len(items) - len(todo)
                task = bar.add_task(f"{source} {split}", total=len(items), completed=len(items) - len(todo), rate="")
                source_stats = stats.by_source[source]
                for chunk in _chunks(todo, config.sequences_per_shard):
                    records = []
                    for item in chunk:
                        records.append(record_item(slm, llm, tokenizer, item, config.max_new_tokens, source_stats))
                        source_stats.items += 1
                        source_stats.positions += len(records[-1])
                        rate = source_stats.positions / max(source_stats.seconds, 1e-9)
                        bar.update(task, advance=1, rate=f"{rate:.1f} recorded tok/s")
                    directory.write_shard(split, source, chunk, records)
                    stats.shards_written += 1
    return stats
