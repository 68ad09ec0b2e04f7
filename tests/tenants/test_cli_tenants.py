"""``leapasgi keys`` and ``leapasgi usage`` on a config's SQLite file, no gateway running."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from leapasgi.cli import main
from leapasgi.tenants._sqlite import SqliteFile
from leapasgi.tenants.base import UsageRow, VirtualKey, key_digest
from leapasgi.tenants.keys import SqliteKeyStore
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[tenants]\ndatabase = "{(tmp_path / "t.sqlite3").as_posix()}"\n')
    return path


def leap(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def create(capsys: pytest.CaptureFixture[str], config: Path, *options: str) -> dict[str, Any]:
    status, out, _ = leap(capsys, "keys", "create", "--config", str(config), "--json", *options)
    assert status == 0
    created: dict[str, Any] = json.loads(out)
    return created


def stored(config: Path, key_id: str) -> VirtualKey | None:
    async def get() -> VirtualKey | None:
        database = SqliteFile(config.parent / "t.sqlite3")
        try:
            return await SqliteKeyStore(database).get(key_id)
        finally:
            database.close()

    return anyio.run(get)


def test_create_prints_the_secret_once_and_keeps_only_its_digest(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    status, out, err = leap(
        capsys,
        "keys", "create", "--config", str(config),
        "--tenant", "team-a", "--name", "ci", "--models", "gpt-4o, fast",
        "--rpm", "60", "--tpm", "10000", "--max-in-flight", "4",
        "--budget", "25", "--period", "day", "--alert-at", "0.8",
        "--expires-in", "30d", "--tag", "ci", "--tag", "eu",
        "--meta", "owner=ops", "--meta", "cost-centre=42",
    )  # fmt: skip
    assert (status, err) == (0, "")
    secrets = re.findall(r"lk-[A-Za-z0-9_-]{43}", out)
    assert len(secrets) == 1
    assert "will not be shown again" in out
    key_id = re.search(r"key_[0-9a-f]{16}", out)
    assert key_id is not None
    key = stored(config, key_id[0])
    assert key is not None
    assert key.digest == key_digest(secrets[0])
    assert (key.tenant, key.name, key.tags) == ("team-a", "ci", ("ci", "eu"))
    assert key.policy.models == frozenset({"gpt-4o", "fast"})
    assert (key.policy.rpm, key.policy.tpm, key.policy.max_in_flight) == (60, 10000, 4)
    assert key.policy.budget is not None
    assert key.policy.budget.alert_at == 0.8
    assert dict(key.metadata) == {"owner": "ops", "cost-centre": "42"}
    assert key.expires_at is not None
    assert key.expires_at == pytest.approx(time.time() + 30 * 86400, abs=60)
    for line in ("tenant:   team-a", "limits:   60 rpm, 10000 tpm, 4 at once"):
        assert line in out


def test_list_and_show_never_show_the_secret(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    first = create(capsys, config, "--tenant", "team-a", "--name", "one")
    second = create(capsys, config, "--tenant", "team-b")
    secrets = (first["secret"], second["secret"])
    status, out, _ = leap(capsys, "keys", "list", "--config", str(config))
    assert status == 0
    assert out.splitlines()[0].split() == [
        "ID", "HINT", "TENANT", "NAME", "STATUS", "MODELS", "LIMITS", "BUDGET", "EXPIRES"
    ]  # fmt: skip
    assert first["id"] in out
    assert second["id"] in out
    assert first["hint"] in out
    _, team_b, _ = leap(capsys, "keys", "list", "--config", str(config), "--tenant", "team-b")
    assert first["id"] not in team_b
    assert second["id"] in team_b
    _, shown, _ = leap(capsys, "keys", "show", first["id"], "--config", str(config))
    _, as_json, _ = leap(capsys, "keys", "list", "--config", str(config), "--json")
    assert [k["id"] for k in json.loads(as_json)["data"]] == [first["id"], second["id"]]
    for text in (out, team_b, shown, as_json):
        assert not any(secret in text for secret in secrets)


def test_revoked_keys_are_listed_only_with_all(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key = create(capsys, config)
    status, out, _ = leap(capsys, "keys", "revoke", key["id"], "--config", str(config))
    assert status == 0
    assert "status:   revoked" in out
    revoked = stored(config, key["id"])
    assert revoked is not None
    assert revoked.revoked_at is not None
    _, listed, _ = leap(capsys, "keys", "list", "--config", str(config))
    assert key["id"] not in listed
    _, everything, _ = leap(capsys, "keys", "list", "--config", str(config), "--all")
    assert key["id"] in everything
    assert "revoked" in everything
    leap(capsys, "keys", "revoke", key["id"], "--config", str(config))
    again = stored(config, key["id"])
    assert again is not None
    assert again.revoked_at == revoked.revoked_at


def test_update_changes_only_what_it_is_given(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    key = create(
        capsys, config, "--rpm", "60", "--tpm", "100", "--budget", "10", "--period", "day",
        "--expires-in", "12h", "--tag", "a",
    )  # fmt: skip
    status, out, _ = leap(
        capsys, "keys", "update", key["id"], "--config", str(config),
        "--rpm", "5", "--alert-at", "0.5", "--json",
    )  # fmt: skip
    assert status == 0
    updated = json.loads(out)
    assert (updated["rpm"], updated["tpm"]) == (5, 100)
    assert updated["budget"] == {"usd": 10.0, "period": "day", "alert_at": 0.5}
    assert updated["expires_at"] == key["expires_at"]
    assert updated["tags"] == ["a"]
    assert "secret" not in updated
    status, out, _ = leap(
        capsys, "keys", "update", key["id"], "--config", str(config),
        "--no-budget", "--no-expiry", "--tag", "b", "--json",
    )  # fmt: skip
    cleared = json.loads(out)
    assert (cleared["budget"], cleared["expires_at"], cleared["tags"]) == (None, None, ["b"])
    assert stored(config, key["id"]) is not None


def test_keys_work_on_redis_and_say_so_when_it_is_gone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_server: RedisServer
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n')
    key = create(capsys, config, "--tenant", "team-a")
    status, out, _ = leap(capsys, "keys", "list", "--config", str(config))
    assert status == 0
    assert key["id"] in out
    redis_server.kill()
    status, _, err = leap(capsys, "keys", "list", "--config", str(config))
    assert status == 2
    assert err.endswith("leapasgi: Redis is unreachable (ConnectionError)\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "show", "key_0123456789abcdef"], "No virtual key 'key_0123456789abcdef'"),
        (["keys", "revoke", "key_0123456789abcdef"], "No virtual key"),
        (["keys", "create", "--rpm", "0"], "rpm: "),
        (["keys", "create", "--expires-in", "soon"], "--expires-in"),
        (["keys", "create", "--meta", "novalue"], "--meta"),
        (["keys", "create", "--alert-at", "0.5"], "--budget USD"),
        (["keys", "create", "--tag", "x" * 65], "tags: "),
        (["usage", "--since", "yesterday"], "since: "),
        (["usage", "--by", "week"], "group_by: "),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], config: Path, argv: list[str], message: str
) -> None:
    status, _, err = leap(capsys, *argv, "--config", str(config))
    assert status == 2
    assert err.startswith("leapasgi: ")
    assert message in err
    assert err.count("\n") == 1


def test_usage_prints_its_rows_and_a_total(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    from leapasgi.tenants.usage import SqliteUsageStore

    async def seed() -> None:
        database = SqliteFile(config.parent / "t.sqlite3")
        try:
            rows = [
                UsageRow("2027-01-14", "team-a", "gpt-4o", "openai", requests=3, errors=1,
                         prompt_tokens=30, completion_tokens=12, cost_usd=0.1234567),
                UsageRow("2027-01-15", "team-b", "fast", "groq", requests=2,
                         prompt_tokens=5, cost_usd=0.2),
            ]  # fmt: skip
            await SqliteUsageStore(database).add(rows)
        finally:
            database.close()

    anyio.run(seed)
    period = ["--since", "2027-01-01", "--until", "2027-01-31"]
    status, out, _ = leap(capsys, "usage", "--config", str(config), *period)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "usage from 2027-01-01 to 2027-01-31"
    assert lines[1].split() == [
        "DAY", "TENANT", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "CACHED",
        "COST_USD",
    ]  # fmt: skip
    first = ["2027-01-14", "team-a", "gpt-4o", "3", "1", "30", "12", "0", "0.123457"]
    assert lines[2].split() == first
    assert lines[-1].startswith("total: 5 requests, 1 errors, 35 prompt tokens")
    assert "$0.323457" in lines[-1]
    _, by_tenant, _ = leap(
        capsys, "usage", "--config", str(config), *period, "--by", "tenant", "--tenant", "team-b"
    )
    assert by_tenant.splitlines()[2].split() == ["team-b", "2", "0", "5", "0", "0", "0.200000"]
    _, as_json, _ = leap(capsys, "usage", "--config", str(config), *period, "--json")
    body = json.loads(as_json)
    assert body["total"]["requests"] == 5
    assert len(body["data"]) == 2
