#!/usr/bin/env python3
"""Sets a service chart's appVersion to a released version, and bumps
the chart's own patch version, because the chart's content changed.

Usage: bump_chart.py SERVICE VERSION   (edits helm/SERVICE/Chart.yaml in place)

Line-based on purpose: it keeps the file's comments and layout, and fails loudly when a field
it must change is missing.
"""
import re
import sys


def bump(text, version):
    lines = text.splitlines(keepends=True)
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(appVersion:\s*)(\S+)(.*)$", line.rstrip("\n"))
        if m:
            lines[i] = f'{m.group(1)}"{version}"{m.group(3)}\n'
            seen.add("appVersion")
            continue
        m = re.match(r"^(version:\s*)\"?(\d+)\.(\d+)\.(\d+)\"?(.*)$", line.rstrip("\n"))
        if m:
            major, minor, patch = int(m.group(2)), int(m.group(3)), int(m.group(4))
            lines[i] = f"{m.group(1)}{major}.{minor}.{patch + 1}{m.group(5)}\n"
            seen.add("version")
    missing = {"appVersion", "version"} - seen
    if missing:
        raise SystemExit(f"Chart.yaml has no top-level {', '.join(sorted(missing))}")
    return "".join(lines)


def main(argv):
    if len(argv) != 2 or not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", argv[1]):
        raise SystemExit("usage: bump_chart.py SERVICE VERSION (VERSION is semver, e.g. 1.4.0)")
    service, version = argv
    path = f"helm/{service}/Chart.yaml"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(bump(text, version))
    print(f"{path}: appVersion {version}")


if __name__ == "__main__":
    main(sys.argv[1:])
