"""Hidden states at an LLM cut, through every activation codec: quality and bytes per token.

Qwen2.5-Coder-1.5B (bf16) runs teacher-forced on held-out Python standard-library text, in
windows of ``--window`` tokens. For each cut the head's hidden states go through each codec
(encode -> wire bytes -> decode) into the tail; against the unsplit model's logits we report
next-token (argmax) agreement, the NLL of the text and its delta, and bytes per token on the wire
(the protobuf message's size). The noise floor: the same comparison of a float32 run of the whole
model against the bf16 one. A codec with ``+lz4`` decodes to the same values as without (lz4 is
lossless), so only its bytes are measured.

    python benchmarks/split_llm.py --json benchmarks/results/split_llm.json
    python benchmarks/split_llm.py --tokens 256 --cuts 14 --codecs fp16 int8-token --json /tmp/quick.json

``--daemons`` measures instead the split generation through the real daemons: a cloud node serving
the model's tail and an edge node serving its head at one cut, the link between them shaped by the
simulator's proxy (``--rates-mbps``, ``--one-way-ms``), greedy tokens/s per codec; edge and cloud
share this machine's cores (one thread each).

    python benchmarks/split_llm.py --daemons --json benchmarks/results/split_llm_daemons.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL = "qwen2.5-coder-1.5b-instruct"
CUTS = (7, 14, 21)


def held_out_tokens(tokenizer, count: int) -> torch.Tensor:
    """The first ``count`` tokens of the held-out standard-library files, concatenated in path order."""
    from edgecloud.corpus import stdlib_files

    ids: list[int] = []
    for path in stdlib_files("held-out"):
        ids.extend(tokenizer.encode(path.read_text(errors="replace")))
        if len(ids) >= count + 1:
            break
    if len(ids) < count + 1:
        raise SystemExit(f"the held-out files hold only {len(ids)} tokens")
    return torch.tensor(ids[:count + 1])


def compare(logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor) -> dict:
    """Argmax agreement with ``reference`` and the NLL of ``targets`` under both (all (T, V) / (T,))."""
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    nll = F.cross_entropy(logits.float(), targets).item()
    nll_ref = F.cross_entropy(reference.float(), targets).item()
    return {"agreement": agree, "nll": nll, "nll_delta": nll - nll_ref}


def _merge(parts: list[dict], weights: list[int]) -> dict:
    total = sum(weights)
    return {key: sum(p[key] * w for p, w in zip(parts, weights, strict=True)) / total for key in parts[0]}


DAEMON_PROMPT = "Write a Python function that returns the n-th Fibonacci number iteratively."



def run_daemons(args: argparse.Namespace) -> None:
    """Greedy split generation through a shaped link: tokens/s per (rate, codec)."""
    from edgecloud.client import Client
    from edgecloud.loop_thread import LoopThread
    from edgecloud.models.loader import resolve_source
    from edgecloud.processes import DaemonGroup, free_port
    from edgecloud.simulator.profiles import LinkProfile
    from edgecloud.simulator.proxy import ShapingProxy

    folder = resolve_source(args.model)
    cut = args.cuts[0]
    codecs = args.codecs or ["fp16", "int8-token", "int4-g128"]
    result = {"benchmark": "split_llm_daemons", "model": args.model, "cut": cut, "prompt": DAEMON_PROMPT,
              "max_tokens": args.max_tokens, "one_way_ms": args.one_way_ms,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "runs": []}
    port = free_port()
    with LoopThread() as loop, DaemonGroup(log_dir=Path(tempfile.mkdtemp(prefix="split-llm-"))) as group:
        link = loop.run(ShapingProxy.create(upstream=f"127.0.0.1:{port}", profile=LinkProfile()))
        group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folder), "--listen", f"127.0.0.1:{port}",
                              "--dtype", "bf16", "--threads", "1"])
        for codec in codecs:
            edge = group.start(f"edge-{codec}", [
                "-m", "edgecloud.edge_node", "--model", args.edge_slm, "--listen", "127.0.0.1:0", "--dtype", "bf16",
                "--threads", "1", "--cloud", link.address, "--split-model", str(folder), "--split-cuts", str(cut),
                "--split-codecs", codec])
            with Client(edge.address, timeout_s=1800) as client:
                client.text("Say hello.", max_tokens=4, policy="split")  # warm up (not recorded)
                for rate in args.rates_mbps:
                    loop.call(link.set_profile, LinkProfile.symmetric(rate_mbps=rate, latency_ms=args.one_way_ms))
                    started = time.perf_counter()
                    events = list(client.generate(DAEMON_PROMPT, max_tokens=args.max_tokens, policy="split"))
                    wall = time.perf_counter() - started
                    summary = events[-1]
                    tokens = summary.output_tokens
                    decode_s = summary.wall_s - summary.time_to_first_token_s
                    row = {"codec": codec, "rate_mbps": rate, "tokens": tokens, "client_wall_s": wall,
                           "tokens_per_s": tokens / summary.wall_s,
                           "decode_tokens_per_s": (tokens - 1) / decode_s if decode_s > 0 else None,
                           "time_to_first_token_s": summary.time_to_first_token_s,
                           "bytes_up_per_token": summary.bytes_up / (tokens + summary.prompt_tokens),
                           "prompt_tokens": summary.prompt_tokens, "edge_compute_s": summary.edge_compute_s,
                           "cloud_compute_s": summary.cloud_compute_s, "network_s": summary.network_s,
                           "round_trips": summary.cloud_round_trips}
                    result["runs"].append(row)
                    print(row, flush=True)
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(result, indent=2))
            group.daemons.remove(edge)
            edge.close()
        loop.run(link.close())
    print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--cuts", type=int, nargs="+", default=list(CUTS))
    parser.add_argument("--codecs", nargs="+", help="default: every codec without +lz4 (those are measured too)")
    parser.add_argument("--no-noise-floor", action="store_true", help="skip the float32 reference run")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--daemons", action="store_true", help="tokens/s through the daemons instead (see above)")
    parser.add_argument("--rates-mbps", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--one-way-ms", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--edge-slm", default="smollm2-135m-instruct", help="the edge node's own (unused) SLM")
    args = parser.parse_args()
    if args.daemons:
        if args.cuts == list(CUTS):
            args.cuts = [14]
        return run_daemons(args)

    from edgecloud.activations import activation_to_proto
    from edgecloud.kernels.codecs import CODECS, decode, encode
    from edgecloud.models.loader import load_model, resolve_source
    from edgecloud.models.tokenizer import Tokenizer
    from edgecloud.split.llm import SplitHead, SplitTail

    codecs = args.codecs or [c for c in CODECS if not c.endswith("+lz4")]
    folder = resolve_source(args.model)
    tokenizer = Tokenizer.from_folder(folder)
    ids = held_out_tokens(tokenizer, args.tokens)
    windows = [(ids[i:i + args.window], ids[i + 1:i + args.window + 1]) for i in range(0, args.tokens, args.window)]
    windows = [(w, t[:len(w)]) for w, t in windows if len(t)]
    torch.manual_seed(0)
    result = {"benchmark": "split_llm", "model": args.model, "dtype": "bfloat16", "tokens": args.tokens,
              "window": args.window, "text": "held-out Python standard-library files (edgecloud.corpus)",
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "noise_floor": None, "cuts": {}}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))

    model = load_model(folder, dtype=torch.bfloat16)
    started = time.perf_counter()
    with torch.inference_mode():
        references = [model(w[None])[0] for w, _ in windows]  # (T, V) each
    print(f"reference: {len(windows)} windows in {time.perf_counter() - started:.0f} s", flush=True)
    if not args.no_noise_floor:
        fp32 = load_model(folder, dtype=torch.float32)
        with torch.inference_mode():
            parts = [compare(fp32(w[None])[0], ref, t) for (w, t), ref in zip(windows, references, strict=True)]
        del fp32
        result["noise_floor"] = {"what": "float32 whole model against the bf16 one",
                                 **_merge(parts, [len(t) for _, t in windows])}
        print(f"noise floor: {result['noise_floor']}", flush=True)
        save()
    for cut in args.cuts:
        head, tail = SplitHead(model, cut), SplitTail(model, cut)
        hiddens = [head.forward(w[None], None if cut == 0 else head.new_cache()) for w, _ in windows]
        rows = {}
        for codec in codecs:
            started = time.perf_counter()
            parts, nbytes = [], {codec: 0, codec + "+lz4": 0}
            for hidden, (_, targets), ref in zip(hiddens, windows, references, strict=True):
                restored = decode(encode(hidden, codec))
                with torch.inference_mode():
                    parts.append(compare(tail.forward(restored, tail.new_cache())[0], ref, targets))
                for name in nbytes:
                    nbytes[name] += activation_to_proto(hidden, name).ByteSize()
            quality = _merge(parts, [len(t) for _, t in windows])
            for name, total in nbytes.items():
                rows[name] = {**quality, "bytes_per_token": total / args.tokens,
                              "bytes_vs_bf16": total / (args.tokens * model.config.hidden_size * 2)}
            print(f"cut {cut} {codec}: agreement {quality['agreement']:.4f}, NLL {quality['nll_delta']:+.4f}, "
                  f"{nbytes[codec] / args.tokens:.0f} B/token ({nbytes[codec + '+lz4'] / args.tokens:.0f} with lz4) "
                  f"[{time.perf_counter() - started:.0f} s]", flush=True)
            result["cuts"][str(cut)] = rows
            save()
    result["perplexity_ref"] = math.exp(_merge([{"nll": F.cross_entropy(r.float(), t).item()}
                                                for r, (_, t) in zip(references, windows, strict=True)],
                                               [len(t) for _, t in windows])["nll"])
    save()
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
