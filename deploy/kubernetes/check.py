#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests against the `cascade` binary they run.

    deploy/kubernetes/check.py CASCADE_BINARY RENDERED.yaml...

For every container running `cascade` in the rendered files:
- its args parse: `cascade <args> --help` exits 0 (clap refuses an unknown flag, exit 2);
- every CASCADE_* variable it gets (env and ConfigMaps in envFrom) is one the binary reads
  (`[env: ...]` in `cascade server --help`), except CASCADE_LOG, the log filter;
- every cascade_* metric named in a PrometheusRule or the Grafana dashboard exists in the
  source (crates/).
Exits non-zero naming each mismatch. Needs PyYAML.
"""
import json
import pathlib
import re
import subprocess
import sys

import yaml

LOG_FILTER = {"CASCADE_LOG"}


def main() -> int:
    binary, files = sys.argv[1], sys.argv[2:]
    docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
    help_text = subprocess.run([binary, "server", "--help"], check=True,
                               capture_output=True, text=True).stdout
    known_env = set(re.findall(r"env: (CASCADE_[A-Z0-9_]+)", help_text)) | LOG_FILTER
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs
                   if d.get("kind") == "ConfigMap"}
    errors, checked = [], 0
    for d in docs:
        if d.get("kind") not in ("StatefulSet", "Deployment", "Pod"):
            continue
        spec = d["spec"]["template"]["spec"] if "template" in d["spec"] else d["spec"]
        for c in spec["containers"]:
            if not c.get("image", "").split("/")[-1].startswith("cascade"):
                continue
            checked += 1
            where = f'{d["kind"]}/{d["metadata"]["name"]} container {c["name"]}'
            # Kubernetes expands $(VAR) from the container's env; any value parses the same.
            args = [re.sub(r"\$\([A-Z_]+\)", "x", a) for a in c.get("args", [])]
            r = subprocess.run([binary, *args, "--help"], capture_output=True, text=True)
            if r.returncode != 0:
                errors.append(f"{where}: `cascade {' '.join(args)}` refused: "
                              f"{r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode}")
            names = [e["name"] for e in c.get("env", [])]
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm is not None:
                    if cm not in config_maps:
                        errors.append(f"{where}: envFrom names ConfigMap {cm}, not rendered")
                    names += list(config_maps.get(cm, {}))
            for n in names:
                if n.startswith("CASCADE_") and n not in known_env:
                    errors.append(f"{where}: {n} is read by no flag of `cascade server`")
    if checked == 0:
        errors.append("no cascade container found in " + ", ".join(files))
    source = "\n".join(p.read_text() for p in pathlib.Path("crates").rglob("*.rs"))
    exprs = []
    for d in docs:
        if d.get("kind") == "PrometheusRule":
            exprs += [r["expr"] for g in d["spec"]["groups"] for r in g["rules"]]
        if d.get("kind") == "ConfigMap":
            for k, v in d.get("data", {}).items():
                if k.endswith(".json"):
                    exprs += [t["expr"] for p in json.loads(v)["panels"] for t in p["targets"]]
    for e in exprs:
        for m in set(re.findall(r"\b(cascade_[a-z0-9_]+)", e)):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if f'"{base}"' not in source:
                errors.append(f"metric {m} (in `{e.strip()[:60]}`) is exported nowhere in crates/")
    for e in errors:
        print("error:", e, file=sys.stderr)
    print(f"checked {checked} cascade container(s) and {len(exprs)} metric expression(s): "
          f"{'FAIL' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
