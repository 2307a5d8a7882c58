"""The ``aether-node`` command run as a real subprocess against real homes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from aether.crypto.identity import Identity

EXE = Path(sys.executable).with_name("aether-node")
TIMEOUT = 30


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
    full_env.update(env or {})
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=TIMEOUT, env=full_env, stdin=subprocess.DEVNULL
    )


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error:") or "\nError:" in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment.lower() in result.stderr.lower(), (fragment, result.stderr)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised home for the tests that only read it (each CLI start costs ~0.5 s)."""
    h = tmp_path_factory.mktemp("cli") / "home"
    result = run("--home", str(h), "--json", "init")
    assert result.returncode == 0, result.stderr
    return h


@pytest.fixture
def home(shared_home: Path, tmp_path: Path) -> Path:
    """A private copy of the shared home (modes preserved), for tests that change it."""
    h = tmp_path / "home"
    shutil.copytree(shared_home, h)
    return h


def test_console_script_is_installed() -> None:
    assert EXE.exists(), f"aether-node not found next to {sys.executable}"


def test_init_creates_owner_only_keys_and_config(tmp_path: Path) -> None:
    h = tmp_path / "a" / "home"
    result = run("--home", str(h), "init")
    assert result.returncode == 0, result.stderr
    for name in ("signing.key", "sealing.key"):
        mode = stat.S_IMODE((h / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    assert (h / "config.toml").is_file()
    identity = Identity.load(h)
    assert identity.node_id.hex() in result.stdout
    assert "created" in result.stdout


def test_init_json_node_id_is_hash_of_signing_key(tmp_path: Path) -> None:
    h = tmp_path / "home"
    result = run("--home", str(h), "--json", "init")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["created"] is True
    identity = Identity.load(h)
    expected = hashlib.sha256(identity.public.signing_public).digest()[:20].hex()
    assert data["node_id"] == expected
    assert data["identity"] == identity.public.to_string()


def test_rerunning_init_keeps_identity(home: Path) -> None:
    before = (home / "signing.key").read_bytes(), (home / "sealing.key").read_bytes()
    node_id = Identity.load(home).node_id.hex()

    again = run("--home", str(home), "--json", "init")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["created"] is False
    assert data["node_id"] == node_id

    text = run("--home", str(home), "init")
    assert text.returncode == 0, text.stderr
    assert "kept" in text.stdout
    assert node_id in text.stdout
    assert ((home / "signing.key").read_bytes(), (home / "sealing.key").read_bytes()) == before


def test_aether_home_env_selects_home(tmp_path: Path) -> None:
    h = tmp_path / "env-home"
    result = run("--json", "init", env={"AETHER_HOME": str(h)})
    assert result.returncode == 0, result.stderr
    assert (h / "signing.key").exists()
    node_id = json.loads(result.stdout)["node_id"]
    assert node_id == Identity.load(h).node_id.hex()

    by_env = run("--json", "id", env={"AETHER_HOME": str(h)})
    by_option = run("--home", str(h), "--json", "id")
    assert by_env.returncode == by_option.returncode == 0
    assert json.loads(by_env.stdout) == json.loads(by_option.stdout)
    assert json.loads(by_env.stdout)["node_id"] == node_id


def test_id_prints_identity_that_check_accepts(shared_home: Path) -> None:
    home = shared_home
    identity = Identity.load(home)
    result = run("--home", str(home), "id")
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    assert text == identity.public.to_string()

    checked = run("--json", "id", "--check", text)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["node_id"] == identity.node_id.hex()

    as_json = json.loads(run("--home", str(home), "--json", "id").stdout)
    assert as_json == {"node_id": identity.node_id.hex(), "identity": text}


def _one_char_changed(text: str) -> str:
    i = len(text) // 2
    return text[:i] + ("b" if text[i] != "b" else "c") + text[i + 1:]


@pytest.mark.parametrize(
    "mangle, fragment",
    [
        (_one_char_changed, "mistyped"),
        (lambda s: s[:-5], "truncated"),
        (lambda s: "hello world", "aether1"),
        (lambda s: s[:20] + "!" + s[21:], "invalid character"),
    ],
    ids=["one-char-changed", "truncated", "garbage", "bad-character"],
)
def test_id_check_rejects_mistyped_strings(shared_home: Path, mangle, fragment: str) -> None:
    good = Identity.load(shared_home).public.to_string()
    bad = mangle(good)
    assert bad != good
    result = run("id", "--check", bad)
    assert_clean_error(result, "invalid identity", fragment)
    assert result.stdout == ""


def test_id_without_init_says_run_init(tmp_path: Path) -> None:
    h = tmp_path / "never"
    result = run("--home", str(h), "id")
    assert_clean_error(result, "init", str(h))
    assert not (h / "signing.key").exists()


def test_daemon_listen_nonsense_is_usage_error(shared_home: Path) -> None:
    home = shared_home
    result = run("--home", str(home), "daemon", "--listen", "nonsense")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "HOST:PORT" in result.stderr
    assert "--listen" in result.stderr


def test_daemon_bootstrap_nonsense_is_usage_error(shared_home: Path) -> None:
    home = shared_home
    result = run("--home", str(home), "daemon", "--listen", "127.0.0.1:0", "--bootstrap", "127.0.0.1:99999")
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("[node\nksize = 20\n", ""),
        ("[node]\nksize = 20\nflux_capacitor = 1\n", "flux_capacitor"),
        ("[node]\nksize = \"many\"\n", "ksize"),
        ("[daemon]\nlisten = \"nowhere\"\n", "HOST:PORT"),
    ],
    ids=["syntax-error", "unknown-setting", "wrong-type", "bad-listen"],
)
def test_bad_config_is_a_clear_error(home: Path, config: str, fragment: str) -> None:
    path = home / "config.toml"
    path.write_text(config, encoding="utf-8")
    result = run("--home", str(home), "daemon", "--listen", "127.0.0.1:0")
    assert_clean_error(result, str(path), fragment)
    assert "listening on" not in result.stdout


def test_every_periodic_job_has_its_interval_in_the_config_template(tmp_path: Path) -> None:
    """Refresh, republish, re-replication, expiry and contact saving: each schedule is a [node] setting.

    The template lists each one (commented out, at its default); uncommented,
    each reaches the node's settings.
    """
    import dataclasses
    import re

    from aether.node.config import NodeConfig
    from aether.node.home import CONFIG_TEMPLATE, Home

    intervals = [f.name for f in dataclasses.fields(NodeConfig) if f.name.endswith("_interval")]
    assert set(intervals) == {
        "refresh_interval", "republish_interval", "replicate_interval", "expire_interval", "contacts_save_interval",
    }
    text = CONFIG_TEMPLATE
    for seconds, name in enumerate(intervals, start=7):
        default = getattr(NodeConfig(), name)
        text, n = re.subn(rf"(?m)^# {name} = {default:g}\b", f"{name} = {seconds}", text)
        assert n == 1, f"{name} is not in the config template at its default {default:g}"
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    node = Home(tmp_path).settings().node
    assert [getattr(node, name) for name in intervals] == list(range(7, 7 + len(intervals)))
