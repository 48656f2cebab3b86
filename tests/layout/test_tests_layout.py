"""The tests are grouped by the piece they prove, and two files never prove the same thing under
each other's names (test_daemon_drivers.py beside test_drivers_daemon.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if ".venv" not in p.parts)


def test_every_test_file_lives_in_the_folder_of_its_piece() -> None:
    loose = [p.name for p in _test_files() if p.parent == TESTS]
    assert not loose, f"tests/ holds only shared helpers; move {loose} into a piece's folder"


def test_no_two_test_files_share_their_words_in_another_order() -> None:
    by_words: dict[frozenset[str], list[str]] = defaultdict(list)
    for p in _test_files():
        by_words[frozenset(p.stem.removeprefix("test_").split("_"))].append(
            str(p.relative_to(TESTS))
        )
    pairs = [names for names in by_words.values() if len(names) > 1]
    assert not pairs, f"one name per subject, not {pairs}"


def test_basenames_are_unique_because_pytest_imports_them_by_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for p in _test_files():
        seen[p.name].append(str(p.relative_to(TESTS)))
    assert [v for v in seen.values() if len(v) > 1] == []
