"""The scale-and-soak benchmark in its reduced form: every expected match is found, exactly once."""

from __future__ import annotations

from bench.soak import main


def test_reduced_soak_finds_every_match_exactly_once() -> None:
    """200,000 watched addresses, a synthetic chain at ten times mainnet's transfer rate for 20 seconds."""
    result = main(["--minutes", "0.33", "--addresses", "200000", "--watched", "2000", "--hit-share", "0.02"])
    assert result["expected_matches"] > 0
    assert result["found_matches"] == result["expected_matches"]
    assert result["exact"] == 1.0
