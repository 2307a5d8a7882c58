"""A member's inbox: the shares delivered to this node through the DHT.

The creator of a team (later, whoever makes a new epoch) stores each member's sealed
share as an entry under ``inbox:<member node ID>`` (docs/teams.md "Inbox"), so a member
whose node was offline at the ceremony finds it when it comes online. The daemon reads
its inbox at start and every ``[teams] inbox_interval`` seconds and takes in each new
share through :func:`~aether.node.team_ceremony.accept_share`.

Anyone can write entries under anyone's inbox key, so everything found there is
suspect: entries of other kinds, malformed names and payloads, shares signed by
someone other than the member who made the epoch, boxes that do not open for this
node. Each is logged and left out, and remembered so that it costs no lookup on the
next poll; nothing found there can stop the daemon.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from aether.crypto.records import SignedRecord
from aether.node.server import AetherNode
from aether.node.team_ceremony import TeamUnknown, accept_share, refresh_team
from aether.node.teams import TeamError, inbox_key, parse_inbox_name, share_of, team_key

log = logging.getLogger(__name__)

MAX_REMEMBERED = 4096
"""Inbox entries whose fate is remembered between polls (each is taken in or refused once)."""


@dataclass
class InboxReport:
    """What one poll of the inbox found."""

    imported: list[tuple[bytes, int]] = field(default_factory=list)
    """(team ID, epoch) of each share taken in."""
    refused: list[str] = field(default_factory=list)
    """Why each entry left out was refused."""
    waiting: int = 0
    """Shares whose team descriptor could not be found yet: tried again at the next poll."""
    moved: list[tuple[bytes, int]] = field(default_factory=list)
    """(team ID, epoch) of each team whose row moved to another descriptor (a new epoch, or a fork's winner)."""


class Inbox:
    """Polls this node's inbox; one per daemon, since it remembers what it has judged."""

    def __init__(self, node: AetherNode):
        self.node = node
        self._judged: OrderedDict[tuple[bytes, bytes, int], None] = OrderedDict()

    async def poll(self) -> InboxReport:
        """Read the inbox key and take in every new share that checks out; never raises for bad entries."""
        node = self.node
        report = InboxReport()
        found = await node.get_entries(inbox_key(node.node.id))
        descriptors: dict[bytes, list[SignedRecord]] = {}
        for entry in found.entries:
            record = entry.record
            ident = (record.author, record.name, record.seq)
            if ident in self._judged:
                continue
            try:
                _, team_id, epoch, sealed = share_of(record)
                if node.store.team_share(team_id, epoch) == sealed:
                    self._remember(ident)
                    continue
                accepted = accept_share(node, record, await self._descriptors(descriptors, team_id))
            except TeamUnknown as exc:
                report.waiting += 1
                log.info("inbox: %s; trying again later", exc)
                continue
            except TeamError as exc:
                report.refused.append(str(exc))
                log.warning("inbox: left out an entry %r: %s", record.name, exc)
            else:
                report.imported.append((accepted.descriptor.team_id, accepted.descriptor.epoch))
                log.info("inbox: took in this node's share of team %s (%s) epoch %d",
                         accepted.descriptor.name, accepted.descriptor.team_id.hex(), accepted.descriptor.epoch)
            self._remember(ident)
        await self._follow_teams(descriptors, report)
        return report

    async def _follow_teams(self, descriptors: dict[bytes, list[SignedRecord]], report: InboxReport) -> None:
        """Read every held team's descriptors and follow its newest epoch, share or no share.

        A member's share of a new epoch may be late, or pushed out of its inbox, and a
        removed member gets none at all; this keeps every row at the epoch the team
        is at (docs/teams.md "Membership changes").
        """
        node = self.node
        for row in node.store.teams():
            try:
                chain, moved = refresh_team(node, row.team_id, await self._descriptors(descriptors, row.team_id))
            except TeamError as exc:
                log.warning("could not follow team %s (%s): %s", row.name, row.team_id.hex(), exc)
                continue
            if moved:
                report.moved.append((row.team_id, chain[-1].descriptor.epoch))
                log.info("team %s (%s) is now at epoch %d", row.name, row.team_id.hex(), chain[-1].descriptor.epoch)
                self._judge_again(row.team_id)

    def _judge_again(self, team_id: bytes) -> None:
        """Forget what was judged of a team's shares: they are judged again against the epoch now followed.

        A share is refused when it is not signed by the maker of the epoch this node
        follows; if this node followed the loser of a fork (the winner's descriptor had
        not reached it yet), the winner's share was refused with it.
        """
        for ident in list(self._judged):
            try:
                judged_team = parse_inbox_name(ident[1])[1]
            except TeamError:
                continue
            if judged_team == team_id:
                del self._judged[ident]

    async def _descriptors(self, found: dict[bytes, list[SignedRecord]], team_id: bytes) -> list[SignedRecord]:
        """The descriptor records under a team's key, read from the DHT once per poll."""
        if team_id not in found:
            found[team_id] = [e.record for e in (await self.node.get_entries(team_key(team_id))).entries]
        return found[team_id]

    def _remember(self, ident: tuple[bytes, bytes, int]) -> None:
        self._judged[ident] = None
        while len(self._judged) > MAX_REMEMBERED:
            self._judged.popitem(last=False)
