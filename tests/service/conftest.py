"""One real service for the API, upload, predict and load tests: both sample models, small upload limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.harness import ServiceProcess

LIMITS = ["--max-upload-mb", "10", "--max-unzipped-mb", "24", "--max-zip-ratio", "50"]
"""Big enough for the sample series (about 0.8 MB each) and pydicom's 7 MB CR image, small enough to test."""


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    state = tmp_path_factory.mktemp("serve") / "state"
    process = ServiceProcess(state, [*LIMITS, "--max-batch", "8", "--max-wait-ms", "20"])
    yield process
    process.stop()
