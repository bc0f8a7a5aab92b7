"""The conda environments pin what pyproject.toml pins (cluster users isolate rules with them)."""

import re
import tomllib

import yaml


def requirement_map(lines):
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", line.strip())
        if m and not line.startswith("-"):
            out[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "")
    return out


def test_env_pins_agree_with_pyproject(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = requirement_map(project["dependencies"])
    envs = sorted((root / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} >= {"train", "evaluate", "report"}
    for env_file in envs:
        env = yaml.safe_load(env_file.read_text())
        assert env["channels"] == ["conda-forge", "nodefaults"], env_file
        specs = []
        for dep in env["dependencies"]:
            if isinstance(dep, dict):
                specs += [s for s in dep["pip"] if not s.startswith("-")]
            elif not dep.startswith(("python", "pip")):
                # conda spells the version the same way pip does (name>=x / name==x)
                specs.append(dep.replace("=", "==", 1) if re.match(r"^[\w-]+=[^=]", dep) else dep)
        for name, spec in requirement_map(specs).items():
            assert name in pins, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            if spec:
                assert spec == pins[name], f"{env_file.name}: {name}{spec} != pyproject {pins[name]}"


def test_every_rule_names_an_existing_env(root):
    for smk in (root / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env}"
