"""The package's shape: every function short enough to read at once, every module on the map."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pnca_utils"
MAX_LINES = 60


def test_every_function_is_under_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions of 60 lines or more: " + "; ".join(long)


def test_the_map_names_every_module():
    text = (PACKAGE / "README.md").read_text()
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    modules |= {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules |= {p.stem for p in (PACKAGE / "experiments").glob("*.py") if not p.stem.startswith("_")}
    missing = sorted(m for m in modules if f"`{m}`" not in text)
    assert not missing, f"pnca_utils/README.md does not name: {', '.join(missing)}"
