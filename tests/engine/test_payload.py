"""Payload validation: every bad field listed by index and field, nothing applied."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_usage.engine.payload import parse_payload, shown
from atomic_usage.errors import PayloadError


def errors_of(payload: Any) -> list[tuple[int, str]]:
    with pytest.raises(PayloadError) as info:
        parse_payload(payload, now=1000.0)
    return [(e.index, e.field) for e in info.value.errors]


class TestParsePayload:
    """The rules of the README's Data rules section."""

    def test_good_payload(self) -> None:
        """Metrics may be absent or null; ints are accepted; the receive time fills missing timestamps."""
        obs = parse_payload(
            {
                "usageData": [
                    {"id": "a", "cpuLoad": 30, "memoryUsage": None},
                    {"id": 7, "storageUsage": 2.5, "timestamp": "2026-01-05T10:00:00Z"},
                ]
            },
            now=1_767_700_000.0,
        )
        assert obs[0].values == {"cpuLoad": 30.0} and obs[0].ts == 1_767_700_000.0 and not obs[0].explicit_time
        assert obs[1].id == "7" and obs[1].ts == 1767607200.0

    def test_every_bad_field_is_listed(self) -> None:
        """Strings, NaN, infinities, out-of-range values, unknown fields, missing ids: all at once."""
        payload = {
            "usageData": [
                {"id": "vm-1", "cpuLoad": "NaN"},
                {"id": "vm-2", "memoryUsage": "45.2"},
                {"id": "vm-3", "cpuLoad": "high"},
                {"id": "vm-4", "cpuLoad": 10},
                {"cpuLoad": 1},
                {"id": "vm-6", "cpuLoad": 101, "storageUsage": -0.1},
                {"id": "vm-7", "cpuLoad": 1, "gpu": 3},
                {"id": "vm-8", "cpuLoad": float("inf")},
                {"id": "vm-9"},
                {"id": "", "cpuLoad": 1},
                {"id": "vm-11", "cpuLoad": True},
                {"id": "vm-12", "cpuLoad": 1, "timestamp": "tomorrow"},
            ]
        }
        assert errors_of(payload) == [
            (0, "cpuLoad"),
            (1, "memoryUsage"),
            (2, "cpuLoad"),
            (4, "id"),
            (5, "cpuLoad"),
            (5, "storageUsage"),
            (6, "gpu"),
            (7, "cpuLoad"),
            (8, "record"),
            (9, "id"),
            (10, "cpuLoad"),
            (11, "timestamp"),
        ]

    def test_message_names_record_field_and_value(self) -> None:
        """The message is one sentence naming record, id, field, value and what to do."""
        with pytest.raises(
            PayloadError,
            match=r"record 0 \(id 'vm-1'\), field 'cpuLoad': must be a number, "
            r"not 'NaN'.*nothing from it was applied",
        ):
            parse_payload({"usageData": [{"id": "vm-1", "cpuLoad": "NaN"}]})

    @pytest.mark.parametrize(
        "payload",
        [
            None,
            [],
            {},
            {"usageData": []},
            {"usageData": {}},
            {"usageData": [1]},
            {"usageData": [{"id": "a", "cpuLoad": 1}], "x": 1},
        ],
    )
    def test_malformed_payloads(self, payload: Any) -> None:
        """Payloads of the wrong shape raise PayloadError, never TypeError."""
        assert errors_of(payload)

    def test_same_machine_and_time_twice(self) -> None:
        """Two records of one id and time are both kept (the history averages them, as files do)."""
        obs = parse_payload({"usageData": [{"id": "a", "cpuLoad": 1}, {"id": "a", "cpuLoad": 2}]}, now=0)
        got = [(o.id, o.ts, o.values) for o in obs]
        assert got == [("a", 0.0, {"cpuLoad": 1.0}), ("a", 0.0, {"cpuLoad": 2.0})]

    @given(
        st.lists(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none(), st.integers(-200, 200)
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_any_values_either_parse_in_range_or_fail_by_field(self, values: list[Any]) -> None:
        """Whatever the values, a payload parses into finite percents or fails naming each bad record."""
        payload = {"usageData": [{"id": f"m{i}", "cpuLoad": v, "timestamp": i} for i, v in enumerate(values)]}
        try:
            obs = parse_payload(payload)
        except PayloadError as exc:
            assert all(e.field in ("cpuLoad", "record") and e.record_id == f"m{e.index}" for e in exc.errors)
            return
        for o in obs:
            assert all(0 <= v <= 100 for v in o.values.values())

    @pytest.mark.parametrize(
        "n, tail",
        [
            (5, "record 4 (id 'vm-4'), field 'foo'"),
            (6, "and 1 more bad field (each"),
            (12, "and 7 more bad fields (each"),
        ],
    )
    def test_message_counts_the_rest_as_bad_fields(self, n: int, tail: str) -> None:
        """The message names five bad fields and counts the others as such: '(and 5 more)' right after
        an unknown field's list of known ones read as five more known fields."""
        with pytest.raises(PayloadError) as info:
            parse_payload({"usageData": [{"id": f"vm-{i}", "cpuLoad": 1, "foo": 2} for i in range(n)]}, now=0.0)
        assert len(info.value.errors) == n
        text = str(info.value)
        assert tail in text and "storageUsage (and" not in text
        assert text.endswith("; fix them and send the payload again (nothing from it was applied).")

    def test_one_bad_field_is_one(self) -> None:
        with pytest.raises(PayloadError) as info:
            parse_payload({"usageData": [{"id": "vm-0", "cpuLoad": "x"}]}, now=0.0)
        text = str(info.value)
        assert text.startswith("The payload has 1 bad field: ")
        assert text.endswith("; fix it and send the payload again (nothing from it was applied).")


class TestAdversarialValues:
    """Values found by trying to break the engine: refused up front, never stored."""

    @pytest.mark.parametrize(
        ("record", "field"),
        [
            ({"id": "m", "cpuLoad": 5, "timestamp": 1_700_000_000_000}, "timestamp"),  # milliseconds
            ({"id": "m", "cpuLoad": 5, "timestamp": 1e20}, "timestamp"),
            ({"id": "m", "cpuLoad": 5, "timestamp": "9999-12-31T23:59:59Z"}, "timestamp"),
            ({"id": "m", "cpuLoad": 5, "timestamp": "1600-01-01T00:00:00Z"}, "timestamp"),
            ({"id": "m", "cpuLoad": 10**400}, "cpuLoad"),
            ({"id": 10**5000, "cpuLoad": 1}, "id"),
            ({"id": "x" * 300, "cpuLoad": 1}, "id"),
            ({"id": "\ud800", "cpuLoad": 1}, "id"),  # a lone surrogate: no text, cannot be stored
            ({"id": "m", "cpuLoad": 1, "\ud800": 5}, "'\\ud800'"),
            ({"id": "m", "cpuLoad": 1, "a\x1b[2J": 5}, "'a\\x1b[2J'"),  # shown escaped, as a surrogate is
        ],
    )
    def test_refused(self, record: dict[str, Any], field: str) -> None:
        """Timestamps in the future or before 1970, huge numbers and huge ids are PayloadErrors."""
        with pytest.raises(PayloadError) as info:
            parse_payload({"usageData": [record]}, now=1_767_600_000.0)
        assert [e.field for e in info.value.errors] == [field]
        str(info.value).encode("utf-8")  # the message itself is text that can be sent back

    @pytest.mark.parametrize(
        ("rid", "code", "pos"),
        [
            ("\x00", "U+0000", 0),
            ("web-1\x00", "U+0000", 5),
            ("web\n1", "U+000A", 3),
            ("\t", "U+0009", 0),
            ("a\x1b[31mred", "U+001B", 1),
            ("del\x7f", "U+007F", 3),
            ("\x1f" + "x" * 300, "U+001F", 0),
        ],
    )
    def test_control_characters_in_id(self, rid: str, code: str, pos: int) -> None:
        """An id holding a C0 control character or DEL is refused by index and field, the character
        named and the id shown escaped; the other records' errors are still all listed."""
        payload = {"usageData": [{"id": "ok", "cpuLoad": 1}, {"id": rid, "cpuLoad": 1}, {"id": "x", "cpuLoad": -1}]}
        with pytest.raises(PayloadError) as info:
            parse_payload(payload, now=0)
        assert [(e.index, e.field) for e in info.value.errors] == [(1, "id"), (2, "cpuLoad")]
        assert info.value.errors[1].record_id == "x"
        message = info.value.errors[0].message
        assert f"control character {code} at position {pos}" in message and "printable" in message
        assert str(info.value).isprintable()  # safe to print on a terminal (the CLI does)

    @pytest.mark.parametrize(
        ("rid", "escaped"),
        [
            ("web-1\x00", "web-1\\x00"),
            ("a\x1b[31mred", "a\\x1b[31mred"),
            ("line\n1", "line\\n1"),
            ("wéb\x7f", "w\\xe9b\\x7f"),
            ("back\\slash\t", "back\\\\slash\\t"),
            ("it's\x00", "it's\\x00"),
        ],
    )
    def test_refused_id_is_given_escaped(self, rid: str, escaped: str) -> None:
        """Every error of a record whose id holds a control character carries the id escaped to
        printable ASCII (backslash escapes, as the message shows it), so a client can match it."""
        payload = {"usageData": [{"id": rid, "cpuLoad": 130}]}
        with pytest.raises(PayloadError) as info:
            parse_payload(payload, now=0)
        assert [(e.field, e.record_id) for e in info.value.errors] == [("id", escaped), ("cpuLoad", escaped)]
        assert escaped.isprintable() and escaped.isascii()
        assert escaped.encode("ascii").decode("unicode_escape") == rid  # reversible
        assert shown(rid)[1:-1].replace("\\'", "'") == escaped  # the message's own escaping, without its quotes

    @pytest.mark.parametrize(
        "rid",
        ["web-1\x00", "back\\slash\t", "it's\x00", 'q"uote\n', "wéb\u202e", "plain\\back'slash"],
    )
    def test_message_shows_the_id_escaped_once(self, rid: str) -> None:
        """str() of the error shows each record's id escaped once, as the message shows a value
        (``ascii``), never the given-back escaped id escaped again (``'web-1\\\\x00'``, backslashes doubled)."""
        with pytest.raises(PayloadError) as info:
            parse_payload({"usageData": [{"id": rid, "cpuLoad": 130}]}, now=0)
        quoted = ascii(rid)  # for the last id, not refused, that is its repr
        assert str(info.value).count(f"record 0 (id {quoted}), field ") == len(info.value.errors)
        assert str(info.value.errors[-1]).startswith(f"record 0 (id {quoted}), field 'cpuLoad': is 130.0")

    def test_refused_long_id_is_cut(self) -> None:
        """An id too long and holding a control character is given cut, as in the message."""
        with pytest.raises(PayloadError) as info:
            parse_payload({"usageData": [{"id": "\x1f" + "x" * 1000, "cpuLoad": 1}]}, now=0)
        got = info.value.errors[0].record_id
        assert got is not None and got.startswith("\\x1f" + "x" * 10) and got.endswith("...")
        assert len(got) < 300

    @pytest.mark.parametrize(
        ("rid", "code", "kind"),
        [
            ("c1\x80", "U+0080", "control character"),
            ("nel\x85", "U+0085", "control character"),
            ("c1\x9f", "U+009F", "control character"),
            ("ls\u2028", "U+2028", "line or paragraph separator"),
            ("ps\u2029", "U+2029", "line or paragraph separator"),
            ("lre\u202a", "U+202A", "bidirectional control"),
            ("rlo\u202e", "U+202E", "bidirectional control"),
            ("lri\u2066", "U+2066", "bidirectional control"),
            ("pdi\u2069", "U+2069", "bidirectional control"),
            ("lrm\u200e", "U+200E", "bidirectional control"),
            ("rlm\u200f", "U+200F", "bidirectional control"),
            ("alm\u061c", "U+061C", "bidirectional control"),
        ],
    )
    def test_invisible_characters_in_id(self, rid: str, code: str, kind: str) -> None:
        """C1 controls, the line and paragraph separators and the bidirectional overrides and
        isolates are refused as C0 controls are: one error on the id, the character named."""
        payload = {"usageData": [{"id": "ok", "cpuLoad": 1}, {"id": rid, "cpuLoad": 1}]}
        with pytest.raises(PayloadError) as info:
            parse_payload(payload, now=0)
        [error] = info.value.errors
        assert (error.index, error.field) == (1, "id")
        assert f"holds the {kind} {code} at position {len(rid) - 1}" in error.message
        assert "printable" in error.message and str(info.value).isprintable()

    @pytest.mark.parametrize(
        "rid", ["web-1", "wéb-1", "web 1", "\u00a0web", "ünïcode-\u200b", "\u00a0\u00ff", "\u2027\u202f"]
    )
    def test_printable_ids_are_kept(self, rid: str) -> None:
        """Non-ASCII text and inner spaces are ids like any other; only C0 controls and DEL are refused."""
        assert [o.id for o in parse_payload({"usageData": [{"id": rid, "cpuLoad": 1}]}, now=0)] == [rid]
