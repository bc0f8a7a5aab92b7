"""`fairdiff download` against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fairdiffusion.data import download
from fairdiffusion.errors import FairDiffError


class ArchiveServer(ThreadingHTTPServer):
    """Serves one payload; optional Range support; can cut the next N responses in half."""

    def __init__(self, payload: bytes, ranges: bool = True, truncate: int = 0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.payload, self.ranges, self.truncate = payload, ranges, truncate
        self.requests: list[str | None] = []       # the Range header of every request

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/files/archive.zip"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server, data = self.server, self.server.payload
        if self.path != "/files/archive.zip":
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        server.requests.append(wanted)
        start = 0
        if wanted and server.ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.truncate > 0:
            server.truncate -= 1
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def serve():
    servers = []

    def start(payload, **kwargs):
        server = ArchiveServer(payload, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ham_like_archive() -> bytes:
    """A Dataverse-style bundle: metadata + an inner zip of images (+ some bulk to resume)."""
    images = zip_bytes({f"ISIC_{i:07d}.jpg": bytes([i]) * 100 for i in range(5)})
    return zip_bytes({"HAM10000_metadata.csv": b"lesion_id,image_id,dx,dx_type,age,sex\n",
                      "HAM10000_images_part_1.zip": images, "MANIFEST.TXT": b"x" * 50_000})


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def ham_cfg(url, sha256=None):
    return {"source": "ham10000", "download": {"url": url, "sha256": sha256}}


def test_download_verifies_extracts_and_records(serve, tmp_path):
    payload = ham_like_archive()
    digest = hashlib.sha256(payload).hexdigest()
    server = serve(payload)
    out = tmp_path / "resources" / "ham"
    download.download("ham", ham_cfg(server.url, digest), out, wait=0)
    assert (out / "HAM10000_metadata.csv").exists()
    inner = out / "HAM10000_images_part_1"
    assert sorted(p.name for p in inner.iterdir()) == [f"ISIC_{i:07d}.jpg" for i in range(5)]
    assert not (out / "HAM10000_images_part_1.zip").exists()
    marker = json.loads((out / "download.done").read_text())
    assert marker["sha256"] == digest and marker["bytes"] == len(payload)
    assert files_under(tmp_path / "resources") == files_under(out)    # no .part left


def test_wrong_sha256_is_a_clear_error_and_leaves_nothing(serve, tmp_path):
    server = serve(ham_like_archive())
    with pytest.raises(FairDiffError, match="sha256 mismatch: expected 0{64}"):
        download.download("ham", ham_cfg(server.url, "0" * 64), tmp_path / "resources" / "ham",
                          wait=0)
    assert files_under(tmp_path / "resources") == []


def test_truncated_download_resumes_with_range(serve, tmp_path):
    payload = ham_like_archive()
    server = serve(payload, truncate=1)
    out = tmp_path / "resources" / "ham"
    download.download("ham", ham_cfg(server.url, hashlib.sha256(payload).hexdigest()), out,
                      wait=0)
    assert server.requests == [None, f"bytes={len(payload) // 2}-"]
    assert (out / "download.done").exists()


def test_repeatedly_truncated_download_fails_then_rerun_resumes(serve, tmp_path):
    payload = ham_like_archive()
    server = serve(payload, truncate=10)
    out = tmp_path / "resources" / "ham"
    with pytest.raises(FairDiffError, match="download incomplete after 2 attempt.*rerun to resume"):
        download.download("ham", ham_cfg(server.url), out, attempts=2, wait=0)
    assert not out.exists()
    kept = files_under(tmp_path / "resources")
    assert len(kept) == 1 and kept[0].suffix == ".part"
    size = kept[0].stat().st_size
    assert 0 < size < len(payload)
    server.truncate = 0
    download.download("ham", ham_cfg(server.url), out, wait=0)
    assert server.requests[-1] == f"bytes={size}-"
    marker = json.loads((out / "download.done").read_text())
    assert marker["sha256"] == hashlib.sha256(payload).hexdigest()


def test_server_without_range_support_restarts(serve, tmp_path):
    payload = ham_like_archive()
    server = serve(payload, ranges=False, truncate=1)
    out = tmp_path / "resources" / "ham"
    download.download("ham", ham_cfg(server.url, hashlib.sha256(payload).hexdigest()), out,
                      wait=0)
    assert (out / "HAM10000_metadata.csv").read_bytes().startswith(b"lesion_id")


@pytest.mark.parametrize("archive", [
    zip_bytes({"ok.txt": b"fine", "../evil.txt": b"owned"}),
    zip_bytes({"ok.txt": b"fine", "/tmp/evil_absolute.txt": b"owned"}),
    tar_bytes({"ok.txt": b"fine", "../evil.txt": b"owned"}),
    zip_bytes({"HAM10000_images_part_1.zip": zip_bytes({"../../evil.txt": b"owned"})}),
])
def test_path_traversal_members_are_rejected(serve, tmp_path, archive):
    server = serve(archive)
    out = tmp_path / "deep" / "resources" / "ham"
    with pytest.raises(FairDiffError, match="unsafe member.*archive rejected"):
        download.download("ham", ham_cfg(server.url), out, wait=0)
    assert files_under(tmp_path) == []


def test_tar_archive_is_extracted(serve, tmp_path):
    server = serve(tar_bytes({"data/HAM10000_metadata.csv": b"lesion_id\n"}))
    out = tmp_path / "resources" / "ham"
    download.download("ham", ham_cfg(server.url), out, wait=0)
    assert (out / "data" / "HAM10000_metadata.csv").read_bytes() == b"lesion_id\n"


def test_missing_file_is_a_clear_error(serve, tmp_path):
    server = serve(b"")
    with pytest.raises(FairDiffError, match="HTTP 404.*check download.url"):
        download.download("ham", ham_cfg(server.url.replace("archive", "missing")),
                          tmp_path / "r", wait=0)


def test_chexpert_is_never_downloaded(tmp_path):
    out = tmp_path / "resources" / "chexpert"
    with pytest.raises(FairDiffError, match=r"registration.*datasets.chexpert.path"):
        download.download("chexpert", {"source": "chexpert"}, out)
    out.mkdir(parents=True)
    (out / "train.csv").write_text("Path,Sex\n")
    download.download("chexpert", {"source": "chexpert"}, out)
    marker = json.loads((out / "download.done").read_text())
    assert marker["sha256"] == {"train.csv": hashlib.sha256(b"Path,Sex\n").hexdigest()}


def test_hugging_face_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "resources" / "fairgenmed"
    with pytest.raises(FairDiffError, match="harvardairobotics/FairGenMed: download from Hugging"):
        download.download("fairgenmed", {"source": "fairgenmed"}, out)
    assert not (out / "download.done").exists()


def test_single_file_download_checks_sha256_prefix(serve, tmp_path):
    payload = b"weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    server = serve(payload, truncate=1)
    out = tmp_path / "resources" / "weights.pth"
    assert download.http_file(server.url, out, digest[:8], wait=0) == digest
    assert out.read_bytes() == payload
    assert files_under(tmp_path / "resources") == [out]

    bad = tmp_path / "resources" / "other.pth"
    with pytest.raises(FairDiffError, match="does not start with 00000000"):
        download.http_file(serve(payload).url, bad, "00000000", wait=0)
    assert files_under(tmp_path / "resources") == [out]
