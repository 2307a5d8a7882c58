"""A flooding peer: FIND_NODE, FIND_VALUE and STORE at one node, as fast as one socket sends.

Run as a process of its own, so that its sending does not share the victim's
event loop::

    python -m aether.simulations.flood HOST PORT [--bind 127.0.0.2] [--seconds 5] [--max 200000]

The flooder plays by the protocol where that helps it: it has a key of its
own, proves its node ID to the victim once (IDENTIFY, node/proofs.py) and
sends that proof with every STORE, each of a valid block (random bytes under
their own hash), which a node without rate limits accepts. When it stops (after ``--seconds`` or ``--max``
datagrams, or when its stdin closes) it prints one JSON line: datagrams sent
of each kind, STORE bytes sent, and the keys of the blocks it offered, so the
caller can see which of them the victim holds. Used by the flood test and by
``simulations/bench_flood.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from aether.crypto.identity import Identity, node_id_for
from aether.node import wire
from aether.node.proofs import DOMAIN, NONCE_BYTES
from aether.node.values import block_key

BLOCK_BYTES = 6 * 1024
POOL = 4096
"""Distinct blocks offered (cycled): 24 MiB, more than the default burst of 16 MiB."""


def flood(target: tuple[str, int], bind: str, seconds: float, limit: int, stop: threading.Event) -> dict:
    """Send requests to ``target`` from one socket on ``bind`` until time, count or ``stop`` runs out."""
    blocks = [os.urandom(BLOCK_BYTES) for _ in range(POOL)]
    keys = [block_key(b) for b in blocks]
    identity = Identity.generate()
    own_id = identity.node_id
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    proof = prove(sock, target, identity)
    sent = {"find_node": 0, "find_value": 0, "store": 0, "store_bytes": 0, "errors": 0}
    deadline = time.monotonic() + seconds
    i = 0
    while i < limit and not stop.is_set() and time.monotonic() < deadline:
        kind = ("find_node", "find_value", "store")[i % 3]
        if kind == "store":
            n = (i // 3) % POOL
            args = [own_id, keys[n], blocks[n]] + ([proof] if proof else [])
            sent["store_bytes"] += len(blocks[n])
        else:
            args = [own_id, os.urandom(20)]
        try:
            sock.sendto(wire.encode_request(os.urandom(wire.MSG_ID_BYTES), kind, args), target)
            sent[kind] += 1
        except OSError:  # the kernel's send buffer is full: that is as fast as it goes
            sent["errors"] += 1
        i += 1
    sock.close()
    sent["keys"] = [k.hex() for k in keys[: min(POOL, sent["store"])]]
    sent["proven"] = proof is not None
    return sent


def prove(sock: socket.socket, target: tuple[str, int], identity: Identity) -> list[Any] | None:
    """The proof of our node ID the target asks of a storer, from one IDENTIFY exchange (None if it fails)."""
    sock.settimeout(5.0)
    try:
        sock.sendto(wire.encode_request(os.urandom(wire.MSG_ID_BYTES), "identify",
                                        [identity.node_id, os.urandom(NONCE_BYTES)]), target)
        signing_public, _, challenge = wire.decode(sock.recvfrom(wire.MAX_DATAGRAM)[0]).body
        return [identity.public.signing_public, identity.sign(DOMAIN + challenge + node_id_for(signing_public))]
    except (OSError, ValueError, TypeError):
        return None
    finally:
        sock.settimeout(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--bind", default="127.0.0.2")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max", type=int, default=200_000)
    args = parser.parse_args(argv)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    result = flood((args.host, args.port), args.bind, args.seconds, args.max, stop)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
