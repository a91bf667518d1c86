"""Fixtures shared by the unit tests: the access records written while a test runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from service import access_log


class Records(logging.Handler):
    """Collects the access records (`service.access` logger) written while it is attached."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self) -> list[dict]:
        """Each record's fields (what LOG_JSON writes as keys)."""
        return [record.access for record in self.records]  # type: ignore[attr-defined]


@pytest.fixture()
def records() -> Iterator[Records]:
    handler = Records()
    access_log.logger.addHandler(handler)
    yield handler
    access_log.logger.removeHandler(handler)
