"""seqmtl.data.download: checksums, safe extraction, resumed downloads, mirrors, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import socket
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, stage_command, tiny_params
from seqmtl.data import download
from seqmtl.data.download import ARCHIVES, Archive, DownloadError, extract, fetch, fetch_all

DATA = bytes(range(256)) * 4096


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)


class _Server(http.server.ThreadingHTTPServer):
    honour_range = True
    ranges: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        start = int(header[len("bytes=") : -1]) if header and self.server.honour_range else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(DATA) - start))
        self.end_headers()
        self.wfile.write(DATA[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.ranges = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _remote(srv: _Server, checksum: str | None = sha256(DATA)) -> Archive:
    return Archive("blob.bin", f"http://127.0.0.1:{srv.server_port}/blob.bin", checksum, "x")


@pytest.mark.parametrize("honour_range", [True, False])
def test_interrupted_download_resumes(server: _Server, tmp_path: Path, honour_range: bool) -> None:
    server.honour_range = honour_range
    half = len(DATA) // 2
    (tmp_path / "blob.bin.part").write_bytes(DATA[:half] if honour_range else b"x" * half)
    path = fetch(_remote(server), tmp_path, retries=0)
    assert server.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == DATA
    assert not (tmp_path / "blob.bin.part").exists()


def test_complete_archive_not_downloaded_again(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(DATA)
    assert fetch(_remote(server), tmp_path).read_bytes() == DATA
    assert server.ranges == []


def test_checksum_mismatch_deletes_download(server: _Server, tmp_path: Path) -> None:
    wrong = "md5:" + "0" * 32
    with pytest.raises(DownloadError) as info:
        fetch(_remote(server, wrong), tmp_path, retries=0)
    message = str(info.value)
    assert "blob.bin" in message and wrong in message
    assert hashlib.md5(DATA).hexdigest() in message
    assert not (tmp_path / "blob.bin").exists()


def test_checksum_mismatch_keeps_mirror_file(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(DATA)
    archive = Archive("blob.bin", str(tmp_path / "blob.bin"), sha256(b"other"), "x")
    with pytest.raises(DownloadError, match=r"checksum mismatch for blob\.bin"):
        fetch(archive, tmp_path / "archives")
    assert (tmp_path / "blob.bin").exists()


def test_network_failure_is_clear_after_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    archive = Archive("blob.bin", f"http://127.0.0.1:{port}/blob.bin", None, "x")
    with pytest.raises(DownloadError) as info:
        fetch(archive, tmp_path, retries=2)
    message = str(info.value)
    assert "3 attempt" in message and "offline" in message
    assert "data.source=synthetic" in message and "data.mirror" in message


def _tar(path: Path, bad: str) -> None:
    with tarfile.open(path, "w:gz") as tf:
        good = tarfile.TarInfo("ok/a.txt")
        good.size = 2
        tf.addfile(good, io.BytesIO(b"hi"))
        member = tarfile.TarInfo({"dotdot": "../x", "absolute": "/escaped/x"}.get(bad, "ok/link"))
        if bad == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif bad == "hardlink":
            member.type, member.linkname = tarfile.LNKTYPE, "ok/a.txt"
        elif bad == "fifo":
            member.type = tarfile.FIFOTYPE
        tf.addfile(member, io.BytesIO(b""))


def _zip(path: Path, bad: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/a.txt", b"hi")
        member = zipfile.ZipInfo({"dotdot": "../x", "absolute": "/escaped/x"}.get(bad, "ok/link"))
        if bad == "symlink":
            member.external_attr = 0o120777 << 16
        zf.writestr(member, b"/etc/passwd")


@pytest.mark.parametrize(
    ("kind", "bad"),
    [("tar", b) for b in ("dotdot", "absolute", "symlink", "hardlink", "fifo")]
    + [("zip", b) for b in ("dotdot", "absolute", "symlink")],
)
def test_unsafe_members_refused(tmp_path: Path, kind: str, bad: str) -> None:
    archive = tmp_path / f"evil.{'tgz' if kind == 'tar' else 'zip'}"
    (_tar if kind == "tar" else _zip)(archive, bad)
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"refusing member .* of evil\."):
        extract(archive, dest)
    assert not dest.exists()


def _fake_mirror(folder: Path) -> None:
    """Tiny archives with the four official names and layouts, plus SHA256SUMS."""
    folder.mkdir()
    trees = {
        "imagenette2-160.tgz": ["imagenette2-160/train/n01440764/a.JPEG"],
        "VOCtrainval_11-May-2012.tar": ["VOCdevkit/VOC2012/JPEGImages/a.jpg"],
        "val2017.zip": ["val2017/000000000139.jpg"],
        "annotations_trainval2017.zip": ["annotations/instances_val2017.json"],
    }
    for name, members in trees.items():
        if name.endswith(".zip"):
            with zipfile.ZipFile(folder / name, "w") as zf:
                for member in members:
                    zf.writestr(member, json.dumps({"member": member}))
        else:
            with tarfile.open(folder / name, "w" if name.endswith(".tar") else "w:gz") as tf:
                for member in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(member)
                    tf.addfile(info, io.BytesIO(member.encode()))
    sums = [f"{sha256((folder / n).read_bytes())[7:]}  {n}\n" for n in trees]
    (folder / "SHA256SUMS").write_text("".join(sums))


def _resum(folder: Path, name: str) -> None:
    """Make the SHA256SUMS of `folder` list the current hash of its file `name`."""
    fixed = f"{sha256((folder / name).read_bytes())[7:]}  {name}"
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    lines = [fixed if s.endswith(f" {name}") else s for s in sums]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("as_url", [False, True])
def test_fetch_all_from_fake_mirror(tmp_path: Path, as_url: bool) -> None:
    _fake_mirror(tmp_path / "mirror")
    mirror = (tmp_path / "mirror").as_uri() if as_url else str(tmp_path / "mirror")
    raw, archives = tmp_path / "raw", tmp_path / "archives"
    (tmp_path / ".raw.interrupted.tmp").mkdir()
    fetch_all(raw, archives, mirror, retries=0)
    assert not (tmp_path / ".raw.interrupted.tmp").exists()
    assert (raw / "imagenette/imagenette2-160/train/n01440764/a.JPEG").is_file()
    assert (raw / "voc/VOCdevkit/VOC2012/JPEGImages/a.jpg").is_file()
    assert (raw / "coco/val2017/000000000139.jpg").is_file()
    assert (raw / "coco/annotations/instances_val2017.json").is_file()
    stored = sorted(p.name for p in archives.iterdir()) if archives.exists() else []
    assert stored == (sorted(a.name for a in ARCHIVES) if as_url else [])


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("corrupt", r"checksum mismatch for val2017\.zip"),
        ("unsafe", r"refusing .* val2017\.zip"),
        ("no_sums", r"imagenette2-160\.tgz: expected md5:e793b78c"),
    ],
)
def test_fetch_all_failure_leaves_no_raw_dir(tmp_path: Path, problem: str, message: str) -> None:
    mirror = tmp_path / "mirror"
    _fake_mirror(mirror)
    if problem == "corrupt":
        (mirror / "val2017.zip").write_bytes(b"not the archive")
    elif problem == "no_sums":
        (mirror / "SHA256SUMS").unlink()
    else:
        _zip(mirror / "val2017.zip", "dotdot")
        _resum(mirror, "val2017.zip")
    with pytest.raises(DownloadError, match=message):
        fetch_all(tmp_path / "raw", tmp_path / "archives", str(mirror))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]


# Each cut falls inside the first member's data: a tar cut after its last member reads as whole.
@pytest.mark.parametrize(
    ("name", "size"),
    [("imagenette2-160.tgz", 80), ("VOCtrainval_11-May-2012.tar", 530), ("val2017.zip", 100)],
)
def test_fetch_all_truncated_archive_with_matching_sum(
    tmp_path: Path, name: str, size: int
) -> None:
    mirror = tmp_path / "mirror"
    _fake_mirror(mirror)
    archive = mirror / name
    archive.write_bytes(archive.read_bytes()[:size])
    _resum(mirror, name)
    with pytest.raises(DownloadError, match=rf"^{re.escape(name)} is truncated or corrupt: "):
        fetch_all(tmp_path / "raw", tmp_path / "archives", str(mirror))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]


def test_fetch_all_real_mirror(mirror: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    fetch_all(raw, tmp_path / "archives", str(mirror))
    voc = raw / "voc/VOCdevkit/VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        assert any((voc / sub).iterdir()), sub
    assert any((raw / "coco/val2017").glob("*.jpg"))
    assert (raw / "coco/annotations/instances_val2017.json").is_file()
    for split in ("train", "val"):
        classes = [p for p in (raw / "imagenette/imagenette2-160" / split).iterdir() if p.is_dir()]
        assert len(classes) == 10
    assert not (tmp_path / "archives").exists()


@pytest.mark.parametrize("stage", ["download", "sources"])
def test_a_missing_mirror_fails_with_one_line_and_no_output(tmp_path: Path, stage: str) -> None:
    params = tiny_params(data={"source": "download", "mirror": str(tmp_path / "nowhere")})
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    result = subprocess.run(
        stage_command(stage, params),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: data.mirror: {tmp_path / 'nowhere'} is not a folder (nor a URL)"
    ]
    assert not (tmp_path / "data").exists()


def test_a_mirror_without_an_archive_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError, match=r"imagenette2-160\.tgz not found in mirror folder"):
        fetch_all(tmp_path / "raw", tmp_path / "archives", str(tmp_path / "mirror"), retries=0)
    assert not (tmp_path / "raw").exists()
