"""Parsing --cluster / --scheduler / --protocol, and reaching a scheduler that is not there."""

from __future__ import annotations

import pytest

from atomic_usage.errors import ClusterError, ConfigError

pytest.importorskip("distributed")

from atomic_usage.cluster.client import ClusterTarget, connect, parse_target  # noqa: E402


class TestParseTarget:
    """The three options become one target, or a ConfigError that names the option."""

    def test_local_with_and_without_count(self) -> None:
        """local:N asks for N workers; bare local asks for one per core."""
        assert parse_target("local:3", None) == ClusterTarget(None, 3, "tcp")
        assert parse_target("local", None).n_workers >= 1

    def test_scheduler_address_keeps_or_takes_its_scheme(self) -> None:
        """An address without a scheme takes --protocol; one with a scheme keeps it."""
        assert parse_target(None, "10.0.0.5:8786", "tls").address == "tls://10.0.0.5:8786"
        assert parse_target(None, "ucx://10.0.0.5:8786").protocol == "ucx"

    @pytest.mark.parametrize(
        ("cluster", "scheduler", "protocol", "match"),
        [
            (None, None, None, "exactly one"),
            ("local:2", "tcp://h:1", None, "exactly one"),
            ("local:0", None, None, "positive number"),
            ("yarn", None, None, "local or local:N"),
            ("local", None, "udp", "tcp, tls, ucx"),
            (None, "tls://h:8786", "tcp", "contradicts"),
            (None, "tcp://h", None, "no port"),
        ],
    )
    def test_bad_values_are_refused(self, cluster, scheduler, protocol, match) -> None:
        """Each malformed combination fails with a message saying what to write instead."""
        with pytest.raises(ConfigError, match=match):
            parse_target(cluster, scheduler, protocol)


class TestConnect:
    """A scheduler that does not answer is a ClusterError naming its address."""

    def test_unreachable_scheduler(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Nothing listens on the port: the error names the address and what to check."""
        monkeypatch.setattr("atomic_usage.cluster.client._CONNECT_TIMEOUT_S", 1)
        with pytest.raises(ClusterError, match="tcp://127.0.0.1:9 within 1s") as info:
            with connect(parse_target(None, "tcp://127.0.0.1:9")):
                pass
        assert info.value.address == "tcp://127.0.0.1:9"
