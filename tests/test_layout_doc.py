"""docs/development.md's code-layout table names every module of the tree in its package's row, so a
module added without a word on what it owns fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_rows() -> dict[str, str]:
    text = (ROOT / "docs" / "development.md").read_text()
    table = text[text.index("## Code layout") :]
    return dict(re.findall(r"^\| `([\w/]+/)` \| (.+) \|$", table, re.M))


def test_every_module_is_named_in_its_packages_row():
    rows = layout_rows()
    packages = sorted({path.parent for path in [*ROOT.glob("jobs/*/*.py"), *ROOT.glob("unet_core/*.py")]})
    assert sorted(rows) == sorted(f"{package.relative_to(ROOT)}/" for package in packages)
    missing = [
        str(path.relative_to(ROOT))
        for package in packages
        for path in sorted(package.glob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in rows[f"{package.relative_to(ROOT)}/"]
    ]
    assert not missing, f"modules the code-layout table of docs/development.md does not name: {missing}"
