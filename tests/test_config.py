"""The config schema: defaults, one-line errors naming the key, every shipped config valid."""

import copy
import re
import subprocess
import sys

import pytest
import yaml

from fairdiffusion import config
from fairdiffusion.errors import FairDiffError


def default(root):
    return yaml.safe_load((root / "config.yaml").read_text())


# Overlays: given after the config they extend (`--configfile BASE OVERLAY`).
OVERLAYS = {"study_pilot.yaml": "configs/study.yaml", "smoke.yaml": "config.yaml"}


def test_shipped_configs_validate_and_get_defaults(root):
    for path in [root / "config.yaml", *sorted((root / "configs").glob("*.yaml"))]:
        raw = yaml.safe_load(path.read_text())
        if path.name not in OVERLAYS:
            cfg = config.validate(raw)
        else:
            # Merged as Snakemake merges config files (nested keys one by one).
            from snakemake.utils import update_config

            cfg = yaml.safe_load((root / OVERLAYS[path.name]).read_text())
            update_config(cfg, raw)
            config.validate(cfg)
        assert cfg["train"]["max_steps"] >= 1
        for ds in cfg["datasets"].values():
            assert set(ds["limit"]) == {"train", "val", "test"}


def test_defaults_fill_missing_sections(root):
    cfg = {"datasets": copy.deepcopy(default(root)["datasets"])}
    config.validate(cfg)
    assert cfg["methods"] == ["baseline", "fairdiffusion", "random"]
    assert cfg["fair_bayes"]["time_window"] == 30
    assert cfg["fair_bayes"]["exploitation_rate"] == 0.95


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c["train"].update(max_stpes=3), "max_stpes"),
        (lambda c: c["train"].update(max_steps="many"), "train.max_steps"),
        (lambda c: c.update(seed=[1]), "seed"),
        (lambda c: c["datasets"]["synthfundus"].update(source="foo"), "datasets.synthfundus.source"),
        (lambda c: c.setdefault("fair_bayes", {}).update(exploitation_rate=1.5), "fair_bayes.exploitation_rate"),
        (lambda c: c.update(methods=["baseline", "fairdifusion"]), "methods.1"),
    ],
)
def test_bad_key_or_type_named_in_one_line(root, edit, named):
    cfg = default(root)
    edit(cfg)
    with pytest.raises(FairDiffError) as err:
        config.validate(cfg)
    message = str(err.value)
    assert named in message and "\n" not in message


NAME_MAPS = {"datasets", "attributes", "labels"}


def test_every_key_of_default_config_is_commented(root):
    """Each key of config.yaml has a comment above it, or belongs to a commented block of siblings
    or to a commented map of names (dataset names, attribute and label names)."""
    lines = (root / "config.yaml").read_text().splitlines()
    commented = set()
    uncommented = []
    for i, line in enumerate(lines):
        if not re.match(r"^\s*[A-Za-z_][\w-]*:", line):
            continue
        indent = len(line) - len(line.lstrip())
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].lstrip().startswith("#"):
            if len(lines[j]) - len(lines[j].lstrip()) < indent:
                break
            j -= 1
        above = lines[j] if j >= 0 else ""
        parent_is_commented_map = (
            j in commented
            and len(above) - len(above.lstrip()) < indent
            and above.strip().rstrip(":") in NAME_MAPS
        )
        if above.lstrip().startswith("#") or parent_is_commented_map:
            commented.add(i)
        else:
            uncommented.append(line.strip())
    assert uncommented == []


def test_snakemake_reports_misspelt_key(root, tmp_path):
    cfg = default(root)
    cfg["train"]["max_stpes"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
         "-n", "--configfile", str(bad)],
        capture_output=True, text=True,
    )
    assert run.returncode != 0
    assert "config key 'max_stpes' under 'train' is not a known setting" in run.stdout + run.stderr


def test_every_setting_with_a_default_is_described():
    """The schema is where a default lives, so it also says what the setting means."""
    undescribed = []

    def walk(node, path):
        if isinstance(node, dict):
            if "default" in node and "description" not in node:
                undescribed.append(path)
            for key, value in node.get("properties", {}).items():
                walk(value, f"{path}.{key}" if path else key)
            for key, value in node.get("$defs", {}).items():
                walk(value, f"$defs.{key}")

    walk(yaml.safe_load(config.SCHEMA.read_text()), "")
    assert undescribed == []


def test_schema_defaults_are_the_embedded_default(root):
    """A key left out of a config means what config.yaml says (one source of defaults)."""
    raw = default(root)
    filled = config.validate({"datasets": copy.deepcopy(raw["datasets"])})
    differ = []

    def walk(a, b, path):
        for key, value in a.items():
            if isinstance(value, dict) and isinstance(b.get(key), dict):
                walk(value, b[key], f"{path}{key}.")
            elif value != b.get(key):
                differ.append(f"{path}{key}: {value!r} vs schema {b.get(key)!r}")

    walk({k: v for k, v in raw.items() if k != "datasets"}, filled, "")
    assert differ == []
