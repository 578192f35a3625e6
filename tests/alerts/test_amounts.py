"""`amount_decimal` is exact: every amount up to 2**256 - 1, at any number of decimals."""

from __future__ import annotations

from decimal import Decimal, localcontext

from hypothesis import given
from hypothesis import strategies as st

from depositwatch.models import Asset

UINT256_MAX = 2**256 - 1


@given(amount=st.integers(min_value=0, max_value=UINT256_MAX), decimals=st.integers(min_value=0, max_value=80))
def test_amount_decimal_is_exact(amount: int, decimals: int) -> None:
    """Reading the text back at full precision gives the amount in base units, with no trailing zeros."""
    text = Asset("T", decimals).to_decimal(amount)
    with localcontext() as context:
        context.prec = 200
        assert Decimal(text).scaleb(decimals) == amount
    assert "e" not in text.lower() and not text.startswith(".")
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")


def test_the_largest_token_amount_keeps_every_digit() -> None:
    """2**256 - 1 at 18 decimals has 78 significant digits: none is rounded away."""
    assert Asset("T", 18).to_decimal(UINT256_MAX) == (
        "115792089237316195423570985008687907853269984665640564039457.584007913129639935"
    )
    assert Asset("T", 6).to_decimal(1) == "0.000001"
    assert Asset("T", 6).to_decimal(250_000_000) == "250"
    assert Asset("T", 0).to_decimal(UINT256_MAX) == str(UINT256_MAX)
