"""The ``atomic-usage keys ...`` commands and ``atomic-usage open``.

Wiring, in the main ``cli.py``::

    from atomic_usage.security.cli import keys_app, open_command
    app.add_typer(keys_app, name="keys")
    app.command("open")(open_command)

Once the engine store can re-seal its results, build the keys app with its hook
instead: ``make_keys_app(reseal_store=lambda ring: store.reseal(ring))``.

Every command takes ``--keyring PATH`` (environment ``ATOMIC_KEYRING``, default
``<data_dir>/keyring.json``). Errors print one sentence on stderr and exit with
code 2, without a traceback; key bytes are never printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from ..errors import AtomicError, SecurityError
from .keyring import KEYRING_FILENAME, Keyring, _write_private
from .seal import Envelope, ResealReport, open_result, reseal_all

__all__ = [
    "keys_app",
    "make_keys_app",
    "open_command",
    "read_envelopes",
    "reseal_files",
]

EXIT_ERROR = 2
"""Exit code of a command that failed for a reason the message explains."""

ResealHook = Callable[[Keyring], ResealReport]

KeyringOption = Annotated[
    Path | None,
    typer.Option(
        "--keyring",
        envvar="ATOMIC_KEYRING",
        help="Keyring file (default: <data_dir>/keyring.json).",
        dir_okay=False,
    ),
]


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """Prints an AtomicError as one line on stderr and exits with code 2."""
    try:
        yield
    except AtomicError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def _keyring_path(option: Path | None) -> Path:
    if option is not None:
        return option
    return Settings.from_env().data_dir / KEYRING_FILENAME


def read_envelopes(path: Path, *, responses: bool = False) -> tuple[Any, list[Envelope]]:
    """Reads a file holding one envelope or a JSON list of them (``-`` reads stdin).

    Each envelope may be a JSON object or the JSON text :func:`~.seal` returned. With
    ``responses``, a whole ``POST /v1/predict?sealed=true`` (or ``process(sealed=True)``) answer
    is read too: its ``sealed`` list.

    Returns:
        The parsed document (to write back in the same shape) and its envelopes.

    Raises:
        SecurityError: the file cannot be read, is not JSON, or holds something
            other than envelopes.
    """
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SecurityError(f"Cannot read {path}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}.") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise SecurityError(f"{path} is not JSON; give a file with one envelope or a list of them.") from None
    if responses and isinstance(doc, dict) and isinstance(doc.get("sealed"), list):
        doc = doc["sealed"]
    elif responses and isinstance(doc, dict) and "results" in doc:
        raise SecurityError(
            f"{path} is an answer without sealed results (no 'sealed' field): its 'results' are plain "
            "JSON already; ask with ?sealed=true (process(sealed=True)) for results to open."
        )
    items = doc if isinstance(doc, list) else [doc]
    return doc, [Envelope.from_json(x) if isinstance(x, str) else Envelope.from_dict(x) for x in items]


def reseal_files(paths: list[Path], keyring: Keyring) -> ResealReport:
    """Re-seals the envelope files under the active key, rewriting each changed file atomically.

    A file keeps its shape (one envelope or a list, objects or JSON text); files
    are rewritten with mode 0600.

    Returns:
        The counts over all files; a file that cannot be read or opened is
        listed in ``failed`` and left untouched.
    """
    total = ResealReport()
    for path in paths:
        try:
            doc, envs = read_envelopes(path)
        except SecurityError as e:
            total.failed.append((path, str(e)))
            continue
        new: dict[int, str] = {}
        report = reseal_all(enumerate(e.to_json() for e in envs), keyring=keyring, write=new.__setitem__)
        total.current += report.current
        total.failed.extend((f"{path}[{i}]", why) for i, why in report.failed)
        if report.failed or not new:
            continue  # all or nothing per file: a half-rewritten list would be confusing
        items = doc if isinstance(doc, list) else [doc]
        out = [(new[i] if isinstance(x, str) else json.loads(new[i])) if i in new else x for i, x in enumerate(items)]
        body = out if isinstance(doc, list) else out[0]
        _write_private(path, (json.dumps(body, indent=2) + "\n").encode("utf-8"), what="the envelope file")
        total.resealed += report.resealed
    return total


def make_keys_app(reseal_store: ResealHook | None = None) -> typer.Typer:
    """Builds the ``keys`` command group.

    Args:
        reseal_store: called by ``keys reseal`` with the keyring to re-seal the
            results kept by the engine's store; ``None`` re-seals only the files
            given on the command line.
    """
    app = typer.Typer(help="Manage the keys that seal results.", no_args_is_help=True)

    @app.command("init")
    def init(keyring: KeyringOption = None) -> None:
        """Create a keyring file (mode 0600) with one new key."""
        with _errors_to_exit():
            ring = Keyring.create(_keyring_path(keyring))
        typer.echo(
            f"Created the keyring {ring.path} with key {ring.active_id}; back it up with your results, "
            "which cannot be opened without it."
        )

    @app.command("rotate")
    def rotate(keyring: KeyringOption = None) -> None:
        """Add a key that seals from now on; older keys still open their results."""
        with _errors_to_exit():
            ring = Keyring.load(_keyring_path(keyring))
            new = ring.rotate()
        typer.echo(
            f"Key {new} now seals new results; older keys still open theirs. Run "
            "`atomic-usage keys reseal` to move old results to it, then `keys retire ID`."
        )

    @app.command("retire")
    def retire(
        key_id: Annotated[str, typer.Argument(metavar="ID", help="The key to remove.")],
        keyring: KeyringOption = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Remove a key; results it sealed no longer open, so re-seal them first."""
        with _errors_to_exit():
            ring = Keyring.load(_keyring_path(keyring))
            if key_id in ring and not yes:
                typer.confirm(
                    f"Results still sealed with key {key_id} will no longer open; "
                    "did you run `atomic-usage keys reseal`? Retire it",
                    abort=True,
                )
            ring.retire(key_id)
        typer.echo(f"Retired key {key_id}; {len(ring)} key(s) remain, {ring.active_id} is active.")

    @app.command("reseal")
    def reseal(
        files: Annotated[
            list[Path] | None,
            typer.Argument(help="Envelope files (one envelope or a JSON list) to re-seal in place."),
        ] = None,
        keyring: KeyringOption = None,
    ) -> None:
        """Re-seal results under the active key, so older keys can be retired."""
        with _errors_to_exit():
            ring = Keyring.load(_keyring_path(keyring))
            report = reseal_files(list(files or []), ring)
            if reseal_store is not None:
                stored = reseal_store(ring)
                report.resealed += stored.resealed
                report.current += stored.current
                report.failed.extend(stored.failed)
        for ref, why in report.failed:
            typer.echo(f"Skipped {ref}: {why}", err=True)
        typer.echo(
            f"Re-sealed {report.resealed} result(s) under key {ring.active_id}; "
            f"{report.current} already used it; {len(report.failed)} could not be opened."
        )
        if report.failed:
            raise typer.Exit(EXIT_ERROR)

    @app.command("list")
    def list_keys(
        keyring: KeyringOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Show key ids, creation dates and the active key (never key bytes)."""
        with _errors_to_exit():
            ring = Keyring.load(_keyring_path(keyring))
        infos = ring.keys()
        if as_json:
            rows = [
                {"id": k.key_id, "created": k.created.isoformat() if k.created else None, "active": k.active}
                for k in infos
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        typer.echo(f"{'ID':<18}{'CREATED':<27}ACTIVE")
        for k in infos:
            created = k.created.isoformat() if k.created else "-"
            typer.echo(f"{k.key_id:<18}{created:<27}{'yes' if k.active else ''}".rstrip())

    return app


keys_app = make_keys_app()
"""The ``keys`` command group without a store hook (re-seals files only)."""


def open_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="A JSON file with one envelope, a list of them, or a whole ?sealed=true answer; - for stdin."
        ),
    ],
    keyring: KeyringOption = None,
) -> None:
    """Open sealed results and print them as JSON.

    The key comes from ``--keyring`` / ``ATOMIC_KEYRING`` when given, else from
    ``ATOMIC_KEY`` when set, else from ``<data_dir>/keyring.json``. A whole answer of
    ``POST /v1/predict?sealed=true`` opens as the list of its ``sealed`` envelopes.
    """
    with _errors_to_exit():
        if keyring is not None:
            key, path = None, keyring
        else:
            settings = Settings.from_env()
            key, path = settings.key, settings.data_dir / KEYRING_FILENAME
        if not key and not path.exists():
            # A new keyring can never open what another one sealed: say where the right one is.
            raise SecurityError(
                f"There is no keyring at {path}: results open only with the keyring that sealed them; "
                "set ATOMIC_DATA_DIR to the data folder of the service or process() that sealed them, "
                "or give its keyring file with --keyring (ATOMIC_KEYRING)."
            )
        ring = Keyring.from_key(key) if key else Keyring.load(path)
        doc, envs = read_envelopes(file, responses=True)
        results = [open_result(e, keyring=ring) for e in envs]
    typer.echo(json.dumps(results if isinstance(doc, list) else results[0], indent=2))
