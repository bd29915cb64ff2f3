"""The reference pages follow the code: every TensorBoard scalar the package writes is in
docs/monitoring.md, every error message it raises is in docs/troubleshooting.md, and the index and
README link every page."""

import ast
import re
from pathlib import Path

import pytest

from jepa import errors
from jepa.data.skips import KINDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCES = sorted((ROOT / "jepa").rglob("*.py"))

SCALAR = re.compile(r"^[a-z]+(/([a-z0-9_]|\{\})+)+$")
"""A TensorBoard tag as the code spells it: `namespace/name`, f-string fields as `{}`."""
NOT_SCALARS = {"runs/default", "small/demo", "small/demo_video", "finished/unknown", "loss/level"}
"""Strings of that shape that are not scalar names (a default output_dir, config names, a job state,
the prefix the console line picks the level losses by)."""


def _strings(tree: ast.AST):
    """(text, is_fstring) of every string literal; an f-string as its text with `{}` for each field."""
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values), True
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            yield node.value, False


def scalar_names() -> set[str]:
    names = set()
    for path in SOURCES:
        for text, _ in _strings(ast.parse(path.read_text())):
            if SCALAR.match(text) and text not in NOT_SCALARS:
                names.add(text)
    return names


def _normalise(text: str) -> str:
    return " ".join(text.split())


def test_the_scalar_search_finds_the_known_namespaces():
    names = scalar_names()
    for expected in ("loss/total", "loss/level{}", "optim/lr", "time/data_wait_frac", "memory/peak_gb",
                     "data/skipped_{}", "repr/effective_rank", "repr/target_std", "eval/knn_top1", "probe/{}"):
        assert expected in names, expected


def test_every_scalar_the_code_writes_is_in_monitoring_md():
    page = (DOCS / "monitoring.md").read_text()
    missing = []
    for name in sorted(scalar_names()):
        # f-string fields are written as <placeholders> on the page: match the fixed part before one.
        wanted = f"`{name}`" if "{}" not in name else "`" + name.split("{}")[0]
        if wanted not in page:
            missing.append(name)
    assert not missing, f"scalars written by jepa/ but not described in docs/monitoring.md: {missing}"


def test_every_kind_of_skipped_sample_has_its_scalar_in_monitoring_md():
    page = (DOCS / "monitoring.md").read_text()
    assert all(f"`data/skipped_{kind}`" in page for kind in KINDS), [k for k in KINDS if f"data/skipped_{k}" not in page]


# ----------------------------------------------------------------------------- errors

ERROR_CALLS = {"UserError", "ConfigError", "_fail"}
"""Calls whose message a user reads: the two error classes and the config rules' `_fail(key, value, need)`."""
MIN_PHRASE = 12
"""A fixed piece of a message at least this long (without the ends' punctuation) is distinctive."""


def _message_arg(call: ast.Call) -> ast.AST | None:
    if isinstance(call.func, ast.Name) and call.func.id in ERROR_CALLS and call.args:
        return call.args[2] if call.func.id == "_fail" and len(call.args) == 3 else call.args[0]
    return None


def error_messages() -> list[tuple[str, list[str]]]:
    """(file:line, the message's fixed phrases) for every user-facing error the package raises; messages
    that only pass another message on (`UserError(str(e))`) have no phrase of their own and are left out."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or (arg := _message_arg(node)) is None:
                continue
            phrases = []
            for text, _ in _strings(arg):
                for piece in text.split("{}"):
                    piece = piece.strip(" ;:,.()`'\"\n")
                    if len(piece) >= MIN_PHRASE:
                        phrases.append(_normalise(piece))
            if phrases:
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", phrases))
    return found


def test_the_error_search_finds_messages_of_every_area():
    where = {w.split(":")[0] for w, _ in error_messages()}
    for module in ("jepa/config/load.py", "jepa/config/rules.py", "jepa/data/skips.py", "jepa/train/checkpoint.py",
                   "jepa/launch.py", "jepa/eval/probe.py", "jepa/masks.py"):
        assert module in where, module


def test_every_error_message_is_in_troubleshooting_md():
    page = _normalise((DOCS / "troubleshooting.md").read_text())
    missing = [f"{where}: {phrases[0]!r}" for where, phrases in error_messages()
               if not any(p in page for p in phrases)]
    assert not missing, "error messages without an entry in docs/troubleshooting.md (quote a phrase of each):\n" + \
        "\n".join(missing)


def test_every_error_class_is_in_troubleshooting_md():
    page = (DOCS / "troubleshooting.md").read_text()
    classes = [name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, Exception)]
    assert classes and all(f"`{name}`" in page for name in classes), classes


# ----------------------------------------------------------------------------- links

@pytest.mark.parametrize("index", ["docs/index.md", "README.md"])
def test_every_docs_page_is_linked(index):
    text = (ROOT / index).read_text()
    prefix = "" if index.startswith("docs/") else "docs/"
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "index.md" or prefix
               if f"]({prefix}{p.name})" not in text]
    assert not missing, f"{index} does not link {missing}"


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
