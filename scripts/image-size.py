#!/usr/bin/env python3
"""An ESTIMATE of the runtime image sizes (full and slim) without a container engine.

For each variant: what apt would install for the packages of deploy/packages.txt on an empty
system (`apt-get -s` against an empty status file, no recommends, as the Dockerfile does; Debian
bookworm preferred over other repositories configured here), each at its `Installed-Size`,
leaving out what debian:bookworm-slim already has (priority "required" and essential packages);
plus the base image and the binaries. The base's size and the binaries' paths are arguments.
"""
import argparse
import os
import subprocess
import tempfile


def packages(variant):
    out = []
    with open("deploy/packages.txt") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#") and parts[1] in ("all", variant):
                out.append(parts[0])
    return out


def resolve(pkgs):
    """What apt would install on an empty system (no recommends, as the Dockerfile), with the
    version it picks; Debian's own release preferred over other repositories on this machine."""
    with tempfile.NamedTemporaryFile() as empty:
        out = subprocess.run(
            ["apt-get", "-s", "-o", f"Dir::State::status={empty.name}",
             "-o", "APT::Default-Release=bookworm",
             "install", "--no-install-recommends"] + pkgs,
            capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("Inst "):
            name, rest = line[5:].split(" ", 1)
            found[name] = rest.strip("(").split(" ", 1)[0]
    return found


def sizes(found):
    out = subprocess.run(["apt-cache", "show"] + [f"{n}={v}" for n, v in sorted(found.items())],
                         capture_output=True, text=True).stdout
    info = {}
    for block in out.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line and not line.startswith(" "):
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        if fields.get("Package"):
            info.setdefault(fields["Package"], fields)
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-mb", type=float, default=74.8,
                    help="debian:bookworm-slim uncompressed (MB)")
    ap.add_argument("--binary", action="append", default=[],
                    help="a binary the image copies in (repeat)")
    a = ap.parse_args()
    bins = sum(os.path.getsize(b) for b in a.binary) / 1e6
    for variant in ("slim", "full"):
        info = sizes(resolve(packages(variant)))
        kib = sum(int(f.get("Installed-Size", "0")) for f in info.values()
                  if f.get("Priority") != "required" and f.get("Essential") != "yes")
        added = kib * 1024 / 1e6
        print(f"{variant}: {len(info)} packages in the closure, +{added:.0f} MB installed, "
              f"base {a.base_mb:.0f} MB, binaries {bins:.0f} MB -> ~{a.base_mb + added + bins:.0f} MB (estimate)")


if __name__ == "__main__":
    main()
