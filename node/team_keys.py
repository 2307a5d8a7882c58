"""Unlocked team keys: kept in the home sealed at rest with an expiry, read back per epoch.

One place for what every team feature needs from an unlocked team: ``team unlock``
keeps a key here, ``publish --team``, ``fetch`` and ``search`` read keys here, and
``team add-member`` / ``remove-member`` read the current epoch's key here to chain
the next one to it. Keys are sealed with the node's at-rest key
(``crypto.teams.seal_at_rest``) so a copied store file reveals nothing, and the store
drops them when they expire (``[teams] unlock_ttl``) or on ``team lock``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aether.crypto.records import RecordError, decode_record
from aether.crypto.teams import TeamCryptoError, open_at_rest, seal_at_rest, unchain_previous
from aether.node.teams import Link, follow_chain, team_key

if TYPE_CHECKING:
    from aether.node.server import AetherNode

log = logging.getLogger(__name__)


def held_chain(node: AetherNode, team_id: bytes) -> list[Link]:
    """The team's epochs this node holds, verified from epoch 0 to the newest that follows.

    The descriptors are the pinned entries under the team's key (a member keeps every
    epoch it took in) and the one in the team's row.
    """
    records = []
    for held in node.store.entries(team_key(team_id)):
        try:
            records.append(decode_record(held.value))
        except RecordError:
            continue
    row = node.store.team(team_id)
    if row is not None:
        records.append(decode_record(row.descriptor))
    return follow_chain(records, team_id)


def keep_unlocked(node: AetherNode, team_id: bytes, epoch: int, key: bytes, ttl: float) -> list[int]:
    """Keep an epoch key (checked by the caller) and every older key it unchains, for ``ttl`` seconds.

    Epoch e + 1's descriptor carries epoch e's key sealed under its own
    (``sealed_previous``), so one unlock of the newest epoch reads every older
    pattern. Returns the epochs kept, newest first.
    """
    keys = {epoch: key}
    for link in reversed(held_chain(node, team_id)):
        d = link.descriptor
        if d.epoch in keys and d.epoch > 0 and d.sealed_previous is not None:
            try:
                keys[d.epoch - 1] = unchain_previous(keys[d.epoch], team_id, d.epoch - 1, d.sealed_previous)
            except TeamCryptoError as exc:  # a descriptor whose chain does not open: stop there
                log.warning("team %s: epoch %d's key does not open epoch %d's: %s", team_id.hex(), d.epoch,
                            d.epoch - 1, exc)
                break
    expires = time.time() + ttl
    for e, k in keys.items():
        node.store.put_team_key(team_id, e, seal_at_rest(node.identity, team_id, e, k), expires=expires)
    return sorted(keys, reverse=True)


def unlocked_keys(node: AetherNode, team_id: bytes) -> dict[int, bytes]:
    """The team's unexpired unlocked keys, by epoch; a key that no longer opens is left out."""
    keys = {}
    for epoch, sealed in node.store.team_keys(team_id).items():
        try:
            keys[epoch] = open_at_rest(node.identity, team_id, epoch, sealed)
        except TeamCryptoError:
            log.warning("team %s epoch %d: the unlocked key kept here does not open; ignored", team_id.hex(), epoch)
    return keys


def unlocked_key(node: AetherNode, team_id: bytes, epoch: int) -> bytes | None:
    """One epoch's unlocked key, or None when that epoch is locked on this node."""
    return unlocked_keys(node, team_id).get(epoch)


def lock(node: AetherNode, team_id: bytes) -> int:
    """Forget every unlocked key of the team at once; returns how many epochs were forgotten."""
    return node.store.forget_team_keys(team_id)
