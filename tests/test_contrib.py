"""The service files in ``contrib/``, installed the way the README says, are valid and run the daemon."""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "aether-node.service"
PLIST = ROOT / "contrib" / "org.aether-node.daemon.plist"
EXE = Path(sys.executable).with_name("aether-node")


def readme_command(starting: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running as a service", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in section.splitlines() if line.startswith(starting)]
    return line


def unit_settings() -> dict[str, list[str]]:
    """``Key=value`` lines of the unit (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            settings.setdefault(match[1], []).append(match[2])
    return settings


def test_systemd_unit_runs_the_daemon_and_restarts_it_on_failure() -> None:
    s = unit_settings()
    assert s["Type"] == ["simple"]
    assert re.fullmatch(r"%h/\.local/bin/aether-node( --log-level \w+)? daemon", s["ExecStart"][0]), s["ExecStart"]
    assert s["Restart"] == ["on-failure"] and s["KillSignal"] == ["SIGTERM"]
    assert s["WantedBy"] == ["default.target"]
    assert s["NoNewPrivileges"] == ["yes"]


def test_systemd_unit_as_installed_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here, so the unit cannot be verified")
    # The README's install command, with this checkout's program in place of `command -v aether-node`.
    command = readme_command('sed "s|')
    assert "contrib/aether-node.service" in command and "~/.config/systemd/user/aether-node.service" in command
    pattern = re.search(r'sed "s\|([^|]+)\|', command)[1]
    installed = tmp_path / "aether-node.service"
    installed.write_text(UNIT.read_text(encoding="utf-8").replace(pattern, str(EXE)), encoding="utf-8")
    assert f"ExecStart={EXE} " in installed.read_text(encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_launchd_agent_is_a_valid_plist_that_keeps_the_daemon_running() -> None:
    with PLIST.open("rb") as handle:
        agent = plistlib.load(handle)
    assert agent["Label"] == "org.aether-node.daemon"
    assert agent["ProgramArguments"][0] == "AETHER_NODE_BIN" and agent["ProgramArguments"][-1] == "daemon"
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert agent[key].startswith("USER_HOME/"), agent[key]
    install = readme_command("sed -e")
    assert '"s|AETHER_NODE_BIN|$(command -v aether-node)|"' in install and '"s|USER_HOME|$HOME|"' in install
    assert f"launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{PLIST.name}" in readme_command("launchctl bootstrap")
