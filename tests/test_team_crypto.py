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
    MAX_EPOCH,
    SHARE_BYTES,
    TEAM_ID_BYTES,
    ShareError,
    TeamCryptoError,
    check_commitment,
    combine_shares,
    commitment,
    find_bad_shares,
    new_team_id,
    new_team_key,
    share_index,
    split_key,
)

TEAM = bytes(range(20))
OTHER_TEAM = bytes(range(1, 21))
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


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
    ids = {new_team_id(signing, "eng") for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == TEAM_ID_BYTES for i in ids)


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


def test_errors_are_value_errors() -> None:
    for error in (ShareError,):
        assert issubclass(error, TeamCryptoError) and issubclass(error, ValueError)


def test_team_crypto_uses_nothing_outside_crypto() -> None:
    code = (
        "import sys, aether.crypto.teams\n"
        "mine = sorted(m for m in sys.modules if m.startswith('aether.') and not m.startswith('aether.crypto'))\n"
        "assert not mine, mine\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
