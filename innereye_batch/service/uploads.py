"""Uploads a client sends: bodies read to disk under a size limit; zips checked from their directory before
anything is extracted, then extracted without ever writing outside the job's folder.

A zip is refused, with the reason, when it is not a zip, holds too many members, a member escapes the folder
(``../``, an absolute path, a drive letter), is a symbolic link or other special file, is encrypted or uses a
compression method Python cannot read, appears twice, or when the declared sizes make a bomb: more than
``max_unzipped_bytes`` in all, a compression ratio over ``max_ratio`` for any member over 1 MiB or for the whole
zip against its real size, or compressed sizes that add up to more than the file holds. Extraction trusts
nothing either: each file is created new (never through an existing link) and stops at the size its member
declared. Members that are not DICOM are extracted and listed by the scan as ignored, like any file `run` cannot
use.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from innereye_batch.service.options import UploadLimits
from innereye_batch.text import printable, relative_paths

_CHUNK = 1 << 20
_RATIO_FLOOR_BYTES = 1 << 20
"""Members (and zips) smaller than this are not judged by their compression ratio: a small run of zeros
compresses a thousand-fold and harms no one."""
_DRIVE = re.compile(r"^[A-Za-z]:")
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
"""Compression methods read. Not bzip2 or LZMA: zipfile inflates their chunks with no output limit (a 3 kB member
declaring 100 bytes made the service allocate 8.7 GB before its CRC failed); DICOM gateways write deflate."""
MAX_DEPTH = 32
"""Folders a member's path may go down. PACS exports nest a few levels (patient/study/series); an upload of 1,800
nested folders made the recursive removal of its job's folder fail, which stuck the job and stopped the service
from starting again."""
_SERVICE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
"""Errors of the service's own storage while extracting: the upload is not to blame."""


class UploadRefused(Exception):
    """An upload that the service will not take, and why (said to the client)."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


async def save_body(chunks: AsyncIterator[bytes], target: Path, limit: int, declared: int | None = None) -> int:
    """Write a request body to ``target`` (created new, fsynced); UploadRefused (``too_large``) as soon as it
    passes ``limit`` bytes, or at once when its declared Content-Length does. The file is removed on refusal."""
    limit_text = f"{limit / 2**20:g} MB (--max-upload-mb)"
    if declared is not None and declared > limit:
        raise UploadRefused(f"the upload is {declared:,} bytes, over the limit of {limit_text}", too_large=True)
    from starlette.concurrency import run_in_threadpool

    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            pending = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadRefused(f"the upload is over the limit of {limit_text}", too_large=True)
                pending += chunk
                if len(pending) >= _CHUNK:  # the disk is written off the event loop: other requests go on
                    await run_in_threadpool(handle.write, bytes(pending))
                    pending.clear()
            await run_in_threadpool(_write_and_sync, handle, bytes(pending))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return size


def _write_and_sync(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


@dataclass(frozen=True)
class ZipMember:
    """A file in a checked zip: its safe relative path (parts), and what the directory declares."""

    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    size: int


def _safe_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    name = info.filename
    shown = printable(name)
    if "\x00" in name:
        raise UploadRefused(f"zip member {shown!r} has a NUL character in its name")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _DRIVE.match(normalised):
        raise UploadRefused(f"zip member {shown!r} has an absolute path: members must lie inside the zip's folder")
    parts = tuple(p for p in normalised.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UploadRefused(f"zip member {shown!r} escapes the zip's folder (..)")
    if len(parts) > MAX_DEPTH + 1:
        raise UploadRefused(
            f"zip member {printable('/'.join(parts[:3]))}/... lies {len(parts) - 1} folders deep, over the limit of "
            f"{MAX_DEPTH}"
        )
    if info.create_system == 3:  # Unix: the high 16 bits of external_attr are st_mode
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UploadRefused(f"zip member {shown!r} is a symbolic link; links are refused")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UploadRefused(f"zip member {shown!r} is a special file (device, pipe or socket)")
    if info.flag_bits & 0x1:
        raise UploadRefused(f"zip member {shown!r} is encrypted")
    if info.compress_type not in _METHODS:
        raise UploadRefused(f"zip member {shown!r} uses compression method {info.compress_type}, which is not read")
    return parts


def _too_compressed(size: int, compressed: int, ratio: float) -> bool:
    return size > _RATIO_FLOOR_BYTES and size > ratio * max(compressed, 1)


def check_zip(path: Path, limits: UploadLimits) -> list[ZipMember]:
    """The files of the zip at ``path``, from its central directory alone; UploadRefused with the reason for
    anything above (nothing is decompressed here)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except Exception as error:  # anything zipfile raises on a broken directory (BadZipFile, NotImplementedError...)
        why = printable(relative_paths(str(error), path.parent))  # never the service's own paths
        raise UploadRefused(f"the upload is not a readable zip file ({type(error).__name__}: {why})") from None
    if len(infos) > limits.max_members:
        raise UploadRefused(f"the zip holds {len(infos):,} members, over the limit of {limits.max_members:,}")
    members: list[ZipMember] = []
    seen: set[tuple[str, ...]] = set()
    total = compressed = 0
    for info in infos:
        parts = _safe_parts(info)
        if not parts or info.is_dir():  # is_dir() fails on an empty name
            continue
        if parts in seen:
            raise UploadRefused(f"zip member {printable('/'.join(parts))!r} appears twice")
        seen.add(parts)
        if _too_compressed(info.file_size, info.compress_size, limits.max_ratio):
            raise UploadRefused(
                f"zip member {printable(info.filename)!r} expands {info.file_size / max(info.compress_size, 1):,.0f}"
                f"-fold ({info.file_size:,} bytes from {info.compress_size:,}), over the limit of "
                f"{limits.max_ratio:g}: a zip bomb?"
            )
        total += info.file_size
        compressed += info.compress_size
        members.append(ZipMember(info, parts, info.file_size))
    if total > limits.max_unzipped_bytes:
        raise UploadRefused(
            f"the zip's members add up to {total:,} bytes uncompressed, over the limit of "
            f"{limits.max_unzipped_bytes / 2**20:g} MB (--max-unzipped-mb): a zip bomb?"
        )
    size = path.stat().st_size  # what the members declare is the sender's word; the file's size is not
    if compressed > size:
        raise UploadRefused(
            f"the zip's members declare {compressed:,} compressed bytes, more than its {size:,}: a zip bomb?"
        )
    if _too_compressed(total, size, limits.max_ratio):
        raise UploadRefused(
            f"the zip expands {total / max(size, 1):,.0f}-fold ({total:,} bytes from {size:,}), "
            f"over the limit of {limits.max_ratio:g}: a zip bomb?"
        )
    if not members:
        raise UploadRefused("the zip holds no files")
    return members


def extract_zip(path: Path, target: Path, limits: UploadLimits) -> list[Path]:
    """Check the zip (``check_zip``), then extract its files under ``target`` (which must not exist yet);
    UploadRefused with the reason, leaving ``target`` for the caller to remove. Returns the files written."""
    members = check_zip(path, limits)
    target.mkdir(parents=True)
    root = target.resolve()
    written = []
    with zipfile.ZipFile(path) as archive:
        for member in members:
            destination = root.joinpath(*member.parts)
            if root not in destination.parents:  # cannot happen after check_zip; never trust one check alone
                raise UploadRefused(f"zip member {printable(member.info.filename)!r} escapes the zip's folder")
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(destination, flags, 0o600)
                with os.fdopen(fd, "wb") as out, archive.open(member.info) as source:
                    size = 0
                    while chunk := source.read(_CHUNK):
                        size += len(chunk)
                        if size > member.size:
                            raise UploadRefused(
                                f"zip member {printable(member.info.filename)!r} holds more than it declares"
                            )
                        out.write(chunk)
            except UploadRefused:
                raise
            except OSError as error:
                if error.errno in _SERVICE_ERRNOS:
                    raise  # the service's own disk, not the client's zip: a 500 for the job, never a 400
                raise _unextractable(member, error, root) from None
            except Exception as error:  # BadZipFile, zlib.error, LZMAError, EOFError, a name that is not UTF-8...
                raise _unextractable(member, error, root) from None
            written.append(destination)
    return written


def _unextractable(member: ZipMember, error: Exception, root: Path) -> UploadRefused:
    why = relative_paths(str(error), root)  # never the service's own paths
    return UploadRefused(
        f"zip member {printable(member.info.filename)!r} cannot be extracted ({type(error).__name__}: {printable(why)})"
    )
