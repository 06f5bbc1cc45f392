"""Tests of sealing, opening and re-sealing results."""

from __future__ import annotations

import base64
import binascii
import json
import threading
import types
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

import atomic_usage.security as security
from atomic_usage.errors import IntegrityError, SecurityError, UnknownKeyError
from atomic_usage.security import (
    NONCE_BYTES,
    Envelope,
    Keyring,
    open_result,
    open_sealed,
    reseal,
    reseal_all,
    seal,
    seal_json,
)
from atomic_usage.security.seal import _map_errors, _seal_bytes

RING = Keyring.generate()
"""A module-level keyring for hypothesis tests (function-scoped fixtures do not mix with @given)."""

IDS = {"task_id": "t-42", "record_id": "web-1", "model_version": "neural-1"}
RESULT = {"id": "web-1", "cpuLoad": {"p50": [41.5, 42.0]}, "note": "plaintext-marker-7f3a"}

ad_text = st.text(max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _sealed(ring: Keyring, payload: Any = None, **ids: str) -> str:
    return seal(RESULT if payload is None else payload, keyring=ring, **{**IDS, **ids})


class TestRoundTrip:
    """What seal() closes, open_sealed()/open_result() give back unchanged."""

    @settings(max_examples=200, deadline=None)
    @given(payload=st.binary(max_size=4096), task=ad_text, record=ad_text, model=ad_text)
    def test_bytes_round_trip(self, payload: bytes, task: str, record: str, model: str) -> None:
        """Any bytes under any ids open to the same bytes."""
        env = seal(payload, keyring=RING, task_id=task, record_id=record, model_version=model)
        assert open_sealed(env, keyring=RING, task_id=task, record_id=record, model_version=model) == payload

    @settings(max_examples=200, deadline=None)
    @given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
    def test_json_round_trip(self, payload: dict[str, Any]) -> None:
        """Any JSON object opens to an equal dict."""
        assert open_result(_sealed(RING, payload), keyring=RING) == payload

    @settings(max_examples=100, deadline=None)
    @given(payload=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
    def test_seal_json_is_seal_of_the_encoded_mapping(self, payload: dict[str, Any]) -> None:
        """seal_json of a mapping's JSON text opens, like seal of the mapping, to an equal dict."""
        text = json.dumps(payload).encode()
        env = seal_json(text, keyring=RING, **IDS)
        assert json.loads(env)["cty"] == "json"
        assert open_result(env, keyring=RING, **IDS) == payload
        assert open_sealed(env, keyring=RING) == text

    def test_open_accepts_text_bytes_object_and_envelope(self, ring: Keyring) -> None:
        """An envelope may be given as its JSON text, UTF-8 bytes, parsed object or Envelope."""
        env = _sealed(ring)
        for form in (env, env.encode(), json.loads(env), Envelope.from_json(env)):
            assert open_result(form, keyring=ring, **IDS) == RESULT

    def test_open_sealed_of_json_result_gives_its_json_text(self, ring: Keyring) -> None:
        """open_sealed() of a sealed mapping returns the compact JSON of it."""
        assert json.loads(open_sealed(_sealed(ring), keyring=ring)) == RESULT

    def test_bytearray_and_memoryview_are_sealed_as_bytes(self, ring: Keyring) -> None:
        """Bytes-like plaintexts seal as raw bytes."""
        for data in (bytearray(b"abc"), memoryview(b"abc")):
            assert open_sealed(seal(data, keyring=ring, **IDS), keyring=ring) == b"abc"

    def test_envelope_is_compact_documented_json(self, ring: Keyring) -> None:
        """The envelope has exactly the documented fields and a fresh 12-byte nonce."""
        doc = json.loads(_sealed(ring))
        assert list(doc) == ["v", "kid", "cty", "n", "ct", "ad"]
        assert doc["v"] == 1 and doc["kid"] == ring.active_id and doc["cty"] == "json"
        assert doc["ad"] == IDS
        assert len(base64.b64decode(doc["n"])) == NONCE_BYTES
        assert " " not in _sealed(ring)

    @settings(max_examples=200, deadline=None)
    @given(task=ad_text, record=ad_text, model=ad_text)
    def test_to_json_matches_json_dumps(self, task: str, record: str, model: str) -> None:
        """The fast envelope formatter writes exactly what json.dumps would."""
        env = Envelope.from_json(seal(b"x", keyring=RING, task_id=task, record_id=record, model_version=model))
        assert env.to_json() == json.dumps(env.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def test_concurrent_seals_from_threads_all_open(self, ring: Keyring) -> None:
        """One keyring seals from many threads at once without mixing results."""
        out: dict[int, str] = {}

        def work(i: int) -> None:
            for j in range(200):
                out[i * 1000 + j] = seal({"i": i, "j": j}, keyring=ring, **IDS)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(open_result(e, keyring=ring) == {"i": k // 1000, "j": k % 1000} for k, e in out.items())


class TestTampering:
    """An altered envelope, other associated data or another key fails with a SecurityError."""

    def test_every_single_byte_flip_is_detected(self, ring: Keyring) -> None:
        """Flipping any one bit of any byte of the envelope makes opening fail cleanly."""
        raw = _sealed(ring).encode()
        for i in range(len(raw)):
            for mask in (0x01, 0x20, 0x80):
                bad = bytearray(raw)
                bad[i] ^= mask
                with pytest.raises(SecurityError):
                    open_sealed(bytes(bad), keyring=ring)

    @settings(max_examples=300, deadline=None)
    @given(data=st.data(), payload=st.binary(max_size=256))
    def test_random_byte_changes_are_detected(self, data: st.DataObject, payload: bytes) -> None:
        """Replacing any byte with any other value never opens."""
        raw = bytearray(seal(payload, keyring=RING, **IDS).encode())
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
        with pytest.raises(SecurityError):
            open_sealed(bytes(raw), keyring=RING)

    @pytest.mark.parametrize("field", ["task_id", "record_id", "model_version"])
    def test_rewritten_associated_data_fails_authentication(self, ring: Keyring, field: str) -> None:
        """Moving an envelope to another task, record or model by editing its ad is caught by GCM."""
        doc = json.loads(_sealed(ring))
        doc["ad"][field] = "other"
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_result(doc, keyring=ring)

    @pytest.mark.parametrize("field", ["task_id", "record_id", "model_version"])
    def test_expected_ids_must_match(self, ring: Keyring, field: str) -> None:
        """Opening under another task, record or model than it was sealed for is refused."""
        with pytest.raises(IntegrityError, match=f"belongs to {field} '{IDS[field]}', not 'other'"):
            open_result(_sealed(ring), keyring=ring, **{field: "other"})

    def test_relabelled_content_type_fails_authentication(self, ring: Keyring) -> None:
        """The content type is authenticated too."""
        doc = json.loads(_sealed(ring))
        doc["cty"] = "bytes"
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_sealed(doc, keyring=ring)

    def test_other_keyring_names_the_missing_key(self, ring: Keyring) -> None:
        """A keyring without the sealing key raises UnknownKeyError naming the key id."""
        with pytest.raises(UnknownKeyError, match=ring.active_id) as info:
            open_result(_sealed(ring), keyring=Keyring.generate())
        assert info.value.key_id == ring.active_id

    def test_wrong_key_bytes_under_the_same_id(self, ring: Keyring) -> None:
        """A key with the right id but other bytes fails authentication instead of giving garbage."""
        impostor = Keyring.generate()
        impostor._keys = {ring.active_id: next(iter(impostor._keys.values()))}
        with pytest.raises(IntegrityError, match="failed authentication with key"):
            open_result(_sealed(ring), keyring=impostor)

    def test_bytes_envelope_is_not_a_json_result(self, ring: Keyring) -> None:
        """open_result() refuses an envelope of raw bytes and says what to use."""
        with pytest.raises(SecurityError, match="open_sealed"):
            open_result(seal(b"raw", keyring=ring, **IDS), keyring=ring)

    def test_undecodable_json_plaintext_leaks_nothing(self, ring: Keyring) -> None:
        """A json envelope whose plaintext is not JSON fails without carrying the plaintext along."""
        env = _seal_bytes(b"\xffsecret-plaintext", "json", ring, "t", "r", "m")
        with pytest.raises(IntegrityError) as info:
            open_result(env, keyring=ring)
        chain = [info.value, info.value.__cause__, info.value.__context__]
        assert "secret-plaintext" not in "".join(repr(e) for e in chain)
        assert info.value.__context__ is None


MALFORMED: list[tuple[str, Any, str]] = [
    ("not json", b"{not json", "malformed"),
    ("bad utf-8", b'{"v":1,"kid":"\xff"}', "malformed"),
    ("a list", [], "not a sealed result"),
    ("missing field", {"kid": None}, "not a sealed result"),
    ("extra field", {"x": 1}, "not a sealed result"),
    ("version 2", {"v": 2}, "format version 2"),
    ("version true", {"v": True}, "format version True"),
    ("version 1.0", {"v": 1.0}, "format version 1.0"),
    ("ad not a dict", {"ad": []}, "'ad' must hold"),
    ("ad missing field", {"ad": {"task_id": "t"}}, "'ad' must hold"),
    ("ad not strings", {"ad": {"task_id": 1, "record_id": "r", "model_version": "m"}}, "'ad' must hold"),
    ("kid not str", {"kid": 7}, "'kid' or 'cty'"),
    ("unknown cty", {"cty": "xml"}, "'kid' or 'cty'"),
    ("nonce not str", {"n": 5}, "'n' is not base64 text"),
    ("nonce not base64", {"n": "AAA"}, "'n' is not base64"),
    ("nonce with foreign characters", {"n": "!AAAAAAAAAAAAAAAA"}, "'n' is not canonical"),
    ("nonce not ascii", {"n": "é"}, "'n' is not base64"),
    ("nonce not canonical", {"n": "QR=="}, "'n' is not canonical"),
    ("short nonce", {"n": base64.b64encode(b"12345").decode()}, "too short"),
    ("short ciphertext", {"ct": base64.b64encode(b"1234").decode()}, "too short"),
]


class TestMalformed:
    """Envelopes that are not well formed raise IntegrityError saying what is wrong."""

    @pytest.mark.parametrize(("case", "change", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
    def test_malformed_envelope(self, ring: Keyring, case: str, change: Any, message: str) -> None:
        """Each malformation is reported with its own message."""
        if isinstance(change, dict):
            doc: Any = json.loads(_sealed(ring))
            doc.update(change)
            doc = {k: v for k, v in doc.items() if v is not None}
        else:
            doc = change
        with pytest.raises(IntegrityError, match=message):
            open_sealed(doc, keyring=ring)
        if not isinstance(doc, bytes):
            with pytest.raises(IntegrityError, match=message):
                Envelope.from_json(json.dumps(doc))

    def test_non_canonical_base64_of_the_same_bytes_is_refused(self, ring: Keyring) -> None:
        """Setting unused trailing base64 bits would decode to the same nonce; it is refused."""
        doc = json.loads(seal(b"x", keyring=ring, **IDS))
        ct = doc["ct"]
        assert ct.endswith("=")
        stem = ct.rstrip("=")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        sibling = alphabet[alphabet.index(stem[-1]) ^ 1]
        doc["ct"] = stem[:-1] + sibling + ct[len(stem) :]
        assert base64.b64decode(doc["ct"]) == base64.b64decode(ct)
        with pytest.raises(IntegrityError, match="canonical"):
            open_sealed(doc, keyring=ring)

    @pytest.mark.parametrize(
        "error",
        [
            InvalidTag(),
            binascii.Error("x"),
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
            json.JSONDecodeError("x", "doc", 0),
            ValueError("x"),
            TypeError("x"),
            KeyError("x"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_every_upstream_error_is_mapped(self, error: Exception) -> None:
        """cryptography, base64, Unicode and JSON errors all come out as IntegrityError."""
        with pytest.raises(IntegrityError), _map_errors("k"):
            raise error

    def test_own_errors_pass_through_the_mapping(self) -> None:
        """An UnknownKeyError (also a KeyError) is not turned into an IntegrityError."""
        with pytest.raises(UnknownKeyError), _map_errors("k"):
            raise UnknownKeyError("k")


class TestSealArguments:
    """seal() refuses arguments it cannot seal faithfully, without echoing them."""

    @pytest.mark.parametrize("field", ["task_id", "record_id", "model_version"])
    def test_ids_must_be_strings(self, ring: Keyring, field: str) -> None:
        """A non-str id raises TypeError naming the argument."""
        with pytest.raises(TypeError, match=f"{field} must be a str, got int"):
            seal(b"x", keyring=ring, **{**IDS, field: 5})  # type: ignore[arg-type]

    @pytest.mark.parametrize("payload", [{"x": float("nan")}, {"x": object()}])
    def test_result_must_be_json_ready(self, ring: Keyring, payload: dict[str, Any]) -> None:
        """NaN or a non-JSON value is refused before anything is sealed."""
        with pytest.raises(TypeError, match="not JSON-ready") as info:
            seal(payload, keyring=ring, **IDS)
        assert info.value.__cause__ is None

    def test_seal_json_takes_bytes_and_string_ids(self, ring: Keyring) -> None:
        """seal_json refuses a str (or any non-bytes) text and non-str ids."""
        with pytest.raises(TypeError, match="takes the JSON text as bytes, got str"):
            seal_json('{"a":1}', keyring=ring, **IDS)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="record_id must be a str, got int"):
            seal_json(b"{}", keyring=ring, **{**IDS, "record_id": 1})  # type: ignore[arg-type]

    def test_plaintext_must_be_bytes_or_mapping(self, ring: Keyring) -> None:
        """A str or list is refused with the accepted types named."""
        with pytest.raises(TypeError, match="takes bytes or a mapping, got str"):
            seal("text", keyring=ring, **IDS)  # type: ignore[arg-type]


class TestNonces:
    """Every seal draws a fresh random 96-bit nonce."""

    @staticmethod
    def _count_distinct_nonces(n: int) -> int:
        ring = Keyring.generate()
        nonces = set()
        for _ in range(n):
            env = seal(b"r", keyring=ring, task_id="t", record_id="r", model_version="m")
            # the nonce is the 16 base64 characters after '"n":"' (fixed field order)
            start = env.index('"n":"') + 5
            nonces.add(env[start : start + 16])
        return len(nonces)

    def test_100_000_seals_have_distinct_nonces(self) -> None:
        """100,000 seals with one key repeat no nonce."""
        assert self._count_distinct_nonces(100_000) == 100_000

    @pytest.mark.slow
    def test_1_000_000_seals_have_distinct_nonces(self) -> None:
        """1,000,000 seals with one key repeat no nonce."""
        assert self._count_distinct_nonces(1_000_000) == 1_000_000

    def test_nonce_slice_is_the_nonce(self, ring: Keyring) -> None:
        """The slice used above is exactly the envelope's nonce."""
        env = seal(b"r", keyring=ring, **IDS)
        start = env.index('"n":"') + 5
        assert base64.b64decode(env[start : start + 16]) == Envelope.from_json(env).nonce


class TestRotationAndReseal:
    """Rotation keeps old results readable; reseal moves them to the active key."""

    def test_old_results_open_after_rotation(self, ring: Keyring) -> None:
        """A result sealed before a rotation still opens, and new seals use the new key."""
        old = _sealed(ring)
        old_id = ring.active_id
        new_id = ring.rotate()
        assert open_result(old, keyring=ring, **IDS) == RESULT
        assert Envelope.from_json(_sealed(ring)).key_id == new_id != old_id

    def test_reseal_moves_to_the_active_key_and_keeps_bindings(self, ring: Keyring) -> None:
        """A re-sealed envelope opens under the same ids after the old key is retired."""
        old_id = ring.active_id
        old = _sealed(ring)
        ring.rotate()
        new = reseal(old, keyring=ring)
        ring.retire(old_id)
        assert Envelope.from_json(new).key_id == ring.active_id
        assert open_result(new, keyring=ring, **IDS) == RESULT
        with pytest.raises(UnknownKeyError):
            open_result(old, keyring=ring)

    def test_reseal_of_a_current_envelope_changes_nothing(self, ring: Keyring) -> None:
        """An envelope already under the active key comes back as it was."""
        env = _sealed(ring)
        assert reseal(env, keyring=ring) == env

    def test_reseal_all_counts_and_skips_bad_items(self, ring: Keyring) -> None:
        """reseal_all writes back old envelopes, leaves current ones, and records failures."""
        old = _sealed(ring)
        ring.rotate()
        items = [("a", old), ("b", _sealed(ring)), ("c", "garbage"), ("d", _sealed(Keyring.generate()))]
        written: dict[str, str] = {}
        report = reseal_all(items, keyring=ring, write=written.__setitem__)
        assert (report.resealed, report.current) == (1, 1)
        assert [ref for ref, _ in report.failed] == ["c", "d"]
        assert list(written) == ["a"] and open_result(written["a"], keyring=ring) == RESULT


class TestReprs:
    """Reprs of envelopes and keyrings show ids, never key bytes or ciphertext."""

    def test_envelope_repr(self, ring: Keyring) -> None:
        """The repr names the key and ids and only the length of the ciphertext."""
        env = Envelope.from_json(_sealed(ring))
        text = repr(env)
        assert ring.active_id in text and "t-42" in text and "bytes>" in text
        assert base64.b64encode(env.ciphertext).decode() not in text


class TestPublicSurface:
    """The security package exports a sorted, complete __all__."""

    def test_all_is_sorted_and_complete(self) -> None:
        """Every public name is exported and listed in sorted order."""
        public = {
            n
            for n, v in vars(security).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
        }
        assert security.__all__ == sorted(security.__all__)
        assert set(security.__all__) == public
