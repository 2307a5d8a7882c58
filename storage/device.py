"""The device profile: what kind of device this node runs on, and how much disk it may take.

Users lend the network their own disk, so a node must size itself to the device
it runs on (the seed's STORAGE pattern): an always-on desktop can carry much of
the network, a phone only a little. This module answers three questions:

- **Which class is this device?** desktop, laptop, tablet or phone, from what the
  platform exposes (its name, Android's build properties, Apple's model name,
  the SMBIOS chassis type on Linux, the device-tree chassis type on ARM boards,
  whether there is a battery). Every platform fact is read in one place,
  :func:`read_facts`, into a plain :class:`Facts` value; :func:`classify` is a
  pure function of it that also says *why* (the evidence), so tests fake the
  platform with a fixture tree of ``/sys`` files and a fake battery reading,
  and users can see what was detected.
- **How much may the node store?** :func:`recommend_quota`: a fraction of the
  free disk, clamped into the class's range from the seed, never leaving the
  disk with less than a safety margin free.
- **What did the user configure?** :class:`StorageSettings` (``[storage]`` in
  ``config.toml``) overrides both, and :func:`parse_size` reads the sizes users
  write (``500MB``, ``2GiB``).

Sizes are decimal SI throughout, as the seed writes them: 1 GB = 10^9 bytes,
1 MB = 10^6 bytes; binary units (MiB, GiB) are accepted where users type sizes.
This module imports nothing from ``aether`` (storage sits below the node).
"""

from __future__ import annotations

import math
import os
import platform as _platform
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bitmath

__all__ = [
    "CLASSES",
    "DISK_FRACTION",
    "GB",
    "MARGIN_FLOOR",
    "MARGIN_FRACTION",
    "MAX_SIZE",
    "MB",
    "QUOTA_RANGES",
    "SMBIOS_CHASSIS",
    "Battery",
    "Detection",
    "DeviceProfile",
    "Facts",
    "Recommendation",
    "SizeError",
    "StorageSettings",
    "Usage",
    "chassis_class",
    "check_quota",
    "classify",
    "describe_battery",
    "device_profile",
    "format_size",
    "parse_size",
    "platform_name",
    "psutil_battery",
    "quota_range",
    "read_facts",
    "recommend_quota",
    "storage_usage",
]

MB = 10**6
GB = 10**9

CLASSES = ("desktop", "laptop", "tablet", "phone")

QUOTA_RANGES: dict[str, tuple[int, int]] = {
    "desktop": (1 * GB, 100 * GB),
    "laptop": (500 * MB, 50 * GB),
    "tablet": (200 * MB, 20 * GB),
    "phone": (50 * MB, 10 * GB),
}
"""The seed's quota range per class, in bytes (decimal: 1 GB = 10^9 bytes)."""

DISK_FRACTION: dict[str, float] = {"desktop": 0.10, "laptop": 0.05, "tablet": 0.02, "phone": 0.02}
"""Share of the free disk recommended as quota. Desktops are always on, on mains
power, with the largest disks: they should carry most of the network. A laptop's
disk also holds its owner's work and travels; half a desktop's share. Tablets and
phones have little, costly flash shared with photos and apps, and often pay for
data: a token share."""

MARGIN_FRACTION = 0.10
MARGIN_FLOOR: dict[str, int] = {"desktop": 2 * GB, "laptop": 2 * GB, "tablet": 1 * GB, "phone": 1 * GB}
"""The disk keeps at least max(10 % of its size, this floor) free even with the quota
full: operating systems slow down or fail updates on a nearly full disk (Android
starts warning near 10 %). A smaller floor on tablets and phones, whose disks are small."""

MAX_SIZE = 2**63 - 1
"""Largest size accepted: SQLite's largest integer, in which the store keeps its totals."""

SMBIOS_CHASSIS: dict[int, tuple[str, str | None]] = {
    1: ("Other", None),
    2: ("Unknown", None),
    3: ("Desktop", "desktop"),
    4: ("Low Profile Desktop", "desktop"),
    5: ("Pizza Box", "desktop"),
    6: ("Mini Tower", "desktop"),
    7: ("Tower", "desktop"),
    8: ("Portable", "laptop"),
    9: ("Laptop", "laptop"),
    10: ("Notebook", "laptop"),
    11: ("Hand Held", "phone"),
    12: ("Docking Station", None),
    13: ("All in One", "desktop"),
    14: ("Sub Notebook", "laptop"),
    15: ("Space-saving", "desktop"),
    16: ("Lunch Box", "desktop"),
    17: ("Main Server Chassis", "desktop"),
    18: ("Expansion Chassis", "desktop"),
    19: ("SubChassis", "desktop"),
    20: ("Bus Expansion Chassis", "desktop"),
    21: ("Peripheral Chassis", "desktop"),
    22: ("RAID Chassis", "desktop"),
    23: ("Rack Mount Chassis", "desktop"),
    24: ("Sealed-case PC", "desktop"),
    25: ("Multi-system Chassis", "desktop"),
    26: ("Compact PCI", "desktop"),
    27: ("Advanced TCA", "desktop"),
    28: ("Blade", "desktop"),
    29: ("Blade Enclosure", "desktop"),
    30: ("Tablet", "tablet"),
    31: ("Convertible", "laptop"),
    32: ("Detachable", "tablet"),
    33: ("IoT Gateway", "desktop"),
    34: ("Embedded PC", "desktop"),
    35: ("Mini PC", "desktop"),
    36: ("Stick PC", "desktop"),
}
"""SMBIOS 3.x system enclosure types (DSP0134, type 3) and the class each implies.

Servers, rack and blade chassis, embedded and IoT boxes count as desktops: they
run on mains power and stay on, which is what the desktop class stands for. A
convertible keeps its keyboard (a laptop); a detachable is a tablet whose
keyboard comes off. "Other", "Unknown" and "Docking Station" (the dock, not the
computer in it) say nothing, and detection falls back to the battery."""

DEVICETREE_CHASSIS: dict[str, str] = {
    "desktop": "desktop", "server": "desktop", "embedded": "desktop",
    "laptop": "laptop", "convertible": "laptop",
    "tablet": "tablet",
    "handset": "phone", "watch": "phone",
}
"""The device-tree ``chassis-type`` values (Devicetree Specification 0.4), which ARM
boards, ARM laptops and Linux phones carry instead of SMBIOS."""

ANDROID_CHARACTERISTICS: dict[str, str] = {"tablet": "tablet", "tv": "desktop"}
"""``ro.build.characteristics`` words that change Android's default class (phone):
tablets say ``tablet``; TV boxes say ``tv`` and are always on, on mains power."""

_PLATFORM_NAMES = {"linux": "Linux", "darwin": "macOS", "win32": "Windows", "cygwin": "Windows",
                   "android": "Android", "ios": "iOS"}
_BUILD_PROPS = ("system/build.prop", "vendor/build.prop", "product/build.prop")
_POWER_SUPPLY = "sys/class/power_supply"
_DMI_CHASSIS = "sys/class/dmi/id/chassis_type"
_DT_CHASSIS = "sys/firmware/devicetree/base/chassis-type"


# ----------------------------------------------------------------------------- facts

@dataclass(frozen=True)
class Battery:
    """One reading of the device's battery (several batteries combined)."""

    percent: float | None
    """Charge from 0 to 100; None when the platform does not say."""
    plugged: bool | None
    """On external power; None when the platform does not say."""
    source: str
    """Where the reading came from (a sysfs folder, or ``psutil``), shown as evidence."""


@dataclass(frozen=True)
class Facts:
    """Everything detection looks at, read once from the platform (see :func:`read_facts`).

    A plain value, so classification and the quota are pure functions of it and
    tests can build one by hand for any platform.
    """

    system: str
    """``sys.platform``: linux, darwin, win32, android, ios, ..."""
    android: tuple[str, ...] = ()
    """The signs of Android found (``sys.platform``, environment variables, build.prop files)."""
    characteristics: str | None = None
    """Android's ``ro.build.characteristics`` (``default``, ``tablet``, ``tv``, ...)."""
    model: str | None = None
    """Apple's device model on iOS/iPadOS (``iPhone14,2``, ``iPad13,1``); a Mac's machine name."""
    chassis_type: str | None = None
    """The SMBIOS chassis type code as Linux shows it in sysfs, unparsed."""
    devicetree_chassis: str | None = None
    """The device-tree ``chassis-type`` (ARM boards, Linux phones)."""
    battery: Battery | None = None
    """The battery, or None when none was found."""
    battery_probe: str = "none"
    """Where a battery was looked for (a sysfs folder, ``psutil``, or ``none``)."""
    disk_path: str | None = None
    disk_total: int | None = None
    disk_free: int | None = None
    """Size and free bytes (for this user) of the file system holding ``disk_path``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BatteryProbe = Callable[[], "Battery | None"]
DiskProbe = Callable[[str], Any]


def psutil_battery() -> Battery | None:
    """The battery as psutil reports it, on every platform psutil supports.

    psutil is the maintained, cross-platform sensor library (Windows power
    status, macOS IOKit, BSD ACPI); None when it reports no battery, is not
    installed (Android, iOS), or fails.
    """
    try:
        import psutil
    except ImportError:
        return None
    try:
        reading = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError, RuntimeError):
        return None
    if reading is None:
        return None
    percent = float(reading.percent) if reading.percent is not None else None
    return Battery(percent, reading.power_plugged, "psutil")


def read_facts(
    root: Path = Path("/"),
    *,
    disk_path: Path | None = None,
    system: str | None = None,
    environ: Mapping[str, str] | None = None,
    battery: BatteryProbe = psutil_battery,
    disk_usage: DiskProbe = shutil.disk_usage,
    model: Callable[[], str | None] | None = None,
) -> Facts:
    """Read the platform facts detection needs; the one place that touches the platform.

    ``root`` is where ``/sys`` and Android's ``/system`` are looked up, so tests
    point it at a fixture tree. On Linux and Android the batteries are read from
    ``/sys/class/power_supply`` (which, unlike psutil, tells a laptop's battery
    from a wireless mouse's); elsewhere, or where that folder is missing,
    ``battery()`` is asked (psutil by default). ``disk_path`` (default: ``root``)
    is a path on the file system whose size and free space count: the node's home.
    Nothing here raises for a missing or unreadable fact; it is just left out.
    """
    root = Path(root)
    system = sys.platform if system is None else system
    environ = os.environ if environ is None else environ
    linux_like = system.startswith("linux") or system == "android"

    android: list[str] = []
    if system == "android":
        android.append("sys.platform is android")
    if environ.get("ANDROID_ROOT") and environ.get("ANDROID_DATA"):
        android.append("ANDROID_ROOT and ANDROID_DATA are set")
    characteristics = None
    for name in _BUILD_PROPS:
        props = _read(root / name)
        if props is None:
            continue
        android.append(f"/{name} exists")
        characteristics = characteristics or _build_property(props, "ro.build.characteristics")

    chassis = devicetree = None
    battery_reading: Battery | None = None
    probe = "none"
    if linux_like:
        chassis = _read(root / _DMI_CHASSIS)
        devicetree = _read(root / _DT_CHASSIS)
        if devicetree is not None:
            devicetree = devicetree.rstrip("\0").strip().lower() or None
        if (root / _POWER_SUPPLY).is_dir():
            probe = "/" + _POWER_SUPPLY
            battery_reading = _sysfs_battery(root / _POWER_SUPPLY)
    if probe == "none":
        probe = "psutil" if battery is psutil_battery else "battery probe"
        battery_reading = battery()

    disk_at = Path(disk_path) if disk_path is not None else root
    total = free = None
    where = _existing(disk_at)
    if where is not None:
        try:
            usage = disk_usage(os.fspath(where))
            total, free = int(usage.total), int(usage.free)
        except OSError:
            pass

    return Facts(
        system=system,
        android=tuple(android),
        characteristics=characteristics,
        model=(model or (lambda: _device_model(system)))(),
        chassis_type=chassis,
        devicetree_chassis=devicetree,
        battery=battery_reading,
        battery_probe=probe,
        disk_path=os.fspath(disk_at),
        disk_total=total,
        disk_free=free,
    )


def _read(path: Path) -> str | None:
    """A small text file's content, stripped; None if it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _build_property(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _existing(path: Path) -> Path | None:
    """``path`` or its nearest existing parent: the home may not exist before ``init``."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _device_model(system: str) -> str | None:
    """Apple's model name on iOS/iPadOS (``iPhone14,2``); None on other platforms.

    Python before 3.13 reports iOS as ``darwin``, with the model as the machine
    name (on a Mac that is ``arm64`` or ``x86_64``, which classification ignores).
    """
    if system == "ios":
        ios_ver = getattr(_platform, "ios_ver", None)
        if ios_ver is not None:
            return ios_ver().model or None
    if system == "darwin":
        return _platform.machine() or None
    return None


def _sysfs_battery(folder: Path) -> Battery | None:
    """The system batteries under ``/sys/class/power_supply``, combined; None if there is none.

    Peripherals' batteries (a mouse, a headset: ``scope`` = ``Device``) are not the
    device's. Plugged in: any mains or USB supply online; failing such a supply,
    the battery's own status (only ``Discharging`` means on battery).
    """
    batteries: list[tuple[Path, dict[str, str]]] = []
    external: list[bool] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return None
    for entry in entries:
        kind = _read(entry / "type")
        if kind == "Battery":
            if (_read(entry / "scope") or "").lower() == "device":
                continue
            values = {}
            for name in ("capacity", "status", "energy_now", "energy_full", "charge_now", "charge_full", "present"):
                value = _read(entry / name)
                if value is not None:
                    values[name] = value
            if values.get("present", "1") == "0":
                continue
            batteries.append((entry, values))
        elif kind is not None:
            online = _read(entry / "online")
            if online is not None:
                external.append(online == "1")
    if not batteries:
        return None

    percent = _combined_percent([v for _, v in batteries])
    if external:
        plugged: bool | None = any(external)
    else:
        statuses = {v.get("status", "Unknown") for _, v in batteries}
        if "Discharging" in statuses:
            plugged = False
        elif statuses & {"Charging", "Full", "Not charging"}:
            plugged = True
        else:
            plugged = None
    source = ", ".join("/" + os.fspath(Path(_POWER_SUPPLY) / entry.name) for entry, _ in batteries)
    return Battery(percent, plugged, source)


def _combined_percent(batteries: list[dict[str, str]]) -> float | None:
    """Charge of all batteries together: by stored energy when every one says, else the mean."""
    for now, full in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
        try:
            total_now = sum(int(b[now]) for b in batteries)
            total_full = sum(int(b[full]) for b in batteries)
        except (KeyError, ValueError):
            continue
        if total_full > 0:
            return round(min(100.0, 100.0 * total_now / total_full), 1)
    capacities = []
    for b in batteries:
        try:
            capacities.append(float(b["capacity"]))
        except (KeyError, ValueError):
            pass
    return round(sum(capacities) / len(capacities), 1) if capacities else None


# ----------------------------------------------------------------------------- classification

@dataclass(frozen=True)
class Detection:
    """The class detection settled on, the rule that decided it, and every fact it saw."""

    device_class: str
    reason: str
    evidence: tuple[str, ...]


def platform_name(system: str) -> str:
    """A person's name for ``sys.platform`` (``darwin`` is macOS)."""
    for prefix, name in _PLATFORM_NAMES.items():
        if system == prefix or (prefix == "linux" and system.startswith("linux")):
            return name
    return system.rstrip("0123456789").capitalize() or "unknown"


def chassis_class(code: int) -> tuple[str | None, str]:
    """The class an SMBIOS chassis type implies (None: it says nothing), and the type's name.

    Bit 7 of the SMBIOS byte flags a chassis lock, not a type, and is ignored.
    """
    name, device_class = SMBIOS_CHASSIS.get(code & 0x7F, ("not an SMBIOS 3.x type", None))
    return device_class, name


def classify(facts: Facts) -> Detection:
    """Decide the device class from the facts, and say why.

    The most specific fact wins: Android's build characteristics, Apple's model
    name, then the firmware's chassis type (SMBIOS, else device tree); without
    any of those, a battery means a laptop and no battery a desktop (what macOS
    and Windows come down to, and Linux machines whose firmware says "Other",
    as virtual machines do).
    """
    evidence = [f"platform: {platform_name(facts.system)}"]
    decided: tuple[str, str] | None = None

    if facts.android:
        evidence.append("Android: " + "; ".join(facts.android))
        word = facts.characteristics or "not set"
        evidence.append(f"ro.build.characteristics: {word}")
        words = [w.strip() for w in (facts.characteristics or "").split(",")]
        hits = [ANDROID_CHARACTERISTICS[w] for w in words if w in ANDROID_CHARACTERISTICS]
        if hits:
            decided = hits[0], f"Android build characteristics {facts.characteristics!r}"
        else:
            decided = "phone", "Android device without tablet characteristics"

    model = facts.model or ""
    apple = model.startswith(("iPhone", "iPod", "iPad"))
    if apple or facts.system == "ios":
        evidence.append(f"Apple model: {model or 'unknown'}")
        if decided is None:
            tablet = model.startswith("iPad")
            decided = ("tablet" if tablet else "phone"), f"Apple {'iPad' if tablet else 'iPhone'} ({model or 'iOS'})"

    if facts.chassis_type is not None:
        try:
            code = int(facts.chassis_type)
        except ValueError:
            evidence.append(f"DMI chassis type: unreadable ({facts.chassis_type!r})")
        else:
            implied, name = chassis_class(code)
            evidence.append(f"DMI chassis type: {code} ({name})")
            if decided is None and implied is not None:
                decided = implied, f"DMI chassis type {code} ({name})"

    if facts.devicetree_chassis is not None:
        evidence.append(f"device-tree chassis-type: {facts.devicetree_chassis}")
        implied = DEVICETREE_CHASSIS.get(facts.devicetree_chassis)
        if decided is None and implied is not None:
            decided = implied, f"device-tree chassis-type {facts.devicetree_chassis!r}"

    evidence.append("battery: " + describe_battery(facts.battery, facts.battery_probe))
    if decided is None:
        if facts.battery is not None:
            decided = "laptop", "a battery and no more specific fact"
        else:
            decided = "desktop", "no battery and no more specific fact"
    return Detection(decided[0], decided[1], tuple(evidence))


def describe_battery(battery: Battery | None, probe: str = "none") -> str:
    """One line about the battery, for people: charge, power, and where it was read."""
    if battery is None:
        return "none found" + (f" ({probe})" if probe != "none" else " (no battery sensor on this platform)")
    charge = "charge unknown" if battery.percent is None else f"{battery.percent:g} %"
    power = {True: "plugged in", False: "on battery", None: "power source unknown"}[battery.plugged]
    return f"{charge}, {power} ({battery.source})"


# ----------------------------------------------------------------------------- quota

def quota_range(device_class: str) -> tuple[int, int]:
    """The seed's (smallest, largest) quota for a class, in bytes."""
    try:
        return QUOTA_RANGES[device_class]
    except KeyError:
        raise ValueError(f"unknown device class {device_class!r}; choose one of {', '.join(CLASSES)}") from None


@dataclass(frozen=True)
class Recommendation:
    """The recommended quota and the numbers it came from, so it can be explained."""

    quota: int
    device_class: str
    low: int
    high: int
    fraction: float
    available: int | None
    """Free bytes plus what the node's database already takes: the room the node can count on."""
    margin: int | None
    """Bytes the disk keeps free even with the quota full."""
    warning: str | None = None
    """Set when the recommendation had to leave the class range (a nearly full disk)."""

    def explain(self) -> str:
        if self.available is None:
            return f"the {self.device_class} minimum; the disk's size is unknown"
        text = (f"{self.fraction:.0%} of {format_size(self.available)} available, within "
                f"{format_size(self.low)}–{format_size(self.high)} for a {self.device_class}, "
                f"keeping {format_size(self.margin or 0)} of the disk free")
        return text


def recommend_quota(
    device_class: str, disk_total: int | None, disk_free: int | None, node_bytes: int = 0
) -> Recommendation:
    """The quota to use when the user set none (the formula is in the README).

    available = free + node_bytes  (what the node already stores counts as room it
                                    has, so the recommendation does not shrink as
                                    the node fills its own quota)
    margin    = max(10 % of the disk, 2 GB; 1 GB on tablets and phones)
    quota     = min(clamp(fraction × available, low, high), available − margin)

    rounded down to a whole MB. When even the class minimum would eat into the
    margin, the margin wins: the quota is what keeps it (possibly 0), below the
    range, with a warning, because a node must never fill its owner's disk.
    An unknown disk gives the class minimum.
    """
    low, high = quota_range(device_class)
    fraction = DISK_FRACTION[device_class]
    if disk_total is None or disk_free is None:
        return Recommendation(low, device_class, low, high, fraction, None, None,
                              "disk size unknown: using the class minimum")
    available = max(0, disk_free) + max(0, node_bytes)
    margin = max(math.ceil(MARGIN_FRACTION * disk_total), MARGIN_FLOOR[device_class])
    room = max(0, available - margin)
    target = min(max(int(fraction * available), low), high)
    quota = min(target, room) // MB * MB
    warning = None
    if quota < low:
        warning = (f"the disk is nearly full: {format_size(available)} available and {format_size(margin)} "
                   f"must stay free, so the quota is {format_size(quota)}, below the {device_class} minimum "
                   f"of {format_size(low)}; free disk space to let the node store more")
    return Recommendation(quota, device_class, low, high, fraction, available, margin, warning)


def check_quota(size: int, device_class: str) -> str | None:
    """Why ``size`` is outside the class's range, or None when it is inside (bounds included)."""
    low, high = quota_range(device_class)
    if low <= size <= high:
        return None
    side = "below" if size < low else "above"
    return (f"{format_size(size)} is {side} the {device_class} range of "
            f"{format_size(low)} to {format_size(high)}")


# ----------------------------------------------------------------------------- sizes

class SizeError(ValueError):
    """Text that is not a usable size, with what was wrong and an example of what works."""


_SIZE_HINT = "write bytes (750000000) or a number and a unit: 500MB, 2GiB, 1.5 GB"


def parse_size(text: str | int) -> int:
    """A size in bytes from ``750000000``, ``500MB``, ``2GiB``, ``1.5 gb``, ...

    Units are case-insensitive (``b`` is a byte too); kB/MB/GB/TB/PB are decimal
    (the seed's units), KiB/MiB/GiB/TiB/PiB binary. bitmath reads the units; this
    adds what a quota needs on top: whole bytes (rounded), never bits, never zero
    or negative, and at most :data:`MAX_SIZE`. Plain digits are read exactly,
    whatever their length.
    """
    if isinstance(text, bool):
        raise SizeError(f"{text!r} is not a size; {_SIZE_HINT}")
    if isinstance(text, int):
        value = text
    elif isinstance(text, str):
        value = _parse_size_text(text)
    else:
        raise SizeError(f"{text!r} is not a size; {_SIZE_HINT}")
    if value <= 0:
        raise SizeError(f"a size must be greater than zero, not {text!r}")
    if value > MAX_SIZE:
        raise SizeError(f"{text!r} is too large (at most {MAX_SIZE} bytes)")
    return value


def _parse_size_text(text: str) -> int:
    s = text.strip()
    if not s or not s.isascii():
        raise SizeError(f"{text!r} is not a size; {_SIZE_HINT}")
    if s.isdigit():
        if len(s) > len(str(MAX_SIZE)):
            raise SizeError(f"{text!r} is too large (at most {MAX_SIZE} bytes)")
        return int(s)
    try:
        parsed = bitmath.parse_string(s, strict=False, system=bitmath.SI)
    except ValueError:
        raise SizeError(f"{text!r} is not a size; {_SIZE_HINT}") from None
    if isinstance(parsed, bitmath.Bit):
        # bitmath reads a lone lowercase "b" as bits; units are case-insensitive here
        # and a quota is never in bits, so "8b" is 8 bytes and "8 bits" is refused.
        if "bit" in s.lower():
            raise SizeError(f"{text!r} is in bits; {_SIZE_HINT}")
        amount = float(parsed.value)
    else:
        amount = float(parsed.bytes)
    if math.isnan(amount):
        raise SizeError(f"{text!r} is not a size; {_SIZE_HINT}")
    if amount > MAX_SIZE:
        raise SizeError(f"{text!r} is too large (at most {MAX_SIZE} bytes)")
    return round(amount)


def format_size(n: int) -> str:
    """Bytes for people, in decimal units like the seed's ranges: ``1.5 GB``, ``500 MB``."""
    if abs(n) < 1000:
        return f"{n} byte" + ("" if n == 1 else "s")
    best = bitmath.Byte(n).best_prefix(system=bitmath.SI)
    return f"{best.value:.1f}".removesuffix(".0") + f" {best.unit}"


# ----------------------------------------------------------------------------- settings and profile

@dataclass(frozen=True)
class StorageSettings:
    """``[storage]`` in ``config.toml``: choices the user made, which override detection."""

    device_class: str = "auto"
    """``auto`` (detected) or one of :data:`CLASSES`."""
    quota: int | None = None
    """Bytes; None for ``auto`` (the recommendation)."""

    def __post_init__(self) -> None:
        if self.device_class not in ("auto", *CLASSES):
            raise ValueError(f"device_class must be auto, {', '.join(CLASSES)}; not {self.device_class!r}")
        if self.quota is not None and parse_size(self.quota) != self.quota:
            raise ValueError(f"quota must be a number of bytes, not {self.quota!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StorageSettings:
        """Read the ``[storage]`` table; every error names the setting and says what fits."""
        unknown = sorted(set(values) - {"device_class", "quota"})
        if unknown:
            raise ValueError(f"unknown storage setting(s): {', '.join(unknown)}")
        device_class = values.get("device_class", "auto")
        if not isinstance(device_class, str):
            raise ValueError(f"device_class must be a string (auto, {', '.join(CLASSES)}), not {device_class!r}")
        quota = values.get("quota", "auto")
        if isinstance(quota, str) and quota.strip().lower() == "auto":
            quota = None
        elif isinstance(quota, (int, str)) and not isinstance(quota, bool):
            try:
                quota = parse_size(quota)
            except SizeError as exc:
                raise ValueError(f"quota: {exc}") from None
        else:
            raise ValueError(f"quota must be \"auto\", a number of bytes or a size like \"5GB\", not {quota!r}")
        return cls(device_class.strip().lower(), quota)


@dataclass(frozen=True)
class DeviceProfile:
    """The class and quota in force, with where each came from (config or detection)."""

    device_class: str
    class_source: str
    """``config`` or ``detected``."""
    detection: Detection
    facts: Facts
    recommendation: Recommendation
    quota: int
    quota_source: str
    """``config`` or ``recommended``."""
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        rec = self.recommendation
        low, high = quota_range(self.device_class)
        return {
            "device_class": self.device_class,
            "class_source": self.class_source,
            "detected": {"device_class": self.detection.device_class, "reason": self.detection.reason,
                         "evidence": list(self.detection.evidence)},
            "facts": self.facts.as_dict(),
            "disk": {"path": self.facts.disk_path, "total": self.facts.disk_total, "free": self.facts.disk_free},
            "range": [low, high],
            "quota": self.quota,
            "quota_source": self.quota_source,
            "recommended": {"quota": rec.quota, "fraction": rec.fraction, "available": rec.available,
                            "margin": rec.margin, "explanation": rec.explain(), "warning": rec.warning},
            "warnings": list(self.warnings),
        }


def device_profile(settings: StorageSettings, facts: Facts, node_bytes: int = 0) -> DeviceProfile:
    """The class and quota this node runs with: the config's where set, else detected/recommended.

    ``node_bytes`` is what the node's database already takes on that disk (see
    :func:`recommend_quota`). A configured quota outside the class range (set with
    ``--force``) or larger than the disk can hold is kept, with a warning.
    """
    detection = classify(facts)
    if settings.device_class != "auto":
        device_class, class_source = settings.device_class, "config"
    else:
        device_class, class_source = detection.device_class, "detected"
    recommendation = recommend_quota(device_class, facts.disk_total, facts.disk_free, node_bytes)
    warnings = []
    if settings.quota is None:
        quota, quota_source = recommendation.quota, "recommended"
        if recommendation.warning:
            warnings.append(recommendation.warning)
    else:
        quota, quota_source = settings.quota, "config"
        outside = check_quota(quota, device_class)
        if outside:
            warnings.append(f"the configured quota: {outside}")
        if recommendation.available is not None and quota > recommendation.available:
            warnings.append(f"the configured quota is more than the {format_size(recommendation.available)} "
                            "the disk has available")
    return DeviceProfile(device_class, class_source, detection, facts, recommendation, quota, quota_source,
                         tuple(warnings))


# ----------------------------------------------------------------------------- roles

#: Battery charge (%) below which a device on battery serves as a light client.
LIGHT_BELOW = {"laptop": 50.0, "tablet": 70.0, "phone": 70.0}


def light_role(device_class: str, battery: Battery | None, role: str = "auto") -> tuple[bool, str]:
    """Whether the node runs as a light client now, and why.

    ``role`` is the config's: ``full`` and ``light`` are kept as set; ``auto``
    decides from the device. A desktop serves fully. A laptop is light while
    on battery below 50 %. A phone or tablet is light unless it is plugged in
    with at least 70 % (the seed's thresholds), so it carries replicas only
    while charging, as phone sync tools do.
    """
    if role in ("full", "light"):
        return role == "light", f"role = \"{role}\" in the config"
    threshold = LIGHT_BELOW.get(device_class)
    if threshold is None:
        return False, f"a {device_class} serves fully"
    percent = None if battery is None else battery.percent
    plugged = None if battery is None else battery.plugged
    if device_class == "laptop":
        if plugged is False and percent is not None and percent < threshold:
            return True, f"a laptop on battery at {percent:.0f} % (below {threshold:.0f} %)"
        return False, "a laptop plugged in or charged enough"
    if plugged and percent is not None and percent >= threshold:
        return False, f"a {device_class} plugged in at {percent:.0f} %"
    return True, f"a {device_class} not plugged in with at least {threshold:.0f} %"
