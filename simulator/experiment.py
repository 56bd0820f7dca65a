"""Experiment files for ``edgecloud simulate EXPERIMENT.toml``: parsing and strict validation.

An experiment names its nodes (a coordinator, a cloud node, edge nodes with their model and
routing policy), the links between them (profiles or presets; ``from`` → ``to`` is the uplink),
a timeline of link changes and outages, a workload, and a seed. See ``simulator/experiments/``.
Every error names the file, the line (best effort) and the key.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecloud.simulator.config import check_name, load_toml
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.profiles import PROFILE_KEYS, LinkProfile, Outages, profile_from_dict

ARRIVALS = ("poisson", "constant")
DATASETS = ("humaneval",)


@dataclass(frozen=True)
class CoordinatorSpec:
    name: str = "coordinator"


@dataclass(frozen=True)
class CloudSpec:
    name: str = "cloud"
    model: str = "qwen2.5-coder-1.5b-instruct"
    max_sessions: int = 64
    all_cores: bool = False  # unpinned, one thread per core: a cloud stronger than each edge (split computing)


@dataclass(frozen=True)
class EdgeSpec:
    """An edge node: its model and routing policy (threshold or a target cloud share, not both)."""

    name: str
    model: str = "qwen2.5-coder-0.5b-instruct"
    policy: str = "entropy"
    threshold: float | None = None
    cloud_share: float | None = None
    split_model: str | None = None  # policy "split": this model's head on the edge, its tail on the cloud
    split_cuts: tuple[int, ...] = ()  # the planner's candidate cuts (() = the edge's default)
    split_codecs: tuple[str, ...] = ()  # the planner's candidate codecs (() = the edge's default)


def split_model_key(edge: str) -> str:
    """The key of an edge's split model among the experiment's resolved models."""
    return f"{edge}:split"


@dataclass(frozen=True)
class ExperimentLink:
    """A shaped link; traffic from ``source`` to ``target`` is its uplink."""

    name: str
    source: str
    target: str
    profile: LinkProfile


@dataclass(frozen=True)
class TimelineEvent:
    """At ``at_s`` (seconds into the run) the link gets ``profile``: the given ``changes`` applied
    to its profile, or, for an outage, an outage of ``outage_s`` starting then."""

    at_s: float
    link: str
    profile: LinkProfile
    changes: tuple[tuple[str, Any], ...] = ()
    outage_s: float | None = None


@dataclass(frozen=True)
class Workload:
    """Requests: prompts (inline, a file, or a dataset), arrivals at ``request_rate_per_s`` for
    ``duration_s``, spread over ``target_edges`` (default: every edge)."""

    duration_s: float
    request_rate_per_s: float
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None
    dataset: str | None = None
    arrival: str = "poisson"
    max_new_tokens: int = 128
    temperature: float = 0.0
    target_edges: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    name: str
    seed: int
    coordinator: CoordinatorSpec
    cloud: CloudSpec
    edges: tuple[EdgeSpec, ...]
    links: tuple[ExperimentLink, ...]
    timeline: tuple[TimelineEvent, ...]
    workload: Workload
    description: str = ""
    source: str | None = field(default=None, compare=False)

    @property
    def node_names(self) -> tuple[str, ...]:
        return (self.coordinator.name, self.cloud.name, *(e.name for e in self.edges))

    def link(self, name: str) -> ExperimentLink:
        return next(link for link in self.links if link.name == name)


# ---- field checks -------------------------------------------------------------------------------

def _table(data: Any, key: tuple[str | int, ...]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"must be a table, got {type(data).__name__}")
    return data


def _only(data: Mapping[str, Any], allowed: set[str] | frozenset[str], key: tuple[str | int, ...]) -> None:
    for name in data:
        if name not in allowed:
            raise ConfigError((*key, name), f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _number(data: Mapping[str, Any], name: str, key: tuple[str | int, ...], default: Any = None, *,
            low: float = 0.0, high: float = math.inf, low_open: bool = False, integer: bool = False) -> Any:
    if name not in data:
        if default is ...:
            raise ConfigError((*key, name), "missing")
        return default
    value = data[name]
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError((*key, name), f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigError((*key, name), f"must be {bound}" + (f" and <= {high:g}" if high != math.inf else "")
                          + f", got {value!r}")
    return value


def _string(data: Mapping[str, Any], name: str, key: tuple[str | int, ...], default: Any = None) -> Any:
    if name not in data:
        if default is ...:
            raise ConfigError((*key, name), "missing")
        return default
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ConfigError((*key, name), f"must be a non-empty string, got {value!r}")
    return value


def _check_model(model: str, key: tuple[str | int, ...]) -> None:
    """A zoo name, or something that looks like a path / hub reference (checked when it is loaded)."""
    if "/" in model or model.endswith(".gguf") or model.startswith("hf://"):
        return
    from edgecloud.models.zoo import REGISTRY

    if model not in REGISTRY and model.lower() not in REGISTRY:
        raise ConfigError(key, f"unknown model {model!r}; give a zoo name ({', '.join(REGISTRY)}), "
                          "a Hugging Face folder or a .gguf file")


def _items(data: Mapping[str, Any], name: str, key: tuple[str | int, ...], kind: type) -> tuple:
    """An optional array of ``kind`` values (an empty tuple when absent)."""
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError((*key, name), f"must be an array of {kind.__name__} values, got {value!r}")
    return tuple(value)


def _check_policy(edge: EdgeSpec, key: tuple[str | int, ...]) -> None:
    from edgecloud.routing.policies import POLICIES
    from edgecloud.split.llm import SPLIT_POLICY

    if edge.policy == SPLIT_POLICY or edge.split_model is not None:
        if edge.policy != SPLIT_POLICY or edge.split_model is None:
            raise ConfigError((*key, "split_model"), f"policy {SPLIT_POLICY!r} and split_model go together")
        if edge.threshold is not None or edge.cloud_share is not None:
            raise ConfigError((*key, "policy"), "split generation takes no threshold or cloud_share")
        return
    cls = POLICIES.get(edge.policy)
    if cls is None:
        raise ConfigError((*key, "policy"), f"unknown policy {edge.policy!r}; known: {', '.join(POLICIES)}")
    if edge.threshold is not None:
        low, high = cls.threshold_range
        if not low <= edge.threshold <= high:
            raise ConfigError((*key, "threshold"), f"{edge.threshold} is out of range [{low:g}, {high:g}] "
                              f"for policy {edge.policy!r}")
    if edge.threshold is not None and edge.cloud_share is not None:
        raise ConfigError((*key, "cloud_share"), "give threshold or cloud_share, not both")


# ---- sections -----------------------------------------------------------------------------------

def _coordinator(data: Any) -> CoordinatorSpec:
    table = _table(data, ("coordinator",))
    _only(table, {"name"}, ("coordinator",))
    return CoordinatorSpec(check_name(_string(table, "name", ("coordinator",), "coordinator"), "coordinator.name"))


def _cloud(data: Any) -> CloudSpec:
    key = ("cloud",)
    table = _table(data, key)
    _only(table, {"name", "model", "max_sessions", "all_cores"}, key)
    all_cores = table.get("all_cores", False)
    if not isinstance(all_cores, bool):
        raise ConfigError((*key, "all_cores"), f"must be true or false, got {all_cores!r}")
    spec = CloudSpec(check_name(_string(table, "name", key, "cloud"), "cloud.name"),
                     _string(table, "model", key, CloudSpec.model),
                     _number(table, "max_sessions", key, 64, low=1, integer=True), all_cores)
    _check_model(spec.model, (*key, "model"))
    return spec


def _edges(data: Any) -> tuple[EdgeSpec, ...]:
    if not isinstance(data, list) or not data:
        raise ConfigError("edges", "must be a non-empty array of tables ([[edges]])")
    edges = []
    for index, raw in enumerate(data):
        key = ("edges", index)
        table = _table(raw, key)
        _only(table, {"name", "model", "policy", "threshold", "cloud_share", "split_model", "split_cuts",
                      "split_codecs"}, key)
        edge = EdgeSpec(name=check_name(_string(table, "name", key, ...), f"edges[{index}].name"),
                        model=_string(table, "model", key, EdgeSpec.model),
                        policy=_string(table, "policy", key, EdgeSpec.policy),
                        threshold=_number(table, "threshold", key, None, low=-math.inf),
                        cloud_share=_number(table, "cloud_share", key, None, high=1.0),
                        split_model=_string(table, "split_model", key, None),
                        split_cuts=_items(table, "split_cuts", key, int),
                        split_codecs=_items(table, "split_codecs", key, str))
        _check_model(edge.model, (*key, "model"))
        if edge.split_model is not None:
            _check_model(edge.split_model, (*key, "split_model"))
        _check_policy(edge, key)
        edges.append(edge)
    return tuple(edges)


def _links(data: Any, nodes: set[str], seed: int, base_dir: Path | None) -> tuple[ExperimentLink, ...]:
    table = _table(data, ("links",))
    links = []
    for name, raw in table.items():
        key: tuple[str | int, ...] = ("links", name)
        check_name(name, "links")
        body = _table(raw, key)
        _only(body, PROFILE_KEYS | {"from", "to"}, key)
        ends = []
        for end in ("from", "to"):
            value = _string(body, end, key, ...)
            if value not in nodes:
                raise ConfigError((*key, end), f"no node named {value!r}; nodes: {', '.join(sorted(nodes))}")
            ends.append(value)
        if ends[0] == ends[1]:
            raise ConfigError((*key, "to"), "a link joins two different nodes")
        profile_keys = {k: v for k, v in body.items() if k not in ("from", "to")}
        if "seed" not in profile_keys:
            profile_keys["seed"] = zlib.crc32(f"{seed}:{name}".encode())
        try:
            profile = profile_from_dict(profile_keys, base_dir=base_dir)
        except ConfigError as exc:
            raise exc.prefixed(key) from None
        links.append(ExperimentLink(name, ends[0], ends[1], profile))
    pairs = [frozenset((link.source, link.target)) for link in links]
    for link, pair in zip(links, pairs, strict=True):
        if pairs.count(pair) > 1:
            raise ConfigError(("links", link.name), f"{link.source} and {link.target} are joined by two links")
    return tuple(links)


def _timeline(data: Any, links: tuple[ExperimentLink, ...], duration_s: float,
              base_dir: Path | None) -> tuple[TimelineEvent, ...]:
    if not isinstance(data, list):
        raise ConfigError("timeline", "must be an array of tables ([[timeline]] or [{at_s=…, link=…}])")
    current = {link.name: link.profile for link in links}
    entries = []
    for index, raw in enumerate(data):
        key = ("timeline", index)
        table = _table(raw, key)
        at_s = _number(table, "at_s", key, ..., high=duration_s)
        name = _string(table, "link", key, ...)
        if name not in current:
            raise ConfigError((*key, "link"), f"no link named {name!r}; links: {', '.join(current) or 'none'}")
        changes = {k: v for k, v in table.items() if k not in ("at_s", "link")}
        if not changes:
            raise ConfigError(key, "changes nothing: give profile keys (e.g. rate_mbps) or outage_s")
        entries.append((at_s, index, name, changes))
    events = []
    for at_s, index, name, changes in sorted(entries, key=lambda e: (e[0], e[1])):
        key = ("timeline", index)
        if "outage_s" in changes:
            _only(changes, {"outage_s", "outage_mode"}, key)
            outage_s = _number(changes, "outage_s", key, ..., low_open=True)
            mode = changes.get("outage_mode", current[name].outages.mode)
            try:
                outages = Outages(scheduled_s=((0.0, float(outage_s)),), mode=mode)
            except ConfigError as exc:
                raise exc.prefixed(key) from None
            events.append(TimelineEvent(at_s, name, replace(current[name], outages=outages),
                                        tuple(changes.items()), float(outage_s)))
            continue
        _only(changes, PROFILE_KEYS - {"seed"}, key)
        try:
            profile = profile_from_dict(changes, base=current[name], base_dir=base_dir)
        except ConfigError as exc:
            raise exc.prefixed(key) from None
        current[name] = profile
        events.append(TimelineEvent(at_s, name, profile, tuple(changes.items())))
    return tuple(events)


def _workload(data: Any, edges: tuple[EdgeSpec, ...], base_dir: Path | None) -> Workload:
    key = ("workload",)
    table = _table(data, key)
    _only(table, {"prompts", "prompts_file", "dataset", "request_rate_per_s", "arrival", "duration_s",
                  "max_new_tokens", "temperature", "target_edges"}, key)
    sources = [name for name in ("prompts", "prompts_file", "dataset") if name in table]
    if len(sources) != 1:
        raise ConfigError(key, "give exactly one of prompts, prompts_file, dataset"
                          + (f" (got {', '.join(sources)})" if sources else ""))
    prompts: tuple[str, ...] = ()
    if "prompts" in table:
        raw = table["prompts"]
        if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
            raise ConfigError((*key, "prompts"), "must be a non-empty array of non-empty strings")
        prompts = tuple(raw)
    prompts_file = _string(table, "prompts_file", key)
    if prompts_file is not None:
        path = Path(prompts_file)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError((*key, "prompts_file"), f"no such file: {path}")
        prompts_file = str(path)
    dataset = _string(table, "dataset", key)
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError((*key, "dataset"), f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    arrival = _string(table, "arrival", key, "poisson")
    if arrival not in ARRIVALS:
        raise ConfigError((*key, "arrival"), f"must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    targets = table.get("target_edges", [])
    names = {e.name for e in edges}
    if not isinstance(targets, list) or any(t not in names for t in targets):
        raise ConfigError((*key, "target_edges"), f"must be an array of edge names ({', '.join(sorted(names))}), "
                          f"got {targets!r}")
    return Workload(duration_s=float(_number(table, "duration_s", key, ..., low_open=True)),
                    request_rate_per_s=float(_number(table, "request_rate_per_s", key, ..., low_open=True)),
                    prompts=prompts, prompts_file=prompts_file, dataset=dataset, arrival=arrival,
                    max_new_tokens=_number(table, "max_new_tokens", key, 128, low=1, integer=True),
                    temperature=float(_number(table, "temperature", key, 0.0, high=10.0)),
                    target_edges=tuple(targets))


TOP_KEYS = {"name", "description", "seed", "coordinator", "cloud", "edges", "links", "timeline", "workload"}


def experiment_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None,
                         source: str | None = None) -> Experiment:
    """Validate an experiment's dict form (as parsed from TOML)."""
    _only(data, TOP_KEYS, ())
    name = check_name(_string(data, "name", (), ...), "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", "must be a string")
    seed = _number(data, "seed", (), 0, integer=True)
    coordinator = _coordinator(data.get("coordinator", {}))
    cloud = _cloud(data.get("cloud", {}))
    if "edges" not in data:
        raise ConfigError("edges", "missing: an experiment needs at least one [[edges]] table")
    edges = _edges(data["edges"])
    names = [coordinator.name, cloud.name, *(e.name for e in edges)]
    for index, node in enumerate(names):
        if node in names[:index]:
            where = ("edges", index - 2, "name") if index >= 2 else ("cloud", "name")
            raise ConfigError(where, f"node name {node!r} is used twice")
    if "workload" not in data:
        raise ConfigError("workload", "missing: an experiment needs a [workload] table")
    workload = _workload(data["workload"], edges, base_dir)
    links = _links(data.get("links", {}), set(names), seed, base_dir)
    timeline = _timeline(data.get("timeline", []), links, workload.duration_s, base_dir)
    return Experiment(name, seed, coordinator, cloud, edges, links, timeline, workload, description, source)


def parse_experiment(text: str, source: str = "<experiment>", base_dir: Path | None = None) -> Experiment:
    """Parse TOML text; errors carry the line of the offending key where it can be found."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError((), f"invalid TOML: {exc}", source=source) from exc
    try:
        return experiment_from_dict(data, base_dir=base_dir, source=source)
    except ConfigError as exc:
        raise exc.located(source, text) from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file."""
    path = Path(path)
    data, text = load_toml(path)
    try:
        return experiment_from_dict(data, base_dir=path.parent, source=str(path))
    except ConfigError as exc:
        raise exc.located(str(path), text) from None
