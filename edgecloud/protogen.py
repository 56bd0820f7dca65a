"""Regenerate the gRPC/protobuf stubs in ``edgecloud/v1`` from ``proto/edgecloud/v1/*.proto``.

Usage: ``python -m edgecloud.protogen [--out DIR]`` (default: the repository root, so files
land in ``edgecloud/v1/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``). Needs ``grpcio-tools``
(a dev dependency); the generated files are committed, so running the system does not.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path("edgecloud") / "v1"  # relative to the proto root and to the output root
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtogenError(RuntimeError):
    """protoc is missing or failed."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The ``.proto`` sources, relative to ``proto_root``, in a stable order."""
    files = sorted((proto_root / PACKAGE_DIR).glob("*.proto"))
    if not files:
        raise ProtogenError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    return [f.relative_to(proto_root) for f in files]


def generated_files(out: Path) -> list[Path]:
    """Generated stub files present under ``out/edgecloud/v1``."""
    folder = out / PACKAGE_DIR
    return sorted(p for p in folder.glob("*.py*") if p.name.endswith(GENERATED_SUFFIXES))


def generate(out: Path = REPO_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc into ``out`` (stale stubs there are removed first); returns the files written."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise ProtogenError("grpcio-tools is not installed: pip install -e '.[dev]'") from exc
    sources = proto_files(proto_root)
    (out / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    for stale in generated_files(out):
        stale.unlink()
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *(str(s) for s in sources)]
    code = protoc.main(args)
    if code != 0:
        raise ProtogenError(f"protoc exited with {code} (args: {' '.join(args[1:])})")
    return generated_files(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecloud.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT,
                        help="output root; stubs go to OUT/edgecloud/v1 (default: the repository root)")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_ROOT,
                        help="include root holding edgecloud/v1/*.proto (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        written = generate(args.out, args.proto_dir)
    except ProtogenError as exc:
        print(f"protogen: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
