"""Where a node can be reached: its signed ``contact`` record, published and looked up.

Node IDs say where a node sits in the DHT, not where it listens. Members of a team
must reach each other's nodes (to ask for shares, docs/teams.md "Unlocking"), so each
daemon publishes a record ``contact`` under its own record key
(``record_key(signing key, b"contact")``): the addresses it listens on, signed by its
key. Anyone can look a member up by the member's signing key and ping the addresses
to see whether the node is there; only a node that answers with the member's node ID
counts.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import msgpack

from aether.crypto.identity import PublicIdentity
from aether.crypto.records import RecordError, SignedRecord, create_record, decode_record, record_key
from aether.node.server import AetherNode, next_seq

CONTACT_KIND = "contact"
CONTACT_NAME = b"contact"
MAX_ADDRESSES = 8
"""Addresses one contact record lists (a host with several interfaces)."""

Address = tuple[str, int]


class ContactError(ValueError):
    """A contact record that does not say where its author listens."""


def contact_key(signing_public: bytes) -> bytes:
    """The DHT key of a node's contact record."""
    return record_key(signing_public, CONTACT_NAME)


def encode_contact(addresses: list[Address]) -> bytes:
    """The payload: canonical msgpack list of [host, port] pairs."""
    return msgpack.packb([[host, port] for host, port in addresses[:MAX_ADDRESSES]], use_bin_type=True)


def contact_of(record: SignedRecord) -> list[Address]:
    """The addresses a contact record lists, checked: IP literals and valid ports only."""
    if record.kind != CONTACT_KIND or record.name != CONTACT_NAME:
        raise ContactError(f"a {record.kind!r} record named {record.name!r} is not a contact record")
    try:
        items = msgpack.unpackb(record.payload, raw=False, max_array_len=MAX_ADDRESSES, max_str_len=64,
                                max_bin_len=0, max_map_len=0, max_ext_len=0)
    except Exception:
        raise ContactError("a contact record's payload is not valid msgpack") from None
    if not isinstance(items, list) or not items:
        raise ContactError("a contact record lists one or more addresses")
    addresses = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                and 0 < item[1] < 65536):
            raise ContactError("a contact address is [host, port]")
        try:
            ipaddress.ip_address(item[0])
        except ValueError:
            raise ContactError(f"a contact address must be an IP address, got {item[0]!r}") from None
        addresses.append((item[0], item[1]))
    return addresses


def own_addresses(node: AetherNode) -> list[Address]:
    """Where this node can be reached: its bound address, or this host's addresses when bound to all."""
    from aether.node.discovery import advertised_addresses  # zeroconf only where a daemon runs

    host, port = node.address
    return [(address, port) for address in advertised_addresses(host)][:MAX_ADDRESSES]


async def publish_contact(node: AetherNode, addresses: list[Address]) -> SignedRecord:
    """Sign and publish this node's contact record; the node republishes it like its other records.

    The sequence number follows the clock (``next_seq``), so a restarted node's new
    address replaces the old one without looking the old record up first.
    """
    key = contact_key(node.identity.public.signing_public)
    held = node.store.read(key)
    previous = 0
    if held is not None:
        try:
            previous = decode_record(held).seq
        except RecordError:
            pass
    record = create_record(node.identity, CONTACT_KIND, CONTACT_NAME, next_seq(previous),
                           encode_contact(addresses), int(node.config.record_ttl))
    await node.put_record(record)
    return record


@dataclass(frozen=True)
class Reach:
    """Whether a member's node answered: ``address`` it answered on, or why it is not known to be up."""

    reachable: bool
    address: Address | None = None
    reason: str | None = None


async def reach(node: AetherNode, member: PublicIdentity) -> Reach:
    """Look up a member's contact record and ping its addresses; the first that answers as the member wins."""
    record = await node.get_record(contact_key(member.signing_public))
    if record is None:
        return Reach(False, reason="no contact record")
    try:
        addresses = contact_of(record)
    except ContactError as exc:
        return Reach(False, reason=str(exc))
    for address in addresses:
        ok, node_id = await node.protocol.ping(address, node.node.id)
        if ok and node_id == member.node_id:
            return Reach(True, address)
    return Reach(False, addresses[0], reason="no answer")


async def reach_all(node: AetherNode, members: list[PublicIdentity], timeout: float) -> list[Reach]:
    """:func:`reach` for each member at once, each bounded by ``timeout`` seconds."""
    async def bounded(member: PublicIdentity) -> Reach:
        try:
            return await asyncio.wait_for(reach(node, member), timeout)
        except asyncio.TimeoutError:
            return Reach(False, reason=f"no answer within {timeout:g} s")

    return list(await asyncio.gather(*(bounded(m) for m in members)))
