"""Uploaded bundle archives (tar, compressed or not, and zip), unpacked within set bounds.

Everything is judged from the archive's own headers before it costs memory or disk:

- members: at most ``max_members``, each a plain file or a directory (links, devices and
  sparse files are refused at their header), inside the bundle directory (no absolute paths,
  no ``..``); their declared sizes sum to at most ``max_bytes``, checked header by header, so
  a bomb is refused at its first excess;
- tar extension headers (PAX records, GNU long names) hold at most
  :data:`MAX_TAR_META_BYTES` each, at most :data:`MAX_TAR_META_CHAIN` in a row: ``tarfile``
  reads one whole into memory before the member it describes (a 553-byte ``.tar.bz2`` whose
  long-name header claims 512 MB made it decompress and hold all of it);
- a zip's central directory, which ``zipfile`` parses whole into objects, is at most
  :data:`ZIP_DIRECTORY_BYTES_PER_MEMBER` bytes per allowed member, read from the end record
  before ``zipfile`` opens the archive; zip64 archives (over 65,535 members or 4 GB) are
  refused; a zip member is also held to its declared size while it is read.
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle import MAX_PARAMETERS

# A bundle's file names are short: 64 KiB of PAX records or long name is plenty, and bounds
# what tarfile holds in memory per extension header.
MAX_TAR_META_BYTES = 64 * 1024
# Extension headers before one member (a PAX record and a long name need two; each is one
# level of tarfile's recursion).
MAX_TAR_META_CHAIN = 8
# A central directory entry is 46 bytes plus its name (and extras): 1 KiB each is ample.
ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024

_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE)
_ZIP_END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_ZIP_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP_MAX_COMMENT = 0xFFFF


@dataclass(frozen=True, kw_only=True)
class UploadLimits:
    """Limits on an uploaded bundle, checked before anything is unpacked or allocated.

    Attributes:
        max_bytes: total unpacked size of the archive's members, bytes.
        max_members: entries (files and directories) in the archive.
        max_parameters: autoencoder parameters the bundle's config may ask for.

    """

    max_bytes: int = 256 * 1024 * 1024
    max_members: int = 32
    max_parameters: int = MAX_PARAMETERS


class ArchiveError(ValueError):
    """An archive refused: unreadable, or over a limit; the message says which."""


def extract_archive(data: bytes, dest: Path, limits: UploadLimits) -> None:
    """Unpack a tar (plain, gzip, bzip2, xz) or zip archive into ``dest`` within ``limits``.

    Raises:
        ArchiveError: not a readable archive, or it breaks a bound (see the module docstring).

    """
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _extract_zip(data, dest, limits)
        else:
            _extract_tar(data, dest, limits)
    except OSError as exc:
        if exc.errno is not None:  # writing failed (disk full, ...): not the archive's fault
            raise
        raise ArchiveError(f"upload is not a readable archive: {exc}") from exc


def _extract_zip(data: bytes, dest: Path, limits: UploadLimits) -> None:
    _check_zip_directory(data, limits)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            _check_sizes(len(infos), (i.file_size for i in infos), limits)
            for info in infos:
                _check_member(info.filename)
            zf.extractall(dest)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        NotImplementedError,  # a compression method zipfile does not know
        zlib.error,
        lzma.LZMAError,
    ) as exc:
        raise ArchiveError(f"upload is not a readable zip archive: {exc}") from exc


def _check_zip_directory(data: bytes, limits: UploadLimits) -> None:
    """Refuse a zip whose end record announces a central directory too large to parse.

    The end record is found as ``zipfile`` finds it (the last signature within the comment's
    reach of the end), so both read the same directory size.
    """
    start = data.rfind(_ZIP_END_SIGNATURE, max(0, len(data) - _ZIP_END.size - _ZIP_MAX_COMMENT))
    if start < 0 or start + _ZIP_END.size > len(data):
        return  # zipfile finds no end record either and refuses the archive
    _, _, _, _, entries, directory_bytes, _, _ = _ZIP_END.unpack_from(data, start)
    locator = start - _ZIP64_LOCATOR_SIZE
    if locator >= 0 and data[locator : locator + 4] == _ZIP64_LOCATOR_SIGNATURE:
        raise ArchiveError("zip64 archives are not accepted (a bundle is far below 4 GB)")
    if entries > limits.max_members:
        raise ArchiveError(f"archive has over {limits.max_members} members (the limit)")
    allowed = limits.max_members * ZIP_DIRECTORY_BYTES_PER_MEMBER
    if directory_bytes > allowed:
        raise ArchiveError(
            f"the zip's central directory is {directory_bytes:,} bytes; "
            f"{limits.max_members} members need at most {allowed:,}"
        )


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses oversized extension headers and non-plain members unread.

    ``_proc_member`` is tarfile's documented hook for subclasses: it runs on each header
    block before tarfile reads whatever the header announces.
    """

    def _proc_member(self, tarfile: tarfile.TarFile) -> Any:
        chain = getattr(tarfile, "_meta_chain", 0)
        if self.type in _META_TYPES:
            if self.size > MAX_TAR_META_BYTES:
                raise ArchiveError(
                    f"archive has an extension header (PAX or long name) of {self.size:,} "
                    f"bytes; at most {MAX_TAR_META_BYTES:,}"
                )
            if chain >= MAX_TAR_META_CHAIN:
                raise ArchiveError(
                    f"archive has over {MAX_TAR_META_CHAIN} extension headers before a member"
                )
            tarfile._meta_chain = chain + 1  # type: ignore[attr-defined]
        elif self.type not in _PLAIN_TYPES:
            raise ArchiveError(f"archive member {self.name!r} is not a plain file or directory")
        else:
            tarfile._meta_chain = 0  # type: ignore[attr-defined]
        return super()._proc_member(tarfile)  # type: ignore[misc]


def _extract_tar(data: bytes, dest: Path, limits: UploadLimits) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*", tarinfo=_BoundedTarInfo) as tf:
            members = []
            for member in tf:  # headers one by one: a bomb is refused at its first excess
                members.append(member)
                _check_sizes(len(members), (m.size for m in members), limits)
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"archive member {member.name!r} is not a plain file")
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"upload is not a readable tar or zip archive: {exc}") from exc


def _check_sizes(count: int, sizes: Iterable[int], limits: UploadLimits) -> None:
    if count > limits.max_members:
        raise ArchiveError(f"archive has over {limits.max_members} members (the limit)")
    total = sum(sizes)
    if total > limits.max_bytes:
        raise ArchiveError(
            f"archive unpacks to over {limits.max_bytes} bytes (the limit); got {total}+"
        )


def _check_member(name: str) -> None:
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts:
        raise ArchiveError(f"archive member {name!r} escapes the bundle directory")
