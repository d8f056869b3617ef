"""Zip checks and extraction, in-process: what is refused (and why) before a byte is extracted, what extraction
writes, and that it never writes more than a member declares or anywhere but under its folder."""

from __future__ import annotations

import asyncio
import errno
import stat
import struct
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from innereye_batch.service.options import UploadLimits
from innereye_batch.service.uploads import UploadRefused, check_zip, extract_zip, save_body
from tests.service.harness import zip_members

LIMITS = UploadLimits(max_upload_bytes=2**20, max_unzipped_bytes=4 * 2**20, max_ratio=50, max_members=10)


def _write(tmp_path: Path, members: list, method: int = zipfile.ZIP_DEFLATED) -> Path:
    path = tmp_path / "upload.zip"
    path.write_bytes(zip_members(members, method))
    return path


def _refusal(path: Path, limits: UploadLimits = LIMITS) -> str:
    with pytest.raises(UploadRefused) as refused:
        check_zip(path, limits)
    return refused.value.reason


def test_flat_and_per_channel_zips_extract_to_their_relative_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, [("a.dcm", b"1"), ("ct/b.dcm", b"22"), ("./ct/./c.dcm", b"333"), ("ct/", b"")])
    written = extract_zip(path, tmp_path / "out", LIMITS)
    found = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in written}
    assert found == {"a.dcm": b"1", "ct/b.dcm": b"22", "ct/c.dcm": b"333"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("../x.dcm", "escapes"),
        ("a/../../x.dcm", "escapes"),
        ("..\\x.dcm", "escapes"),
        ("/etc/x.dcm", "absolute"),
        ("\\\\server\\share\\x.dcm", "absolute"),
        ("D:\\x.dcm", "absolute"),
    ],
)
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str, says: str) -> None:
    assert says in _refusal(_write(tmp_path, [(zipfile.ZipInfo(name), b"x")]))


@pytest.mark.parametrize(("kind", "says"), [(stat.S_IFLNK, "symbolic link"), (stat.S_IFIFO, "special file")])
def test_links_and_special_files_are_refused(tmp_path: Path, kind: int, says: str) -> None:
    info = zipfile.ZipInfo("entry")
    info.create_system = 3
    info.external_attr = (kind | 0o644) << 16
    assert says in _refusal(_write(tmp_path, [(info, b"/etc/passwd")]))


def test_bombs_are_refused_from_the_directory(tmp_path: Path) -> None:
    assert "expands" in _refusal(_write(tmp_path, [("zeros", bytes(3 * 2**20))]))  # ~1000-fold, one member
    many = [(f"m{i}", bytes(200 * 1024)) for i in range(8)]  # small members, 1.6 MB of zeros together
    assert "the zip expands" in _refusal(_write(tmp_path, many))
    stored = [(f"s{i}", b"\x01" * (900 * 1024)) for i in range(5)]  # ratio 1, 4.5 MB in all
    assert "uncompressed" in _refusal(_write(tmp_path, stored, zipfile.ZIP_STORED))
    assert "members, over the limit" in _refusal(_write(tmp_path, [(f"f{i}", b"") for i in range(11)]))


def test_a_member_that_holds_more_than_it_declares_is_cut_off(tmp_path: Path) -> None:
    """A directory that lies (1,000 bytes declared, 3 MB inside) passes the checks; extraction stops at the
    declared size and refuses the zip."""
    path = _write(tmp_path, [("liar.dcm", bytes(3 * 2**20))])
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size in both headers
        at = data.find(signature)
        data[at + offset : at + offset + 4] = struct.pack("<I", 1000)
    path.write_bytes(bytes(data))
    assert [m.size for m in check_zip(path, LIMITS)] == [1000]
    with pytest.raises(UploadRefused, match="cannot be extracted"):
        extract_zip(path, tmp_path / "out", LIMITS)
    assert all(p.stat().st_size <= 1000 for p in (tmp_path / "out").rglob("*") if p.is_file())


def _patched(path: Path, edit: object) -> Path:
    data = bytearray(path.read_bytes())
    edit(data)  # type: ignore[operator]
    path.write_bytes(bytes(data))
    return path


def test_compressed_sizes_the_file_cannot_hold_are_refused(tmp_path: Path) -> None:
    """The ratio is judged against the file's real size: a directory that declares large compressed sizes
    (so that each member's ratio looks harmless) is a bomb in disguise."""
    path = _write(tmp_path, [("zeros", bytes(3 * 2**20))])

    def declare_large(data: bytearray) -> None:
        at = data.find(b"PK\x01\x02")
        data[at + 20 : at + 24] = struct.pack("<I", 2 * 2**20)  # compressed size in the central directory

    assert "declare 2,097,152 compressed bytes, more than its" in _refusal(_patched(path, declare_large))


def test_broken_zips_are_refused_never_an_internal_error(tmp_path: Path) -> None:
    def version(data: bytearray) -> None:  # "zip file version 16.3": zipfile raises NotImplementedError
        data[data.find(b"PK\x01\x02") + 6] = 163

    assert "not a readable zip" in _refusal(_patched(_write(tmp_path, [("a.dcm", b"x" * 100)]), version))
    nameless = tmp_path / "nameless.zip"
    with zipfile.ZipFile(nameless, "w") as archive:  # a member with an empty name is no file: skipped
        archive.writestr(zipfile.ZipInfo(""), b"x")
        archive.writestr("b.dcm", b"y")
    assert [m.parts for m in check_zip(nameless, LIMITS)] == [("b.dcm",)]

    def corrupt(data: bytearray) -> None:  # deflate stream garbled: zlib.error when extracted
        start = 30 + len("a.dcm")
        data[start : start + 8] = b"\xff" * 8

    path = _patched(_write(tmp_path, [("a.dcm", bytes(range(256)) * 40)], zipfile.ZIP_DEFLATED), corrupt)
    with pytest.raises(UploadRefused, match="cannot be extracted"):
        extract_zip(path, tmp_path / "out", LIMITS)


def test_the_services_own_full_disk_is_not_the_zips_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, [("a.dcm", b"x")])

    def no_space(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("innereye_batch.service.uploads.os.open", no_space)
    with pytest.raises(OSError) as raised:  # the job fails as a 500 of the service, not a 400 InvalidZipFile
        extract_zip(path, tmp_path / "out", LIMITS)
    assert not isinstance(raised.value, UploadRefused) and raised.value.errno == errno.ENOSPC


def test_not_a_zip_empty_zip_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "bytes.zip").write_bytes(b"\x00" * 100)
    assert "not a readable zip" in _refusal(tmp_path / "bytes.zip")
    assert "no files" in _refusal(_write(tmp_path, [("folder/", b"")]))
    assert "twice" in _refusal(_write(tmp_path, [("a", b"1"), ("./a", b"2")]))  # one file once normalised


def test_extraction_never_follows_a_link_planted_in_the_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    target = tmp_path / "out"
    path = _write(tmp_path, [("a.dcm", b"new")])
    target.mkdir()
    (target / "a.dcm").symlink_to(outside)
    with pytest.raises(FileExistsError):
        extract_zip(path, target, LIMITS)  # the target must be new: a job's folder is always made here
    assert outside.read_text() == "untouched"


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_save_body_stops_at_the_limit_and_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "body"
    with pytest.raises(UploadRefused) as refused:
        asyncio.run(save_body(_chunks([b"x" * 600_000, b"x" * 600_000]), target, 2**20))
    assert refused.value.too_large and not target.exists()
    with pytest.raises(UploadRefused, match="2,000,000 bytes"):
        asyncio.run(save_body(_chunks([b"never read"]), target, 2**20, declared=2_000_000))
    assert not target.exists()
    assert asyncio.run(save_body(_chunks([b"ab", b"cd"]), target, 2**20)) == 4 and target.read_bytes() == b"abcd"


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_members_are_refused(tmp_path: Path, method: int) -> None:
    """zipfile inflates their chunks with no output limit: a 3 kB bzip2 member declaring 100 bytes made the
    service allocate 8.7 GB before its CRC failed."""
    path = _write(tmp_path, [("IM0001.dcm", b"\0" * 100)], method=method)
    assert f"uses compression method {method}, which is not read" in _refusal(path)


def test_members_nested_deeper_than_the_limit_are_refused(tmp_path: Path) -> None:
    """1,800 nested folders made the removal of the job's folder fail (recursion), which stuck the job and stopped
    the service from starting again."""
    from innereye_batch.service.uploads import MAX_DEPTH

    path = _write(tmp_path, [("a/" * (MAX_DEPTH + 1) + "f.dcm", b"x")])
    assert f"lies {MAX_DEPTH + 1} folders deep, over the limit of {MAX_DEPTH}" in _refusal(path)
    (tmp_path / "fine").mkdir()
    fine = _write(tmp_path / "fine", [("a/" * MAX_DEPTH + "f.dcm", b"x")])
    assert [len(m.parts) for m in check_zip(fine, LIMITS)] == [MAX_DEPTH + 1]


def test_remove_tree_removes_any_depth_and_never_follows_links(tmp_path: Path) -> None:
    from innereye_batch.files import remove_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.dcm").write_bytes(b"x")
    deep = tmp_path / "job"
    folder = deep
    deep.mkdir()
    for _ in range(1200):  # shutil.rmtree recursed once per level: RecursionError on Python 3.11
        folder = folder / "a"
        folder.mkdir()
    (folder / "f.dcm").write_bytes(b"x")
    (deep / "link").symlink_to(outside, target_is_directory=True)
    remove_tree(deep)
    assert not deep.exists() and (outside / "keep.dcm").is_file()
    remove_tree(tmp_path / "absent")  # nothing there: nothing raised
