"""Which server to use: the configured DSN, libpq's environment, or none (embedded)."""

from __future__ import annotations

from backy_gevent.db.dsn import LIBPQ_DEFAULTS, configured_dsn, dsn_configured


def test_dsn_configured() -> None:
    assert not dsn_configured({"HOME": "/root", "BACKY_DSN": "ignored here"})
    assert not dsn_configured({"PGHOST": ""})
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        assert dsn_configured({name: "x"})


def test_a_configured_dsn_wins_over_the_environment() -> None:
    assert configured_dsn("dbname=app", {"PGHOST": "elsewhere"}) == "dbname=app"


def test_libpq_variables_alone_mean_libpq_defaults() -> None:
    assert configured_dsn(None, {"PGDATABASE": "app"}) == LIBPQ_DEFAULTS


def test_nothing_configured_means_no_dsn() -> None:
    assert configured_dsn(None, {"HOME": "/root"}) is None
