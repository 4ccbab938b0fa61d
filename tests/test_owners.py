"""Owner keys: what runs and jobs carry instead of the browser's token, and the server secret behind them."""

from __future__ import annotations

import stat
from pathlib import Path

from deconv import owners
from deconv.memo import Memo


def test_an_owner_key_is_not_the_token_and_a_key_presented_as_a_token_is_someone_else(tmp_path: Path) -> None:
    secret = owners.server_secret(tmp_path)
    token = owners.new_token()
    key = owners.owner_key(token, secret)
    assert owners.is_token(token) and owners.is_token(key) and key != token
    assert owners.owner_key(token, secret) == key  # the same browser, the same owner
    assert owners.owner_key(key, secret) != key  # a key copied from a download proves nothing
    assert owners.owner_key(token, owners.server_secret(tmp_path / "other")) != key  # another server's secret


def test_the_secret_is_made_once_readable_by_the_server_alone_and_kept_over_restarts(tmp_path: Path) -> None:
    first = owners.server_secret(tmp_path)
    assert owners.server_secret(tmp_path) == first and len(first) == owners.SECRET_BYTES
    path = tmp_path / owners.SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [owners.SECRET_FILE]  # no temporary file left


def test_only_tokens_of_the_right_form_are_taken_from_a_browser() -> None:
    for bad in (None, "", "x" * 32, "0123456789abcdef", "A" * 32, "0" * 31 + "\n", 123):
        assert not owners.is_token(bad)


def test_a_memo_keeps_at_most_its_entries_builds_each_once_and_forgets_after_its_ttl() -> None:
    built: list[str] = []
    memo: Memo[str] = Memo(max_entries=2, ttl=60)

    def build(key: str):
        return lambda: built.append(key) or key.upper()

    assert [memo.get(k, build(k)) for k in ("a", "b", "a", "c", "a")] == ["A", "B", "A", "C", "A"]
    assert built == ["a", "b", "c"] and len(memo) == 2  # "b", least recently used, made room for "c"
    memo.ttl = 0
    memo.get("d", build("d"))
    assert len(memo) == 1 and built[-1] == "d"
