"""``shared.store`` on S3 and GCS through ``obstore`` (Rust's ``object_store``: one API for S3,
S3-compatible stores and GCS; its I/O runs outside the GIL).

Chosen on measurements against moto (docs/, the store task's report): a 256 MiB download in
one GET took 2.7 s with obstore, 10.3 s with s3fs's ``get`` and 24.1 s with boto3's
``download_file``; a LIST of 1,000 keys 2.2 s, 4.4 s and 2.6 s. obstore is one wheel with no
dependencies; s3fs's aiobotocore pins an older botocore than boto3's.

Credentials as ``object_store`` finds them: for S3 the AWS_* environment, web identity (EKS),
ECS and the instance metadata service; with boto3 installed and no keys in the environment, a
profile (AWS_PROFILE, ~/.aws/config, SSO) through boto3's own chain. For GCS:
GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, the metadata
server. The endpoint of an S3-compatible store: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
(``http://`` allowed then); of a GCS emulator: STORAGE_EMULATOR_HOST, as Google's SDKs read it.

The library's own retries are kept short (2 tries, 10 s in all): a store that is down must come
back to the caller as ``TransientStoreError`` quickly, so that it logs once and backs off on its
own schedule instead of blocking a poll for minutes.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Iterable

import obstore as obs
from obstore import exceptions as obx

from shared.store import (DEFAULT_PARALLEL, DEFAULT_PART_SIZE, LIST_LIMIT, SMALL_OBJECT_LIMIT,
                          Got, Listing, ObjectChanged, ObjectInfo, ObjectMissing, Store,
                          StoreError, TooLarge, TransientStoreError, check_key,
                          endpoint_for_s3, join)

RETRIES = {"max_retries": 2, "retry_timeout": timedelta(seconds=10),
           "backoff": {"init_backoff": timedelta(milliseconds=100),
                       "max_backoff": timedelta(seconds=2), "base": 2}}
STREAM_CHUNK = 1 << 20  # bytes of a ranged read held in memory at once
# obstore raises its own classes, and Python's for some (FileNotFoundError for a 404,
# PermissionError, TimeoutError, ConnectionError)
ERRORS = (obx.BaseError, OSError)
_CLIENTS: dict[tuple, object] = {}  # (scheme, bucket, endpoint) -> obstore store: one pool each


def open_bucket(scheme: str, bucket: str, prefix: str) -> "CloudStore":
    """A store for ``scheme://bucket/prefix``. No request is made."""
    endpoint = endpoint_for_s3() if scheme == "s3" else os.environ.get("STORAGE_EMULATOR_HOST")
    key = (scheme, bucket, endpoint)
    if key not in _CLIENTS:
        _CLIENTS[key] = _make_client(scheme, bucket, endpoint)
    return CloudStore(_CLIENTS[key], f"{scheme}://{bucket}", prefix)


def _make_client(scheme: str, bucket: str, endpoint: str | None):
    from obstore.store import GCSStore, S3Store

    options = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(minutes=5),
               "allow_http": bool(endpoint and endpoint.startswith("http://"))}
    try:
        if scheme == "gs":
            # an emulator takes any token (obstore 0.12's skip_signature still asks the
            # metadata server for one)
            config = {"base_url": endpoint, "bearer_token": "emulator"} if endpoint else {}
            return GCSStore(bucket, config=config, client_options=options,
                            retry_config=RETRIES)
        return S3Store(bucket, client_options=options, retry_config=RETRIES,
                       credential_provider=_profile_credentials(), config=_s3_config(endpoint))
    except ERRORS as err:
        raise StoreError(f"{scheme}://{bucket}: {_first_line(err)}") from None


def _s3_config(endpoint: str | None) -> dict:
    config: dict = {}
    if endpoint:
        config["endpoint"] = endpoint
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        config["region"] = "us-east-1"  # as the AWS CLI without a region configured
    return config


def _profile_credentials():
    """boto3's credential chain (profiles, SSO, config files), when boto3 is installed and the
    environment holds no keys: ``object_store`` alone reads no config files."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    profile_files = [Path(os.environ.get(name, default)).expanduser() for name, default in
                     (("AWS_CONFIG_FILE", "~/.aws/config"),
                      ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))]
    if not (os.environ.get("AWS_PROFILE") or any(p.is_file() for p in profile_files)):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider()


def _first_line(err: BaseException) -> str:
    """obstore's text without its debug dump: the summary, and S3's error code if it sent one."""
    text = str(err).split("Debug source:")[0]
    code = re.search(r"<Code>([^<]{1,64})</Code>", text)
    summary = " ".join(text.split("<?xml")[0].split())[:240]
    return f"{summary} {code.group(1)}" if code else summary


# S3's and GCS's error codes that mean "not now" whatever their HTTP status (RequestTimeout
# comes as a 400): as the AWS SDKs' retry handlers list them (botocore/retryhandler.py,
# _retry.json: throttling and transient errors)
TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequests",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException", "PriorRequestNotComplete", "OperationAborted",
    "EC2ThrottledException", "TransactionInProgressException", "IDPCommunicationError"})
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")


def translate(err: Exception, what: str) -> StoreError:
    """obstore's error as ours. Transient: S3's codes for "not now" (SlowDown, RequestTimeout,
    even as a 400), any 5xx, 408 and 429, and every error with no HTTP status (connection
    refused or reset, timeouts). Refused for good: the other 4xx (400, 401, 403, 404 of a
    bucket...). Missing: a 404 of an object."""
    line = f"{what}: {_first_line(err)}"
    text = str(err)
    code = _CODE.search(text)
    code = code.group(1) if code else None
    status = _STATUS.search(text)
    status = int(status.group(1)) if status else None
    if code in TRANSIENT_CODES:
        return TransientStoreError(line)
    if code == "NoSuchBucket":  # a 404 too, but no object will ever be there
        return StoreError(line)
    if isinstance(err, obx.PreconditionError):
        return ObjectChanged(f"{line} (the object changed while it was read)")
    if isinstance(err, (obx.NotFoundError, FileNotFoundError)) or code == "NoSuchKey":
        return ObjectMissing(line)
    if isinstance(err, (obx.PermissionDeniedError, obx.UnauthenticatedError, PermissionError,
                        obx.InvalidPathError, obx.NotSupportedError,
                        obx.UnknownConfigurationKeyError)):
        return StoreError(line)
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return StoreError(line)
    return TransientStoreError(line)


def _bad_path(err: Exception) -> bool:
    """Whether a listing failed on a key the library cannot parse as a path (``a/../b``,
    ``a//b``): S3 keys are any string, ``object_store`` paths are not."""
    return isinstance(err, obx.InvalidPathError) or "invalid path" in str(err).lower()


class CloudStore(Store):
    """A prefix of a bucket. Keys are joined to the prefix here, so that every child of one
    bucket shares one client and its connection pool."""

    def __init__(self, client, bucket_url: str, prefix: str) -> None:
        self.client, self.bucket_url, self.prefix = client, bucket_url, prefix
        self.url = f"{bucket_url}/{prefix}" if prefix else bucket_url

    def child(self, prefix: str) -> "CloudStore":
        return CloudStore(self.client, self.bucket_url, join(self.prefix, check_key(
            prefix.strip("/"))))

    def _key(self, key: str) -> str:
        return join(self.prefix, check_key(key))

    def list(self, prefix: str = "", *, limit: int = LIST_LIMIT) -> list[ObjectInfo]:
        full = join(self.prefix, prefix)
        try:
            found = self._list(full, limit)
        except ERRORS as err:
            if not _bad_path(err):
                raise translate(err, f"cannot list {self.url}/{prefix}") from None
            found = self._list_around_bad_keys(full, prefix, limit)
        found.sort(key=lambda o: o.key)
        return found

    def _list(self, full: str, limit: int) -> Listing:
        """One recursive LIST of ``full`` (a key prefix of the bucket), as ObjectInfos relative
        to this store's root. Raises obstore's errors, TooLarge past ``limit``."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = Listing()
        try:
            for batch in obs.list(self.client, full + "/" if full else None, chunk_size=1000):
                for meta in batch:
                    etag = (meta.get("e_tag") or "").strip('"') or None
                    modified = meta.get("last_modified")
                    found.append(ObjectInfo(meta["path"][strip:], meta["size"], etag,
                                            modified.timestamp() if modified else None))
                if len(found) > limit:
                    raise TooLarge(f"{self.url}: more than {limit} objects under {full}/")
        except (obx.NotFoundError, FileNotFoundError):
            return Listing()
        return found

    def _list_around_bad_keys(self, full: str, prefix: str, limit: int) -> Listing:
        """The listing when a key below ``full`` does not parse: the first level (one LIST with
        a delimiter), then each first-level prefix on its own; one that fails to parse too is
        left out whole and named in ``unreadable``. One bad key costs its own version, never
        the base path."""
        where = f"cannot list {self.url}/{prefix}"
        try:
            level = obs.list_with_delimiter(self.client, full + "/" if full else None)
        except ERRORS as err:
            raise translate(err, where) from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        found, unreadable = Listing(), []
        for meta in level["objects"]:
            found.append(ObjectInfo(meta["path"][strip:], meta["size"],
                                    (meta.get("e_tag") or "").strip('"') or None,
                                    meta["last_modified"].timestamp()))
        for child in level["common_prefixes"]:
            try:
                found.extend(self._list(child.rstrip("/"), limit - len(found)))
            except ERRORS as err:
                if not _bad_path(err):
                    raise translate(err, where) from None
                unreadable.append(child.rstrip("/")[strip:] + "/")
        found.unreadable = tuple(unreadable)
        return found

    def get(self, key: str, *, if_none_match: str | None = None,
            limit: int = SMALL_OBJECT_LIMIT) -> Got:
        options = {"if_none_match": f'"{if_none_match}"'} if if_none_match else {}
        where = f"{self.url}/{key}"
        try:
            result = obs.get(self.client, self._key(key), options=options)
            size = result.meta["size"]
            if size > limit:  # the body is not read: the connection goes with the result
                raise TooLarge(f"{where}: {size} bytes, more than {limit}")
            data = bytes(result.bytes())
            etag = (result.meta.get("e_tag") or "").strip('"') or None
        except obx.NotModifiedError:
            return Got(None, if_none_match)
        except ERRORS as err:
            raise translate(err, where) from None
        return Got(data, etag)

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = obs.head(self.client, self._key(key))
        except ERRORS as err:
            raise translate(err, f"{self.url}/{key}") from None
        return ObjectInfo(key, meta["size"], (meta.get("e_tag") or "").strip('"') or None,
                          meta["last_modified"].timestamp())

    def download(self, key: str, dest: Path, *, size: int | None = None,
                 etag: str | None = None, parallel: int = DEFAULT_PARALLEL,
                 part_size: int = DEFAULT_PART_SIZE) -> int:
        if size is None:
            info = self.head(key)
            size, etag = info.size, etag or info.etag
        part = max(part_size, -(-size // max(1, parallel)))  # at most ``parallel`` parts
        starts = list(range(0, size, part))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            if len(starts) <= 1:
                self._read_range(key, fd, 0, size, etag)
            else:
                with ThreadPoolExecutor(min(parallel, len(starts))) as pool:
                    list(pool.map(lambda s: self._read_range(key, fd, s, min(size, s + part),
                                                             etag), starts))
        finally:
            os.close(fd)
        return size

    def _read_range(self, key: str, fd: int, start: int, end: int, etag: str | None) -> None:
        """Bytes [start, end) of ``key`` written at ``start`` in ``fd``, streamed in chunks so
        memory holds one chunk per read, not the part."""
        where = f"{self.url}/{key}"
        options: dict = {"if_match": f'"{etag}"'} if etag else {}
        if end > start or start > 0:
            options["range"] = (start, end)
        offset = start
        try:
            result = obs.get(self.client, self._key(key), options=options)
            for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                if offset + len(chunk) > end:
                    raise ObjectChanged(f"{where}: longer than the {end} bytes listed")
                offset += os.pwrite(fd, chunk, offset)
        except ERRORS as err:
            raise translate(err, where) from None
        if offset != end:
            raise ObjectChanged(f"{where}: {offset - start} bytes of range "
                                      f"{start}-{end} read: the object changed")

    def upload(self, path: Path, key: str) -> ObjectInfo:
        where = f"{self.url}/{key}"
        if not Path(path).is_file():  # obstore's FileNotFoundError would read as a 404
            raise StoreError(f"{where}: no local file {path} to upload")
        try:
            result = obs.put(self.client, self._key(key), Path(path),
                             chunk_size=DEFAULT_PART_SIZE, max_concurrency=DEFAULT_PARALLEL)
        except ERRORS as err:
            raise translate(err, where) from None
        return ObjectInfo(key, Path(path).stat().st_size,
                          (result.get("e_tag") or "").strip('"') or None)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        try:
            result = obs.put(self.client, self._key(key), data)
        except ERRORS as err:
            raise translate(err, f"{self.url}/{key}") from None
        return ObjectInfo(key, len(data), (result.get("e_tag") or "").strip('"') or None)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:  # one by one: the order is the protocol (the manifest first)
            try:
                obs.delete(self.client, self._key(key))
            except (obx.NotFoundError, FileNotFoundError):
                continue
            except ERRORS as err:
                raise translate(err, f"{self.url}/{key}") from None
