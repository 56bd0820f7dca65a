"""Nothing that can come from a network is unpickled: the installed package sources use no
pickle, marshal, shelve, dill, ``torch.load`` without ``weights_only=True`` or
``numpy.load(..., allow_pickle=True)`` (DESIGN.md: never pickle anything that crossed a network)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edgecloud", "edge_node", "cloud_node", "coordinator", "kernels", "simulator", "evaluation")
GENERATED = re.compile(r"_pb2(_grpc)?\.pyi?$")

# (path, pattern name): uses that read only local, trusted files, each with the reason. None today.
ALLOWED: dict[tuple[str, str], str] = {}

PATTERNS = {
    "pickle": re.compile(r"\b(c?pickle|_pickle|cloudpickle)\b"),
    "marshal": re.compile(r"\bmarshal\b"),
    "shelve": re.compile(r"\bshelve\b"),
    "dill": re.compile(r"\bdill\b"),
    "torch.load": re.compile(r"\btorch\s*\.\s*load\s*\("),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "joblib": re.compile(r"\bjoblib\b"),
}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if not GENERATED.search(p.name))


def _code(text: str) -> str:
    """The source without comments and docstrings (a docstring may say "never pickle")."""
    import io
    import tokenize

    kept = []
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    previous = tokenize.INDENT
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            continue
        if tok.type == tokenize.STRING and previous in (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE,
                                                        tokenize.NL):
            previous = tok.type
            continue  # a docstring or a bare string statement
        kept.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.type
    return " ".join(kept)


def _torch_load_is_safe(code: str, start: int) -> bool:
    """Whether the ``torch.load(`` call at ``start`` passes ``weights_only=True``."""
    depth, end = 0, start
    for end in range(code.index("(", start), len(code)):
        depth += {"(": 1, ")": -1}.get(code[end], 0)
        if depth == 0:
            break
    return re.search(r"weights_only\s*=\s*True", code[start:end + 1]) is not None


def findings_in(path: Path, rel: str) -> list[str]:
    """``"<rel>: <pattern>: <context>"`` for each unsafe use in ``path`` (ALLOWED ones left out)."""
    code = _code(path.read_text())
    found = []
    for name, pattern in PATTERNS.items():
        for match in pattern.finditer(code):
            if name == "torch.load" and _torch_load_is_safe(code, match.start()):
                continue
            if (rel, name) not in ALLOWED:
                found.append(f"{rel}: {name}: ...{code[max(0, match.start() - 30):match.end() + 30]}...")
    return found


def test_the_scan_covers_the_packages() -> None:
    sources = _sources()
    assert len(sources) > 50
    for pkg in PACKAGES:
        assert any(p.is_relative_to(ROOT / pkg) for p in sources), pkg
    assert all(ALLOWED.values()), "every allowed use says why it is safe"


def test_no_pickle_on_network_data() -> None:
    assert [f for p in _sources() for f in findings_in(p, str(p.relative_to(ROOT)))] == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""never pickle anything"""\n# pickle in a comment is fine\nimport pickle\n'
                   "x = torch.load(f)\ny = torch.load(f, weights_only=True)\nz = torch.load(f,\n  map_location='cpu')\n"
                   "w = np.load(f, allow_pickle=True)\nimport marshal, shelve, dill\n")
    names = [line.split(": ")[1] for line in findings_in(bad, "bad.py")]
    assert sorted(names) == sorted(["pickle", "torch.load", "torch.load", "numpy allow_pickle", "marshal",
                                    "shelve", "dill"])
