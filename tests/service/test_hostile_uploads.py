"""Hostile uploads against the real service: each answered 400 with a reason, nothing of it left in the state dir,
nothing written outside it.

A zip is accepted or refused as InnerEye does (201, then 400 ``InvalidZipFile`` from the result), but checked
from its directory before the 201: nothing is ever extracted from a refused zip. A body over ``--max-upload-mb``
is refused at once (it is never stored).
"""

from __future__ import annotations

import stat
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.service.harness import (
    CLASSIFICATION_ID,
    CXR_SCANS,
    SAMPLE_SCANS,
    SEGMENTATION_ID,
    ServiceProcess,
    assert_innereye_error,
    files_of_job,
    start_job,
    wait_for_result,
    zip_members,
)

SLICE = (SAMPLE_SCANS / "phantom_one_axial" / "IM0000.dcm").read_bytes()
MB = 2**20


def _link(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _sparse(size: int, seed: int) -> bytes:
    """Data that deflates about 16-fold: under the ratio limit, so only the total size can refuse it."""
    rng = np.random.default_rng(seed)
    return ((rng.random(size) < 0.02) * rng.integers(1, 255, size)).astype(np.uint8).tobytes()


HOSTILE: dict[str, tuple[Callable[[str], bytes], str]] = {
    "parent": (lambda token: zip_members([(f"../escaped-{token}.dcm", SLICE)]), "escapes"),
    "parent_in_a_folder": (lambda token: zip_members([(f"ct/../../escaped-{token}.dcm", SLICE)]), "escapes"),
    "backslashes": (lambda token: zip_members([(f"..\\..\\escaped-{token}.dcm", SLICE)]), "escapes"),
    "absolute": (lambda token: zip_members([(zipfile.ZipInfo(f"/tmp/escaped-{token}.dcm"), SLICE)]), "absolute"),
    "drive_letter": (lambda token: zip_members([(f"C:/escaped-{token}.dcm", SLICE)]), "absolute"),
    "symlink": (lambda token: zip_members([_link(f"escaped-{token}.dcm", "/etc/passwd"), ("a.dcm", SLICE)]), "link"),
    "ratio_bomb": (lambda token: zip_members([(f"escaped-{token}.dcm", bytes(6 * MB))]), "expands"),
    "size_bomb": (
        lambda token: zip_members([(f"escaped-{token}-{i}.dcm", _sparse(5 * MB, i)) for i in range(5)]),
        "uncompressed",
    ),
    "duplicate_names": (lambda token: zip_members([("a.dcm", SLICE), ("a.dcm", SLICE)]), "twice"),
}


def _nothing_escaped(service: ServiceProcess, token: str) -> None:
    """No file of the upload outside the state dir: around it, nor where an absolute member would land."""
    assert not list(service.state_dir.parent.parent.rglob(f"*escaped-{token}*"))
    assert not Path(f"/tmp/escaped-{token}.dcm").exists()


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns while the test writes that zip
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_zip_is_refused_with_its_reason_and_leaves_nothing(service: ServiceProcess, case: str) -> None:
    make, reason_says = HOSTILE[case]
    token = uuid.uuid4().hex
    with service.client() as client:
        run_id = start_job(client, SEGMENTATION_ID, make(token))
        body = assert_innereye_error(wait_for_result(client, run_id), 400, "InvalidZipFile")
        status = client.get(f"/v1/model/status/{run_id}").json()
    assert reason_says in body["reason"] and str(service.state_dir) not in body["reason"]
    assert status["state"] == "failed" and status["stage"] == "refused" and status["attempts"] == 0
    assert files_of_job(service.state_dir, run_id) == []  # never extracted, upload deleted before the 201
    assert not [p for p in (service.state_dir / "uploads").iterdir() if run_id in p.name]
    _nothing_escaped(service, token)


def test_a_body_over_the_upload_limit_is_refused_at_once(service: ServiceProcess) -> None:
    before = sorted(service.state_dir.rglob("*"))
    big = bytes(11 * MB)  # --max-upload-mb 10
    with service.client() as client:
        body = assert_innereye_error(client.post(f"/v1/model/start/{SEGMENTATION_ID}", content=big), 400)
        assert "over the limit" in body["reason"] and "--max-upload-mb" in body["reason"]
        streamed = client.post(f"/v1/model/start/{SEGMENTATION_ID}", content=iter([big[: 6 * MB], big[6 * MB :]]))
        assert "over the limit" in assert_innereye_error(streamed, 400)["reason"]  # no Content-Length: counted
        predicted = client.post(f"/v1/model/predict/{CLASSIFICATION_ID}", content=big)
        assert "over the limit" in assert_innereye_error(predicted, 400)["reason"]
    after = sorted(service.state_dir.rglob("*"))
    assert [p for p in after if p not in before and not p.name.startswith("jobs.sqlite3")] == []


def test_non_dicom_and_wrong_images_posted_to_predict_are_400_and_not_kept(service: ServiceProcess) -> None:
    with service.client() as client:
        cases = {
            "not DICOM": b"GIF89a" + bytes(100),
            "not one the model takes": SLICE,  # a CT slice to a CR/DX classifier
            "cannot": b"DICM",  # nothing after the preamble marker
        }
        for says, content in cases.items():
            body = assert_innereye_error(client.post(f"/v1/model/predict/{CLASSIFICATION_ID}", content=content), 400)
            assert body["reason"], says
        for_segmentation = client.post(
            f"/v1/model/predict/{SEGMENTATION_ID}", content=(CXR_SCANS / "cr_mono2_normal.dcm").read_bytes()
        )
        assert "/v1/model/start" in assert_innereye_error(for_segmentation, 400)["reason"]
        unknown = client.post(f"/v1/model/predict/{CLASSIFICATION_ID}?explain=magic", content=SLICE)
        assert "magic" in assert_innereye_error(unknown, 400)["reason"]
    assert list((service.state_dir / "predict").iterdir()) == []


@pytest.mark.parametrize("declared", ["\u00b2", "\u0663", "-5", " 12", ""])
def test_a_content_length_that_is_not_ascii_digits_is_no_declared_length(declared: str) -> None:
    """A header value is latin-1 text: "\u00b2" (superscript two) passed ``str.isdigit`` and ``int()`` then
    raised, a 500 where the body is simply counted as it streams."""
    from types import SimpleNamespace

    from innereye_batch.service.app import _declared_length

    assert _declared_length(SimpleNamespace(headers={"content-length": declared})) is None  # type: ignore[arg-type]
    assert _declared_length(SimpleNamespace(headers={"content-length": "1024"})) == 1024  # type: ignore[arg-type]


def test_a_predict_reason_says_each_thing_once(service: ServiceProcess) -> None:
    """The series key and the file's reason were each given twice ("<uid>: <uid>: no_readable_images: ... (why);
    why")."""
    import io

    import pydicom

    image = pydicom.dcmread(CXR_SCANS / "cr_mono2_normal.dcm")
    image.BitsStored = 40
    buffer = io.BytesIO()
    image.save_as(buffer)
    with service.client() as client:
        response = client.post(f"/v1/model/predict/{CLASSIFICATION_ID}", content=buffer.getvalue())
    reason = assert_innereye_error(response, 400)["reason"]
    assert reason.count(str(image.SeriesInstanceUID)) == 1 and reason.count("BitsStored 40") == 1, reason
    assert "no_readable_images" in reason
