"""`fairdiff download-model`: a pretrained diffusers model from the Hugging Face Hub, once.

The Snakemake rule download_model runs this on the submitting host (compute nodes often have no
internet); every rule that reads the pretrained stack then reads the folder it writes, so a
cluster downloads the model once and the provenance is a file.

- Online: the Hub's file list at the requested revision (model.revision; a branch, tag or
  commit, default main) fixes the commit; `snapshot_download` fetches only the files diffusers
  loads (see `needed_files`) into the Hugging Face cache (HF_HOME / HF_HUB_CACHE; resumable,
  shared with every other project on the machine). The token, where access needs one, comes
  from HF_TOKEN or the token file of `hf auth login`; it is never logged or written anywhere.
- Offline (HF_HUB_OFFLINE=1), the Hub unreachable, or the id unknown to the Hub (a withdrawn
  model someone cached before): the snapshot is taken from a pre-filled Hugging Face cache.

The needed files are then linked (or, across file systems, copied) from the cache snapshot into
`--out` (resources/models/<org>--<name>/), a stock diffusers folder, with `download.done` (JSON:
the id, the requested and the resolved revision, the sha256 of every weights file) written last
inside it; the folder appears only complete. Weights whose sha256 the Hub lists are checked
against it.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from . import io
from .errors import FairDiffError

log = logging.getLogger(__name__)

MARKER = "download.done"
# The components models.load reads; safety checker and feature extractor are never loaded.
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")
WEIGHTED = ("text_encoder", "unet", "vae")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")
# Stability AI withdrew its SD 2.x repositories from the Hub in November 2025; the community
# mirrors hold the same weights (their cards say so; they are not affiliated with Stability AI).
WITHDRAWN = {f"stabilityai/{name}": f"sd2-community/{name}" for name in (
    "stable-diffusion-2", "stable-diffusion-2-base", "stable-diffusion-2-1",
    "stable-diffusion-2-1-base", "stable-diffusion-2-depth", "stable-diffusion-2-inpainting")}


def is_weights(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def is_variant(name: str) -> bool:
    """A variant weights file (diffusion_pytorch_model.fp16.safetensors, model.fp16-00001-of-
    00002.safetensors), as opposed to the default one (model.safetensors, model-00001-of-...)."""
    stem = PurePosixPath(name).name
    for suffix in WEIGHT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return "." in stem


def needed_files(names) -> list[str]:
    """The files diffusers loads the stack from: model_index.json and, in each component folder,
    its .json/.txt files and one set of default weights, safetensors in preference to .bin.
    Root checkpoints (.ckpt), variants (fp16) and duplicate formats are left out."""
    names = set(names)
    if "model_index.json" not in names:
        raise FairDiffError("no model_index.json: not a diffusers pipeline repository")
    keep = ["model_index.json"]
    for component in COMPONENTS:
        files = sorted(n for n in names if PurePosixPath(n).parent == PurePosixPath(component))
        weights = [n for n in files if is_weights(n) and not is_variant(n)]
        chosen = ([n for n in weights if n.endswith(".safetensors")]
                  or [n for n in weights if n.endswith(".bin")])
        if component in WEIGHTED and not chosen:
            raise FairDiffError(f"{component}/ holds no default .safetensors or .bin weights")
        keep += [n for n in files if n.endswith((".json", ".txt"))] + chosen
    return keep


def withdrawn_hint(repo: str) -> str:
    mirror = WITHDRAWN.get(repo.lower())
    if not mirror:
        return ""
    return (f"Stability AI withdrew {repo} from the Hugging Face Hub in November 2025; its "
            f"community mirror {mirror} (unofficial, not affiliated with Stability AI) holds the "
            f"same weights: set model.pretrained: {mirror}. ")


def hub_info(repo: str, revision: str | None):
    """(the Hub's model info with file metadata, None) or (None, why the Hub cannot serve it:
    gated, unknown, unreachable; the caller falls back to the cache). Offline: (None, None)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    cache = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        log.info("HF_HUB_OFFLINE is set: looking for %s in the Hugging Face cache %s", repo, cache)
        return None, None
    log.info("asking %s for %s at revision %s (%s token found)", constants.ENDPOINT, repo,
             revision or "main", "a" if get_token() else "no")
    try:
        return HfApi().model_info(repo, revision=revision, files_metadata=True), None
    except RevisionNotFoundError as err:
        raise FairDiffError(f"model.pretrained '{repo}': the Hub has no revision '{revision}' of "
                            f"this model; check model.revision (a branch, tag or commit "
                            f"hash)") from err
    except GatedRepoError:
        hub_error = ("access is gated: accept its licence on the model's Hub page and "
                     "provide a token (HF_TOKEN or `hf auth login`)")
        log.warning("%s: %s; looking in the cache %s", repo, hub_error, cache)
    except RepositoryNotFoundError:
        hub_error = ("the Hugging Face Hub does not know this model (or it is private and "
                     "no valid token was given)")
        log.warning("%s: not on the Hub; looking in the cache %s", repo, cache)
    except (HfHubHTTPError, *network_errors()) as err:
        # a Hub outage answers 5xx; no route, DNS or a timeout raise transport errors
        hub_error = (f"the Hub at {constants.ENDPOINT} could not be reached "
                     f"({type(err).__name__}: {first_line(err)})")
        log.warning("%s; looking in the cache %s", hub_error, cache)
    return None, hub_error


def problem(repo: str, revision: str | None) -> str | None:
    """None if download_model can get `repo` at `revision` (Hub or cache), else why not."""
    try:
        info, hub_error = hub_info(repo, revision)
        if info is None:
            cached_snapshot(repo, revision, hub_error)
    except FairDiffError as err:
        return str(err)
    return None


def download_model(repo: str, revision: str | None, out: Path) -> dict:
    """Fetch `repo` at `revision` (or take it from the cache) into `out`; return the record."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    out = Path(out)
    where = f"model.pretrained '{repo}'"
    cache = constants.HF_HUB_CACHE
    info, hub_error = hub_info(repo, revision)
    if info is not None:
        try:
            files = needed_files(s.rfilename for s in info.siblings or [])
        except FairDiffError as err:
            raise FairDiffError(f"{where} at {info.sha}: {err}") from None
        expected = {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}
        try:
            snapshot = Path(snapshot_download(repo, revision=info.sha, allow_patterns=files))
        except (HfHubHTTPError, *network_errors()) as err:
            raise FairDiffError(f"{where}: the download from {constants.ENDPOINT} stopped "
                                f"({type(err).__name__}: {first_line(err)}); rerun to resume "
                                f"(the cache {cache} keeps what arrived)") from err
        commit, source = info.sha, "hub"
    else:
        snapshot = cached_snapshot(repo, revision, hub_error)
        present = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
        try:
            files = needed_files(present)
        except FairDiffError as err:
            raise FairDiffError(f"{where}: the cached snapshot {snapshot} is incomplete ({err}); "
                                f"download it again where the Hub is reachable") from None
        expected, commit, source = {}, snapshot.name, "cache"
    record = {"id": repo, "revision_requested": revision, "revision": commit, "source": source,
              "files": files, "sha256": {}}
    with io.atomic_dir(out) as tmp:
        for name in files:
            link_or_copy(snapshot / name, tmp / name)
            if is_weights(name):
                digest = io.sha256_file(tmp / name)
                if name in expected and digest != expected[name]:
                    raise FairDiffError(f"{where}: {name} has sha256 {digest}, the Hub lists "
                                        f"{expected[name]}; delete it from the cache {cache} "
                                        f"and rerun")
                record["sha256"][name] = digest
        io.write_json(tmp / MARKER, record)
    log.info("%s at %s (from the %s): %d files in %s", repo, commit, source, len(files), out)
    return record


def cached_snapshot(repo: str, revision: str | None, hub_error: str | None) -> Path:
    """The cache's snapshot folder of `repo` at `revision` (a commit, or a ref the cache knows)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # Asking for model_index.json only: the cache may hold a subset of the repository.
        return Path(snapshot_download(repo, revision=revision, allow_patterns=["model_index.json"],
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    problem = hub_error or "HF_HUB_OFFLINE=1"
    raise FairDiffError(
        f"model.pretrained '{repo}': {problem}, and revision {revision or 'main'} is not in the "
        f"Hugging Face cache at {constants.HF_HUB_CACHE} (HF_HOME). {withdrawn_hint(repo)}Set "
        f"model.pretrained to a local diffusers folder or to a mirror on the Hub, or pre-fill the "
        f"cache where the Hub is reachable (`hf download {repo}` with the same HF_HOME)")


def network_errors() -> tuple:
    """Connection failures: OSError (requests, huggingface_hub < 1) and the TransportError of
    the httpx huggingface_hub >= 1 uses (httpx2 from 2.0)."""
    errors = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a cache file (no second copy of gigabytes of weights), else copy it."""
    source = source.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else ""


def add_arguments(parser):
    parser.add_argument("--id", required=True, help="the Hub model id (model.pretrained)")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit hash (model.revision; default main)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output diffusers folder (download.done is written last inside)")


def run(args):
    download_model(args.id, args.revision or None, args.out)
