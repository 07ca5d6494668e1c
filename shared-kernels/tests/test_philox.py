"""Philox4x32-10: published known-answer vectors, torch reference == compiled CPU bits."""

import pytest
import shared_kernels as sk
import torch
from shared_kernels import _lib
from shared_kernels.reference import philox as ref
from shared_kernels.testing import assert_bit_exact

# Random123 kat_vectors, philox4x32 10 rounds: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers_reference(ctr, key, expected):
    words = ref.philox4x32_10([torch.tensor([c]) for c in ctr], key)
    assert tuple(int(w.item()) for w in words) == expected


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answers_native(ctr, key, expected):
    assert tuple(_lib.native().philox4x32_10(list(ctr), list(key))) == expected


@pytest.mark.parametrize(
    "seed,offset,n", [(0, 0, 37), (123, 5, 1000), (2**64 - 1, 2**40 + 3, 257), (2**33 + 7, 0, 8)]
)
def test_cpu_matches_reference(seed, offset, n):
    a = sk.philox_random_bits(n, seed=seed, offset=offset, backend="cpu")
    b = sk.philox_random_bits(n, seed=seed, offset=offset, backend="torch")
    assert_bit_exact(a, b, "philox bits")
    assert int(a.min()) >= 0 and int(a.max()) < 2**32


def test_offset_shifts_stream_and_seed_changes_it():
    full = sk.philox_random_bits(64, seed=9, offset=0)
    assert_bit_exact(sk.philox_random_bits(32, seed=9, offset=32), full[32:], "offset window")
    other = sk.philox_random_bits(64, seed=10, offset=0)
    assert (other != full).float().mean() > 0.9


def test_bits_look_uniform():
    bits = sk.philox_random_bits(1 << 16, seed=1)
    u = bits.double() / 2**32
    # mean of U(0,1): sd 1/sqrt(12 n); 5 sigma
    assert abs(u.mean().item() - 0.5) < 5 / (12 * (1 << 16)) ** 0.5
    ones = torch.stack([(bits >> k) & 1 for k in range(32)]).double().mean(dim=1)
    assert ((ones - 0.5).abs() < 5 * 0.5 / (1 << 8)).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        sk.philox_random_bits(4, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        sk.philox_random_bits(4, seed=2**64)
    with pytest.raises(TypeError, match="offset"):
        sk.philox_random_bits(4, offset=1.5)
    with pytest.raises(ValueError, match="n must be"):
        sk.philox_random_bits(-1)
    with pytest.raises(ValueError, match="backend"):
        sk.philox_random_bits(4, backend="gpu")
