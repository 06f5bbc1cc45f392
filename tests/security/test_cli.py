"""Tests of the `keys` commands and `open`, through typer's CliRunner."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from atomic_usage.security import Envelope, Keyring, ResealReport, open_result, seal
from atomic_usage.security.cli import keys_app, make_keys_app, open_command, reseal_files

IDS = {"task_id": "t-1", "record_id": "web-1", "model_version": "m1"}


def _app(keys: typer.Typer = keys_app) -> typer.Typer:
    app = typer.Typer()
    app.add_typer(keys, name="keys")
    app.command("open")(open_command)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _run(runner: CliRunner, *args: str, input: str | None = None, app: typer.Typer | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app or _app(), list(args), input=input)


def _failed_cleanly(result) -> None:  # type: ignore[no-untyped-def]
    """Exit code 2, a one-line Error: message, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output


class TestKeysInit:
    """`keys init` creates a private keyring file and says where."""

    def test_creates_under_data_dir_by_default(self, runner: CliRunner, tmp_path: Path) -> None:
        """Without --keyring the file goes to ATOMIC_DATA_DIR/keyring.json, mode 0600."""
        result = _run(runner, "keys", "init")
        path = tmp_path / "data" / "keyring.json"
        assert result.exit_code == 0 and str(path) in result.stdout and "back it up" in result.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_keyring_option_and_env(self, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """--keyring and ATOMIC_KEYRING choose the file."""
        assert _run(runner, "keys", "init", "--keyring", str(tmp_path / "a.json")).exit_code == 0
        monkeypatch.setenv("ATOMIC_KEYRING", str(tmp_path / "b.json"))
        assert _run(runner, "keys", "init").exit_code == 0
        assert (tmp_path / "a.json").exists() and (tmp_path / "b.json").exists()

    def test_second_init_fails_cleanly(self, runner: CliRunner, ring_file: Path) -> None:
        """Initialising over an existing keyring exits 2 with one sentence."""
        _failed_cleanly(_run(runner, "keys", "init", "--keyring", str(ring_file)))

    def test_bad_setting_fails_cleanly(self, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad environment variable is reported as an error, not a traceback."""
        monkeypatch.setenv("LOG_LEVEL", "LOUD")
        _failed_cleanly(_run(runner, "keys", "init"))


class TestKeysListRotateRetire:
    """`keys list`, `rotate` and `retire` manage keys and never print key bytes."""

    def test_list_shows_ids_and_dates_only(self, runner: CliRunner, ring_file: Path) -> None:
        """The table and the JSON show ids, dates and the active flag, never the key."""
        secret = json.loads(ring_file.read_text())["keys"][0]["key"]
        table = _run(runner, "keys", "list", "--keyring", str(ring_file))
        as_json = _run(runner, "keys", "list", "--keyring", str(ring_file), "--json")
        ring = Keyring.load(ring_file)
        assert table.exit_code == 0 and ring.active_id in table.stdout and "yes" in table.stdout
        assert json.loads(as_json.stdout)[0]["id"] == ring.active_id
        assert json.loads(as_json.stdout)[0]["active"] is True
        for out in (table.stdout, as_json.stdout):
            assert secret not in out and base64.b64decode(secret).hex() not in out

    def test_list_shows_a_dash_for_unknown_dates(self, runner: CliRunner, ring_file: Path) -> None:
        """A key without a creation date is listed with '-' (and null in JSON)."""
        doc = json.loads(ring_file.read_text())
        doc["keys"][0]["created"] = None
        ring_file.write_text(json.dumps(doc))
        table = _run(runner, "keys", "list", "--keyring", str(ring_file))
        as_json = _run(runner, "keys", "list", "--keyring", str(ring_file), "--json")
        assert " - " in table.stdout and json.loads(as_json.stdout)[0]["created"] is None

    def test_list_refuses_an_exposed_keyring(self, runner: CliRunner, ring_file: Path) -> None:
        """A world-readable keyring is refused with the chmod fix."""
        ring_file.chmod(0o644)
        result = _run(runner, "keys", "list", "--keyring", str(ring_file))
        _failed_cleanly(result)
        assert f"chmod 600 {ring_file}" in result.stderr

    def test_rotate_then_retire(self, runner: CliRunner, ring_file: Path) -> None:
        """A rotation adds an active key; the old one can then be retired with --yes."""
        old = Keyring.load(ring_file).active_id
        rotated = _run(runner, "keys", "rotate", "--keyring", str(ring_file))
        new = Keyring.load(ring_file).active_id
        assert rotated.exit_code == 0 and new in rotated.stdout and new != old
        retired = _run(runner, "keys", "retire", old, "--yes", "--keyring", str(ring_file))
        assert retired.exit_code == 0 and old not in Keyring.load(ring_file)

    def test_retire_asks_first(self, runner: CliRunner, ring_file: Path) -> None:
        """Without --yes, retire asks; answering no keeps the key."""
        old = Keyring.load(ring_file).active_id
        _run(runner, "keys", "rotate", "--keyring", str(ring_file))
        no = _run(runner, "keys", "retire", old, "--keyring", str(ring_file), input="n\n")
        assert no.exit_code == 1 and "keys reseal" in no.output and old in Keyring.load(ring_file)
        yes = _run(runner, "keys", "retire", old, "--keyring", str(ring_file), input="y\n")
        assert yes.exit_code == 0 and old not in Keyring.load(ring_file)

    def test_retire_active_or_unknown_fails_cleanly(self, runner: CliRunner, ring_file: Path) -> None:
        """Retiring the active key or an unknown id exits 2."""
        active = Keyring.load(ring_file).active_id
        _failed_cleanly(_run(runner, "keys", "retire", active, "-y", "--keyring", str(ring_file)))
        _failed_cleanly(_run(runner, "keys", "retire", "nope", "--keyring", str(ring_file)))


class TestKeysReseal:
    """`keys reseal FILE...` moves envelope files to the active key, keeping their shape."""

    def test_reseals_files_of_every_shape(self, runner: CliRunner, ring_file: Path, tmp_path: Path) -> None:
        """Single objects, lists of objects and lists of JSON text all move to the new key."""
        ring = Keyring.load(ring_file)
        envs = [seal({"i": i}, keyring=ring, **IDS) for i in range(3)]
        one, objs, texts = tmp_path / "one.json", tmp_path / "objs.json", tmp_path / "texts.json"
        one.write_text(envs[0])
        objs.write_text(json.dumps([json.loads(e) for e in envs]))
        texts.write_text(json.dumps(envs))
        ring.rotate()
        ring.rotate()
        current = seal({"i": 9}, keyring=ring, **IDS)
        texts.write_text(json.dumps([*envs, current]))
        result = _run(runner, "keys", "reseal", str(one), str(objs), str(texts), "--keyring", str(ring_file))
        assert result.exit_code == 0 and "Re-sealed 7 result(s)" in result.stdout and "1 already" in result.stdout
        assert isinstance(json.loads(one.read_text()), dict)
        assert all(isinstance(x, dict) for x in json.loads(objs.read_text()))
        assert all(isinstance(x, str) for x in json.loads(texts.read_text()))
        assert json.loads(texts.read_text())[3] == current
        for path in (one, objs, texts):
            doc = json.loads(path.read_text())
            for x in doc if isinstance(doc, list) else [doc]:
                env = Envelope.from_json(x) if isinstance(x, str) else Envelope.from_dict(x)
                assert env.key_id == ring.active_id and open_result(env, keyring=ring, **IDS)["i"] in (
                    0,
                    1,
                    2,
                    9,
                )

    def test_current_file_is_left_untouched(self, ring_file: Path, tmp_path: Path) -> None:
        """A file whose envelopes already use the active key is not rewritten."""
        ring = Keyring.load(ring_file)
        path = tmp_path / "e.json"
        path.write_text(seal({"a": 1}, keyring=ring, **IDS))
        before = path.stat().st_mtime_ns, path.read_text()
        report = reseal_files([path], ring)
        assert (report.resealed, report.current) == (0, 1)
        assert (path.stat().st_mtime_ns, path.read_text()) == before

    def test_bad_files_are_skipped_and_reported(self, runner: CliRunner, ring_file: Path, tmp_path: Path) -> None:
        """Unreadable, non-JSON and foreign-key files are listed; the command exits 2."""
        ring = Keyring.load(ring_file)
        good, garbage, foreign = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "foreign.json"
        good.write_text(seal({"a": 1}, keyring=ring, **IDS))
        garbage.write_text("{nope")
        foreign_env = seal({"a": 1}, keyring=Keyring.generate(), **IDS)
        foreign.write_text(json.dumps([seal({"b": 2}, keyring=ring, **IDS), foreign_env]))
        before = foreign.read_text()
        ring.rotate()
        args = [str(good), str(garbage), str(foreign), str(tmp_path / "missing.json")]
        result = _run(runner, "keys", "reseal", *args, "--keyring", str(ring_file))
        assert result.exit_code == 2 and "Re-sealed 1 result(s)" in result.stdout
        assert "3 could not be opened" in result.stdout
        assert "bad.json is not JSON" in result.stderr and "foreign.json[1]" in result.stderr
        assert "Cannot read" in result.stderr
        assert foreign.read_text() == before  # all or nothing per file

    def test_store_hook_is_called(self, runner: CliRunner, ring_file: Path) -> None:
        """A keys app built with a store hook re-seals the store too and adds its counts."""
        seen: list[Keyring] = []

        def hook(ring: Keyring) -> ResealReport:
            seen.append(ring)
            return ResealReport(resealed=5, current=2, failed=[("row 9", "bad")])

        result = _run(runner, "keys", "reseal", "--keyring", str(ring_file), app=_app(make_keys_app(hook)))
        assert len(seen) == 1 and seen[0].active_id == Keyring.load(ring_file).active_id
        assert "Re-sealed 5 result(s)" in result.stdout and "2 already" in result.stdout
        assert "Skipped row 9: bad" in result.stderr and result.exit_code == 2


class TestOpen:
    """`open FILE` prints the opened results as JSON, or fails cleanly."""

    def test_opens_one_and_many(self, runner: CliRunner, ring_file: Path, tmp_path: Path) -> None:
        """A single envelope prints an object; a list prints a list."""
        ring = Keyring.load(ring_file)
        one, many = tmp_path / "one.json", tmp_path / "many.json"
        one.write_text(seal({"a": 1}, keyring=ring, **IDS))
        many.write_text(json.dumps([seal({"i": i}, keyring=ring, **IDS) for i in range(2)]))
        assert json.loads(_run(runner, "open", str(one), "--keyring", str(ring_file)).stdout) == {"a": 1}
        assert json.loads(_run(runner, "open", str(many), "--keyring", str(ring_file)).stdout) == [
            {"i": 0},
            {"i": 1},
        ]

    def test_reads_stdin_with_the_default_keyring(self, runner: CliRunner, tmp_path: Path) -> None:
        """`open -` reads stdin and finds the keyring under ATOMIC_DATA_DIR."""
        ring = Keyring.create(tmp_path / "data" / "keyring.json")
        result = _run(runner, "open", "-", input=seal({"a": 2}, keyring=ring, **IDS))
        assert result.exit_code == 0 and json.loads(result.stdout) == {"a": 2}

    def test_uses_atomic_key(self, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """With ATOMIC_KEY set and no --keyring, the key comes from the environment."""
        key = base64.b64encode(os.urandom(32)).decode()
        monkeypatch.setenv("ATOMIC_KEY", key)
        path = tmp_path / "e.json"
        path.write_text(seal({"a": 3}, keyring=Keyring.from_key(key), **IDS))
        result = _run(runner, "open", str(path))
        assert result.exit_code == 0 and json.loads(result.stdout) == {"a": 3}

    def test_opens_a_whole_sealed_answer(
        self, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The answer of process(sealed=True), as ?sealed=true gives it, opens as the list of its
        records' results (it was refused: 'This is not a sealed result')."""
        from atomic_usage import Settings, UsagePredictor
        from atomic_usage.models.baselines import Naive

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
        records = [{"id": "web-1", "cpuLoad": 30.0}, {"id": "web-2", "cpuLoad": 40.0}]
        with UsagePredictor(Settings.from_env(), model=Naive()) as p:
            answer = p.process({"usageData": records}, sealed=True)
        path = tmp_path / "answer.json"
        path.write_text(json.dumps(answer))
        result = _run(runner, "open", str(path))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == answer["results"]

    def test_a_plain_answer_says_it_has_nothing_sealed(
        self, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An answer asked for without ?sealed=true is refused as such (it was told that an
        envelope has exactly the fields ..., and to check what `seal()` wrote)."""
        from atomic_usage import Settings, UsagePredictor
        from atomic_usage.models.baselines import Naive

        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
        with UsagePredictor(Settings.from_env(), model=Naive()) as p:
            answer = p.process({"usageData": [{"id": "web-1", "cpuLoad": 30.0}]})
        path = tmp_path / "answer.json"
        path.write_text(json.dumps(answer))
        result = _run(runner, "open", str(path))
        _failed_cleanly(result)
        assert "without sealed results (no 'sealed' field)" in result.stderr and "?sealed=true" in result.stderr

    def test_a_missing_keyring_says_where_the_right_one_is(
        self, runner: CliRunner, ring_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no keyring in the data folder, open says results open only with the keyring that
        sealed them, and creates nothing (it advised `keys init`, whose new keyring opens nothing)."""
        path = tmp_path / "e.json"
        path.write_text(seal({"a": 1}, keyring=Keyring.load(ring_file), **IDS))
        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "elsewhere"))
        result = _run(runner, "open", str(path))
        _failed_cleanly(result)
        assert "only with the keyring that sealed them" in result.stderr and "keys init" not in result.stderr
        assert not (tmp_path / "elsewhere").exists()

    def test_tampered_envelope_fails_cleanly(self, runner: CliRunner, ring_file: Path, tmp_path: Path) -> None:
        """An altered envelope exits 2 with the authentication message."""
        doc = json.loads(seal({"a": 1}, keyring=Keyring.load(ring_file), **IDS))
        doc["ad"]["task_id"] = "t-2"
        path = tmp_path / "e.json"
        path.write_text(json.dumps(doc))
        result = _run(runner, "open", str(path), "--keyring", str(ring_file))
        _failed_cleanly(result)
        assert "failed authentication" in result.stderr

    @pytest.mark.parametrize(
        ("content", "message"), [(None, "Cannot read"), (b"\xff", "not UTF-8"), (b"[1", "not JSON")]
    )
    def test_unreadable_files_fail_cleanly(
        self, runner: CliRunner, ring_file: Path, tmp_path: Path, content: bytes | None, message: str
    ) -> None:
        """Missing, non-UTF-8 and non-JSON files exit 2 with a message naming the problem."""
        path = tmp_path / "e.json"
        if content is not None:
            path.write_bytes(content)
        result = _run(runner, "open", str(path), "--keyring", str(ring_file))
        _failed_cleanly(result)
        assert message in result.stderr
