"""The device profile: detection from faked platform facts, the quota formula, sizes, config and CLI."""

from __future__ import annotations

import functools
import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from aether.node.cli import cli
from aether.node.cli_storage import push_quota
from aether.node.control import ControlError, ControlServer
from aether.node.home import Home, HomeError
from aether.storage import device
from aether.storage.device import GB, MB, Battery, Facts, SizeError, StorageSettings
from aether.storage.store import Store, value_charge

Usage = namedtuple("Usage", "total used free")
TB = 1000 * GB


def tree(root: Path, files: dict[str, str]) -> Path:
    """A fixture tree of platform files (``/sys``, ``/system``) under ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def supply(name: str, **attributes: str) -> dict[str, str]:
    """One ``/sys/class/power_supply/NAME`` folder's files."""
    return {f"sys/class/power_supply/{name}/{key}": f"{value}\n" for key, value in attributes.items()}


def no_battery_probe() -> Battery | None:
    raise AssertionError("the battery probe must not be asked when sysfs answers")


def facts_of(root: Path, *, system: str = "linux", environ: dict[str, str] | None = None,
             battery: Any = no_battery_probe, disk: tuple[int, int] = (500 * GB, 200 * GB)) -> Facts:
    total, free = disk
    return device.read_facts(root, system=system, environ=environ or {}, battery=battery,
                             disk_usage=lambda path: Usage(total, total - free, free))


# ----------------------------------------------------------------------------- one test per class

def test_desktop_from_the_dmi_chassis_type(tmp_path: Path) -> None:
    root = tree(tmp_path, {"sys/class/dmi/id/chassis_type": "3\n",
                           **supply("AC", type="Mains", online="1")})
    facts = facts_of(root)
    assert facts.chassis_type == "3" and facts.battery is None
    detection = device.classify(facts)
    assert detection.device_class == "desktop"
    assert detection.reason == "DMI chassis type 3 (Desktop)"
    assert "battery: none found (/sys/class/power_supply)" in detection.evidence


def test_laptop_from_the_dmi_chassis_type_with_its_battery(tmp_path: Path) -> None:
    root = tree(tmp_path, {"sys/class/dmi/id/chassis_type": "10\n",
                           **supply("BAT0", type="Battery", scope="System", capacity="62", status="Discharging"),
                           **supply("AC", type="Mains", online="0")})
    facts = facts_of(root)
    assert facts.battery == Battery(62.0, False, "/sys/class/power_supply/BAT0")
    detection = device.classify(facts)
    assert detection.device_class == "laptop"
    assert "DMI chassis type: 10 (Notebook)" in detection.evidence
    assert "battery: 62 %, on battery (/sys/class/power_supply/BAT0)" in detection.evidence


def test_tablet_from_the_dmi_chassis_type(tmp_path: Path) -> None:
    root = tree(tmp_path, {"sys/class/dmi/id/chassis_type": "30\n",
                           **supply("BAT0", type="Battery", capacity="90", status="Charging")})
    detection = device.classify(facts_of(root))
    assert detection.device_class == "tablet"
    assert "battery: 90 %, plugged in (/sys/class/power_supply/BAT0)" in detection.evidence


def test_phone_from_android_facts(tmp_path: Path) -> None:
    root = tree(tmp_path, {"system/build.prop": "ro.product.model=Pixel 8\nro.build.characteristics=nosdcard\n",
                           **supply("battery", type="Battery", capacity="45", status="Discharging"),
                           **supply("usb", type="USB", online="0")})
    facts = facts_of(root, environ={"ANDROID_ROOT": "/system", "ANDROID_DATA": "/data"}, disk=(128 * GB, 40 * GB))
    assert facts.android == ("ANDROID_ROOT and ANDROID_DATA are set", "/system/build.prop exists")
    assert facts.characteristics == "nosdcard"
    detection = device.classify(facts)
    assert detection.device_class == "phone"
    assert "ro.build.characteristics: nosdcard" in detection.evidence


def test_android_tablet_and_tv_from_build_characteristics(tmp_path: Path) -> None:
    tablet = tree(tmp_path / "a", {"vendor/build.prop": "ro.build.characteristics=tablet,nosdcard\n"})
    assert device.classify(facts_of(tablet, system="android", battery=lambda: None)).device_class == "tablet"
    tv = tree(tmp_path / "b", {"system/build.prop": "ro.build.characteristics=tv\n"})
    assert device.classify(facts_of(tv, system="android", battery=lambda: None)).device_class == "desktop"


def test_android_from_its_environment_alone_is_a_phone(tmp_path: Path) -> None:
    facts = facts_of(tmp_path, environ={"ANDROID_ROOT": "/system", "ANDROID_DATA": "/data"}, battery=lambda: None)
    detection = device.classify(facts)
    assert detection.device_class == "phone"
    assert "ro.build.characteristics: not set" in detection.evidence
    # One Android variable on a Linux desktop (an SDK install) is not Android.
    assert device.classify(facts_of(tmp_path, environ={"ANDROID_DATA": "/x"}, battery=lambda: None)).device_class == "desktop"


# ----------------------------------------------------------------------------- odd chassis codes

@pytest.mark.parametrize("code, battery, expected", [
    ("1", None, "desktop"),        # Other: what virtual machines report
    ("2", Battery(50.0, True, "fake"), "laptop"),  # Unknown: the battery decides
    ("12", Battery(50.0, True, "fake"), "laptop"),  # a docking station says nothing of the computer in it
    ("99", None, "desktop"),       # not an SMBIOS 3.x type
    ("0", None, "desktop"),
    ("137", None, "laptop"),       # 0x80 | 9: the lock bit set on a Laptop
    ("abc", Battery(10.0, False, "fake"), "laptop"),
])
def test_odd_chassis_codes_fall_back_to_the_battery(code: str, battery: Battery | None, expected: str) -> None:
    facts = Facts(system="linux", chassis_type=code, battery=battery, battery_probe="test")
    assert device.classify(facts).device_class == expected


@pytest.mark.parametrize("codes, expected", [
    ((3, 4, 5, 6, 7, 13, 15, 16, 17, 23, 24, 28, 35, 36), "desktop"),
    ((8, 9, 10, 14, 31), "laptop"),
    ((30, 32), "tablet"),
    ((11,), "phone"),
    ((1, 2, 12), None),
])
def test_smbios_codes_map_to_classes(codes: tuple[int, ...], expected: str | None) -> None:
    for code in codes:
        assert device.chassis_class(code)[0] == expected, code


def test_every_smbios_type_is_named_and_mapped_to_a_class_or_to_nothing() -> None:
    assert sorted(device.SMBIOS_CHASSIS) == list(range(1, 37))
    for name, device_class in device.SMBIOS_CHASSIS.values():
        assert name and device_class in (*device.CLASSES, None)
    assert device.chassis_class(200) == (None, "not an SMBIOS 3.x type")


def test_devicetree_chassis_type_of_a_linux_phone(tmp_path: Path) -> None:
    root = tree(tmp_path, {"sys/firmware/devicetree/base/chassis-type": "handset\0",
                           **supply("rk818-battery", type="Battery", capacity="77", status="Discharging")})
    facts = facts_of(root)
    assert facts.devicetree_chassis == "handset"
    detection = device.classify(facts)
    assert detection.device_class == "phone"
    assert detection.reason == "device-tree chassis-type 'handset'"


# ----------------------------------------------------------------------------- batteries in sysfs

def test_a_peripherals_battery_is_not_the_devices(tmp_path: Path) -> None:
    root = tree(tmp_path, {**supply("hidpp_battery_0", type="Battery", scope="Device", capacity="20"),
                           **supply("AC", type="Mains", online="1")})
    facts = facts_of(root)
    assert facts.battery is None
    assert device.classify(facts).device_class == "desktop"


def test_two_batteries_combine_by_stored_energy(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        **supply("BAT0", type="Battery", capacity="100", energy_now="20000000", energy_full="20000000", status="Full"),
        **supply("BAT1", type="Battery", capacity="10", energy_now="6000000", energy_full="60000000",
                 status="Discharging"),
    })
    battery = facts_of(root).battery
    assert battery is not None
    assert battery.percent == 32.5  # 26 Wh of 80 Wh, not the mean of 100 % and 10 %
    assert battery.plugged is False  # no mains supply listed; one battery discharges
    assert battery.source == "/sys/class/power_supply/BAT0, /sys/class/power_supply/BAT1"


def test_battery_without_capacity_or_status(tmp_path: Path) -> None:
    root = tree(tmp_path, {**supply("BAT0", type="Battery", charge_now="1500", charge_full="3000"),
                           **supply("BAT1", type="Battery", present="0", capacity="5")})
    assert facts_of(root).battery == Battery(50.0, None, "/sys/class/power_supply/BAT0")


def test_linux_without_power_supply_folder_asks_the_probe(tmp_path: Path) -> None:
    asked = []

    def probe() -> Battery:
        asked.append(True)
        return Battery(33.0, False, "fake")

    facts = facts_of(tmp_path, battery=probe)
    assert asked and facts.battery == Battery(33.0, False, "fake") and facts.battery_probe == "battery probe"


def test_psutil_reading_is_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    reading = namedtuple("sbattery", "percent secsleft power_plugged")
    monkeypatch.setattr(psutil, "sensors_battery", lambda: reading(71, 3600, False), raising=False)
    assert device.psutil_battery() == Battery(71.0, False, "psutil")
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None, raising=False)
    assert device.psutil_battery() is None


# ----------------------------------------------------------------------------- other platforms

@pytest.mark.parametrize("system, name", [("darwin", "macOS"), ("win32", "Windows")])
def test_macos_and_windows_go_by_the_battery(tmp_path: Path, system: str, name: str) -> None:
    tree(tmp_path, {"sys/class/dmi/id/chassis_type": "3\n"})  # not read off Linux
    laptop = facts_of(tmp_path, system=system, battery=lambda: Battery(80.0, True, "psutil"))
    assert laptop.chassis_type is None and laptop.battery_probe == "battery probe"
    detection = device.classify(laptop)
    assert detection.device_class == "laptop"
    assert detection.evidence[0] == f"platform: {name}"
    assert device.classify(facts_of(tmp_path, system=system, battery=lambda: None)).device_class == "desktop"


@pytest.mark.parametrize("system, model, expected", [
    ("ios", "iPad13,1", "tablet"),
    ("ios", "iPhone14,2", "phone"),
    ("ios", None, "phone"),
    ("darwin", "iPhone12,1", "phone"),  # Python before 3.13 calls iOS darwin, with the model as the machine
    ("darwin", "arm64", "desktop"),     # a Mac without a battery
])
def test_apple_devices(tmp_path: Path, system: str, model: str | None, expected: str) -> None:
    facts = device.read_facts(tmp_path, system=system, environ={}, battery=lambda: None, model=lambda: model,
                              disk_usage=lambda path: Usage(64 * GB, 0, 64 * GB))
    assert facts.model == model
    assert device.classify(facts).device_class == expected


def test_disk_of_the_nearest_existing_folder(tmp_path: Path) -> None:
    asked = []

    def usage(path: str) -> Usage:
        asked.append(path)
        return Usage(100 * GB, 60 * GB, 40 * GB)

    facts = device.read_facts(tmp_path, disk_path=tmp_path / "not" / "yet", system="linux", environ={},
                              battery=lambda: None, disk_usage=usage)
    assert asked == [str(tmp_path)]
    assert (facts.disk_total, facts.disk_free, facts.disk_path) == (100 * GB, 40 * GB, str(tmp_path / "not" / "yet"))

    def broken(path: str) -> Usage:
        raise PermissionError(13, "denied")

    facts = device.read_facts(tmp_path, system="linux", environ={}, battery=lambda: None, disk_usage=broken)
    assert facts.disk_total is None and facts.disk_free is None


def test_facts_of_this_machine_classify() -> None:
    facts = device.read_facts(disk_path=Path.cwd())
    assert device.classify(facts).device_class in device.CLASSES
    json.dumps(facts.as_dict())


# ----------------------------------------------------------------------------- recommended quota

def test_recommended_quota_is_a_fraction_of_the_free_disk() -> None:
    rec = device.recommend_quota("laptop", 512 * GB, 200 * GB)
    assert rec.quota == 10 * GB  # 5 % of 200 GB
    assert rec.margin == int(51.2 * GB) and rec.warning is None
    assert device.recommend_quota("desktop", 1 * TB, 500 * GB).quota == 50 * GB
    assert device.recommend_quota("phone", 128 * GB, 20 * GB).quota == 400 * MB


def test_huge_disk_is_clamped_to_the_class_maximum() -> None:
    for device_class in device.CLASSES:
        rec = device.recommend_quota(device_class, 100 * TB, 80 * TB)
        assert rec.quota == device.quota_range(device_class)[1] and rec.warning is None


def test_tiny_disk_gets_the_class_minimum_when_the_margin_allows() -> None:
    rec = device.recommend_quota("desktop", 8 * GB, 4 * GB)  # 10 % would be 400 MB
    assert rec.quota == 1 * GB and rec.margin == 2 * GB and rec.warning is None
    assert device.recommend_quota("phone", 16 * GB, 2 * GB).quota == 50 * MB


def test_nearly_full_disk_keeps_the_margin_below_the_range_with_a_warning() -> None:
    # 500 GB disk: 50 GB must stay free; 50.5 GB free leaves 500 MB for the node.
    rec = device.recommend_quota("desktop", 500 * GB, int(50.5 * GB))
    assert rec.quota == 500 * MB
    assert rec.warning and "below the desktop minimum of 1 GB" in rec.warning
    # Margin-limited but still inside the range: no warning.
    rec = device.recommend_quota("desktop", 500 * GB, 55 * GB)
    assert rec.quota == 5 * GB and rec.warning is None


def test_full_disk_recommends_nothing() -> None:
    rec = device.recommend_quota("phone", 64 * GB, 1 * GB)
    assert rec.quota == 0 and rec.warning


def test_what_the_node_holds_counts_as_room() -> None:
    # The node's own 5 GB database is on the disk: the recommendation must not shrink as it fills.
    assert device.recommend_quota("desktop", 1 * TB, 495 * GB, node_bytes=5 * GB).quota == 50 * GB


def test_unknown_disk_gives_the_class_minimum() -> None:
    rec = device.recommend_quota("tablet", None, None)
    assert rec.quota == 200 * MB and rec.warning and "unknown" in rec.explain()


@given(st.sampled_from(device.CLASSES), st.integers(0, 10**15), st.integers(0, 10**15), st.integers(0, 10**12))
def test_recommendation_invariants(device_class: str, total: int, free: int, node_bytes: int) -> None:
    free = min(free, total)
    rec = device.recommend_quota(device_class, total, free, node_bytes)
    low, high = device.quota_range(device_class)
    assert rec.quota % MB == 0 and 0 <= rec.quota <= high
    assert rec.quota <= max(0, free + node_bytes - rec.margin)  # the margin always stays free
    assert (rec.quota < low) == (rec.warning is not None)


def test_check_quota_names_the_range() -> None:
    assert device.check_quota(500 * MB, "laptop") is None and device.check_quota(50 * GB, "laptop") is None
    assert device.check_quota(499 * MB, "laptop") == "499 MB is below the laptop range of 500 MB to 50 GB"
    assert device.check_quota(11 * GB, "phone") == "11 GB is above the phone range of 50 MB to 10 GB"
    with pytest.raises(ValueError, match="unknown device class"):
        device.quota_range("toaster")


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("text, expected", [
    ("500MB", 500 * MB), ("2GiB", 2 * 2**30), ("1.5 GB", 1500 * MB), ("750000000", 750_000_000),
    ("500mb", 500 * MB), ("2gib", 2 * 2**30), ("1.5gb", 1500 * MB), (" 10 kB ", 10_000), ("10 KB", 10_000),
    ("1 TB", 10**12), ("3 TiB", 3 * 2**40), ("1.1 GB", 1_100_000_000), ("0.5 GiB", 2**29), ("5 M", 5 * MB),
    ("1 byte", 1), ("8b", 8), ("9223372036854775807", 2**63 - 1), (750, 750),
])
def test_parse_size_good(text: str | int, expected: int) -> None:
    assert device.parse_size(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("garbage", "not a size"), ("", "not a size"), ("   ", "not a size"), ("MB", "not a size"),
    ("5 5 MB", "not a size"), ("1,000 MB", "not a size"), ("0x10 MB", "not a size"), ("nan GB", "not a size"),
    ("inf GB", "not a size"), ("1e3 MB", "not a size"), ("\u0665 MB", "not a size"), ("5 GB!", "not a size"),
    ("-5MB", "greater than zero"), ("0", "greater than zero"), ("0 GB", "greater than zero"), (0, "greater than zero"),
    (-1, "greater than zero"), ("0.3 B", "greater than zero"),
    ("1 bit", "bits"), ("8 bits", "bits"),
    ("9223372036854775808", "too large"), ("10 EB", "too large"), ("9" * 5000, "too large"),
    ("1" + "0" * 400 + " GB", "too large"), (2**63, "too large"),
    (True, "not a size"), (1.5, "not a size"), (None, "not a size"),
])
def test_parse_size_bad(text: Any, fragment: str) -> None:
    with pytest.raises(SizeError, match=fragment):
        device.parse_size(text)


UNITS = {"": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]), st.booleans())
def test_parse_size_round_trips(n: int, unit: str, space: str, lower: bool) -> None:
    text = f"{n}{space if unit else ''}{unit}"
    assert device.parse_size(text.lower() if lower else text) == n * UNITS[unit]


@given(st.integers(1, 2**63 - 1))
def test_parse_size_reads_any_byte_count_exactly(n: int) -> None:
    assert device.parse_size(str(n)) == n


def test_format_size_uses_decimal_units() -> None:
    assert [device.format_size(n) for n in (1, 999, 1000, 1500 * MB, 50 * GB, 10**12)] == [
        "1 byte", "999 bytes", "1 kB", "1.5 GB", "50 GB", "1 TB"]


# ----------------------------------------------------------------------------- settings

def test_storage_settings_from_config() -> None:
    assert StorageSettings.from_mapping({}) == StorageSettings("auto", None)
    assert StorageSettings.from_mapping({"device_class": "Laptop", "quota": "2GiB"}) == StorageSettings("laptop", 2**31)
    assert StorageSettings.from_mapping({"quota": 750000000}).quota == 750_000_000
    assert StorageSettings.from_mapping({"quota": "AUTO"}).quota is None


@pytest.mark.parametrize("values, fragment", [
    ({"device_class": "toaster"}, "device_class must be auto, desktop, laptop, tablet, phone"),
    ({"device_class": 3}, "device_class must be a string"),
    ({"quota": "lots"}, "quota: 'lots' is not a size"),
    ({"quota": 0}, "quota: a size must be greater than zero"),
    ({"quota": -5}, "greater than zero"),
    ({"quota": True}, "quota must be"),
    ({"quota": 1.5}, "quota must be"),
    ({"quotas": "1GB"}, "unknown storage setting(s): quotas"),
])
def test_storage_settings_errors(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        StorageSettings.from_mapping(values)
    assert fragment in str(caught.value)


def test_home_settings_read_the_storage_section(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_path.write_text('[storage]\ndevice_class = "tablet"\nquota = "300 MB"\n')
    assert home.settings().storage == StorageSettings("tablet", 300 * MB)
    home.config_path.write_text('[storage]\nquota = "-1GB"\n')
    with pytest.raises(HomeError, match=r"config.toml: quota: a size must be greater than zero"):
        home.settings()


def test_update_config_adds_the_section_to_an_older_config(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_path.write_text('# mine\n[daemon]\nlisten = "127.0.0.1:7411"\n')
    home.update_config("storage", {"device_class": "laptop"})
    assert home.config_path.read_text() == (
        '# mine\n[daemon]\nlisten = "127.0.0.1:7411"\n\n[storage]\ndevice_class = "laptop"\n')
    home.config_path.write_text('storage = 3\n')
    with pytest.raises(HomeError, match="storage is not a \\[storage\\] table"):
        home.update_config("storage", {"quota": 5})


def test_device_profile_config_overrides_detection() -> None:
    facts = Facts(system="linux", chassis_type="3", disk_path="/x", disk_total=1 * TB, disk_free=500 * GB)
    profile = device.device_profile(StorageSettings(), facts)
    assert (profile.device_class, profile.class_source, profile.quota, profile.quota_source) == (
        "desktop", "detected", 50 * GB, "recommended")
    profile = device.device_profile(StorageSettings("phone", 20 * GB), facts)
    assert (profile.device_class, profile.class_source, profile.quota, profile.quota_source) == (
        "phone", "config", 20 * GB, "config")
    assert profile.detection.device_class == "desktop"
    assert profile.warnings == ("the configured quota: 20 GB is above the phone range of 50 MB to 10 GB",)


# ----------------------------------------------------------------------------- CLI

@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make this machine a laptop (512 GB disk, 200 GB free, battery at 40 %) for the CLI."""
    root = tree(tmp_path / "platform", {
        "sys/class/dmi/id/chassis_type": "9\n",
        **supply("BAT0", type="Battery", capacity="40", status="Discharging"),
        **supply("ADP1", type="Mains", online="0"),
    })
    real = device.read_facts
    monkeypatch.setattr(device, "read_facts", functools.partial(
        real, root, system="linux", environ={}, battery=no_battery_probe,
        disk_usage=lambda path: Usage(512 * GB, 312 * GB, 200 * GB)))
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An initialised home whose config has a comment and a setting of the user's own."""
    path = tmp_path / "home"
    assert invoke(path, "init").exit_code == 0
    config = path / "config.toml"
    config.write_text(config.read_text().replace("bootstrap = []", 'bootstrap = ["10.0.0.1:7411"]  # my peer'))
    return path


def invoke(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_storage_set_inside_the_range_keeps_the_rest_of_the_config(home: Path, laptop: Path) -> None:
    before = (home / "config.toml").read_text()
    mode = (home / "config.toml").stat().st_mode
    result = invoke(home, "storage", "set", "2GiB")
    assert result.exit_code == 0, result.output
    assert "quota 2.1 GB (2147483648 bytes) written to" in result.output
    assert "no daemon is running: the quota takes effect when the node next starts" in result.output
    after = (home / "config.toml").read_text()
    assert after.startswith(before.rstrip("\n")) and after.endswith("\nquota = 2147483648\n")
    assert 'bootstrap = ["10.0.0.1:7411"]  # my peer' in after
    assert Home(home).settings().storage.quota == 2**31
    assert (home / "config.toml").stat().st_mode == mode
    assert [p.name for p in home.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.parametrize("size", ["500MB", "50GB", "50 gb"])
def test_storage_set_accepts_the_range_bounds(home: Path, laptop: Path, size: str) -> None:
    assert invoke(home, "storage", "set", size).exit_code == 0


@pytest.mark.parametrize("size, message", [
    ("499MB", "499 MB is below the laptop range of 500 MB to 50 GB; use --force"),
    ("51GB", "51 GB is above the laptop range of 500 MB to 50 GB; use --force"),
])
def test_storage_set_outside_the_range_is_refused(home: Path, laptop: Path, size: str, message: str) -> None:
    before = (home / "config.toml").read_text()
    result = CliRunner().invoke(cli, ["--home", str(home), "storage", "set", size])
    assert result.exit_code == 1 and f"Error: {message}" in result.output
    assert (home / "config.toml").read_text() == before


def test_storage_set_force(home: Path, laptop: Path) -> None:
    result = invoke(home, "--json", "storage", "set", "2TB", "--force")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["quota"] == 2 * TB and data["forced"] is True and data["range"] == [500 * MB, 50 * GB]
    assert data["daemon"] == "not-running" and data["device_class"] == "laptop"
    assert Home(home).settings().storage.quota == 2 * TB


@pytest.mark.parametrize("size", ["garbage", "-5GB", "0", "8 bits", "99999999 EB"])
def test_storage_set_garbage_is_a_usage_error(home: Path, laptop: Path, size: str) -> None:
    before = (home / "config.toml").read_text()
    result = CliRunner().invoke(cli, ["--home", str(home), "storage", "set", "--", size])
    assert result.exit_code == 2 and "Invalid value for SIZE" in result.output
    assert (home / "config.toml").read_text() == before


def test_storage_set_uses_the_configured_class(home: Path, laptop: Path) -> None:
    Home(home).update_config("storage", {"device_class": "phone"})
    result = CliRunner().invoke(cli, ["--home", str(home), "storage", "set", "20GB"])
    assert result.exit_code == 1 and "above the phone range of 50 MB to 10 GB" in result.output


def test_storage_set_auto_goes_back_to_the_recommendation(home: Path, laptop: Path) -> None:
    invoke(home, "storage", "set", "3GB")
    result = invoke(home, "storage", "set", "auto")
    assert result.exit_code == 0 and "recommended quota 10 GB" in result.output
    assert Home(home).settings().storage.quota is None
    assert 'quota = "auto"' in (home / "config.toml").read_text()


def test_storage_set_without_a_home(tmp_path: Path, laptop: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "none"), "storage", "set", "1GB"])
    assert result.exit_code == 1 and "run `aether-node --home" in result.output and "init` first" in result.output


def filled(home: Path) -> None:
    with Store(home / "node.db") as store:
        store.put(b"\x01" * 20, b"x" * 916, kind=1, role="own", pinned=True)
        store.put(b"\x02" * 20, b"y" * 1916, kind=1, role="replica", expires=2e9)
        store.put(b"\x03" * 20, b"z" * 2916, kind=1, role="cache", expires=2e9)


def test_storage_text(home: Path, laptop: Path) -> None:
    filled(home)
    result = invoke(home, "storage")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "class:     laptop (detected: DMI chassis type 9 (Laptop))"
    assert lines[1:4] == [
        "evidence:  platform: Linux",
        "           DMI chassis type: 9 (Laptop)",
        "           battery: 40 %, on battery (/sys/class/power_supply/BAT0)",
    ]
    assert f"disk:      512 GB, 200 GB free ({home})" in lines
    assert ("quota:     10 GB (recommended: 5% of 200 GB available, within 500 MB–50 GB for a laptop, "
            "keeping 51.2 GB of the disk free)") in lines
    assert "range:     500 MB to 50 GB for a laptop" in lines
    with Store(home / "node.db") as store:
        usage = store.usage()
    size = device.format_size
    assert f"used:      {size(usage.used)} (0.0 % of the quota), {size(10 * GB - usage.used)} left" in lines
    assert lines[-6:-1] == [f"  own        {size(value_charge(20, 916))}",
                            f"  replicas   {size(value_charge(20, 1916))}",
                            f"  cached     {size(value_charge(20, 2916))}",
                            f"  pinned     {size(value_charge(20, 916))}",
                            f"  evictable  {size(value_charge(20, 1916) + value_charge(20, 2916))}"]
    assert lines[-1].startswith("on disk:   ")


def test_storage_json(home: Path, laptop: Path) -> None:
    filled(home)
    Home(home).update_config("storage", {"device_class": "tablet", "quota": 300 * MB})
    result = invoke(home, "--json", "storage")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["device_class"], data["class_source"], data["quota"], data["quota_source"]) == (
        "tablet", "config", 300 * MB, "config")
    assert data["detected"]["device_class"] == "laptop"
    assert data["disk"] == {"path": str(home), "total": 512 * GB, "free": 200 * GB}
    assert data["range"] == [200 * MB, 20 * GB]
    assert data["recommended"]["quota"] == 4 * GB and data["recommended"]["fraction"] == 0.02
    own, replica, cache = value_charge(20, 916), value_charge(20, 1916), value_charge(20, 2916)
    used = own + replica + cache
    assert data["usage"].pop("file") >= used
    assert data["usage"] == {"quota": 300 * MB, "own": own, "replica": replica, "cache": cache, "pinned": own,
                             "evictable": replica + cache, "used": used, "free": 300 * MB - used}
    assert data["facts"]["battery"] == {"percent": 40.0, "plugged": False, "source": "/sys/class/power_supply/BAT0"}
    assert data["warnings"] == []


def test_storage_on_a_home_without_database_creates_nothing(tmp_path: Path, laptop: Path) -> None:
    result = invoke(tmp_path / "fresh", "--json", "storage")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["usage"]["used"] == 0
    assert not (tmp_path / "fresh").exists()


def test_storage_with_a_broken_config(home: Path, laptop: Path) -> None:
    (home / "config.toml").write_text('[storage]\ndevice_class = "fridge"\n')
    result = CliRunner().invoke(cli, ["--home", str(home), "storage"])
    assert result.exit_code == 1 and "device_class must be auto" in result.output


def test_init_with_a_device_class(tmp_path: Path, laptop: Path) -> None:
    path = tmp_path / "home"
    result = invoke(path, "--json", "init", "--device-class", "phone")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["device_class"] == "phone"
    assert Home(path).settings().storage.device_class == "phone"
    data = json.loads(invoke(path, "--json", "storage").output)
    assert (data["device_class"], data["class_source"], data["detected"]["device_class"]) == ("phone", "config", "laptop")
    # Again, on the existing home: the identity stays, the class changes, the rest of the file too.
    config = path / "config.toml"
    config.write_text(config.read_text() + "# a note of mine\n")
    result = invoke(path, "init", "--device-class", "auto")
    assert "kept the existing identity" in result.output and "device class auto set in" in result.output
    assert Home(path).settings().storage.device_class == "auto"
    assert config.read_text().endswith("# a note of mine\n")


def test_init_refuses_an_unknown_class(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "init", "--device-class", "toaster"])
    assert result.exit_code == 2 and "'toaster' is not one of" in result.output


def test_storage_command_on_this_machine(tmp_path: Path) -> None:
    """The real command, as a user runs it, with this machine's own facts."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("aether-node")
    env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
    done = subprocess.run([str(exe), "--home", str(tmp_path / "h"), "--json", "storage"], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["device_class"] in device.CLASSES and data["quota"] >= 0


# ----------------------------------------------------------------------------- the running daemon

async def test_push_quota_without_a_daemon(tmp_path: Path) -> None:
    outcome, said = await push_quota(tmp_path, 2 * GB)
    assert outcome == "not-running" and "next starts" in said


@pytest.mark.parametrize("handler_error, outcome", [
    (None, "applied"),
    (ControlError("bad-request", "unknown operation 'set-quota'; known: fetch, ls"), "restart"),
    (ControlError("invalid", "quota below what is pinned"), "failed"),
])
async def test_push_quota_to_a_daemon(tmp_path: Path, handler_error: ControlError | None, outcome: str) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def handler(op: str, args: dict[str, Any]) -> Any:
        seen.append((op, args))
        if handler_error is not None:
            raise handler_error
        return {"quota": args["bytes"]}

    server = ControlServer(tmp_path, handler)
    await server.start()
    try:
        got, said = await push_quota(tmp_path, 2 * GB)
    finally:
        await server.close()
    assert seen == [("set-quota", {"bytes": 2 * GB})]
    assert got == outcome
    if outcome == "restart":
        assert "restart it" in said
    if outcome == "failed":
        assert "quota below what is pinned" in said
