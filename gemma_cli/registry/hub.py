"""Hugging Face Hub access: metadata through huggingface_hub, resumable byte streams.

huggingface_hub owns the endpoint (`HF_ENDPOINT`), tokens, offline mode
(`HF_HUB_OFFLINE`), metadata (commit, LFS sha256, size) and its error types.
It does not resume a download across processes (2.4.0 writes a process-unique
`.incomplete` file and deletes it on error), so the byte stream is ours: a
`.partial` file in our store, continued with `Range: bytes=N-`, then checked
against the LFS sha256 and renamed into place by the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse, urlsplit

from gemma_cli import config
from gemma_cli.errors import DownloadError, GemmaError, UsageError
from gemma_cli.store.blobs import disk_full
from gemma_cli.text_safety import clean_display

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_STALLED_ATTEMPTS = 4
MAX_STALL_RETRIES = 3  # transfers that went silent for config.stall_timeout() seconds, in a row
Progress = Callable[[int], None]


class AuthError(DownloadError):
    """401/403: a gated or private repository."""


class NotOnHubError(DownloadError):
    """404: repository, revision or file does not exist."""


class OfflineError(DownloadError):
    """The Hub cannot be reached (offline mode, no network, server down)."""


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    filename: str
    revision: str
    url: str  # where to GET the bytes (after Hub redirects)
    commit: str | None
    sha256: str | None  # the LFS sha256 when the file is in LFS
    size: int | None

    @property
    def source(self) -> str:
        return f"hf://{self.repo}/{self.filename}@{self.commit or self.revision}"

    @property
    def key(self) -> str:
        """What names the partial file: the sha256, or a hash of the URL for non-LFS files."""
        if self.sha256:
            return self.sha256
        return "url-" + hashlib.sha256(f"{self.repo}/{self.filename}@{self.commit}".encode()).hexdigest()[:40]


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be a Hub endpoint, None when it can: an http(s) URL with a host and a valid port."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return "it holds control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    return None


def check_endpoint_setting() -> None:
    """A usage error for an HF_ENDPOINT that cannot work, before huggingface_hub reads it (it would fail
    with its own traceback-ish lines and a ValueError deep in a download)."""
    url = os.environ.get("HF_ENDPOINT")
    if url:
        problem = endpoint_problem(url)
        if problem:
            raise UsageError(f"HF_ENDPOINT={clean_display(url)!r} is not a usable http(s) URL ({problem}); fix or unset it")


def endpoint() -> str:
    """The Hub base URL in effect: $HF_ENDPOINT, else huggingface_hub's default."""
    url = os.environ.get("HF_ENDPOINT")
    if url:  # read here: huggingface_hub's constants module fails to import when the URL is malformed
        return url.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE): then every request it makes fails."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_error(exc: BaseException, repo: str, filename: str) -> GemmaError | None:
    """Map huggingface_hub / httpx2 exceptions to our one-line errors (None if unknown)."""
    from huggingface_hub import errors as hf

    what = f"{repo}/{filename}"
    base = endpoint()
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return OfflineError(
            f"cannot download {what}: offline mode is on (HF_HUB_OFFLINE=1); unset it to download, models already pulled still work"
        )
    if isinstance(exc, hf.GatedRepoError):
        return AuthError(
            f"{repo} is gated: accept its license on {base}/{repo} and log in with `hf auth login` (or set HF_TOKEN)"
        )
    if isinstance(exc, (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError)):
        return NotOnHubError(f"file {filename} not found in {repo} on {base} (HTTP 404)")
    if isinstance(exc, hf.RevisionNotFoundError):
        return NotOnHubError(f"revision not found for {what} on {base}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return NotOnHubError(
            f"repository {repo} not found on {base}; if it is private or gated, log in with `hf auth login` (or set HF_TOKEN)"
        )
    if isinstance(exc, hf.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return AuthError(
                f"access to {repo} denied (HTTP {status}): it may be gated or private; "
                "log in with `hf auth login` (or set HF_TOKEN) after accepting its license"
            )
        if status == 404:
            return NotOnHubError(f"file {filename} not found in {repo} on {base} (HTTP 404)")
        busy = " (too many requests)" if status == 429 else ""
        return DownloadError(f"the Hub answered HTTP {status}{busy} for {what}; try again later")
    import httpx2

    if isinstance(exc, httpx2.TooManyRedirects):
        return DownloadError(f"the server redirected {what} in a loop (more than 20 redirects); try again later, "
                             "or check HF_ENDPOINT and any proxy")
    if isinstance(exc, httpx2.RemoteProtocolError):  # it answered, then broke off: reachable, so say what happened
        return DownloadError(f"the connection to {base} broke off during a request for {what} "
                             f"({(str(exc).splitlines() or [''])[0][:120]}); run the same command again "
                             "(a partial download is kept and resumes)")
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return OfflineError(
            f"cannot reach the Hugging Face Hub at {base} ({reason}); check your network, "
            "or set HF_HUB_OFFLINE=1 to use only models already pulled"
        )
    return None


MAX_BUSY_WAITS = 3  # answers of "too many requests" / "unavailable" waited out per request before giving up
MAX_BUSY_WAIT_S = 30.0  # the longest Retry-After honoured; past it, the user had better come back later


def waited_out_busy(exc: BaseException, waits: int) -> bool:
    """For a 429 or 503 answer: sleep as its Retry-After asks (2 s without one, at most MAX_BUSY_WAIT_S) and say
    so, up to MAX_BUSY_WAITS times; False for anything else, or when that many waits did not help.

    Why: the Hub rate-limits, and one 429 (even on the resume of a large file) ended the pull at once.
    """
    import time

    from huggingface_hub import errors as hf

    response = getattr(exc, "response", None) if isinstance(exc, hf.HfHubHTTPError) else None
    if response is None or response.status_code not in (429, 503) or waits >= MAX_BUSY_WAITS:
        return False
    try:
        wait = float(response.headers.get("Retry-After", "2"))
    except ValueError:  # an HTTP date, or garbage: a short wait
        wait = 2.0
    if not 0 <= wait <= MAX_BUSY_WAIT_S:
        return False
    time.sleep(wait)
    return True


def file_info(repo: str, filename: str, revision: str = "main") -> RemoteFile:
    """Resolve a repository file to its commit, LFS sha256, size and download URL."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint())
    waits = 0
    while True:
        try:
            meta = get_hf_file_metadata(url, endpoint=endpoint())  # fail fast: no silent 30 s of retries
            break
        except Exception as exc:
            if waited_out_busy(exc, waits):
                waits += 1
                continue
            mapped = hub_error(exc, repo, filename)
            if mapped is None:
                raise
            raise mapped from None
    etag = (meta.etag or "").lower()
    return RemoteFile(
        repo=repo,
        filename=filename,
        revision=revision,
        url=meta.location or url,
        commit=meta.commit_hash,
        sha256=etag if _SHA256.match(etag) else None,
        size=meta.size,
    )


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlparse(a), urlparse(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m.group(1)) if m else None


def download(remote: RemoteFile, partial: Path, progress: Progress | None = None) -> None:
    """Append the rest of `remote` to `partial` (created if missing), resuming with Range.

    Survives dropped connections within the call (retrying from the current
    length while it keeps making progress); a killed process leaves `partial`
    for the next call. Handles 206, a 200 that ignores Range, and 416.
    """
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    if not _same_origin(remote.url, endpoint()):
        headers.pop("authorization", None)  # signed CDN URLs: the token stays on the Hub
        headers.pop("Authorization", None)
    partial.parent.mkdir(parents=True, exist_ok=True)
    stall_s = config.stall_timeout()
    stalled = 0
    silent = 0  # consecutive attempts that stalled without a byte
    restarts = 0  # times the server refused our partial as a prefix: never reset, as bytes arriving between proves nothing
    busy = 0  # 429/503 answers waited out (waited_out_busy)
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and have == remote.size:
            return
        if remote.size is not None and have > remote.size:
            partial.unlink()
            have = 0
        req = dict(headers)
        if have:
            req["Range"] = f"bytes={have}-"
        before = have
        try:
            with get_session().stream("GET", remote.url, headers=req, follow_redirects=True, timeout=httpx2.Timeout(30.0, read=stall_s)) as resp:
                if resp.status_code == 416:  # our partial is not a prefix of anything it has: start over
                    partial.unlink(missing_ok=True)
                    restarts += 1
                    # A body that ends short of the announced size, then a 416 for the rest: the file changed on the
                    # Hub after we asked its size, or a mirror announces a size it does not serve. Counted apart
                    # from stalls (each full GET brings bytes, which reset those), or it downloads the file for ever.
                    if restarts > MAX_STALLED_ATTEMPTS:
                        raise DownloadError(
                            f"{remote.repo}/{remote.filename} changed on the server during the download, or the server "
                            f"announces a size ({remote.size} bytes) it does not serve; run the command again")
                    continue
                if resp.status_code >= 400:
                    resp.read()
                    hf_raise_for_status(resp)
                mode = "ab"
                if resp.status_code == 206:
                    if _content_range_start(resp.headers.get("Content-Range")) != have:
                        mode, have = "wb", 0  # not the range we asked for: restart rather than corrupt
                        if not resp.headers.get("Content-Range", "").startswith("bytes 0-"):
                            continue
                elif have:
                    mode, have = "wb", 0  # 200: the server ignored Range and sends everything
                left = remote.size - have if remote.size is not None else None
                with partial.open(mode) as fh:
                    for chunk in resp.iter_raw():  # as received: nothing buffered is lost on a drop
                        if left is not None:  # never past the announced size: a server sending more loops no one
                            chunk = chunk[:left]
                            left -= len(chunk)
                        fh.write(chunk)
                        fh.flush()  # a kill -9 keeps everything written so far
                        if progress:
                            progress(len(chunk))
                        if left == 0:  # the sha256 check then decides whether those bytes were the file
                            break
        except OSError as exc:
            if waited_out_busy(exc, busy):  # a 429/503 (huggingface_hub's HTTP errors are OSErrors)
                busy += 1
                continue
            if isinstance(exc, (ConnectionError, TimeoutError)):
                raise hub_error(exc, remote.repo, remote.filename) or DownloadError(str(exc)) from None
            if exc.errno is None:  # not the file system's: an HTTP error (requests' HTTPError is an OSError)
                raise hub_error(exc, remote.repo, remote.filename) or DownloadError(
                    f"cannot download {remote.repo}/{remote.filename}: {clean_display(exc, 200)}") from None
            raise disk_full(partial, exc) or DownloadError(f"cannot write {partial}: {exc.strerror}") from None
        except httpx2.ReadTimeout:
            # The server answered, then sent nothing for stall_s: retry from here, a bounded number of times.
            now = partial.stat().st_size if partial.exists() else 0
            silent = 1 if now > before else silent + 1  # stalls since the last byte arrived
            if silent > MAX_STALL_RETRIES:
                total = f" of {remote.size}" if remote.size is not None else ""
                raise DownloadError(
                    f"the download of {remote.repo}/{remote.filename} stalled: the server stopped sending data "
                    f"({stall_s:g} s without a byte, {silent} times in a row); {now}{total} bytes are kept, "
                    "run the same command to resume"
                ) from None
            continue
        except httpx2.TransportError as exc:
            now = partial.stat().st_size if partial.exists() else 0
            stalled = 0 if now > before else stalled + 1  # a drop mid-file: continue from here
            if stalled > MAX_STALLED_ATTEMPTS:
                raise hub_error(exc, remote.repo, remote.filename) or DownloadError(str(exc)) from None
            continue
        except Exception as exc:
            mapped = hub_error(exc, remote.repo, remote.filename)
            if mapped is None:
                raise
            raise mapped from None
        if remote.size is None:
            return
        now = partial.stat().st_size
        if now == remote.size:
            return
        stalled = stalled + 1 if now == before else 0
        if stalled > MAX_STALLED_ATTEMPTS:
            raise DownloadError(
                f"download of {remote.repo}/{remote.filename} stopped at {now} of {remote.size} bytes; run the command again to resume"
            )


def verify_partial(remote: RemoteFile, partial: Path) -> str:
    """Hash the finished partial file; raise (and discard it) when it is not what the Hub promised."""
    from gemma_cli.store.blobs import sha256_file

    actual = sha256_file(partial)
    if remote.sha256 and actual != remote.sha256:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise DownloadError(
            f"{remote.repo}/{remote.filename} downloaded with sha256 {actual[:12]}…, but the Hub lists {remote.sha256[:12]}…; "
            "the corrupt download was discarded, run the command again"
        )
    return actual
