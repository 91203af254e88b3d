"""The copy suggested for keeping in a duplicate group: most pixels, then least compressed, then oldest."""

from __future__ import annotations

import pytest

from storage.keep_choice import KEEP, REMOVE, Copy, keep_rank, suggest_keep, suggestions


def copy(key: int | str, width: int = 100, height: int = 100, size: int = 10_000, mtime_ns: int = 1_000) -> Copy:
    return Copy(key, width, height, size, mtime_ns)


def test_the_most_pixels_win_even_against_a_bigger_older_file() -> None:
    small_but_heavy = copy(1, 100, 100, size=900_000, mtime_ns=1)
    large = copy(2, 200, 150, size=20_000, mtime_ns=9)
    assert suggest_keep([small_but_heavy, large]) == 1


def test_same_pixels_in_another_shape_count_the_same() -> None:
    """100x200 and 200x100 hold as many pixels: the next rule decides."""
    assert suggest_keep([copy(1, 100, 200, size=5_000), copy(2, 200, 100, size=6_000)]) == 1


def test_equal_pixels_the_least_compressed_wins() -> None:
    jpeg = copy(1, size=12_000, mtime_ns=1)  # older, but more compressed
    png = copy(2, size=30_000, mtime_ns=5)
    assert suggest_keep([jpeg, png]) == 1


def test_bytes_per_pixel_compare_exactly() -> None:
    """One byte more on a huge image is a difference no float rounding may hide."""
    pixels = 30_000 * 30_000
    heavier = copy(2, 30_000, 30_000, size=3 * pixels + 1, mtime_ns=9)
    assert suggest_keep([copy(1, 30_000, 30_000, size=3 * pixels, mtime_ns=1), heavier]) == 1


def test_equal_pixels_and_size_the_oldest_wins() -> None:
    assert suggest_keep([copy(1, mtime_ns=300), copy(2, mtime_ns=100), copy(3, mtime_ns=200)]) == 1


def test_a_full_tie_keeps_the_smallest_key() -> None:
    assert suggest_keep([copy(7), copy(3), copy(5)]) == 1
    assert suggest_keep([copy("/b/x.jpg"), copy("/a/x.jpg")]) == 1


def test_the_rank_orders_by_each_rule_in_turn() -> None:
    copies = [copy(1, 50, 50), copy(2, size=1_000, mtime_ns=5), copy(3, size=1_000, mtime_ns=2),
              copy(4, size=50_000, mtime_ns=99)]
    assert [c.key for c in sorted(copies, key=keep_rank)] == [4, 3, 2, 1]


def test_suggestions_mark_one_keep_and_the_rest_remove() -> None:
    assert suggestions([copy(1, 10, 10), copy(2), copy(3, 10, 10)]) == [REMOVE, KEEP, REMOVE]
    assert suggestions([copy(1)]) == [KEEP]


def test_no_copies_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        suggest_keep([])


def test_zero_pixels_does_not_divide_by_zero() -> None:
    assert suggest_keep([copy(1, 0, 0, size=10), copy(2, 0, 0, size=20)]) == 1
