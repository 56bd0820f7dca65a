"""Experiment files: the shipped examples parse; bad input names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import edgecloud.simulator
from edgecloud.simulator.cli import app
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.experiment import load_experiment, parse_experiment
from edgecloud.simulator.presets import PRESETS

EXAMPLES = sorted((Path(edgecloud.simulator.__file__).parent / "experiments").glob("*.toml"))

MINIMAL = """\
name = "tiny"
seed = 1

[[edges]]
name = "edge0"
policy = "entropy"

[links.edge0-cloud]
from = "edge0"
to = "cloud"
preset = "4g"

[[timeline]]
at_s = 10
link = "edge0-cloud"
rate_mbps = 1

[workload]
prompts = ["def f():"]
request_rate_per_s = 1
duration_s = 20
"""


def test_examples_parse() -> None:
    assert len(EXAMPLES) >= 3
    for path in EXAMPLES:
        experiment = load_experiment(path)
        assert experiment.edges and experiment.links and experiment.timeline
        assert all(e.at_s <= experiment.workload.duration_s for e in experiment.timeline)


def test_minimal_experiment_resolves_profiles_and_seeds() -> None:
    experiment = parse_experiment(MINIMAL)
    assert experiment.node_names == ("coordinator", "cloud", "edge0")
    link = experiment.link("edge0-cloud")
    assert (link.source, link.target) == ("edge0", "cloud")
    assert link.profile.uplink.latency_ms == PRESETS["4g"].uplink.latency_ms
    assert link.profile.seed != 0 and link.profile.seed == parse_experiment(MINIMAL).link("edge0-cloud").profile.seed
    (event,) = experiment.timeline
    assert event.profile.uplink.rate_mbps == event.profile.downlink.rate_mbps == 1
    assert event.profile.uplink.latency_ms == link.profile.uplink.latency_ms


def test_timeline_sorted_and_outages_resolved() -> None:
    text = MINIMAL.replace("at_s = 10", "at_s = 15") + """
[[timeline]]
at_s = 5
link = "edge0-cloud"
outage_s = 2
outage_mode = "reset"
"""
    first, second = parse_experiment(text).timeline
    assert (first.at_s, first.outage_s, first.profile.outages.scheduled_s) == (5, 2.0, ((0.0, 2.0),))
    assert first.profile.outages.mode == "reset"
    assert second.at_s == 15 and not second.profile.outages.scheduled_s  # an outage is a one-off


@pytest.mark.parametrize(("old", "new", "line", "key"), [
    ('name = "tiny"', 'name = "tiny"\ncolour = "red"', 2, "colour"),
    ('policy = "entropy"', 'policy = "psychic"', 6, "edges[0].policy"),
    ('policy = "entropy"', 'policy = "entropy"\nthreshold = 99', 7, "edges[0].threshold"),
    ('policy = "entropy"', 'policy = "entropy"\nmodel = "gpt-9"', 7, "edges[0].model"),
    ('to = "cloud"', 'to = "moon"', 10, "links.edge0-cloud.to"),
    ('preset = "4g"', 'preset = "4g"\nrate_mbps = -2', 12, "links.edge0-cloud.rate_mbps"),
    ('preset = "4g"', 'preset = "4g"\nuplink = { latency = 3 }', 12, "links.edge0-cloud.uplink.latency"),
    ("at_s = 10", "at_s = 99", 14, "timeline[0].at_s"),
    ('link = "edge0-cloud"', 'link = "edge9-cloud"', 15, "timeline[0].link"),
    ("rate_mbps = 1", "rate_mbps = 0", 16, "timeline[0].rate_mbps"),
    ("rate_mbps = 1", "bandwidth = 1", 16, "timeline[0].bandwidth"),
    ("request_rate_per_s = 1", "request_rate_per_s = -1", 20, "workload.request_rate_per_s"),
    ('prompts = ["def f():"]', 'dataset = "imagenet"', 19, "workload.dataset"),
    ("duration_s = 20", "duration_s = 20\nmax_new_tokens = 1.5", 22, "workload.max_new_tokens"),
])
def test_bad_experiments_name_line_and_key(old: str, new: str, line: int, key: str) -> None:
    assert old in MINIMAL
    with pytest.raises(ConfigError) as info:
        parse_experiment(MINIMAL.replace(old, new), source="exp.toml")
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"exp.toml:{line}: {key}: "), str(info.value)


def test_structural_errors() -> None:
    with pytest.raises(ConfigError, match="edgez: unknown key"):
        parse_experiment(MINIMAL.replace("[[edges]]", "[[edgez]]"))
    no_edges = MINIMAL.replace('[[edges]]\nname = "edge0"\npolicy = "entropy"\n', "")
    with pytest.raises(ConfigError, match="edges: missing"):
        parse_experiment(no_edges)
    with pytest.raises(ConfigError, match="exactly one of prompts, prompts_file, dataset"):
        parse_experiment(MINIMAL.replace("prompts = [", 'dataset = "humaneval"\nprompts = ['))
    with pytest.raises(ConfigError, match="used twice"):
        parse_experiment(MINIMAL.replace('name = "edge0"', 'name = "cloud"'))
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_experiment(MINIMAL + "\n[broken\n")


def test_cli_check(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(EXAMPLES[0])])
    assert result.exit_code == 0, result.output
    assert "experiment" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("rate_mbps = 1", "rate_mbps = -1"))
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    assert "bad.toml:16: timeline[0].rate_mbps: must be > 0" in result.output
    links = tmp_path / "links.toml"
    links.write_text('[links.a]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:1"\npreset = "lan"\n')
    result = runner.invoke(app, ["check", str(links)])
    assert result.exit_code == 0 and "1 links: a" in result.output


def test_bandwidth_drop_experiment_is_sized_so_that_the_drop_shows_on_this_machine() -> None:
    """Offered load well below what the measured compute profile says this machine can serve (no
    queue builds), and the collapse adds a visible share to each request's latency."""
    import math

    from edgecloud.simulator.des.compute import SHIPPED_PROFILE, load_compute_profile
    from edgecloud.simulator.des.replay import WireProfile

    exp = load_experiment(EXAMPLES[0].parent / "edge-4g-bandwidth-drop.toml")
    profile = load_compute_profile(SHIPPED_PROFILE)
    workload, [edge] = exp.workload, exp.edges
    prompt = 64  # chat template with its system turn + a one-line request, in tokens
    new = workload.max_new_tokens
    assert edge.cloud_share is not None
    trips = math.ceil(new * edge.cloud_share)  # at most one round trip per flagged token
    # Prefill on both sides, a decode step per token on the edge, a 2-token verification per round trip.
    service_s = (profile.edge.seconds(1, prompt) + new * profile.edge.seconds(1, 1)
                 + profile.cloud.seconds(1, prompt) + trips * profile.cloud.seconds(1, 2))
    gap_s = 1.0 / workload.request_rate_per_s
    assert workload.arrival == "constant" and service_s < 0.6 * gap_s, (service_s, gap_s)
    [link] = [link for link in exp.links if link.name == "edge0-cloud"]
    [drop, back] = [event for event in exp.timeline if event.link == "edge0-cloud"]
    assert drop.at_s >= 2 * gap_s and back.at_s - drop.at_s >= 2 * gap_s  # requests before, during, after
    assert workload.duration_s - back.at_s >= 2 * gap_s

    def round_trip_s(profile_) -> float:
        wire = WireProfile()
        up, down = profile_.uplink, profile_.downlink
        return ((up.latency_ms + down.latency_ms) * 1e-3 + wire.up_bytes(2, 2) * 8 / (up.rate_mbps * 1e6)
                + wire.down_bytes() * 8 / (down.rate_mbps * 1e6))

    extra_s = trips * (round_trip_s(drop.profile) - round_trip_s(link.profile))
    assert extra_s > 0.2 * service_s, (extra_s, service_s)
    assert back.profile.uplink.rate_mbps == link.profile.uplink.rate_mbps


SPLIT = 'policy = "split"\nsplit_model = "qwen2.5-coder-1.5b-instruct"\nsplit_cuts = [0, 28]\nsplit_codecs = ["fp16"]'


def test_split_edges_parse_and_their_options_go_together() -> None:
    edge = parse_experiment(MINIMAL.replace('policy = "entropy"', SPLIT)).edges[0]
    assert (edge.policy, edge.split_cuts, edge.split_codecs) == ("split", (0, 28), ("fp16",))
    with pytest.raises(ConfigError, match="go together"):
        parse_experiment(MINIMAL.replace('policy = "entropy"', 'policy = "split"'))
    with pytest.raises(ConfigError, match="go together"):
        parse_experiment(MINIMAL.replace('policy = "entropy"', 'split_model = "qwen2.5-coder-1.5b-instruct"'))
    with pytest.raises(ConfigError, match="array of int"):
        parse_experiment(MINIMAL.replace('policy = "entropy"', SPLIT.replace("[0, 28]", '["a"]')))
    with pytest.raises(ConfigError, match="no threshold"):
        parse_experiment(MINIMAL.replace('policy = "entropy"', SPLIT + "\nthreshold = 0.5"))
