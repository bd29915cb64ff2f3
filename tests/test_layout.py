"""docs/architecture.md names every module of the package, and every module it names imports."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def documented_modules() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| module | one idea |"):text.index("## One training step")]
    return re.findall(r"^\| `(jepa/[\w/]+\.py)` \|", table, flags=re.M)


def test_the_layout_table_matches_the_package():
    documented = documented_modules()
    actual = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jepa").rglob("*.py") if p.name != "__init__.py")
    assert len(documented) == len(set(documented)), "a module is listed twice"
    assert sorted(documented) == actual, (f"undocumented: {sorted(set(actual) - set(documented))}; "
                                          f"documented but absent: {sorted(set(documented) - set(actual))}")


def test_every_documented_module_imports():
    for path in documented_modules():
        importlib.import_module(path[:-3].replace("/", "."))


def test_every_verb_is_one_module_of_the_commands_folder():
    from jepa import cli

    verbs = {m.__name__.rsplit(".", 1)[1] for m in cli.VERBS}
    files = {p.stem for p in (ROOT / "jepa" / "commands").glob("*.py") if p.name != "__init__.py"}
    assert verbs == files
    parser = cli.build_parser()
    assert set(parser._subparsers._group_actions[0].choices) == verbs
