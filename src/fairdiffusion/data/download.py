"""`fairdiff download`: fetch a public dataset into resources/{dataset}/ and write `download.done`.

Per source (the dataset's `download` section overrides the defaults):

- fairgenmed: the Hugging Face dataset repo `harvardairobotics/FairGenMed` (download.hf_repo,
  download.revision) via `huggingface_hub.snapshot_download`, resumable. The token, where access
  needs one, comes from HF_TOKEN or the token file of `hf auth login`; it is never logged or
  written anywhere. Licence CC BY-NC-ND 4.0: non-commercial research use only.
- ham10000: the Harvard Dataverse archive (download.url; all files of doi:10.7910/DVN/DBW86T as
  one zip), over HTTP: resumed with Range requests into a `.part` file kept beside the output
  folder, checked against Content-Length and download.sha256 (when set), then extracted safely
  (no member may leave the target folder; tar uses filter="data"); archives inside the archive
  (the image parts) are extracted the same way.
- chexpert: needs registration, so nothing is fetched: the local copy in resources/{dataset} is
  checked, or the error says where to get it and which key to set.

`download.done` (JSON) records where the data came from and the sha256 of what was fetched (the
archive; for Hugging Face, the repo commit and each file's sha256 as the Hub lists it). It is
written last, so the Snakemake output appears only after a complete, verified download; a bad
checksum or a rejected archive leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import stat
import tarfile
import time
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from tqdm import tqdm

from .. import io
from ..errors import FairDiffError

log = logging.getLogger(__name__)

MARKER = "download.done"
FAIRGENMED_REPO = "harvardairobotics/FairGenMed"
HAM10000_URL = ("https://dataverse.harvard.edu/api/access/dataset/:persistentId/"
                "?persistentId=doi:10.7910/DVN/DBW86T&format=original")
LICENCE = ("FairGenMed is licensed CC BY-NC-ND 4.0 (https://creativecommons.org/licenses/"
           "by-nc-nd/4.0/): non-commercial research use only, never for clinical decisions")
CHEXPERT_HELP = (
    "CheXpert cannot be downloaded without registration. Request it via "
    "https://stanfordmlgroup.github.io/competitions/chexpert/ (Stanford AIMI shared datasets: "
    "CheXpert, and the separate CheXpert demographics sheet CHEXPERT DEMO.xlsx), extract "
    "CheXpert-v1.0-small.zip and put CHEXPERT DEMO.xlsx beside the CheXpert-v1.0-small folder, "
    "in {out} or in a folder you name in datasets.{name}.path")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CHUNK = 1 << 20


def add_arguments(parser):
    from ..cli import json_arg

    parser.add_argument("--name", help="dataset name (the {dataset} wildcard)")
    parser.add_argument("--dataset", type=json_arg,
                        help="the dataset's config section (JSON, or @file.yaml)")
    parser.add_argument("--url", help="instead of a dataset: fetch this one file to --out")
    parser.add_argument("--sha256-prefix", default="",
                        help="with --url: the file's sha256 must start with this (torch hub's "
                             "file-name convention)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (resources/{dataset}; download.done is written "
                             "last), or the file with --url")


def run(args):
    if args.url:
        http_file(args.url, args.out, args.sha256_prefix)
    elif args.name and args.dataset is not None:
        download(args.name, args.dataset, args.out)
    else:
        raise FairDiffError("download: give --name and --dataset, or --url")


def http_file(url: str, out: Path, sha256_prefix: str = "", attempts: int = 3,
              wait: float = 5.0) -> str:
    """Fetch one file (e.g. feature-extractor weights), verify its sha256 prefix, publish it."""
    out = Path(out)
    part = out.parent / f".{out.name}.part"
    fetch(url, part, attempts=attempts, wait=wait)
    digest = io.sha256_file(part)
    if not digest.startswith(sha256_prefix.lower()):
        part.unlink()
        raise FairDiffError(f"{url}: sha256 {digest} does not start with {sha256_prefix}; "
                            f"the download was deleted")
    part.replace(out)
    log.info("downloaded %s to %s (sha256 %s)", url, out, digest)
    return digest


def download(name: str, cfg: dict, out: Path, attempts: int = 3, wait: float = 5.0) -> dict:
    """Fetch the dataset's source into `out`; return what `download.done` records."""
    out = Path(out)
    source, spec = cfg["source"], cfg.get("download") or {}
    if source == "chexpert":
        return check_local(name, out)
    if spec.get("hf_repo") or (source == "fairgenmed" and not spec.get("url")):
        return hf_snapshot(spec.get("hf_repo") or FAIRGENMED_REPO, spec.get("revision"), out)
    if spec.get("url") or source == "ham10000":
        return http_archive(spec.get("url") or HAM10000_URL, spec.get("sha256"), out,
                            attempts=attempts, wait=wait)
    raise FairDiffError(f"datasets.{name}: nothing to download for source '{source}' "
                        f"(set download.url or download.hf_repo, or path)")


# --- HTTP ------------------------------------------------------------------------------------

def fetch(url: str, part: Path, attempts: int = 3, wait: float = 5.0, timeout: float = 60.0):
    """Download `url` into `part`, resuming from its current size with Range requests.

    A server that ignores Range (answers 200) restarts the file. The result is complete when its
    size equals the announced total (Content-Length / Content-Range); without one, it is taken
    as is (the sha256, when configured, then decides). Raises FairDiffError after `attempts`
    tries, keeping `part` so a rerun resumes.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    total = None
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "fairdiffusion-pipeline"}
        if have:
            headers["Range"] = f"bytes={have}-"
        error = None
        try:
            with urlopen(Request(url, headers=headers), timeout=timeout) as response:
                if have and response.status == 206:
                    mode = "ab"
                    total = _content_range_total(response.headers.get("Content-Range"))
                    log.info("resuming %s at byte %d", url, have)
                else:
                    mode, have = "wb", 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length else None
                with open(part, mode) as handle, tqdm(total=total, initial=have, unit="B",
                                                      unit_scale=True, mininterval=2.0,
                                                      desc=part.name) as bar:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
        except HTTPError as err:
            if err.code == 416 and have:
                if _content_range_total(err.headers.get("Content-Range")) == have:
                    return
                part.unlink()
                error = "the kept partial file does not match the server's file; restarting"
            elif err.code in (401, 403, 404, 410):
                raise FairDiffError(f"{url}: HTTP {err.code} {err.reason} (check download.url)")
            else:
                error = f"HTTP {err.code} {err.reason}"
        except (URLError, HTTPException, OSError) as err:
            error = f"{type(err).__name__}: {err}"
        size = part.stat().st_size if part.exists() else 0
        if error is None and (total is None or size == total):
            return
        error = error or f"got {size} of {total} bytes"
        log.warning("download of %s interrupted (%s); attempt %d of %d", url, error, attempt,
                    attempts)
        if attempt < attempts:
            time.sleep(wait)
    size = part.stat().st_size if part.exists() else 0
    raise FairDiffError(f"{url}: download incomplete after {attempts} attempt(s) ({size} of "
                        f"{total if total is not None else 'unknown'} bytes kept in {part}; "
                        f"rerun to resume)")


def _content_range_total(value: str | None) -> int | None:
    """The total of a Content-Range header ('bytes 100-199/200' or 'bytes */200')."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def http_archive(url: str, sha256: str | None, out: Path, attempts: int = 3,
                 wait: float = 5.0) -> dict:
    """Fetch, verify and extract one archive into `out` (replaced as a whole on success)."""
    staging = out.parent / f".{out.name}.download"
    part = staging / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".part")
    fetch(url, part, attempts=attempts, wait=wait)
    digest = io.sha256_file(part)
    if sha256 and digest != sha256.lower():
        shutil.rmtree(staging, ignore_errors=True)
        raise FairDiffError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {digest}; "
                            f"the download was deleted (check download.sha256 and download.url)")
    if not sha256:
        log.info("no download.sha256 configured; the archive's sha256 is %s (recorded in %s)",
                 digest, MARKER)
    record = {"url": url, "sha256": digest, "bytes": part.stat().st_size}
    try:
        with io.atomic_dir(out) as tmp:
            name = PurePosixPath(urlparse(url).path).name or "download"
            extract(part, tmp, name)
            for inner in sorted(p for p in tmp.rglob("*")
                                if p.is_file() and _is_archive_name(p.name)):
                extract(inner, inner.parent / _archive_stem(inner.name), inner.name)
                inner.unlink()
            io.write_json(tmp / MARKER, record)
    except FairDiffError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %s into %s", url, out)
    return record


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(name: str) -> str:
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract(archive: Path, dest: Path, name: str) -> None:
    """Extract a zip or tar archive into `dest`, refusing any member that would land outside it
    (absolute paths, '..', links); any other file is copied in as `name`."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for info in zf.infolist():
                member = PurePosixPath(info.filename.replace("\\", "/"))
                target = (dest / member).resolve()
                if (member.is_absolute() or ".." in member.parts
                        or not target.is_relative_to(root)
                        or stat.S_ISLNK(info.external_attr >> 16)):
                    raise FairDiffError(f"{archive}: unsafe member {info.filename!r} (it would "
                                        f"be written outside the target folder); archive "
                                        f"rejected")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(dest, filter="data")
            except tarfile.FilterError as err:
                raise FairDiffError(f"{archive}: unsafe member ({err}); archive rejected") from err
    else:
        shutil.copyfile(archive, dest / name)


# --- Hugging Face ----------------------------------------------------------------------------

def hf_snapshot(repo: str, revision: str | None, out: Path) -> dict:
    """Download a Hugging Face dataset repo into `out` (resumable), pinned to one commit."""
    from huggingface_hub import HfApi, get_token, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    log.info(LICENCE)
    log.info("downloading the Hugging Face dataset %s (%s token found)", repo,
             "a" if get_token() else "no")
    page = f"https://huggingface.co/datasets/{repo}"
    try:
        info = HfApi().dataset_info(repo, revision=revision, files_metadata=True)
        snapshot_download(repo_id=repo, repo_type="dataset", revision=info.sha, local_dir=out)
    except GatedRepoError as err:
        raise FairDiffError(f"{repo}: access is gated: accept the licence on {page} and provide "
                            f"a token (HF_TOKEN or `hf auth login`)") from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise FairDiffError(f"{repo}: repository or revision {revision or 'main'} not found (or "
                            f"private without a token); check download.hf_repo and "
                            f"download.revision") from err
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        detail = str(err).splitlines()[0] if str(err) else ""
        raise FairDiffError(f"{repo}: download from Hugging Face failed ({type(err).__name__}: "
                            f"{detail}); check the network and rerun to resume") from err
    files = {s.rfilename: (s.lfs.sha256 if s.lfs else s.blob_id) for s in info.siblings or []}
    record = {"hf_repo": repo, "revision": info.sha, "licence": "CC BY-NC-ND 4.0",
              "sha256": files}
    io.write_json(out / MARKER, record)
    return record


# --- local copies ----------------------------------------------------------------------------

def check_local(name: str, out: Path) -> dict:
    """CheXpert: accept a copy placed in `out` by hand (recording the sha256 of its CSVs and
    demographics sheet), or fail."""
    from .chexpert import locate

    try:
        csv_dir = locate(out)
    except FairDiffError as err:
        raise FairDiffError(f"{out}: no CheXpert copy found. " +
                            CHEXPERT_HELP.format(name=name, out=out)) from err
    files = sorted({p for folder in {csv_dir, out} for p in folder.iterdir()
                    if p.is_file() and p.suffix in (".csv", ".xlsx") and p.name != MARKER})
    record = {"local": str(out),
              "sha256": {str(p.relative_to(out)): io.sha256_file(p) for p in files}}
    io.write_json(out / MARKER, record)
    return record
