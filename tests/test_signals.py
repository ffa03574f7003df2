from __future__ import annotations

import pytest

from hashdb.errors import InvalidSignal, UnknownSignalType
from hashdb.signals import SIGNAL_TYPES, HashValue, signal_type


def test_registry_matches_the_design_table() -> None:
    table = {name: (t.bits, t.metric) for name, t in SIGNAL_TYPES.items()}
    assert table == {
        "pdq": (256, "hamming"),
        "phash": (64, "hamming"),
        "md5": (128, "exact"),
        "sha256": (256, "exact"),
        "sscd": (4096, "cosine"),
    }
    assert SIGNAL_TYPES["pdq"].default_max_distance == 31
    assert SIGNAL_TYPES["pdq"].min_quality == 50


def test_hex_is_normalised_to_lowercase_and_round_trips() -> None:
    upper = "F8F8F0CCE0F4E84D0E370A22028F67F0B36E2ED596623E1D33E6339C4E9C9B22"
    value = HashValue.from_hex("PDQ", upper)
    assert value.hex == upper.lower()
    assert str(value) == upper.lower()
    assert HashValue.from_hex("pdq", value.hex) == value


def test_distance_is_hamming_for_perceptual_types() -> None:
    a = HashValue.from_hex("pdq", "0" * 64)
    b = HashValue.from_hex("pdq", "f" + "0" * 62 + "1")
    assert a - b == 5
    assert a.distance(a) == 0


def test_exact_types_are_equal_or_far() -> None:
    a = HashValue.from_hex("md5", "0" * 32)
    b = HashValue.from_hex("md5", "0" * 31 + "1")
    assert a - a == 0
    assert a - b == 128


@pytest.mark.parametrize(
    ("type_name", "text"),
    [("pdq", "abc"), ("pdq", "g" * 64), ("pdq", "0" * 65), ("md5", "0" * 64), ("phash", "")],
)
def test_bad_values_are_rejected(type_name: str, text: str) -> None:
    with pytest.raises(InvalidSignal):
        signal_type(type_name).parse(text)


def test_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(UnknownSignalType) as err:
        signal_type("tmk")
    assert err.value.details["known"] == ["md5", "pdq", "phash", "sha256", "sscd"]


def test_comparing_different_types_is_an_error() -> None:
    with pytest.raises(InvalidSignal):
        HashValue.from_hex("pdq", "0" * 64).distance(HashValue.from_hex("sha256", "0" * 64))
