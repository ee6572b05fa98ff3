"""fetch: download from a local HTTP server, verify, unpack safely, publish atomically."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import io
import json
import logging
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clothopt.data.fetch import DATASET_COMMIT, DATASET_URL, SOURCE_FILE, fetch
from clothopt.data.layout import SPLITS, open_dataset
from clothopt.errors import UserError

# ``clothopt.data.fetch`` the attribute is the function; the module is needed for patching
fetch_module = importlib.import_module("clothopt.data.fetch")

TOP = f"clothing-dataset-small-{DATASET_COMMIT}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_tree(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        for cls in ("hat", "pants"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    (root / "README.md").write_text("synthetic\n")
    return root


def tar_gz(tree: Path, top: str = TOP, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    # GitHub writes the commit id as the pax global header's comment
    with tarfile.open(fileobj=buf, mode="w:gz", pax_headers={"comment": COMMIT}) as tf:
        tf.add(tree, arcname=top)
        for info in extra or []:
            tf.addfile(info, io.BytesIO(b"evil") if info.isreg() else None)
    return buf.getvalue()


def zip_bytes(tree: Path, top: str = TOP, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(tree).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        zf.comment = COMMIT.encode()
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


class Server:
    """Serves ``routes[path] = bytes``; ``/half*`` stops halfway, ``/stall`` never sends."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.release = threading.Event()
        routes, release = self.routes, self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.flush()
                    release.wait(10)
                    return
                name = self.path.removeprefix("/half-nolength").removeprefix("/half")
                data = routes.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                if not self.path.startswith("/half-nolength"):
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path.startswith("/half"):
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("src") / "tree")


@pytest.fixture(scope="module")
def fingerprint(tree: Path) -> str:
    return open_dataset(tree).fingerprint


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    """An empty parent folder for ``dest``; tests check nothing else is left in it."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def serve(server: Server, name: str, data: bytes) -> str:
    server.routes[name] = data
    return server.url + name


def test_fetch_tar_gz(
    server: Server, tree: Path, fingerprint: str, out: Path, capsys, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="clothopt")  # fetch's notes are log records
    data = tar_gz(tree)
    url = serve(server, "/data.tar.gz", data)
    dest = out / "clothing"
    assert fetch(dest, url=url, fingerprint=fingerprint, progress=True) == dest
    assert os.listdir(out) == ["clothing"]
    assert open_dataset(dest).fingerprint == fingerprint
    assert (dest / "README.md").read_text() == "synthetic\n"
    source = json.loads((dest / SOURCE_FILE).read_text())
    assert source["sha256"] == hashlib.sha256(data).hexdigest()
    assert source["url"] == url
    assert source["commit"] == COMMIT
    assert source["bytes"] == len(data)
    assert source["images"] == 12
    assert (dest / SOURCE_FILE).stat().st_mode & 0o044  # readable by others, unlike mkstemp's
    err = capsys.readouterr().err  # the download meter writes to the terminal itself
    assert f"downloading {url}: {len(data) / 1e3:.1f} kB" in err and "(100%)" in err
    assert f"archive SHA-256 {hashlib.sha256(data).hexdigest()}" in caplog.text

    # a second run finds it in place and downloads nothing
    server.routes.pop("/data.tar.gz")
    before = (dest / SOURCE_FILE).stat().st_mtime_ns
    assert fetch(dest, url=url, fingerprint=fingerprint, progress=True) == dest
    assert "already there" in caplog.text
    assert (dest / SOURCE_FILE).stat().st_mtime_ns == before
    assert os.listdir(out) == ["clothing"]


def test_fetch_zip_by_content_not_name(
    server: Server, tree: Path, fingerprint: str, out: Path
) -> None:
    # named .tar.gz but holds a zip: the bytes decide
    url = serve(server, "/zip-in-disguise.tar.gz", zip_bytes(tree))
    dest = fetch(out / "d", url=url, fingerprint=fingerprint, progress=False)
    assert open_dataset(dest).fingerprint == fingerprint
    assert json.loads((dest / SOURCE_FILE).read_text())["commit"] == COMMIT


def test_fetch_plain_tar_without_top_folder(
    server: Server, tree: Path, fingerprint: str, out: Path
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path in sorted(tree.iterdir()):
            tf.add(path, arcname=path.name)
    url = serve(server, "/flat.zip", buf.getvalue())
    dest = fetch(out / "nested" / "d", url=url, fingerprint=None, progress=False)
    assert open_dataset(dest).fingerprint == fingerprint
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_wrong_sha256(server: Server, tree: Path, fingerprint: str, out: Path) -> None:
    url = serve(server, "/sha.tar.gz", tar_gz(tree))
    with pytest.raises(UserError, match="SHA-256") as info:
        fetch(out / "d", url=url, sha256="0" * 64, fingerprint=fingerprint, progress=False)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


def test_right_sha256(server: Server, tree: Path, fingerprint: str, out: Path) -> None:
    data = tar_gz(tree)
    url = serve(server, "/sha-ok.tar.gz", data)
    digest = hashlib.sha256(data).hexdigest().upper()  # case does not matter
    fetch(out / "d", url=url, sha256=digest, fingerprint=fingerprint, progress=False)
    assert (out / "d" / "train").is_dir()


def test_wrong_fingerprint(server: Server, tree: Path, fingerprint: str, out: Path) -> None:
    url = serve(server, "/fp.tar.gz", tar_gz(tree))
    with pytest.raises(UserError, match=f"{fingerprint}.*expected {'1' * 64}"):
        fetch(out / "d", url=url, fingerprint="1" * 64, progress=False)
    assert os.listdir(out) == []


def test_http_404(server: Server, out: Path) -> None:
    url = server.url + "/nothing-here.tar.gz"
    with pytest.raises(UserError, match=f"could not download {url}: HTTP 404") as info:
        fetch(out / "d", url=url, progress=False)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


def test_connection_refused(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    dest = tmp_path / "new" / "deeper" / "d"
    with pytest.raises(UserError, match=f"could not download {url}: "):
        fetch(dest, url=url, progress=False)
    assert os.listdir(tmp_path) == []  # the parents it created are gone again


def test_timeout(server: Server, out: Path) -> None:
    with pytest.raises(UserError, match=r"timed out after 0\.3 s"):
        fetch(out / "d", url=server.url + "/stall", timeout=0.3, progress=False)
    assert os.listdir(out) == []


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_half_download(server: Server, tree: Path, out: Path, length: bool) -> None:
    server.routes["/cut.tar.gz"] = tar_gz(tree)
    prefix = "/half" if length else "/half-nolength"
    with pytest.raises(UserError) as info:
        fetch(out / "d", url=server.url + prefix + "/cut.tar.gz", fingerprint=None, progress=False)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


@pytest.mark.parametrize(
    "bad",
    [
        member("../evil"),
        member(f"{TOP}/../../evil"),
        member("/tmp/evil-absolute"),
        member(f"{TOP}/train/hat/link", tarfile.SYMTYPE, "../../../../evil"),
        member(f"{TOP}/train/hat/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        member(f"{TOP}/train/hat/hard", tarfile.LNKTYPE, "../evil"),
        member(f"{TOP}/train/hat/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink", "fifo"],
)
def test_unsafe_tar_members_are_refused(
    server: Server, tree: Path, fingerprint: str, out: Path, bad: tarfile.TarInfo
) -> None:
    url = serve(server, "/evil.tar.gz", tar_gz(tree, extra=[bad]))
    with pytest.raises(UserError, match="refused") as info:
        fetch(out / "d", url=url, fingerprint=fingerprint, progress=False)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []
    assert not (out.parent / "evil").exists()


def test_safe_symlink_inside_is_fine(
    server: Server, tree: Path, fingerprint: str, out: Path
) -> None:
    link = member(f"{TOP}/LICENSE", tarfile.SYMTYPE, "README.md")
    url = serve(server, "/link.tar.gz", tar_gz(tree, extra=[link]))
    dest = fetch(out / "d", url=url, fingerprint=fingerprint, progress=False)
    assert (dest / "LICENSE").read_text() == "synthetic\n"


def test_unsafe_zip_member_is_refused(server: Server, tree: Path, out: Path) -> None:
    url = serve(server, "/evil.zip", zip_bytes(tree, extra={"../evil": b"x"}))
    with pytest.raises(UserError, match="refused"):
        fetch(out / "d", url=url, fingerprint=None, progress=False)
    assert os.listdir(out) == []
    assert not (out.parent / "evil").exists()


def test_not_an_archive_or_no_data_set(server: Server, tree: Path, out: Path) -> None:
    url = serve(server, "/page.html", b"<html>rate limited</html>")
    with pytest.raises(UserError, match="damaged or incomplete, or not a"):
        fetch(out / "d", url=url, progress=False)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree / "train", arcname="top/train")
    url = serve(server, "/train-only.tar.gz", buf.getvalue())
    with pytest.raises(UserError, match="no folder with train/, validation/, test/"):
        fetch(out / "d", url=url, progress=False)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree, arcname="one")
        tf.add(tree, arcname="two")
    url = serve(server, "/two.tar.gz", buf.getvalue())
    with pytest.raises(UserError, match="more than one data set: one, two"):
        fetch(out / "d", url=url, progress=False)
    assert os.listdir(out) == []


def test_existing_dest_is_never_overwritten(
    server: Server, tree: Path, fingerprint: str, out: Path
) -> None:
    url = serve(server, "/exists.tar.gz", tar_gz(tree))
    other = make_tree(out / "other", seed=1)
    with pytest.raises(UserError, match="already exists with fingerprint"):
        fetch(other, url=url, fingerprint=fingerprint, progress=False)
    assert open_dataset(other).fingerprint != fingerprint

    empty = out / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="already exists and is not a usable data set"):
        fetch(empty, url=url, fingerprint=fingerprint, progress=False)
    (out / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        fetch(out / "file", url=url, fingerprint=fingerprint, progress=False)
    assert sorted(os.listdir(out)) == ["empty", "file", "other"]
    assert os.listdir(empty) == []


def test_failure_at_the_last_step_leaves_nothing(
    server: Server, tree: Path, fingerprint: str, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = serve(server, "/rename.tar.gz", tar_gz(tree))
    real_rename = os.rename

    def failing_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == out / "d":
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C just before it
        real_rename(src, dst)

    monkeypatch.setattr(fetch_module.os, "rename", failing_rename)
    with pytest.raises(KeyboardInterrupt):
        fetch(out / "d", url=url, fingerprint=fingerprint, progress=False)
    assert os.listdir(out) == []


def test_default_url_points_at_the_pinned_commit() -> None:
    assert DATASET_URL == (
        "https://github.com/alexeygrigorev/clothing-dataset-small/archive/"
        "11961516512414bf9f6c150a832cfd21b54a6b54.tar.gz"
    )
