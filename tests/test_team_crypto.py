"""Team cryptography (crypto/teams.py, docs/teams.md "Cryptography"): real keys, real ciphers."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.crypto.identity import Identity
from aether.crypto.teams import (
    COMMITMENT_BYTES,
    KEY_BYTES,
    LOCATOR_BYTES,
    MAX_EPOCH,
    PATTERN_MAGIC,
    SHARE_BYTES,
    TEAM_ID_BYTES,
    DecryptionError,
    FormatError,
    ShareError,
    TeamCryptoError,
    blob_header,
    chain_previous,
    check_commitment,
    combine_shares,
    commitment,
    decrypt_pattern,
    decrypt_summary,
    encrypt_pattern,
    encrypt_summary,
    find_bad_shares,
    locator,
    new_team_id,
    team_id_for,
    new_team_key,
    open_at_rest,
    open_sealed,
    seal,
    seal_at_rest,
    share_index,
    split_key,
    unchain_previous,
)

TEAM = bytes(range(20))
OTHER_TEAM = bytes(range(1, 21))
KEY = bytes(range(32))
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def flipped(data: bytes, position: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


def tampered_share(share: bytes) -> bytes:
    """The same member index, different share bytes: what a lying or corrupted member sends."""
    return flipped(share, 1 + hashlib.sha256(share).digest()[0] % (SHARE_BYTES - 1), 0x5A)


# --- keys and team IDs ----------------------------------------------------------------------


def test_team_keys_are_32_fresh_bytes() -> None:
    keys = {new_team_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == KEY_BYTES for k in keys)


def test_team_ids_are_20_bytes_and_never_repeat(alice: Identity) -> None:
    signing = alice.public.signing_public
    made = [new_team_id(signing, "eng") for _ in range(50)]
    ids = {team_id for team_id, _ in made}
    assert len(ids) == 50 and all(len(i) == TEAM_ID_BYTES for i in ids)
    # Anyone holding the salt checks an ID against its creator and name.
    team_id, salt = made[0]
    assert team_id_for(signing, "eng", salt) == team_id
    assert team_id_for(signing, "ENG", salt) != team_id
    assert team_id_for(Identity.generate().public.signing_public, "eng", salt) != team_id
    with pytest.raises(TeamCryptoError, match="salt"):
        team_id_for(signing, "eng", salt[:-1])


@pytest.mark.parametrize("creator", [b"", bytes(31), bytes(32), "aa" * 32, None])
def test_team_id_refuses_an_unusable_creator_key(creator: object) -> None:
    with pytest.raises(TeamCryptoError, match="creator"):
        new_team_id(creator, "eng")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, b"eng", "bad\udc80"])
def test_team_id_refuses_a_bad_name(alice: Identity, name: object) -> None:
    with pytest.raises(TeamCryptoError, match="name"):
        new_team_id(alice.public.signing_public, name)  # type: ignore[arg-type]


# --- splitting and combining --------------------------------------------------------------


def _check_any_k_give_the_key(data: st.DataObject, n: int, k: int, extra: int | None = None) -> None:
    key = data.draw(st.binary(min_size=32, max_size=32), label="key")
    shares = split_key(key, k, n)
    assert len(shares) == n
    assert all(len(s) == SHARE_BYTES for s in shares)
    assert [share_index(s) for s in shares] == list(range(1, n + 1))
    chosen = data.draw(st.permutations(shares), label="order")
    assert combine_shares(chosen[:k]) == key
    more = data.draw(st.integers(k, n if extra is None else min(n, k + extra)), label="how many")
    assert combine_shares(chosen[:more]) == key  # more consistent shares still interpolate
    if k > 1:
        fewer = data.draw(st.integers(1, k - 1), label="fewer")
        guess = combine_shares(chosen[:fewer])
        assert guess != key
        assert not check_commitment(guess, TEAM, 0, commitment(key, TEAM, 0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 12))
def test_any_k_of_n_shares_give_the_key_and_fewer_do_not(data: st.DataObject, n: int) -> None:
    k = data.draw(st.integers(1, n), label="k")
    _check_any_k_give_the_key(data, n, k)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), k=st.sampled_from([1, 2, 3, 7, 20, 40]))
def test_the_largest_teams_split_and_combine(data: st.DataObject, k: int) -> None:
    _check_any_k_give_the_key(data, 255, k, extra=5)  # combining all 255 takes seconds


def test_a_threshold_of_one_gives_every_member_the_key() -> None:
    shares = split_key(KEY, 1, 4)
    assert {combine_shares([s]) for s in shares} == {KEY}


def test_the_halves_are_split_independently() -> None:
    """With K = 2 a single share tells nothing; identical halves must not give identical shares."""
    key = bytes(16) * 2
    shares = split_key(key, 2, 3)
    assert all(s[1:17] != s[17:] for s in shares)
    assert combine_shares(shares[1:]) == key


@pytest.mark.parametrize(
    ("k", "n", "message"),
    [
        (0, 3, "at least 1"),
        (-1, 3, "at least 1"),
        (4, 3, "exceeds"),
        (1, 0, "at least 1 member"),
        (1, -2, "at least 1 member"),
        (2, 256, "at most 255"),
        (True, 3, "integer"),
        (2, 3.0, "integer"),
        ("2", 3, "integer"),
    ],
)
def test_split_refuses_impossible_thresholds(k: object, n: object, message: str) -> None:
    with pytest.raises(TeamCryptoError, match=message):
        split_key(KEY, k, n)  # type: ignore[arg-type]


def test_split_accepts_the_limits() -> None:
    assert len(split_key(KEY, 1, 1)) == 1
    assert combine_shares(split_key(KEY, 1, 1)) == KEY
    shares = split_key(KEY, 2, 255)
    assert share_index(shares[-1]) == 255
    assert combine_shares([shares[0], shares[-1]]) == KEY


@pytest.mark.parametrize("key", [bytes(31), bytes(33), b"", KEY.hex(), bytearray(KEY), None])
def test_split_refuses_a_key_that_is_not_32_bytes(key: object) -> None:
    with pytest.raises(TeamCryptoError, match="team key must be 32 bytes"):
        split_key(key, 2, 3)  # type: ignore[arg-type]


def test_combine_refuses_malformed_shares() -> None:
    shares = split_key(KEY, 2, 3)
    with pytest.raises(ShareError, match="no shares"):
        combine_shares([])
    with pytest.raises(ShareError, match="share 1 must be 33 bytes, got 32 bytes"):
        combine_shares([shares[0], shares[1][:-1]])
    with pytest.raises(ShareError, match="share 0 must be 33 bytes, got 34 bytes"):
        combine_shares([shares[0] + b"\0", shares[1]])
    with pytest.raises(ShareError, match="share 1 must be 33 bytes, got str"):
        combine_shares([shares[0], shares[1].hex()])  # type: ignore[list-item]
    with pytest.raises(ShareError, match="not a single share"):
        combine_shares(shares[0])
    with pytest.raises(ShareError, match="index 0"):
        combine_shares([b"\0" + shares[0][1:], shares[1]])
    with pytest.raises(ShareError, match="shares 0 and 2 both have index 2"):
        combine_shares([shares[1], shares[0], shares[1]])
    with pytest.raises(ShareError, match="both have index 1"):
        combine_shares([shares[0], shares[0][:1] + shares[2][1:]])
    with pytest.raises(ShareError, match="index 0"):
        share_index(bytes(SHARE_BYTES))


# --- commitment -----------------------------------------------------------------------------


def test_commitment_binds_key_team_and_epoch() -> None:
    c = commitment(KEY, TEAM, 7)
    assert len(c) == COMMITMENT_BYTES
    assert c == commitment(KEY, TEAM, 7)
    assert check_commitment(KEY, TEAM, 7, c)
    assert not check_commitment(new_team_key(), TEAM, 7, c)
    assert not check_commitment(KEY, OTHER_TEAM, 7, c)
    assert not check_commitment(KEY, TEAM, 8, c)
    assert not check_commitment(KEY, TEAM, 7, flipped(c, 31))
    assert len({commitment(KEY, TEAM, e) for e in range(10)}) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((KEY[:-1], TEAM, 0), "team key must be 32 bytes"),
        ((KEY, TEAM[:-1], 0), "team ID must be 20 bytes"),
        ((KEY, TEAM, -1), "epoch must be an integer"),
        ((KEY, TEAM, 2**63), "epoch must be an integer"),
        ((KEY, TEAM, True), "epoch must be an integer"),
        ((KEY, TEAM, "0"), "epoch must be an integer"),
    ],
)
def test_commitment_refuses_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(TeamCryptoError, match=message):
        commitment(*args)


def test_check_commitment_refuses_a_commitment_of_the_wrong_form() -> None:
    c = commitment(KEY, TEAM, 0)
    for bad in (c[:-1], c.hex(), None):
        with pytest.raises(TeamCryptoError, match="commitment must be 32 bytes"):
            check_commitment(KEY, TEAM, 0, bad)  # type: ignore[arg-type]
    assert commitment(KEY, TEAM, MAX_EPOCH) != commitment(KEY, TEAM, 0)


# --- naming bad shares ----------------------------------------------------------------------


def _team(k: int, n: int, epoch: int = 0) -> tuple[bytes, bytes, dict[str, bytes]]:
    key = new_team_key()
    shares = {f"member-{i + 1}": share for i, share in enumerate(split_key(key, k, n))}
    return key, commitment(key, TEAM, epoch), shares


def test_good_shares_give_the_key_and_name_nobody() -> None:
    key, c, shares = _team(3, 5)
    assert find_bad_shares(shares, 3, TEAM, 0, c) == (key, set())
    key3, c3, shares3 = _team(3, 3)
    assert find_bad_shares(shares3, 3, TEAM, 0, c3) == (key3, set())


@pytest.mark.parametrize("liar", range(1, 6))
def test_a_tampered_share_among_five_is_named_and_left_out(liar: int) -> None:
    key, c, shares = _team(3, 5)
    shares[f"member-{liar}"] = tampered_share(shares[f"member-{liar}"])
    result = find_bad_shares(shares, 3, TEAM, 0, c)
    assert result.key == key
    assert result.bad == {f"member-{liar}"}
    key_found, bad = result  # unpacks like a plain pair
    assert (key_found, bad) == (key, {f"member-{liar}"})


def test_exactly_k_shares_with_a_bad_one_give_no_key_and_name_nobody() -> None:
    _, c, shares = _team(3, 5)
    three = {m: shares[m] for m in ("member-1", "member-2", "member-3")}
    three["member-2"] = tampered_share(three["member-2"])
    assert find_bad_shares(three, 3, TEAM, 0, c) == (None, set())


def test_shares_of_another_epoch_give_no_key() -> None:
    key, _, shares = _team(2, 4)
    assert find_bad_shares(shares, 2, TEAM, 1, commitment(key, TEAM, 0)) == (None, set())
    assert find_bad_shares(shares, 2, TEAM, 0, commitment(key, TEAM, 0)).key == key


def test_two_independently_tampered_shares_are_both_named() -> None:
    key, c, shares = _team(3, 6)
    shares["member-2"] = tampered_share(shares["member-2"])
    shares["member-5"] = flipped(shares["member-5"], 3, 0x01)
    assert find_bad_shares(shares, 3, TEAM, 0, c) == (key, {"member-2", "member-5"})


def test_shares_that_agree_on_another_polynomial_do_not_frame_anyone() -> None:
    """Indexes 1, 4, 5 have Lagrange coefficients 1, 1, 1 at x = 0 in GF(2^128): the same
    change made to shares 1 and 4 cancels out in {1, 4, 5}, so {1, 4, 5} and the honest
    {2, 3, 5} both give the key. Nothing tells the two groups apart, so nobody is named:
    the key is still right."""
    key, c, shares = _team(3, 5)
    for member in ("member-1", "member-4"):
        shares[member] = flipped(shares[member], 20, 0xFF)
    both = [
        set(subset)
        for subset in itertools.combinations(sorted(shares), 3)
        if check_commitment(combine_shares([shares[m] for m in subset]), TEAM, 0, c)
    ]
    assert both == [{"member-1", "member-4", "member-5"}, {"member-2", "member-3", "member-5"}]
    assert find_bad_shares(shares, 3, TEAM, 0, c) == (key, set())
    # With a sixth member the honest group {2, 3, 5, 6} is larger than any other could be.
    key6, c6, shares6 = _team(3, 6)
    for member in ("member-1", "member-4"):
        shares6[member] = flipped(shares6[member], 20, 0xFF)
    assert find_bad_shares(shares6, 3, TEAM, 0, c6) == (key6, {"member-1", "member-4"})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(2, 8))
def test_any_bad_shares_within_the_bound_are_named_exactly(data: st.DataObject, n: int) -> None:
    k = data.draw(st.integers(1, n - 1), label="k")
    # Unique decoding: the good shares outnumber what a second polynomial could gather.
    most_bad = max(t for t in range(n) if 2 * (n - t) > n + k - 2)
    bad = data.draw(st.sets(st.integers(1, n), max_size=most_bad), label="bad")
    key, c, shares = _team(k, n, epoch=5)
    for i in bad:
        noise = data.draw(st.binary(min_size=32, max_size=32).filter(any), label="noise")
        share = shares[f"member-{i}"]
        shares[f"member-{i}"] = share[:1] + bytes(a ^ b for a, b in zip(share[1:], noise))
    assert find_bad_shares(shares, k, TEAM, 5, c) == (key, {f"member-{i}" for i in bad})


def test_a_bad_share_among_255_is_named() -> None:
    key, c, shares = _team(3, 255)
    shares["member-1"] = tampered_share(shares["member-1"])
    shares["member-200"] = tampered_share(shares["member-200"])
    assert find_bad_shares(shares, 3, TEAM, 0, c) == (key, {"member-1", "member-200"})


def test_malformed_shares_are_named_without_being_combined() -> None:
    key, c, shares = _team(2, 4)
    shares["member-1"] = shares["member-1"][:-1]
    shares["member-3"] = b"\0" + shares["member-3"][1:]
    assert find_bad_shares(shares, 2, TEAM, 0, c) == (key, {"member-1", "member-3"})
    shares["member-4"] = "not bytes"  # type: ignore[assignment]
    assert find_bad_shares(shares, 2, TEAM, 0, c) == (None, {"member-1", "member-3", "member-4"})


def test_find_bad_shares_refuses_what_it_cannot_judge() -> None:
    _, c, shares = _team(3, 5)
    with pytest.raises(ShareError, match="2 shares cannot rebuild a key that needs 3"):
        find_bad_shares({m: shares[m] for m in ("member-1", "member-2")}, 3, TEAM, 0, c)
    clash = dict(shares, **{"member-5": shares["member-1"][:1] + shares["member-5"][1:]})
    with pytest.raises(ShareError, match="'member-1' and 'member-5' both present a share with index 1"):
        find_bad_shares(clash, 3, TEAM, 0, c)
    with pytest.raises(ShareError, match="mapping"):
        find_bad_shares(list(shares.values()), 3, TEAM, 0, c)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="threshold k"):
        find_bad_shares(shares, 0, TEAM, 0, c)
    with pytest.raises(TeamCryptoError, match="commitment must be 32 bytes"):
        find_bad_shares(shares, 3, TEAM, 0, c[:-1])
    with pytest.raises(TeamCryptoError, match="max_combinations"):
        find_bad_shares(shares, 3, TEAM, 0, c, max_combinations=0)


def test_find_bad_shares_stops_at_its_bound() -> None:
    key, c, shares = _team(3, 5)
    shares["member-1"] = tampered_share(shares["member-1"])  # spoils the first subset tried
    assert find_bad_shares(shares, 3, TEAM, 0, c, max_combinations=1) == (None, set())
    # Room for the key but not to check every other member: nobody is named on no evidence.
    partial = find_bad_shares(shares, 3, TEAM, 0, c, max_combinations=2)
    assert partial.key in (None, key) and partial.bad <= {"member-1"}
    assert find_bad_shares(shares, 3, TEAM, 0, c) == (key, {"member-1"})


# --- sealing to a member ------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["share", "unlock-answer"])
@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 40])
def test_sealed_boxes_open_for_their_recipient(alice: Identity, purpose: str, plaintext: bytes) -> None:
    box = seal(alice.public, plaintext, purpose=purpose, team_id=TEAM, epoch=3)
    assert len(box) == 32 + 12 + len(plaintext) + 16
    assert open_sealed(alice, box, purpose=purpose, team_id=TEAM, epoch=3) == plaintext


def test_sealing_twice_gives_different_boxes(alice: Identity) -> None:
    one = seal(alice.public, b"share", purpose="share", team_id=TEAM, epoch=0)
    two = seal(alice.public, b"share", purpose="share", team_id=TEAM, epoch=0)
    assert one[:32] != two[:32] and one[44:] != two[44:]


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "unlock-answer"},
        {"team_id": OTHER_TEAM},
        {"epoch": 4},
        {"epoch": 2},
    ],
)
def test_a_box_opens_only_in_its_own_context(alice: Identity, change: dict) -> None:
    context = {"purpose": "share", "team_id": TEAM, "epoch": 3}
    box = seal(alice.public, b"the share", **context)
    with pytest.raises(DecryptionError, match="cannot open sealed box"):
        open_sealed(alice, box, **{**context, **change})


def test_a_box_opens_only_for_its_recipient(alice: Identity, bob: Identity) -> None:
    box = seal(alice.public, b"the share", purpose="share", team_id=TEAM, epoch=0)
    with pytest.raises(DecryptionError, match="not sealed to this identity"):
        open_sealed(bob, box, purpose="share", team_id=TEAM, epoch=0)


def test_every_altered_byte_of_a_box_is_detected(alice: Identity) -> None:
    """Ephemeral key (including the top bit X25519 itself ignores), nonce, ciphertext, tag."""
    box = seal(alice.public, b"share bytes", purpose="share", team_id=TEAM, epoch=1)
    for position in range(len(box)):
        for mask in (0x01, 0x80):
            with pytest.raises(DecryptionError):
                open_sealed(alice, flipped(box, position, mask), purpose="share", team_id=TEAM, epoch=1)
    for cut in (box[:-1], box + b"\0", box[:32] + box[33:]):
        with pytest.raises(DecryptionError):
            open_sealed(alice, cut, purpose="share", team_id=TEAM, epoch=1)


def test_short_and_degenerate_boxes_are_refused(alice: Identity) -> None:
    with pytest.raises(FormatError, match="shorter than the 60"):
        open_sealed(alice, bytes(59), purpose="share", team_id=TEAM, epoch=0)
    with pytest.raises(DecryptionError, match="ephemeral key"):
        open_sealed(alice, bytes(80), purpose="share", team_id=TEAM, epoch=0)


def test_seal_refuses_bad_arguments(alice: Identity) -> None:
    context = {"purpose": "share", "team_id": TEAM, "epoch": 0}
    with pytest.raises(TeamCryptoError, match="purpose must be one of"):
        seal(alice.public, b"x", **{**context, "purpose": "other"})
    with pytest.raises(TeamCryptoError, match="purpose must be one of"):
        open_sealed(alice, bytes(80), **{**context, "purpose": ["share"]})  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="recipient must be a PublicIdentity"):
        seal(alice.public.to_string(), b"x", **context)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="identity must be an Identity"):
        open_sealed(alice.public, bytes(80), **context)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="plaintext must be bytes"):
        seal(alice.public, "text", **context)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="team ID must be 20 bytes"):
        seal(alice.public, b"x", **{**context, "team_id": TEAM.hex()})
    with pytest.raises(TeamCryptoError, match="epoch"):
        seal(alice.public, b"x", **{**context, "epoch": -1})


def test_a_sealed_share_round_trip(alice: Identity, bob: Identity) -> None:
    """The ceremony in small: split, seal one share to each member, open, combine."""
    key = new_team_key()
    members = [alice, bob, Identity.generate()]
    boxes = [
        seal(m.public, share, purpose="share", team_id=TEAM, epoch=0)
        for m, share in zip(members, split_key(key, 2, 3))
    ]
    opened = [open_sealed(m, box, purpose="share", team_id=TEAM, epoch=0) for m, box in zip(members, boxes)]
    assert combine_shares(opened[1:]) == key


# --- team patterns --------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"# Pattern\n", bytes(range(256)) * (4 * 1024)], ids=["empty", "small", "1MiB"])
def test_patterns_round_trip(plaintext: bytes) -> None:
    blob = encrypt_pattern(KEY, TEAM, 9, plaintext)
    assert len(blob) == 4 + 20 + 8 + 12 + len(plaintext) + 16
    assert blob.startswith(PATTERN_MAGIC + TEAM + (9).to_bytes(8, "big"))
    assert blob_header(blob) == (TEAM, 9)
    assert decrypt_pattern(KEY, blob, sha(plaintext)) == (TEAM, 9, plaintext)
    assert decrypt_pattern(KEY, blob, sha(plaintext).hex()) == (TEAM, 9, plaintext)
    if plaintext:
        assert plaintext not in blob


def test_a_mebibyte_pattern_is_one_mebibyte_of_ciphertext() -> None:
    assert len(encrypt_pattern(KEY, TEAM, 0, bytes(MIB))) == MIB + 60


def test_every_region_of_a_pattern_blob_is_authenticated() -> None:
    plaintext = b"team-only text " * 10
    blob = encrypt_pattern(KEY, TEAM, 2, plaintext)
    for position in range(len(blob)):
        changed = flipped(blob, position)
        expected = FormatError if position < len(PATTERN_MAGIC) else DecryptionError
        with pytest.raises(expected):
            decrypt_pattern(KEY, changed, sha(plaintext))
    with pytest.raises(DecryptionError):
        decrypt_pattern(KEY, blob[:-1], sha(plaintext))
    with pytest.raises(DecryptionError):
        decrypt_pattern(KEY, blob + b"\0", sha(plaintext))


def test_a_pattern_decrypts_only_with_its_own_key_team_and_epoch() -> None:
    blob = encrypt_pattern(KEY, TEAM, 2, b"secret")
    with pytest.raises(DecryptionError, match=f"team {TEAM.hex()} epoch 2"):
        decrypt_pattern(new_team_key(), blob, sha(b"secret"))
    moved_team = PATTERN_MAGIC + OTHER_TEAM + blob[24:]
    assert blob_header(moved_team) == (OTHER_TEAM, 2)
    with pytest.raises(DecryptionError):
        decrypt_pattern(KEY, moved_team, sha(b"secret"))
    moved_epoch = blob[:24] + (3).to_bytes(8, "big") + blob[32:]
    with pytest.raises(DecryptionError):
        decrypt_pattern(KEY, moved_epoch, sha(b"secret"))


def test_a_pattern_blob_opens_only_for_the_hash_it_was_made_for() -> None:
    blob = encrypt_pattern(KEY, TEAM, 2, b"secret")
    with pytest.raises(DecryptionError, match=f"not pattern {sha(b'other').hex()}"):
        decrypt_pattern(KEY, blob, sha(b"other"))
    assert sha(b"secret") not in blob and sha(b"secret").hex().encode() not in blob
    with pytest.raises(TeamCryptoError, match="SHA-256 of the plaintext"):
        decrypt_pattern(KEY, blob, sha(b"secret")[:31])


def test_blob_header_refuses_what_is_not_a_blob() -> None:
    blob = encrypt_pattern(KEY, TEAM, 0, b"")
    with pytest.raises(FormatError, match="shorter than the 60"):
        blob_header(blob[:-1])
    with pytest.raises(FormatError, match="not a team pattern blob"):
        blob_header(b"# Pa" + blob[4:])
    with pytest.raises(FormatError, match="beyond"):
        blob_header(blob[:24] + b"\xff" * 8 + blob[32:])
    with pytest.raises(TeamCryptoError, match="must be bytes"):
        blob_header(bytearray(blob))  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="team key must be 32 bytes"):
        decrypt_pattern(KEY[:16], blob, sha(b""))
    with pytest.raises(TeamCryptoError, match="plaintext must be bytes"):
        encrypt_pattern(KEY, TEAM, 0, "text")  # type: ignore[arg-type]


# --- locators and summaries -------------------------------------------------------------


def test_locators_depend_on_key_label_and_value() -> None:
    digest = hashlib.sha256(b"pattern").digest()
    values = {
        locator(KEY, "pattern", digest),
        locator(KEY, "id", "Pattern-DHT-001"),
        locator(KEY, "id", "Pattern-DHT-002"),
        locator(KEY, "term", "kademlia"),
        locator(KEY, "id", "kademlia"),
        locator(new_team_key(), "term", "kademlia"),
    }
    assert len(values) == 6 and all(len(v) == LOCATOR_BYTES for v in values)
    assert locator(KEY, "term", "kademlia") == locator(KEY, "term", b"kademlia")
    assert locator(KEY, "pattern", digest) == locator(KEY, "pattern", digest.hex())
    assert locator(KEY, "pattern", digest) == locator(KEY, "pattern", digest.hex().upper())
    assert locator(KEY, "term", "kademlia") != hashlib.sha256(b"termkademlia").digest()[:20]


def test_locators_refuse_unknown_labels_and_malformed_hashes() -> None:
    with pytest.raises(TeamCryptoError, match="label must be one of"):
        locator(KEY, "terms", "x")
    for bad in (b"\0" * 31, "ab" * 31, "zz" * 32, b"ab" * 32, 5):
        with pytest.raises(TeamCryptoError, match="SHA-256 of the plaintext"):
            locator(KEY, "pattern", bad)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="bytes or text"):
        locator(KEY, "id", 5)  # type: ignore[arg-type]


def test_summaries_round_trip_and_bind_team_and_epoch() -> None:
    sealed = encrypt_summary(KEY, TEAM, 4, b"title and words")
    assert b"title" not in sealed and len(sealed) == 12 + 15 + 16
    assert decrypt_summary(KEY, TEAM, 4, sealed) == b"title and words"
    assert decrypt_summary(KEY, TEAM, 4, encrypt_summary(KEY, TEAM, 4, b"")) == b""
    for key, team, epoch in ((new_team_key(), TEAM, 4), (KEY, OTHER_TEAM, 4), (KEY, TEAM, 5)):
        with pytest.raises(DecryptionError, match="cannot decrypt encrypted summary"):
            decrypt_summary(key, team, epoch, sealed)
    for position in range(len(sealed)):
        with pytest.raises(DecryptionError):
            decrypt_summary(KEY, TEAM, 4, flipped(sealed, position))
    with pytest.raises(FormatError, match="shorter"):
        decrypt_summary(KEY, TEAM, 4, sealed[:27])


def test_summaries_and_patterns_do_not_stand_in_for_each_other() -> None:
    blob = encrypt_pattern(KEY, TEAM, 4, b"words")
    with pytest.raises(DecryptionError):
        decrypt_summary(KEY, TEAM, 4, blob[32:])
    summary = encrypt_summary(KEY, TEAM, 4, b"words")
    with pytest.raises(DecryptionError):
        decrypt_pattern(KEY, blob[:32] + summary, sha(b"words"))


# --- at rest and the key chain ---------------------------------------------------------------


def test_at_rest_round_trip_survives_reloading_the_identity(tmp_path, alice: Identity) -> None:
    identity = Identity.generate()
    identity.save(tmp_path)
    sealed = seal_at_rest(identity, TEAM, 3, KEY)
    assert len(sealed) == 60 and KEY not in sealed
    assert open_at_rest(Identity.load(tmp_path), TEAM, 3, sealed) == KEY


def test_at_rest_opens_only_for_its_node_team_and_epoch(alice: Identity, bob: Identity) -> None:
    sealed = seal_at_rest(alice, TEAM, 3, KEY)
    with pytest.raises(DecryptionError, match="sealed by another node"):
        open_at_rest(bob, TEAM, 3, sealed)
    for team, epoch in ((OTHER_TEAM, 3), (TEAM, 2)):
        with pytest.raises(DecryptionError):
            open_at_rest(alice, team, epoch, sealed)
    for position in range(len(sealed)):
        with pytest.raises(DecryptionError):
            open_at_rest(alice, TEAM, 3, flipped(sealed, position))
    with pytest.raises(TeamCryptoError, match="identity must be an Identity"):
        seal_at_rest(alice.public, TEAM, 3, KEY)  # type: ignore[arg-type]
    with pytest.raises(TeamCryptoError, match="team key must be 32 bytes"):
        seal_at_rest(alice, TEAM, 3, KEY[:-1])


def test_the_key_chain_walks_back_and_only_back() -> None:
    keys = [new_team_key() for _ in range(4)]
    chain = {e: chain_previous(keys[e + 1], TEAM, e, keys[e]) for e in range(3)}
    key = keys[3]
    for epoch in (2, 1, 0):
        key = unchain_previous(key, TEAM, epoch, chain[epoch])
        assert key == keys[epoch]
    with pytest.raises(DecryptionError, match="not the key of epoch 2"):
        unchain_previous(keys[0], TEAM, 1, chain[1])  # an old key does not open a newer one
    with pytest.raises(DecryptionError):
        unchain_previous(keys[2], TEAM, 0, chain[1])
    with pytest.raises(DecryptionError):
        unchain_previous(keys[2], OTHER_TEAM, 1, chain[1])
    with pytest.raises(DecryptionError):
        unchain_previous(keys[2], TEAM, 1, flipped(chain[1], 40))
    with pytest.raises(TeamCryptoError, match="no next epoch"):
        chain_previous(keys[1], TEAM, MAX_EPOCH, keys[0])
    with pytest.raises(TeamCryptoError, match="old epoch key must be 32 bytes"):
        chain_previous(keys[1], TEAM, 0, keys[0][:-1])


def test_errors_are_value_errors() -> None:
    for error in (ShareError, FormatError, DecryptionError):
        assert issubclass(error, TeamCryptoError) and issubclass(error, ValueError)


def test_team_crypto_uses_nothing_outside_crypto() -> None:
    code = (
        "import sys, aether.crypto.teams\n"
        "mine = sorted(m for m in sys.modules if m.startswith('aether.') and not m.startswith('aether.crypto'))\n"
        "assert not mine, mine\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
