#!/usr/bin/env python3
"""Decides which CI jobs a change needs: the `plan` job of .github/workflows/ci.yml.

Usage:
  plan.py BASE            files changed between BASE and HEAD (git diff BASE...HEAD)
  plan.py --files F...    the given changed files (used by the tests in xtask/src/ci.rs)
  plan.py                 no base (schedule, manual run, new branch): everything runs

Prints `key=value` lines, and appends them to $GITHUB_OUTPUT when that is set.
A service's image is rebuilt when a file of the service, of a workspace crate it depends on
(normal or build dependency, transitively), or of the shared build inputs changed.
"""
import json
import os
import subprocess
import sys

SERVICES = ["cloud-identity-access", "cloud-api-gateway-bff"]
SHARED_BUILD_INPUTS = ("Cargo.toml", "Cargo.lock", "Dockerfile", ".dockerignore", "rust-toolchain.toml", ".cargo/")
RUST = ("crates/", "xtask/", ".cargo/", "Cargo.toml", "Cargo.lock", "rustfmt.toml", "clippy.toml", "deny.toml")


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def workspace_dirs():
    """For each service, the repository-relative directories of itself and its workspace deps."""
    root = run("git", "rev-parse", "--show-toplevel").strip()
    meta = json.loads(run("cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"))
    packages = {p["name"]: p for p in meta["packages"]}

    def directory(pkg):
        return os.path.relpath(os.path.dirname(pkg["manifest_path"]), root) + "/"

    def closure(name, seen):
        if name in seen or name not in packages:
            return seen
        seen.add(name)
        for dep in packages[name]["dependencies"]:
            if dep.get("path") and dep.get("kind") in (None, "build"):
                closure(dep["name"], seen)
        return seen

    return {s: sorted(directory(packages[p]) for p in closure(s, set())) for s in SERVICES if s in packages}


def plan(changed, full):
    def touched(*prefixes):
        return full or any(f.startswith(prefixes) for f in changed)

    def is_doc(f):
        return f.startswith("docs/") or f.endswith(".md")

    dirs = workspace_dirs()
    services = [s for s, ds in dirs.items() if touched(*SHARED_BUILD_INPUTS, *ds)]
    return {
        "full": full,
        "code": full or any(not is_doc(f) for f in changed),
        "rust": touched(*RUST),
        "services": services,
        "charts": touched("helm/"),
        "gitops": touched("environments/", "argocd/"),
        "openapi": touched("openapi/", ".spectral.yaml", *(d for ds in dirs.values() for d in ds)),
        "workflows": touched(".github/"),
        "docker": touched("Dockerfile", ".dockerignore"),
        "docs": full or any(is_doc(f) for f in changed),
    }


def main(argv):
    if argv[:1] == ["--files"]:
        changed, full = argv[1:], False
    elif argv and argv[0] and set(argv[0]) != {"0"}:
        changed, full = run("git", "diff", "--name-only", f"{argv[0]}...HEAD").split(), False
    else:
        changed, full = [], True
    lines = [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, list) else str(v).lower()}"
             for k, v in plan(changed, full).items()]
    print("\n".join(lines))
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
