"""Proof that a contact holds the key its node ID is derived from, before values change hands.

A node ID is SHA-256(signing key)[:20], but kademlia's framing carries no
signatures: any peer may claim any ID, and so place itself among the k
closest to a key it wants to hide or to answer for. Lookups may still route
through such peers (stock nodes cannot prove anything and must keep routing
for us), but values are only stored on, and only accepted from, contacts that
proved their ID:

* **IDENTIFY** ``(node id, nonce)`` is answered ``[signing key, signature,
  challenge]``: the signature covers ``DOMAIN ‖ nonce ‖ asker's ID``, so it
  is fresh and good for this asker only, and ``node_id_for(signing key)`` must
  be the ID we know the contact by. The reply is only accepted from the
  address the request went to, so the key holder answers at that address.
* The **challenge** is an HMAC, under a secret of the answering node, of the
  asker's address, its ID and the current ten-minute window: the answerer
  keeps no state per asker. The secret is derived from the node's signing
  key, so a restarted node still accepts the proofs its peers hold.
* **STORE** takes a fourth argument from aether nodes, the storer's proof
  ``[signing key, signature of DOMAIN ‖ challenge ‖ receiver's ID]``; the
  receiver recomputes the challenge for the sender's address, checks key,
  ID and signature once, and remembers the sender as proven.

:class:`ProvingProtocol` is the node's protocol with both sides wired in:
every STORE it sends (publish, republish, hand-off, repair, caching) first
gets the contact's proof, and every STORE it serves is checked.

A storer proves each contact once (concurrently for the k targets of a
publish) and keeps the proof for ``PROOF_TTL``, within the challenge's
lifetime; a contact that cannot prove (a stock node, a liar) is not asked
again for ``FAILED_TTL`` and gets no values meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from kademlia.node import Node

from aether.crypto.identity import is_weak_signing_key, node_id_for
from aether.node.protocol import AetherProtocol, error_reply, is_node_id

if TYPE_CHECKING:
    from aether.node.server import AetherNode

DOMAIN = b"aether-identify/1\0"
SECRET_LABEL = b"aether-identify/1 challenge secret"
"""What this node signs to derive the key of its challenges' HMAC."""
NONCE_BYTES = 16
WINDOW = 600.0
"""Seconds a challenge is issued for; one is accepted in its window and the next."""
PROOF_TTL = 540.0
"""Seconds a storer keeps a contact's proof (and its own answer to the contact's challenge)."""
FAILED_TTL = 60.0
"""Seconds a contact that did not prove its ID is left alone: no values, no new IDENTIFY."""
MAX_CONTACTS = 4096
"""Contacts whose proofs (either way) are remembered."""
UNPROVEN = "unproven"
"""The error a STORE gets from a sender that has not proven its node ID; a storer's own refusal too."""

Peer = tuple[bytes, str, int]


def _verify(signing_public: Any, signature: Any, message: bytes, node_id: bytes) -> bool:
    """Whether ``signing_public`` is a sound key that ``node_id`` derives from, and it signed ``message``."""
    if type(signing_public) is not bytes or len(signing_public) != 32 or type(signature) is not bytes:
        return False
    if node_id_for(signing_public) != node_id or is_weak_signing_key(signing_public):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(signing_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class _Lru:
    """A bounded map with expiry, least recently written forgotten first."""

    def __init__(self, size: int = MAX_CONTACTS):
        self._items: OrderedDict[Peer, tuple[float, Any]] = OrderedDict()
        self._size = size

    def get(self, key: Peer, now: float) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return False, None
        return True, item[1]

    def put(self, key: Peer, value: Any, until: float) -> None:
        self._items.pop(key, None)
        self._items[key] = (until, value)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class Proofs:
    """Both sides of the exchange for one node: answering IDENTIFY, proving contacts, checking storers."""

    def __init__(self, owner: AetherNode, clock: Any = time.monotonic):
        self.owner = owner
        self.identity = owner.identity
        self._clock = clock
        # Ed25519 signatures are deterministic: the same secret after a restart, so the
        # proofs peers hold for this node stay good; it never leaves the node.
        self._secret = hashlib.sha256(owner.identity.sign(SECRET_LABEL)).digest()
        self._ours = _Lru()
        """Per contact that proved itself to us: the proof we send it with each STORE (None: it failed)."""
        self._storers = _Lru()
        """Senders whose STORE proof checked out."""
        self._pending: dict[Peer, asyncio.Future] = {}

    # ----------------------------------------------------------- answering
    def challenge(self, address: tuple, node_id: bytes, window: int | None = None) -> bytes:
        """What the peer at ``address`` claiming ``node_id`` must sign to prove itself in a STORE."""
        if window is None:
            window = int(time.time() // WINDOW)  # wall time: the same window before and after a restart
        data = b"%d|%s|%d|" % (window, str(address[0]).encode(), int(address[1])) + node_id
        return hmac.new(self._secret, data, hashlib.sha256).digest()[:NONCE_BYTES]

    def answer(self, address: tuple, asker: bytes, nonce: bytes) -> list:
        """The IDENTIFY reply: our key, its signature of the asker's nonce, and a challenge for the asker."""
        signature = self.identity.sign(DOMAIN + nonce + asker)
        return [self.identity.public.signing_public, signature, self.challenge(address, asker)]

    def sender_proven(self, address: tuple, node_id: bytes, proof: Any) -> bool:
        """Whether a STORE's sender has proven ``node_id`` at ``address``, now or earlier."""
        peer = (node_id, str(address[0]), int(address[1]))
        now = self._clock()
        if self._storers.get(peer, now)[0]:
            return True
        if type(proof) is not list or len(proof) != 2:
            return False
        window = int(time.time() // WINDOW)
        for w in (window, window - 1):
            message = DOMAIN + self.challenge(address, node_id, w) + self.owner.node.id
            if _verify(proof[0], proof[1], message, node_id):
                self._storers.put(peer, True, now + PROOF_TTL)
                return True
        return False

    # ----------------------------------------------------------- proving
    async def proof_for(self, node: Node) -> list | None:
        """Our proof for ``node`` once it has proven its own ID (cached, one exchange at a time); None if it cannot."""
        peer = (node.id, node.ip, node.port)
        known, proof = self._ours.get(peer, self._clock())
        if known:
            return proof
        pending = self._pending.get(peer)
        if pending is None:
            pending = self._pending[peer] = asyncio.ensure_future(self._identify(node, peer))
            pending.add_done_callback(lambda _: self._pending.pop(peer, None))
        return await asyncio.shield(pending)

    async def _identify(self, node: Node, peer: Peer) -> list | None:
        nonce = os.urandom(NONCE_BYTES)
        # Sent through the protocol's request machinery, but not counted against the contact
        # when unanswered: a stock node ignores IDENTIFY and must keep its place in our table.
        protocol, own_id = self.owner.protocol, self.owner.node.id
        ok, reply = await protocol.identify((node.ip, node.port), own_id, nonce)
        proof = None
        if ok and type(reply) is list and len(reply) == 3 and type(reply[2]) is bytes:
            if _verify(reply[0], reply[1], DOMAIN + nonce + own_id, node.id):
                proof = [self.identity.public.signing_public, self.identity.sign(DOMAIN + reply[2] + node.id)]
        protocol.stats["proofs_ok" if proof else "proofs_failed"] += 1
        self._ours.put(peer, proof, self._clock() + (PROOF_TTL if proof else FAILED_TTL))
        return proof


class ProvingProtocol(AetherProtocol):
    """The node's protocol: values go only to, and are only taken from, contacts that proved their ID."""

    def __init__(self, owner: AetherNode):
        super().__init__(owner)
        self.proofs = Proofs(owner, clock=self._clock)

    def identify(self, address: tuple, nodeid: bytes, nonce: bytes) -> asyncio.Future:
        return self._call(address, "identify", nodeid, nonce)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        """STORE with our proof, once the contact proved its ID; a contact that cannot is refused here."""
        proof = await self.proofs.proof_for(node_to_ask)
        if proof is None:
            self.stats["store_not_sent_unproven"] += 1
            return True, error_reply(UNPROVEN, "the contact did not prove its node ID")
        result = await self._call((node_to_ask.ip, node_to_ask.port), "store", self.source_node.id, key, value, proof)
        return self.handle_call_response(result, node_to_ask)

    def rpc_identify(self, sender: tuple, nodeid: Any, nonce: Any) -> Any:
        if not is_node_id(nodeid) or type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            return error_reply("malformed", "identify takes a 20-byte node id and a 16-byte nonce")
        return self.proofs.answer(sender, nodeid, nonce)

    def rpc_store(self, sender: tuple, nodeid: Any, key: Any, value: Any, proof: Any = None) -> Any:
        if is_node_id(nodeid) and not self.proofs.sender_proven(sender, nodeid, proof):
            self.stats["store_refused_unproven"] += 1
            return error_reply(UNPROVEN, "prove your node ID (IDENTIFY, then STORE with the proof)")
        return super().rpc_store(sender, nodeid, key, value)
