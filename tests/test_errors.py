"""The exception tree: every error survives pickling (a Dask worker, a process pool) whole."""

from __future__ import annotations

import pickle

import pytest

from atomic_usage import errors as E


def _payload_error() -> E.PayloadError:
    return E.PayloadError(
        [E.RecordError(i, "cpuLoad", "is 130.0, above 100", f"vm\\x0{i}", id_escaped=i % 2 == 0) for i in range(7)]
    )


@pytest.mark.parametrize(
    "make",
    [
        _payload_error,
        lambda: E.PayloadTooLarge([E.RecordError(-1, "usageData", "holds 9 records; at most 8")]),
        lambda: E.TaskNotFound("t-1"),
        lambda: E.TaskNotFound(request_id="r-1"),
        lambda: E.IdempotencyError("r-2"),
        lambda: E.UnknownKeyError("k-9"),
        lambda: E.SchemaError("no id column", path="/data/a.csv"),
        lambda: E.GapError("no values", series_id="vm-1"),
        lambda: E.ArtifactError("model.onnx is missing", path="/models/m"),
        lambda: E.ClusterError("cannot reach the scheduler", address="tcp://h:8786"),
        lambda: E.AuthError(),
        lambda: E.ConfigError("ATOMIC_WORKERS is -1", name="ATOMIC_WORKERS"),
    ],
)
def test_an_error_pickles_whole(make) -> None:  # type: ignore[no-untyped-def]
    """Type, message and attributes come back as they were (a PayloadError came back with its
    message taken for its list of errors: "The payload has 136 bad fields: T; h; e; ...")."""
    exc = make()
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.args == exc.args
    if isinstance(exc, E.PayloadError):
        assert back.errors == exc.errors and [str(e) for e in back.errors] == [str(e) for e in exc.errors]
    else:
        assert vars(back) == vars(exc)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_payload_error_pickles_with_every_protocol(protocol: int) -> None:
    """Its RecordErrors, which have __slots__, pickled with protocol 2 and up only: protocols 0 and
    1 (copyreg's reduce) refused them ("a class that defines __slots__ without defining
    __getstate__ cannot be pickled"), and with them every PayloadError."""
    exc = _payload_error()
    back = pickle.loads(pickle.dumps(exc, protocol=protocol))
    assert type(back) is E.PayloadError and str(back) == str(exc) and back.errors == exc.errors
    seen = [(e.id_escaped, str(e), repr(e)) for e in back.errors]
    assert seen == [(e.id_escaped, str(e), repr(e)) for e in exc.errors]
