"""Fixtures for the end-to-end suite: a real `sluice server` per test, real Kafka clients.

- `broker`: a started broker with default settings.
- `make_broker(*settings, config_file=None, start=True)`: a factory for brokers with `--set` overrides,
  e.g. `make_broker("log.flush.interval.messages=1")`.

Every broker a test started is SIGKILLed at teardown, and when a test fails the tail of each broker's log
is attached to the failure report. The `Broker` class and the client helpers live in `harness.py`, the
hand-rolled wire codec in `kafka_wire.py`.

Run one module or test against a build:
    SLUICE_BIN=target/release/sluice python3 -m pytest tests/test_groups.py -k restart
SLUICE_TEST_RUST_LOG overrides the broker's RUST_LOG (default: info).
"""

from __future__ import annotations

import pytest

from harness import Broker, reset_client_log_budget

__all__ = ["Broker"]


@pytest.fixture(autouse=True)
def _client_log_budget():
    reset_client_log_budget()


@pytest.fixture
def make_broker(request, tmp_path):
    brokers: list[Broker] = []
    request.node._sluice_brokers = brokers

    def factory(*settings: str, config_file=None, extra_args=(), start: bool = True) -> Broker:
        b = Broker(tmp_path / f"broker{len(brokers)}", settings, config_file=config_file, extra_args=extra_args)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield factory
    for b in brokers:
        try:
            b.kill9()
        except Exception as err:  # teardown must reach every broker
            print(f"failed to kill broker {b.workdir}: {err!r}")


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, b in enumerate(getattr(item, "_sluice_brokers", [])):
            report.sections.append((f"sluice broker #{i} log tail ({b.log_path})", b.log_tail()))
