"""A worker process of a simulation: some of the network's real nodes, driven over stdin/stdout.

``python -m aether.simulations.worker ROOT SEED`` runs until its stdin closes.
Each request (simulations/channel.py) names an operation on this worker's nodes;
requests run concurrently, like the users of a real network, and each reply says
what happened and how long it took. Standard output carries only frames: anything
else the process prints goes to standard error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from aether.node.config import NodeConfig
from aether.node.contact import publish_contact
from aether.node.patterns import PatternLibrary
from aether.node.server import AetherNode
from aether.node.team_ceremony import create_team, parse_members
from aether.node.team_inbox import Inbox
from aether.node.team_unlock import unlock
from aether.simulations.channel import frame, read_frame
from aether.simulations.faults import Faults, FaultyTransport, inject
from aether.simulations.network import start_node

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, root: Path, seed: int):
        self.root = root
        self.nodes: dict[int, AetherNode] = {}
        self.libraries: dict[int, PatternLibrary] = {}
        self.transports: dict[int, FaultyTransport] = {}
        self.faults = Faults()
        self.faults.rng.seed(seed)

    # ------------------------------------------------------------------ operations
    async def op_start(self, indices: list[int], config: dict[str, Any],
                       each: dict[int, dict[str, Any]] | None = None) -> list[list]:
        """Start nodes (each with its own home under ROOT) and give their IDs and addresses.

        ``each`` overrides settings per node: ``quota_bytes``, and ``light`` for a
        node that serves as a light client (a phone on battery).
        """
        base = NodeConfig.from_mapping(config) if config else NodeConfig()
        started = []
        for index in indices:
            own = dict((each or {}).get(index, {}))
            light = own.pop("light", False)
            node = await start_node(self.root / f"node-{index:05d}", base.replace(**own) if own else base)
            node.light = light
            self.nodes[index] = node
            self.libraries[index] = PatternLibrary(node)
            self.transports[index] = inject(node, self.faults)
            started.append([index, node.node.id, *node.address, node.identity.public.to_string()])
        return started

    async def op_join(self, joins: list[list]) -> dict[int, int]:
        """Join each ``[index, host, port]`` through that peer; the contacts each then knows."""
        outcomes = await asyncio.gather(*(self.nodes[i].bootstrap([(host, port)]) for i, host, port in joins),
                                        return_exceptions=True)
        for (index, _, _), outcome in zip(joins, outcomes):
            if isinstance(outcome, BaseException) and index in self.nodes:
                raise outcome  # a node killed while it joined is no failure of the join
        return {i: len(self.nodes[i].protocol.contacts()) for i, _, _ in joins if i in self.nodes}

    async def _measured(self, node: int, work) -> dict[str, Any]:
        """Run one user operation on a node: its result, with the time it took and what the node sent meanwhile.

        What the node sent includes its replies to peers that asked it something during
        the operation; on a network not saturated these are few.
        """
        transport = self.transports[node]
        sent, sent_bytes = transport.sent, transport.sent_bytes
        t0 = time.perf_counter()
        try:
            result = await work
        except Exception:
            if node in self.nodes:
                raise
            result = {"ok": False, "gone": True}  # the node was killed under its user: nobody is left to ask
        result.update(ms=(time.perf_counter() - t0) * 1000, datagrams=transport.sent - sent,
                      bytes=transport.sent_bytes - sent_bytes)
        return result

    async def op_publish(self, node: int, data: bytes) -> dict[str, Any]:
        async def publish() -> dict[str, Any]:
            published = await self.libraries[node].publish(data)
            return {"ok": True, "hash": published.pattern.hash, "replicas": published.replicas}

        return await self._measured(node, publish())

    async def op_fetch(self, node: int, ref: str, expect: str) -> dict[str, Any]:
        """Fetch ``ref``; success means the bytes hash to ``expect``."""
        async def fetch() -> dict[str, Any]:
            try:
                fetched = await self.libraries[node].fetch(ref)
            except LookupError as exc:
                return {"ok": False, "error": str(exc)}
            ok = hashlib.sha256(fetched.data).hexdigest() == expect
            return {"ok": ok, "error": None if ok else "wrong bytes"}

        return await self._measured(node, fetch())

    async def op_search(self, node: int, terms: list[str], expect: str) -> dict[str, Any]:
        async def search() -> dict[str, Any]:
            found = await self.libraries[node].search(terms)
            return {"ok": any(a.summary.hash == expect for a in found), "results": len(found)}

        return await self._measured(node, search())

    # ------------------------------------------------------------------ teams
    async def op_contact(self, node: int) -> None:
        """Publish where the node listens, so team members find it (a daemon does this once joined)."""
        await publish_contact(self.nodes[node], [self.nodes[node].address])

    async def op_team_create(self, node: int, name: str, k: int, members: list[str]) -> bytes:
        created = await create_team(self.nodes[node], name, k, parse_members(members))
        return created.descriptor.team_id

    async def op_team_share(self, node: int, team_id: bytes, attempts: int = 10) -> bool:
        """Read the inbox until this member holds its share (a daemon polls it every few minutes)."""
        for _ in range(attempts):
            await Inbox(self.nodes[node]).poll()
            if self.nodes[node].store.team_share(team_id, 0) is not None:
                return True
            await asyncio.sleep(0.5)
        return False

    async def op_team_unlock(self, node: int, team_id: bytes, timeout: float = 10.0) -> dict[str, Any]:
        async def unlocking() -> dict[str, Any]:
            row = self.nodes[node].store.team(team_id)
            result = await unlock(self.nodes[node], row, timeout)
            return {"ok": result.unlocked, "got": result.got}

        return await self._measured(node, unlocking())

    async def op_team_publish(self, node: int, team_id: bytes, data: bytes) -> dict[str, Any]:
        async def publish() -> dict[str, Any]:
            row = self.nodes[node].store.team(team_id)
            published = await self.libraries[node].publish(data, team=row)
            return {"ok": True, "hash": published.pattern.hash, "replicas": published.replicas}

        return await self._measured(node, publish())

    async def op_lookup(self, node: int, target: bytes) -> dict[str, Any]:
        """An iterative lookup of a key: the closest nodes that answered, in order, and what it cost."""
        async def lookup() -> dict[str, Any]:
            result = await self.nodes[node].lookup(target)
            return {"closest": [n.id for n in result.closest], "hops": result.hops, "messages": result.messages}

        return await self._measured(node, lookup())

    async def op_holders(self, keys: list[bytes]) -> list[int]:
        """For each pattern key, how many of this worker's nodes hold it (its manifest entry)."""
        return [sum(node.store.has_entries(key) for node in self.nodes.values()) for key in keys]

    async def op_kill(self, nodes: list[int], graceful: bool = False) -> int:
        """Take nodes out: gracefully (contacts saved, store closed) or abruptly (the socket just closes)."""
        for index in nodes:
            node = self.nodes.pop(index)
            self.libraries.pop(index)
            self.transports.pop(index)
            if graceful:
                node.stop()
                node.store.close()
            else:
                node.halt()
                node.store.close()
        return len(nodes)

    async def op_transport(self, loss: float, latency_ms: float, jitter_ms: float) -> None:
        self.faults.set_transport(loss, latency_ms, jitter_ms)

    async def op_partition(self, groups: list[list[list]]) -> None:
        self.faults.partition([[tuple(a) for a in group] for group in groups])

    async def op_heal(self) -> None:
        self.faults.heal()

    async def op_stats(self) -> dict[str, Any]:
        """Datagrams and bytes each node sent, what it stores, and the process's memory."""
        nodes = {}
        for index, node in self.nodes.items():
            t = self.transports[index]
            nodes[index] = {"sent": t.sent, "sent_bytes": t.sent_bytes, "dropped": t.dropped,
                            "stored_bytes": node.store.usage().used, "contacts": len(node.protocol.contacts())}
        return {"nodes": nodes, "rss": psutil.Process().memory_info().rss}

    async def op_stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
            node.store.close()
        self.nodes.clear()


async def serve(root: Path, seed: int, channel_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(channel_fd, "wb", buffering=0)
    worker = Worker(root, seed)
    tasks: set[asyncio.Task] = set()

    async def answer(request: dict[str, Any]) -> None:
        try:
            result = await getattr(worker, f"op_{request['op']}")(**request.get("args", {}))
            reply = {"id": request["id"], "ok": True, "result": result}
        except Exception as exc:  # the coordinator reports it; the worker serves on
            log.exception("%s failed", request.get("op"))
            reply = {"id": request["id"], "ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
        out.write(frame(reply))

    while (request := await read_frame(reader)) is not None:
        task = asyncio.ensure_future(answer(request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await worker.op_stop()


def main() -> None:
    root, seed = Path(sys.argv[1]), int(sys.argv[2])
    channel = os.dup(1)  # frames go out here; anything printed goes to standard error instead
    os.dup2(2, 1)
    logging.basicConfig(level=os.environ.get("AETHER_SIM_LOG", "WARNING"), stream=sys.stderr,
                        format=f"worker {os.getpid()} %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(root, seed, channel))


if __name__ == "__main__":
    main()
