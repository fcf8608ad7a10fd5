from dataclasses import dataclass

import pytest

from nfstudy.params import check_positive, resolve


@dataclass(frozen=True)
class P:
    depth: int = 20
    lr: float = 0.1
    name: str = "a"
    series: tuple[str, ...] = ("bn",)
    flag: bool = False
    maybe: int | None = None


PROFILES = {"paper": P(), "quick": P(depth=8)}


def test_profiles_and_overrides():
    assert resolve(PROFILES, "quick").depth == 8
    p = resolve(PROFILES, "paper", {"depth": 56, "lr": 1, "series": "bn,none", "flag": True, "name": None})
    assert p == P(depth=56, lr=1.0, series=("bn", "none"), flag=True)
    assert resolve(PROFILES, "paper", {"series": ["nf"], "maybe": 3.0}).maybe == 3


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"detph": 5}, ValueError, "unknown parameter detph .* valid parameters are depth, lr, name"),
        ({"depth": "deep"}, TypeError, "depth must be an int"),
        ({"depth": 2.5}, TypeError, "depth must be an int"),
        ({"lr": "fast"}, TypeError, "lr must be a number"),
        ({"flag": 1}, TypeError, "flag must be True or False"),
        ({"series": 3}, TypeError, "series must be a list"),
    ],
)
def test_bad_overrides_name_the_fix(overrides, error, match):
    with pytest.raises(error, match=match):
        resolve(PROFILES, "paper", overrides)


def test_unknown_profile_lists_profiles():
    with pytest.raises(ValueError, match="unknown profile 'fast': choose one of paper, quick"):
        resolve(PROFILES, "fast")


def test_check_positive():
    assert check_positive("lr", 0.1) == 0.1
    for bad, error in [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), (True, TypeError), ("1", TypeError)]:
        with pytest.raises(error):
            check_positive("lr", bad)
