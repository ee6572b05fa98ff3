"""The study's store: one place every machine reads and writes files (issue 21).

A store is a URL recorded with the study at ``study create``: ``file:///shared/folder`` or
``s3://bucket/prefix``. It is opened through Optuna's artifact stores
(``FileSystemArtifactStore``, ``Boto3ArtifactStore``) by :func:`open_store`, the one owner of
that choice. On top of it, :class:`Store` puts and gets files by key with their SHA-256 kept
beside them (``KEY.sha256``, written after the file, so a listed checksum means the file is
whole) and a local cache folder: a download is verified against the checksum and renamed into
place, so a cached file is always a whole, checked one.

    store = Store(open_store(url), cache_dir)     # or Store.open(url, cache_dir)
    sha = store.put_file("features/KEY.npz", path)   # upload + checksum
    local = store.get_file("features/KEY.npz")       # cached, verified copy (NotFound if absent)
    store.get_file(key, dest)                         # or to a path of the caller's

Credentials never pass through here: S3 takes boto3's default chain (environment,
``~/.aws/config``, an instance role; ``AWS_ENDPOINT_URL`` for an S3-compatible server), and a
store URL with credentials in it is refused without being echoed.

Study-level helpers: :func:`store_of` (a study's store, or None), :func:`publish` /
:func:`fetch_published` (files recorded in a study user attribute with their keys and
checksums: the final model, the similar-items index) and :func:`fetch_final_model` (what
``study:NAME`` in place of a model path reads).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from clothopt._io import atomic_path
from clothopt.errors import DataError, InvalidArgument, NotFound, StorageUnavailable
from clothopt.logging import get_logger

if TYPE_CHECKING:
    import optuna

__all__ = [
    "FINAL_ATTR",
    "INDEX_ATTR",
    "MODEL_PREFIX",
    "ArtifactStore",
    "Store",
    "check_store_url",
    "fetch_final_model",
    "fetch_published",
    "open_store",
    "prefixed",
    "publish",
    "publish_final",
    "published_keys",
    "sha256_of",
    "store_cache_dir",
    "store_of",
]

FINAL_ATTR = "clothopt:final_store"  # study user attr: the final model's keys and checksums
INDEX_ATTR = "clothopt:index_store"  # the similar-items index built from the study
MODEL_PREFIX = "study:"  # `clothopt predict study:NAME ...`
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=-]*(/[A-Za-z0-9_][A-Za-z0-9._=-]*)*")
_CHUNK = 1 << 20

logger = get_logger(__name__)


class ArtifactStore(Protocol):
    """What Optuna's artifact stores offer (``optuna.artifacts``' protocol, which Optuna keeps
    private): the part this module uses."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...


# --------------------------------------------------------------------------- URLs and stores


def check_store_url(url: str) -> str:
    """``url`` normalised (``file:///abs/path`` or ``s3://bucket[/prefix]``); else
    InvalidArgument, which never repeats credentials written into the URL."""
    if not isinstance(url, str) or not url:
        raise InvalidArgument("a store is a URL: file:///shared/folder or s3://bucket/prefix")
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.password or parts.username:
        raise InvalidArgument(
            "a store URL takes no credentials: S3 reads them from the environment or the AWS "
            "configuration (the URL was not stored)"
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidArgument(f"bad store URL {url!r}: use file:///absolute/path")
        return "file://" + str(Path(unquote(parts.path)).absolute())
    if parts.scheme == "s3":
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
            raise InvalidArgument(f"bad store URL {url!r}: s3://BUCKET/PREFIX, a valid bucket")
        prefix = parts.path.strip("/")
        if prefix and not _KEY.fullmatch(prefix):
            raise InvalidArgument(f"bad store URL {url!r}: its prefix has odd characters")
        return f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    raise InvalidArgument(
        f"bad store URL {url.split('://')[0]}://...: use file:///shared/folder or "
        "s3://bucket/prefix"
    )


def open_store(url: str) -> ArtifactStore:
    """The Optuna artifact store a store URL names (keys may contain ``/``).

    ``file://``: a :class:`optuna.artifacts.FileSystemArtifactStore` on the folder (created),
    writes atomic. ``s3://``: a :class:`optuna.artifacts.Boto3ArtifactStore` on the bucket,
    every key under the prefix; boto3 finds the credentials (``pip install 'clothopt[s3]'``).
    """
    url = check_store_url(url)
    if url.startswith("file://"):
        folder = Path(url[len("file://") :])
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot open the store {url}: {exc.strerror}") from None
        return _folder_store(folder)
    try:
        import boto3
    except ImportError:
        raise InvalidArgument("an s3:// store needs boto3: pip install 'clothopt[s3]'") from None
    from optuna.artifacts import Boto3ArtifactStore

    bucket, _, prefix = url[len("s3://") :].partition("/")
    inner = Boto3ArtifactStore(bucket, client=boto3.client("s3"), avoid_buf_copy=True)
    return _Prefixed(inner, prefix) if prefix else inner


def _folder_store_class() -> type:
    from optuna.artifacts import FileSystemArtifactStore

    class FolderStore(FileSystemArtifactStore):
        """Atomic writes, and keys with folders in them."""

        def __init__(self, base_path: Path) -> None:
            super().__init__(base_path)
            self.folder = Path(base_path).resolve()

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            dest = (self.folder / artifact_id).resolve()
            if self.folder not in dest.parents:
                raise InvalidArgument(f"bad store key {artifact_id!r}")
            with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
                shutil.copyfileobj(content_body, fh, _CHUNK)

    return FolderStore


def _folder_store(folder: Path) -> ArtifactStore:
    return _folder_store_class()(folder)


class _Prefixed:
    """An artifact store whose every key lies under ``prefix/``."""

    def __init__(self, inner: ArtifactStore, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self._key(artifact_id))


def prefixed(inner: ArtifactStore, prefix: str) -> ArtifactStore:
    """``inner`` with every key under ``prefix/`` (e.g. the dashboard's ``artifacts/``)."""
    return _Prefixed(inner, prefix)  # type: ignore[return-value]


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _reached(url: str) -> Iterator[None]:
    """Errors of the store itself (network, S3, a missing bucket) as one line."""
    try:
        yield
    except (InvalidArgument, NotFound, DataError):
        raise
    except Exception as exc:
        from optuna.artifacts.exceptions import ArtifactNotFound

        if isinstance(exc, ArtifactNotFound):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageUnavailable(f"store {url}: {reason}") from None


class Store:
    """Files by key in a store, with SHA-256 checksums beside them and a local cache.

    The API ``leases`` and the final model use: :meth:`put_file`, :meth:`get_file`,
    :meth:`checksum`.
    """

    def __init__(self, artifacts: ArtifactStore, cache_dir: str | os.PathLike[str], url: str = ""):
        self.artifacts = artifacts
        self.cache_dir = Path(cache_dir)
        self.url = url

    @classmethod
    def open(cls, url: str, cache_dir: str | os.PathLike[str]) -> Store:
        url = check_store_url(url)
        return cls(open_store(url), cache_dir, url)

    @staticmethod
    def check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.endswith(".sha256"):
            raise InvalidArgument(f"bad store key {key!r}")
        return key

    def put_file(self, key: str, path: str | os.PathLike[str]) -> str:
        """Upload ``path`` as ``key``, then its checksum; returns the SHA-256 (hex)."""
        self.check_key(key)
        sha = sha256_of(path)
        with _reached(self.url):
            with open(path, "rb") as fh:
                self.artifacts.write(key, fh)
            self.artifacts.write(f"{key}.sha256", io.BytesIO(f"{sha}\n".encode()))
        return sha

    def checksum(self, key: str) -> str | None:
        """The SHA-256 recorded beside ``key``; None when there is none (not uploaded, or not
        finished uploading)."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        self.check_key(key)
        try:
            with _reached(self.url):
                reader = self.artifacts.open_reader(f"{key}.sha256")
                try:
                    text = reader.read(200).decode("ascii", "replace").strip()
                finally:
                    reader.close()
        except ArtifactNotFound:
            return None
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise DataError(f"store {self.url}: corrupt checksum for {key}")
        return text

    def get_file(
        self, key: str, dest: str | os.PathLike[str] | None = None, sha256: str | None = None
    ) -> Path:
        """A local copy of ``key``, checked against ``sha256`` (default: the checksum beside it).

        ``dest`` default: ``cache_dir/key``; a copy already there with the right checksum is
        used as it is. The download goes to a temporary file beside ``dest`` and is renamed
        into place only once its checksum matches (else DataError, ``dest`` unchanged).
        """
        from optuna.artifacts.exceptions import ArtifactNotFound

        self.check_key(key)
        expected = sha256 or self.checksum(key)
        if expected is None:
            raise NotFound(f"store {self.url}: no file {key}")
        target = Path(dest) if dest is not None else self.cache_dir / key
        if target.is_file() and sha256_of(target) == expected:
            return target
        digest = hashlib.sha256()
        with atomic_path(target) as tmp:
            try:
                with _reached(self.url):
                    reader = self.artifacts.open_reader(key)
                    try:
                        with open(tmp, "wb") as out:
                            for block in iter(lambda: reader.read(_CHUNK), b""):
                                digest.update(block)
                                out.write(block)
                    finally:
                        reader.close()
            except ArtifactNotFound:
                raise NotFound(f"store {self.url}: no file {key}") from None
            if digest.hexdigest() != expected:
                raise DataError(
                    f"store {self.url}: {key} does not match its checksum (a torn or changed "
                    "upload): nothing was written"
                )
        return target

    def exists(self, key: str) -> bool:
        return self.checksum(key) is not None

    def check(self) -> None:
        """Reach the store once (``study create`` does): no credentials, an unreachable server
        or a missing bucket is one line now rather than at the first upload."""
        if self.url.startswith("s3://"):
            import boto3

            bucket = self.url[len("s3://") :].split("/", 1)[0]
            with _reached(self.url):
                boto3.client("s3").head_bucket(Bucket=bucket)
        else:
            self.checksum("clothopt-probe")


# --------------------------------------------------------------------------- studies


def store_cache_dir(storage_url: str | None) -> Path:
    """The local cache of store files: ``<storage's folder>/store-cache``."""
    from clothopt.paths import studies_root

    return studies_root(storage_url) / "store-cache"


def store_of(study: optuna.Study, storage_url: str | None) -> Store | None:
    """The study's store (its recorded URL), caching under the storage's folder; None when
    the study has none."""
    from clothopt.config import CONFIG_ATTR

    raw = study.user_attrs.get(CONFIG_ATTR)
    url = json.loads(raw).get("store") if raw else None
    return Store.open(url, store_cache_dir(storage_url)) if url else None


def publish(
    study: optuna.Study,
    store: Store,
    attr: str,
    files: Sequence[str | os.PathLike[str]],
    **extra: Any,
) -> dict[str, Any]:
    """Upload ``files`` under ``studies/NAME/<attr's kind>/`` and record their keys and
    checksums in the study user attr ``attr`` (after every upload: a recorded set is whole)."""
    kind = "final" if attr == FINAL_ATTR else "index"
    record: dict[str, Any] = {"store": store.url, "files": {}, **extra}
    for path in map(Path, files):
        key = f"studies/{study.study_name}/{kind}/{path.name}"
        record["files"][path.name] = {"key": key, "sha256": store.put_file(key, path)}
    study.set_user_attr(attr, record)
    return record


def publish_final(
    study: optuna.Study, storage_url: str | None, trial: int, files: Sequence[Path]
) -> dict[str, Any] | None:
    """Upload a finalized study's files (model, classes, report, figures) to its store and
    record them (:data:`FINAL_ATTR`); None when the study has no store. Finalize's
    ``on_finalized`` callback calls it, once ``final/`` is in place."""
    store = store_of(study, storage_url)
    if store is None:
        return None
    return publish(study, store, FINAL_ATTR, files, trial=trial)


def published_keys(study: optuna.Study) -> list[str]:
    """The store keys of every file the study published (final model, index)."""
    records = (study.user_attrs.get(attr) or {} for attr in (FINAL_ATTR, INDEX_ATTR))
    return [entry["key"] for record in records for entry in record.get("files", {}).values()]


def fetch_published(study: optuna.Study, store: Store, attr: str) -> dict[str, Path]:
    """The files recorded under ``attr``, fetched into the cache and verified by the recorded
    checksums: ``{file name: local path}``."""
    record = study.user_attrs.get(attr)
    if not record:
        what = "final model" if attr == FINAL_ATTR else "index"
        raise NotFound(f"study {study.study_name!r} has no {what} in its store: finalize it first")
    return {
        name: store.get_file(entry["key"], sha256=entry["sha256"])
        for name, entry in record["files"].items()
    }


def fetch_final_model(study: optuna.Study, storage_url: str | None) -> Path | None:
    """The study's final model fetched from its store (verified, cached, ``classes.json``
    beside it); None when the study has no store or nothing was published there (the caller
    then looks at the local ``final/``)."""
    store = store_of(study, storage_url)
    if store is None or not study.user_attrs.get(FINAL_ATTR):
        return None
    files = fetch_published(study, store, FINAL_ATTR)
    models = [path for name, path in files.items() if name.endswith(".keras")]
    if len(models) != 1:
        raise NotFound(f"study {study.study_name!r}: its store record names no single model")
    return models[0]
