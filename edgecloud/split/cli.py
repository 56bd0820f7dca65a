"""``edgecloud split``: the digit CNN's cuts, its training and the learned bottleneck's (torch imported lazily)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from edgecloud.split.bottleneck import BottleneckReport
    from edgecloud.split.cnn import DigitResNet, EpochLog
    from edgecloud.split.mnist import MnistSplit

app = typer.Typer(help="Split computing: the digit CNN, its cuts, and a learned bottleneck at a cut.",
                  no_args_is_help=True)
err = Console(stderr=True)

Threads = Annotated[int, typer.Option(min=0, help="torch threads (0 = torch's default)")]
Seed = Annotated[int, typer.Option(help="seed of the training (the 4,000/1,000 data split is fixed)")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _setup(threads: int) -> MnistSplit:
    import torch

    from edgecloud.split.mnist import MnistNotFoundError, load_mnist

    if threads:
        torch.set_num_threads(threads)
    try:
        return load_mnist()
    except (MnistNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc


def _log(entry: EpochLog) -> None:
    accuracy = "" if entry.test_accuracy is None else f"  test accuracy {entry.test_accuracy:.2%}"
    err.print(f"{entry.stage} epoch {entry.epoch}/{entry.epochs}: loss {entry.loss:.4f}{accuracy}  "
              f"[dim]{entry.seconds:.0f} s[/]", highlight=False)


def _train_cnn(data: MnistSplit, epochs: int, seed: int, out: Path) -> DigitResNet:
    import torch

    from edgecloud.split.bottleneck import save_cnn
    from edgecloud.split.cnn import ClassifierTrainConfig, DigitResNet, train_classifier

    torch.manual_seed(seed)
    model = DigitResNet()
    started = time.perf_counter()
    accuracy = train_classifier(model, data.train_x, data.train_y, data.test_x, data.test_y,
                                ClassifierTrainConfig(epochs=epochs, seed=seed), on_epoch=_log)
    save_cnn(out, model, accuracy)
    err.print(f"[green]CNN:[/] {out}: test accuracy {accuracy:.2%} after {epochs} epochs in "
              f"{time.perf_counter() - started:.0f} s", highlight=False)
    return model


@app.command("cuts")
def cuts() -> None:
    """The tensor that crosses the link at each cut of the digit CNN, per image."""
    import torch

    from edgecloud.split.bottleneck import int8_bytes
    from edgecloud.split.cnn import DigitResNet
    from edgecloud.split.sequential import cut_profile

    table = Table("cut", "edge runs up to", "shape", "fp32 bytes", "int8 codec bytes", "edge params",
                  "cloud params", title="digit CNN: one image (1, 28, 28), 784 bytes as uint8 pixels")
    for info in cut_profile(DigitResNet(), torch.zeros(2, 1, 28, 28)):
        codec = f"{int8_bytes(info.shape):,}" if len(info.shape) == 3 else "-"
        table.add_row(str(info.cut), info.after, "x".join(map(str, info.shape)), f"{info.bytes:,}", codec,
                      f"{info.edge_params:,}", f"{info.cloud_params:,}")
    Console().print(table)


@app.command("train-cnn")
def train_cnn(
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 10,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="weights file (default: the cache's digit-resnet-seed<S>)")]
        = None,
    threads: Threads = 1,
) -> None:
    """Train the base CNN on the 4,000 training digits; report accuracy on the 1,000 test digits."""
    from edgecloud.split.bottleneck import default_cnn_path

    _train_cnn(_setup(threads), epochs, seed, out or default_cnn_path(seed))


def _report_table(report: BottleneckReport) -> Table:
    shape = "x".join(map(str, report.cut_shape))
    small = "x".join(map(str, (report.channels, *report.cut_shape[1:])))
    table = Table("model", "crosses the link (per image)", "bytes", "of fp32", "test accuracy",
                  title=f"cut {report.cut} (edge runs up to {report.after}), 1,000 test digits")
    rows = [("original", f"float32 {shape}", report.fp32_bytes, report.original_accuracy),
            ("original + int8 codec", f"int8 {shape} + scales", report.int8_bytes, report.int8_accuracy),
            ("bottleneck, stage 1", f"int8 {small} + scales", report.bottleneck_bytes, report.stage1_accuracy),
            ("bottleneck, stage 2", f"int8 {small} + scales", report.bottleneck_bytes, report.stage2_accuracy)]
    for name, sent, size, accuracy in rows:
        table.add_row(name, sent, f"{size:,}", f"{size / report.fp32_bytes:.1%}", f"{accuracy:.2%}")
    table.add_row("(raw image, cut 0)", "uint8 1x28x28", f"{report.input_uint8_bytes:,}",
                  f"{report.input_uint8_bytes / report.fp32_bytes:.1%}", "-")
    return table


@app.command("train-bottleneck")
def train_bottleneck(
    cut: Annotated[int, typer.Option(help="stages on the edge (see `edgecloud split cuts`)")] = 3,
    channels: Annotated[int, typer.Option(min=1, help="channels of the bottleneck (sent as int8)")] = 2,
    epochs: Annotated[int, typer.Option(min=0, help="stage 1 (head distillation) epochs")] = 8,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="stage 2 (fine-tuning the tail) epochs")] = 6,
    train_head: Annotated[bool, typer.Option(help="stage 1 also trains (a copy of) the head")] = True,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="weights file (default: the cache); a .report.json "
                                                  "goes beside it")] = None,
    cnn: Annotated[Path | None, typer.Option(help="base CNN weights (default: the cache's, trained first "
                                                  "when missing)")] = None,
    cnn_epochs: Annotated[int, typer.Option(min=1, help="epochs if the base CNN must be trained")] = 10,
    threads: Threads = 1,
) -> None:
    """Train encoder/decoder at a cut (head distillation, then fine-tuning) and print bytes and accuracy."""
    import torch

    from edgecloud.split.bottleneck import (
        BottleneckConfig,
        default_bottleneck_path,
        default_cnn_path,
        load_cnn,
        save_bottleneck,
    )
    from edgecloud.split.bottleneck import train_bottleneck as train
    from edgecloud.split.cnn import DigitResNet
    from edgecloud.split.sequential import check_cut, cut_profile

    try:
        config = BottleneckConfig(cut=cut, channels=channels, train_head=train_head, stage1_epochs=epochs,
                                  stage2_epochs=finetune_epochs, seed=seed)
        base = DigitResNet()
        shape = cut_profile(base, torch.zeros(2, 1, 28, 28))[check_cut(base, cut)].shape
        if len(shape) != 3:
            raise ValueError(f"cut {cut} carries a vector {shape}; the bottleneck needs a (C, H, W) tensor "
                             "(cuts 0-4)")
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    data = _setup(threads)
    cnn_path = cnn or default_cnn_path(seed)
    if cnn_path.is_file():
        try:
            model = load_cnn(cnn_path)
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            raise _fail(f"cannot load the base CNN from {cnn_path}: {exc}") from exc
        err.print(f"[dim]base CNN: {cnn_path}[/]")
    elif cnn is not None:
        raise _fail(f"base CNN {cnn} not found")
    else:
        err.print(f"[dim]no base CNN at {cnn_path}: training one ({cnn_epochs} epochs)[/]")
        model = _train_cnn(data, cnn_epochs, seed, cnn_path)
    bottlenecked, report = train(model, data.train_x, data.train_y, data.test_x, data.test_y, config,
                                 on_epoch=_log)
    path = out or default_bottleneck_path(cut, channels, seed)
    save_bottleneck(path, bottlenecked, model.config, config, report)
    report_path = path.with_suffix(".report.json")
    report_path.write_text(json.dumps({"config": asdict(config), "report": asdict(report),
                                       "reduction": report.reduction, "torch_threads": torch.get_num_threads()},
                                      indent=2) + "\n")
    Console().print(_report_table(report))
    loss = (report.original_accuracy - report.stage2_accuracy) * 100
    Console().print(f"bytes at the cut: -{report.reduction:.1%} against fp32; accuracy: {-loss:+.1f} points "
                    f"after stage 2; training {report.stage1_seconds:.0f} s + {report.stage2_seconds:.0f} s",
                    highlight=False)
    err.print(f"[green]written:[/] {path} and {report_path}")
