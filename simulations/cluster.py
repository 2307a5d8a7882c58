"""A network of real nodes spread over worker processes, so a simulation uses every core.

The coordinator (this module) starts ``workers`` processes (simulations/worker.py),
gives each a share of the nodes, joins them into one network over loopback UDP, and
then routes each operation to the worker that holds the node it names. Nodes are
numbered 0..N-1 as the scenario numbers them; nodes that join later get the next
numbers. Every call is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.simulations.channel import frame, read_frame

CALL_TIMEOUT = 120.0
"""Upper bound on one operation in a worker (a join wave of hundreds of nodes included)."""
JOIN_BATCH = 50


class ClusterError(RuntimeError):
    """A worker failed or did not answer in time."""


class NodeGone(ClusterError):
    """The node named was killed (or never started): what it was asked to do cannot happen."""


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    listener: asyncio.Task | None = None


class Cluster:
    def __init__(self, root: Path, workers: int | None = None, *, seed: int = 1, config: dict[str, Any] | None = None):
        self.root = root
        self.count = workers or max(1, os.cpu_count() or 1)
        self.seed = seed
        self.config = config or {}
        self.workers: list[WorkerProcess] = []
        self.home: dict[int, int] = {}
        """Node index → the worker that runs it."""
        self.addresses: dict[int, tuple[str, int]] = {}
        self.ids: dict[int, bytes] = {}
        self.identities: dict[int, str] = {}
        self._ids = itertools.count()
        self._rng = random.Random(seed)
        self._starting: dict[int, asyncio.Event] = {}

    async def __aenter__(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for w in range(self.count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aether.simulations.worker", str(self.root), str(self.seed * 1000 + w),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
            )
            worker = WorkerProcess(process, process.stdout)
            worker.listener = asyncio.ensure_future(self._listen(worker))
            self.workers.append(worker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for worker in self.workers:
            if worker.process.stdin and not worker.process.stdin.is_closing():
                worker.process.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 30)
            except asyncio.TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.listener:
                worker.listener.cancel()
        self.workers.clear()

    async def _listen(self, worker: WorkerProcess) -> None:
        while (reply := await read_frame(worker.reader)) is not None:
            future = worker.pending.pop(reply["id"], None)
            if future is not None and not future.done():
                if reply["ok"]:
                    future.set_result(reply.get("result"))
                else:
                    future.set_exception(ClusterError(reply["error"]))
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(ClusterError(f"worker {worker.process.pid} exited"))
        worker.pending.clear()

    async def _ask(self, w: int, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        worker = self.workers[w]
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = future
        worker.process.stdin.write(frame({"id": request_id, "op": op, "args": args}))
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            worker.pending.pop(request_id, None)
            raise ClusterError(f"worker {w} did not finish {op} within {timeout:.0f} s") from None

    async def call(self, node: int, op: str, **args: Any) -> Any:
        """Run an operation on the worker that holds ``node`` (passed as the ``node`` argument).

        A node still starting is waited for; a node killed, or never started, is an error.
        """
        await self._started(node)
        if node not in self.home:
            raise NodeGone(f"node {node} is not running")
        return await self._ask(self.home[node], op, node=node, **args)

    async def _started(self, node: int) -> None:
        starting = self._starting.get(node)
        if starting is not None:
            try:
                await asyncio.wait_for(starting.wait(), CALL_TIMEOUT)
            except asyncio.TimeoutError:
                raise ClusterError(f"node {node} did not start within {CALL_TIMEOUT:.0f} s") from None

    async def broadcast(self, op: str, **args: Any) -> list[Any]:
        return list(await asyncio.gather(*(self._ask(w, op, **args) for w in range(len(self.workers)))))

    @property
    def alive(self) -> list[int]:
        return sorted(self.home)

    # ------------------------------------------------------------------ membership
    async def start(self, indices: list[int], each: dict[int, dict[str, Any]] | None = None) -> None:
        """Start these nodes, spread evenly over the workers (not joined yet); ``each``: per-node settings."""
        by_worker: dict[int, list[int]] = {}
        for index in indices:
            by_worker.setdefault(index % len(self.workers), []).append(index)
        each = each or {}
        for index in indices:
            self._starting[index] = asyncio.Event()
        try:
            replies = await asyncio.gather(*(
                self._ask(w, "start", indices=ix, config=self.config, each={i: each[i] for i in ix if i in each})
                for w, ix in by_worker.items()
            ))
            for w, started in zip(by_worker, replies):
                for index, node_id, host, port, identity in started:
                    self.home[index], self.ids[index], self.addresses[index] = w, node_id, (host, port)
                    self.identities[index] = identity
        finally:
            for index in indices:
                self._starting.pop(index).set()

    async def join(self, indices: list[int], through: list[int]) -> None:
        """Join nodes into the network, each through a random node of ``through`` (already joined).

        Like ``simulations.network.join_all``: waves at most as large as the network
        they join, so the first nodes do not all lean on one peer.
        """
        joined = list(through)
        waiting = [i for i in indices if i not in joined]
        while waiting:
            wave, waiting = waiting[: min(JOIN_BATCH, len(joined))], waiting[min(JOIN_BATCH, len(joined)):]
            by_worker: dict[int, list[list]] = {}
            for index in wave:
                peer = self.addresses[self._rng.choice(joined)]
                by_worker.setdefault(self.home[index], []).append([index, *peer])
            await asyncio.gather(*(self._ask(w, "join", joins=j) for w, j in by_worker.items()))
            joined += wave

    async def grow(self, count: int, each: dict[int, dict[str, Any]] | None = None) -> list[int]:
        """Start ``count`` nodes and join them into one network; their indices."""
        indices = list(range(len(self.ids), len(self.ids) + count))
        through = self.alive
        await self.start(indices, each)
        await self.join(indices, through=through or indices[:1])
        return indices

    async def kill(self, nodes: list[int], graceful: bool = False) -> None:
        for index in nodes:
            await self._started(index)
        by_worker: dict[int, list[int]] = {}
        for index in nodes:
            if index in self.home:
                by_worker.setdefault(self.home.pop(index), []).append(index)
        await asyncio.gather(*(self._ask(w, "kill", nodes=n, graceful=graceful) for w, n in by_worker.items()))

    async def partition(self, groups: list[list[int]]) -> None:
        await self.broadcast("partition", groups=[[list(self.addresses[i]) for i in g] for g in groups])
