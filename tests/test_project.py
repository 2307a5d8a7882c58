"""The README's two quick-start commands are real: CI runs the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("aether-node simulate")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert quick_start_commands()[1] in ci.splitlines()
    assert "set -euo pipefail" in ci


def test_a_regular_install_carries_every_module_and_the_command(tmp_path):
    """Build the wheel a regular ``pip install .`` would install, and import from it alone."""
    import subprocess
    import sys
    import sysconfig
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("aether_node-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("node", "crypto", "storage", "simulations"):
        for source in (ROOT / folder).glob("*.py"):
            assert f"aether/{folder}/{source.name}" in names, source
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    ).decode()
    assert "aether-node = aether.node.cli:main" in entry_points

    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    # -S: no .pth files, so the editable install of this checkout cannot answer the import.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import aether.node.cli, aether.crypto.records, aether.storage.store, aether.simulations.simulate\n"
        "assert aether.node.cli.__file__.startswith(sys.argv[1]), aether.node.cli.__file__\n"
    )
    subprocess.run(
        [sys.executable, "-S", "-c", code, str(unpacked), sysconfig.get_paths()["purelib"]],
        check=True, timeout=60, cwd=tmp_path,
    )
