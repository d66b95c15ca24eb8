"""Fetch, verify and safely extract the four official dataset archives into the raw layout."""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from tqdm import tqdm

from seqmtl.files import atomic_dir, file_digest

CHUNK = 1 << 20
TIMEOUT_S = 30.0
BACKOFF_S = 2.0
URL_SCHEMES = ("http", "https", "file")
DAMAGED = (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, gzip.BadGzipFile)
"""What reading a truncated or corrupt zip, tar or gzip stream raises."""


class DownloadError(OSError):
    """A dataset archive could not be fetched, verified or safely extracted."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """File `name` at `url`, checked against `checksum` ("md5:<hex>", "sha256:<hex>" or None)
    and extracted under `<raw>/<subdir>`."""

    name: str
    url: str
    checksum: str | None
    subdir: str


ARCHIVES: tuple[Archive, ...] = (
    Archive(
        "imagenette2-160.tgz",
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
        "md5:e793b78cc4c9e9a4ccc0c1155377a412",
        "imagenette",
    ),
    Archive(
        "VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "md5:6cd6e144f989b92b3379bac3b3de84fd",
        "voc",
    ),
    Archive(
        "val2017.zip",
        "http://images.cocodataset.org/zips/val2017.zip",
        "sha256:4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
        "coco",
    ),
    Archive(
        "annotations_trainval2017.zip",
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "sha256:113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
        "coco",
    ),
)


def _is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in URL_SCHEMES


def _mirror_sums(mirror: str) -> dict[str, str]:
    """Checksums from the mirror's `SHA256SUMS` (`<sha256>  <name>` lines), or {} if it has none."""
    if not _is_url(mirror):
        path = Path(mirror) / "SHA256SUMS"
        text = path.read_text() if path.is_file() else ""
    else:
        try:
            url = f"{mirror.rstrip('/')}/SHA256SUMS"
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                text = resp.read().decode()
        except urllib.error.URLError as err:
            if getattr(err, "code", None) != 404 and not isinstance(err.reason, FileNotFoundError):
                raise _failure(url, 1, err) from err
            text = ""
    pairs = [line.split() for line in text.splitlines()]
    return {p[1].lstrip("*"): f"sha256:{p[0].lower()}" for p in pairs if len(p) == 2}


def _with_mirror(archives: tuple[Archive, ...], mirror: str) -> tuple[Archive, ...]:
    sums = _mirror_sums(mirror)
    base = mirror.rstrip("/") if _is_url(mirror) else str(Path(mirror))
    return tuple(
        dataclasses.replace(a, url=f"{base}/{a.name}", checksum=sums.get(a.name, a.checksum))
        for a in archives
    )


def _mismatch(path: Path, checksum: str | None) -> str | None:
    """Why `path` fails `checksum`; None if it matches or is None."""
    if checksum is None:
        return None
    algo, _, expected = checksum.partition(":")
    actual = file_digest(path, algo)
    if actual == expected.lower():
        return None
    return f"checksum mismatch for {path.name}: expected {checksum}, got {algo}:{actual}"


def _failure(url: str, attempts: int, err: BaseException) -> DownloadError:
    """The error for a failed fetch; a network failure names the offline alternatives."""
    text = f"could not download {url} after {attempts} attempt(s): {err}"
    if isinstance(err, urllib.error.HTTPError) or isinstance(
        getattr(err, "reason", None), FileNotFoundError
    ):
        return DownloadError(text)
    return DownloadError(
        f"{text}. This machine seems offline; alternatives: data.source=synthetic (no download "
        "needed) or data.mirror=<folder or URL holding the archives>."
    )


def _fetch_once(url: str, part: Path) -> None:
    """Append the rest of `url` to `part` (HTTP Range when `part` exists; restart on a 200)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        if getattr(resp, "status", None) != 206:
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.stem)
        with part.open("ab" if offset else "wb") as out, bar:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise urllib.error.ContentTooShortError(f"got {part.stat().st_size} of {total} bytes", "")


def _download(url: str, dest: Path, retries: int) -> None:
    """Download `url` to `dest` via `<dest>.part`, retrying `retries` times with a short backoff."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part)
            part.replace(dest)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416:
                part.unlink(missing_ok=True)
            error: Exception = err
        except (OSError, http.client.HTTPException) as err:
            error = err
        if attempt < retries:
            time.sleep(BACKOFF_S * 2**attempt)
    raise _failure(url, retries + 1, error) from error


def fetch(archive: Archive, archive_dir: Path, retries: int = 3) -> Path:
    """Return a verified local copy of `archive`: a folder mirror's file in place, else the file
    downloaded into `archive_dir` (reused if already complete and matching). A mismatching
    download is deleted; either way a mismatch raises DownloadError."""
    if not _is_url(archive.url):
        path = Path(archive.url)
        if not path.is_file():
            raise DownloadError(f"{archive.name} not found in mirror folder {path.parent}")
        if problem := _mismatch(path, archive.checksum):
            raise DownloadError(problem)
        return path
    dest = Path(archive_dir) / archive.name
    if dest.is_file() and _mismatch(dest, archive.checksum) is None:
        return dest
    _download(archive.url, dest, retries)
    if problem := _mismatch(dest, archive.checksum):
        dest.unlink()
        raise DownloadError(f"{problem} (downloaded file deleted)")
    return dest


def _unsafe(name: str, kind: str) -> str | None:
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in path"
    return None if kind in ("dir", "file") else kind


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "device or fifo"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.isreg():
        return "file"
    return "symlink" if member.issym() else "hardlink" if member.islnk() else "device or fifo"


def _write(
    archive: Path, dest: Path, entries: list[tuple[str, str, Any]], open_member: Callable[..., Any]
) -> None:
    for name, kind, _ in entries:
        if reason := _unsafe(name, kind):
            raise DownloadError(f"refusing member {name!r} of {archive.name}: {reason}")
    for name, kind, member in entries:
        target = dest.joinpath(*PurePosixPath(name.replace("\\", "/")).parts)
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member(member) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)


def extract(archive: Path, dest: Path) -> None:
    """Extract a zip (by `.zip` name) or tar (any compression) into `dest`. Absolute paths, '..',
    links and special files raise DownloadError, checked for all members before any is written.
    A truncated or corrupt archive raises DownloadError too, possibly after some members were
    written (fetch_all extracts into a temporary folder, removed on failure)."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                entries = [(i.filename, _zip_kind(i), i) for i in zf.infolist()]
                _write(archive, dest, entries, zf.open)
        else:
            with tarfile.open(archive) as tf:
                entries = [(m.name, _tar_kind(m), m) for m in tf.getmembers()]
                _write(archive, dest, entries, tf.extractfile)
    except DAMAGED as err:
        raise DownloadError(f"{archive.name} is truncated or corrupt: {err}") from err


def source_archives(mirror: str | None) -> tuple[Archive, ...]:
    """The archives to fetch: the official ones, or `mirror`'s (a URL, or a local folder that
    must exist) checked against its SHA256SUMS where it lists them."""
    if not mirror:
        return ARCHIVES
    if not _is_url(mirror) and not Path(mirror).is_dir():
        raise DownloadError(f"data.mirror: {mirror} is not a folder (nor a URL)")
    return _with_mirror(ARCHIVES, mirror)


def source_checksums(mirror: str | None) -> dict[str, str | None]:
    """Each archive's name -> the checksum its download is verified against: what a run reads,
    so that changed archives behind the same `mirror` change it."""
    return {a.name: a.checksum for a in source_archives(mirror)}


def fetch_all(raw_dir: Path, archive_dir: Path, mirror: str | None, retries: int = 3) -> None:
    """Fetch and verify all ARCHIVES (from `mirror` if given), then extract each under
    `raw_dir/<subdir>`. `raw_dir` is replaced only when everything succeeded."""
    raw_dir = Path(raw_dir)
    archives = source_archives(mirror)
    paths = [(a, fetch(a, Path(archive_dir), retries)) for a in archives]
    for stale in raw_dir.parent.glob(f".{raw_dir.name}.*.tmp"):
        shutil.rmtree(stale)
    with atomic_dir(raw_dir) as tmp:
        for archive, path in paths:
            extract(path, tmp / archive.subdir)
