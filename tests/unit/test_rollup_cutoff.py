"""The rollup's cutoff day: whole UTC days back from today; counts that name no day are a 400, not a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.metering.rollup import cutoff

NOW = datetime(2025, 3, 10, 15, 30, tzinfo=UTC)


def test_cutoff_is_a_utc_midnight_days_back() -> None:
    assert cutoff(0, NOW) == datetime(2025, 3, 10, tzinfo=UTC)
    assert cutoff(10, NOW) == datetime(2025, 2, 28, tzinfo=UTC)


@pytest.mark.parametrize("days", [-1, 800_000, 140_737_488_355_329])
def test_counts_that_name_no_day_are_refused_with_the_field(days: int) -> None:
    with pytest.raises(ServiceError) as refused:
        cutoff(days, NOW)
    assert refused.value.status == 400 and refused.value.body.field == "days"
