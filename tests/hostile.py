"""Hostile requests, built in memory, and a peak-memory probe of a server process.

Used by ``tests/test_faults_hostile.py`` (which asserts the answers and the memory bounds) and
``bench/hostile.py`` (which prints the same cases' answer times and memory as JSON lines).
Nothing binary lives in the repository: every picture and archive is built here.

Each :class:`Case` sends its request(s) to a live server and returns the responses; the probe
(:class:`PeakRSS`) resets the server's peak resident set (``/proc/<pid>/clear_refs``) before
the case and reads it (``VmHWM``) after, polling ``VmRSS`` meanwhile where the reset is not
allowed, so the growth is the case's own peak however briefly it lasted.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import shutil
import socket
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from numpy.lib import format as npy_format

MIB = 1 << 20
# Memory a case may add to the server's peak: anonymous requests 50 MB, keyed uploads 200 MB.
ANONYMOUS_BUDGET = 50 * MIB
KEYED_BUDGET = 200 * MIB
# The bundle limit of the server the cases run against: bombs need only exceed it.
BUNDLE_LIMIT = 16 * MIB
_STREAM = 16 * MIB  # decompressed bytes per compressed stream of the bombs


# ------------------------------------------------------------------------------ pictures
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A valid 8-bit grayscale PNG of zeros, ``extra`` chunks placed before its pixel data.

    Compressed band by band, so a 13,000 x 13,000 picture (169 MB of pixels) is built in
    about a second and weighs 165 KB.
    """
    compressor = zlib.compressobj(9)
    band = max(1, (4 * MIB) // (width + 1))
    parts = []
    for top in range(0, height, band):
        parts.append(compressor.compress(bytes((width + 1) * min(band, height - top))))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = [_chunk(k, d) for k, d in extra]
    body = [_chunk(b"IHDR", header), *chunks, _chunk(b"IDAT", b"".join(parts))]
    return b"\x89PNG\r\n\x1a\n" + b"".join(body) + _chunk(b"IEND", b"")


def text_bomb_png(size: int = 8, chunks: int = 60) -> bytes:
    """A ``size`` x ``size`` PNG carrying ``chunks`` compressed text chunks of 1,000,000 bytes.

    Pillow inflates each one (it allows 1 MiB per chunk and 64 MiB in all) while it opens the
    file: 60 MB for a 60 KB picture of the right size.
    """
    text = zlib.compress(b"a" * 1_000_000, 9)
    return png_bytes(size, size, tuple((b"zTXt", b"c%d\0\0" % k + text) for k in range(chunks)))


# ------------------------------------------------------------------------------ archives
def _multistream(compress: Callable[[bytes], bytes], head: bytes, total: int) -> bytes:
    """``head`` then zeros up to ``total`` bytes, as concatenated compressed streams."""
    first = compress(head + bytes(_STREAM - len(head)))
    rest = compress(bytes(_STREAM))
    return first + rest * max(0, -(-total // _STREAM) - 1)


def tar_meta_bomb(kind: str, claimed: int = 512 * MIB) -> bytes:
    """A ``.tar.bz2`` of one GNU long-name (``kind="gnu"``) or PAX header of ``claimed`` bytes.

    The header is followed by ``claimed`` zero bytes, so a reader that trusts it decompresses
    and holds them all; the archive weighs about 1.5 KB.
    """
    info = tarfile.TarInfo("././@LongLink" if kind == "gnu" else "././@PaxHeader")
    info.type = tarfile.GNUTYPE_LONGNAME if kind == "gnu" else tarfile.XHDTYPE
    info.size = claimed
    header = info.tobuf(tarfile.GNU_FORMAT) if kind == "gnu" else info.tobuf(tarfile.USTAR_FORMAT)
    return _multistream(bz2.compress, header, claimed + 1024)


def tar_size_bomb(size: int = 4 * BUNDLE_LIMIT) -> bytes:
    """A ``.tar.gz`` of one regular member of ``size`` zero bytes (a few KB compressed)."""
    info = tarfile.TarInfo("bundle/zeros.bin")
    info.size = size
    return _multistream(gzip.compress, info.tobuf(tarfile.GNU_FORMAT), size + 1024)


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A ``.tar.gz`` of the given headers and contents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def tar_link(kind: bytes, target: str = "/etc/passwd") -> bytes:
    """A ``.tar.gz`` whose only member is a link (``tarfile.SYMTYPE`` or ``LNKTYPE``)."""
    info = tarfile.TarInfo("bundle/config.json")
    info.type = kind
    info.linkname = target
    return tar_of([(info, b"")])


def tar_sparse() -> bytes:
    """A ``.tar.gz`` whose member is a GNU sparse file."""
    info = tarfile.TarInfo("bundle/latents.npy")
    info.type = tarfile.GNUTYPE_SPARSE
    return tar_of([(info, b"")])


def tar_traversal() -> bytes:
    """A ``.tar.gz`` whose member escapes the bundle directory."""
    return tar_of([(tarfile.TarInfo("../../escape.txt"), b"x")])


def zip_bomb(size: int = 4 * BUNDLE_LIMIT) -> bytes:
    """A zip of one deflated member of ``size`` zero bytes (about 1/1000 of it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bundle/zeros.bin", "w", force_zip64=False) as member:
            for _ in range(size // MIB):
                member.write(bytes(MIB))
    return buf.getvalue()


def zip_directory_bomb(entries: int = 300_000) -> bytes:
    """A zip whose central directory repeats one entry ``entries`` times (end record: 1).

    ``zipfile`` parses the whole directory into objects before anyone can count them.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("bundle/a", b"a")
    data = buf.getvalue()
    end = data.rfind(b"PK\x05\x06")
    fields = list(struct.unpack_from("<4s4H2LH", data, end))
    offset, size = fields[6], fields[5]
    directory = data[offset : offset + size] * entries
    fields[3:6] = [1, 1, len(directory)]
    return data[:offset] + directory + struct.pack("<4s4H2LH", *fields)


def bundle_tar(bundle: Path) -> bytes:
    """A bundle directory as ``.tar.gz`` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(bundle, arcname="bundle")
    return buf.getvalue()


def edited_bundle(bundle: Path, work: Path, edit: Callable[[Path], None]) -> bytes:
    """A copy of ``bundle`` changed by ``edit``, as ``.tar.gz`` bytes."""
    copy = work / f"edited-{time.monotonic_ns()}"
    shutil.copytree(bundle, copy)
    edit(copy)
    data = bundle_tar(copy)
    shutil.rmtree(copy)
    return data


def claim_latents(rows: int) -> Callable[[Path], None]:
    """An edit: ``latents.npy`` whose header (and config) claims ``rows`` rows; data: 64 B."""

    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        config["n_latents"] = rows
        (path / "config.json").write_text(json.dumps(config))
        d = config["latent_dim"]
        with open(path / "latents.npy", "wb") as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, d)}
            npy_format.write_array_header_1_0(f, header)
            f.write(bytes(64))

    return edit


def deep_json(name: str, levels: int = 200_000) -> Callable[[Path], None]:
    """An edit: the bundle's ``name`` file nested ``levels`` deep."""

    def edit(path: Path) -> None:
        (path / name).write_text("[" * levels + "]" * levels)

    return edit


def big_config(size: int = 8 * MIB) -> Callable[[Path], None]:
    """An edit: ``config.json`` of ``size`` bytes (a list of zeros)."""

    def edit(path: Path) -> None:
        (path / "config.json").write_text("[" + "0," * (size // 2 - 1) + "0]")

    return edit


def giant_architecture(path: Path) -> None:
    """An edit: a config asking for a trillion-parameter MLP."""
    config = json.loads((path / "config.json").read_text())
    config["autoencoder"]["mlp_hidden"] = [10**12]
    (path / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------------ memory
def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """Peak resident-memory growth of process ``pid`` while the ``with`` block runs, bytes."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid = pid
        self.interval = interval
        self.growth = 0
        self.seconds = 0.0  # wall time of the block
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        try:  # "5" resets VmHWM to the current VmRSS (Linux >= 4.0, own processes)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = _status_kib(self.pid, "VmRSS")
        self.peak = self.before
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        self._start = time.perf_counter()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, _status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._poller.join()
        if self.reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM"))
        self.growth = (self.peak - self.before) * 1024


# ------------------------------------------------------------------------------ cases
Send = Callable[[str, str], list[int]]


@dataclass(frozen=True)
class Case:
    """One hostile request (or a few at once) and what the server must answer.

    Attributes:
        name: what is sent.
        keyed: sent with the API key (uploads); its memory budget is :data:`KEYED_BUDGET`.
        expect: the status every answer must have.
        make: ``make(bundle, work)`` builds the payload (from a valid bundle directory, in a
            scratch directory) and returns ``send(url, key)``, which sends it and returns the
            status codes; building is kept out of what is measured.

    """

    name: str
    keyed: bool
    expect: int
    make: Callable[[Path, Path], Send]

    @property
    def budget(self) -> int:
        """Bytes the case may add to the server's peak memory."""
        return KEYED_BUDGET if self.keyed else ANONYMOUS_BUDGET


def _http_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """A whole HTTP/1.1 request as bytes (one connection per request: ``Connection: close``)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _post_json(path: str, body: object, at_once: int = 1) -> Send:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = _http_request("POST", path, {"Content-Type": "application/json"}, data)
    return _raw(request, at_once=at_once)


def _upload(data: bytes, filename: str = "bundle.tar.gz") -> Send:
    form = httpx.Request(
        "POST",
        "http://127.0.0.1/models",
        data={"name": "hostile"},
        files={"bundle": (filename, data)},
    )
    body = form.read()
    headers = {"Content-Type": form.headers["content-type"], "X-API-Key": "{key}"}
    request = _http_request("POST", "/models", headers, body)
    return _raw(request, keyed=True)


def _status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0: the connection closed without one)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _raw(request: bytes, piece: int | None = None, at_once: int = 1, keyed: bool = False) -> Send:
    """Send ``request`` on ``at_once`` connections at the same time; their statuses.

    A keyed request holds ``{key}`` where the key goes.
    """

    def send(url: str, key: str) -> list[int]:
        port = int(url.rsplit(":", 1)[1])
        data = request.replace(b"{key}", key.encode(), 1) if keyed else request
        out = [0] * at_once

        def one(k: int) -> None:
            out[k] = _status_of(raw_exchange(port, data, piece=piece))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(at_once)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    return send


def _unkeyed_upload(size: int) -> Send:
    """A register request announcing ``size`` body bytes, without a key; 1 MiB of it is sent."""
    head = (
        b"POST /models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
    )
    return _raw(head + bytes(MIB))


def _png_body(png: bytes) -> dict[str, list[str]]:
    return {"png": [base64.b64encode(png).decode()]}


def _huge_png() -> dict[str, list[str]]:
    return _png_body(png_bytes(13_000, 13_000))


def _anonymous(name: str, expect: int, make: Callable[[], Send]) -> Case:
    return Case(name, False, expect, lambda bundle, work: make())


def _bundle_edit(name: str, edit: Callable[[Path], None]) -> Case:
    return Case(name, True, 422, lambda bundle, work: _upload(edited_bundle(bundle, work, edit)))


def _archive(name: str, build: Callable[[], bytes], filename: str = "bundle.tar.gz") -> Case:
    return Case(name, True, 422, lambda bundle, work: _upload(build(), filename))


_DEEP = b'{"n": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
_DIGITS = b'{"n": ' + b"1" * 100_000 + b"}"
_WRONG_VALUES = {"images": [[[["x"] * 1000] * 100] * 10]}

# Requests anyone may send (no key): pictures, JSON bodies, request heads.
ANONYMOUS = [
    _anonymous(
        "encode: 8 x 8 PNG (a valid request, for comparison)",
        200,
        lambda: _post_json("/encode", _png_body(png_bytes(8, 8))),
    ),
    _anonymous(
        "encode: 13,000 x 13,000 PNG (165 KB)", 422, lambda: _post_json("/encode", _huge_png())
    ),
    _anonymous(
        "encode: three such PNGs at once", 422, lambda: _post_json("/encode", _huge_png(), 3)
    ),
    _anonymous(
        "reconstruct: 13,000 x 13,000 PNG", 422, lambda: _post_json("/reconstruct", _huge_png())
    ),
    _anonymous(
        "encode: 8 x 8 PNG with 60 MB of compressed text",
        200,
        lambda: _post_json("/encode", _png_body(text_bomb_png())),
    ),
    _anonymous(
        "encode: 10^6 wrong values (5 MB)", 422, lambda: _post_json("/encode", _WRONG_VALUES)
    ),
    _anonymous("sample: JSON nested 200,000 deep", 422, lambda: _post_json("/sample", _DEEP)),
    _anonymous("sample: a 100,000-digit number", 422, lambda: _post_json("/sample", _DIGITS)),
    _anonymous("register without a key: 60 MiB announced", 401, lambda: _unkeyed_upload(60 * MIB)),
    _anonymous("request head of 20 KiB in one write", 431, lambda: _raw(request_head(20_000))),
    _anonymous(
        "request head of 20 KiB in 1 KiB writes", 431, lambda: _raw(request_head(20_000), 1024)
    ),
    _anonymous("request head of 15 KiB (allowed)", 200, lambda: _raw(request_head(15_000))),
]

# Bundle uploads with the key: archive bombs, links, lying headers, hostile JSON files.
KEYED = [
    _archive("tar.bz2 with a 512 MB GNU long name", lambda: tar_meta_bomb("gnu")),
    _archive("tar.bz2 with a 512 MB PAX header", lambda: tar_meta_bomb("pax")),
    _archive("tar.gz member of 64 MiB zeros", tar_size_bomb),
    _archive("zip member of 64 MiB zeros", zip_bomb, "bundle.zip"),
    _archive("zip directory of 300,000 entries", zip_directory_bomb, "bundle.zip"),
    _archive("tar member ../../escape.txt", tar_traversal),
    _archive("tar symlink to /etc/passwd", lambda: tar_link(tarfile.SYMTYPE)),
    _archive("tar hard link to /etc/passwd", lambda: tar_link(tarfile.LNKTYPE)),
    _archive("tar sparse member", tar_sparse),
    _bundle_edit("latents.npy header claiming 30 GB", claim_latents(1_875_000_000)),
    _bundle_edit("latents.npy header claiming 3 TB", claim_latents(187_500_000_000)),
    _bundle_edit("config.json nested 200,000 deep", deep_json("config.json")),
    _bundle_edit("metrics.json nested 200,000 deep", deep_json("metrics.json")),
    _bundle_edit("config.json of 8 MiB", big_config()),
    _bundle_edit("config.json asking for 10^12 parameters", giant_architecture),
]


def warm_up(url: str, key: str) -> None:
    """Take each path of the cases once with a valid request: first-use imports not counted."""
    png = {"png": [base64.b64encode(png_bytes(8, 8)).decode()]}
    for path in ("/encode", "/reconstruct"):
        assert httpx.post(f"{url}{path}", json=png, timeout=60).status_code == 200
    assert httpx.post(f"{url}/sample", json={"n": 4}, timeout=60).status_code == 200
    bad = httpx.post(
        f"{url}/models",
        data={"name": "warm"},
        files={"bundle": ("b.tar.gz", b"not an archive")},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert bad.status_code == 422


# ------------------------------------------------------------------------------ sockets
def raw_exchange(port: int, data: bytes, *, piece: int | None = None) -> bytes:
    """Send ``data`` on a fresh connection (whole, or in ``piece``-byte writes); the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            if piece is None:
                sock.sendall(data)
            else:
                for start in range(0, len(data), piece):
                    sock.sendall(data[start : start + piece])
                    time.sleep(0.001)
        except OSError:  # the server answered and closed while we were still sending
            pass
        answer = b""
        while chunk := _recv(sock):
            answer += chunk
        return answer


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def request_head(extra_bytes: int) -> bytes:
    """A ``GET /healthz`` head padded with a header of ``extra_bytes`` bytes."""
    return (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + b"X-Padding: "
        + b"a" * extra_bytes
        + b"\r\n\r\n"
    )
