"""Cross-checks the deployment files against each other and against the Dockerfile.

No Docker engine runs where the tests run, so this is the part of "does the image deploy" that
can be checked without one: the port, data directory and health check every platform file names
must be the ones the image serves, and everything the Dockerfile copies must exist and survive
.dockerignore. Exits non-zero with one line per problem.
"""

import fnmatch
import pathlib
import re
import shlex
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def dockerfile_instructions(text):
    """(instruction, argument) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


docker = dockerfile_instructions((ROOT / "Dockerfile").read_text())
stages = [arg for ins, arg in docker if ins == "FROM"]
check(len(stages) >= 2, "Dockerfile: expected a multi-stage build")
check(not any(ins == "VOLUME" for ins, _ in docker),
      "Dockerfile: VOLUME is refused by Railway; mount /data from the platform files instead")

env = {}
for ins, arg in docker:
    if ins == "ENV":
        for pair in shlex.split(arg):
            key, _, value = pair.partition("=")
            env[key] = value
port = env.get("PORT")
data_dir = env.get("JARVIS_DATA_DIR")
check(port is not None, "Dockerfile: no ENV PORT")
check(data_dir == "/data", f"Dockerfile: JARVIS_DATA_DIR is {data_dir!r}, expected /data")
check(env.get("JARVIS_HOST") == "0.0.0.0", "Dockerfile: the server must listen on 0.0.0.0")
exposed = [arg for ins, arg in docker if ins == "EXPOSE"]
check(exposed == [port], f"Dockerfile: EXPOSE {exposed} does not match PORT {port}")
health = [arg for ins, arg in docker if ins == "HEALTHCHECK"]
check(len(health) == 1 and "jarvis-cloud" in health[0] and "healthcheck" in health[0],
      "Dockerfile: HEALTHCHECK must run `jarvis-cloud healthcheck`")
entry = [arg for ins, arg in docker if ins == "ENTRYPOINT"]
check(bool(entry) and "jarvis-entrypoint" in entry[-1],
      "Dockerfile: the entrypoint must be deploy/entrypoint.sh (it drops to the jarvis user)")

# Final stage and build stage on the same Debian release, so the binary's glibc is present.
release = [re.search(r"(bookworm|trixie|bullseye)", s) for s in stages]
check(all(release) and len({m.group(1) for m in release}) == 1,
      f"Dockerfile: stages on different Debian releases: {stages}")

# Everything copied from the build context exists and is not excluded by .dockerignore.
ignore = [
    line.strip().rstrip("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def ignored(rel):
    for pattern in ignore:
        pattern = pattern.removeprefix("**/")
        if fnmatch.fnmatch(rel, pattern) or rel.startswith(pattern + "/"):
            return True
    return False


for ins, arg in docker:
    if ins != "COPY" or "--from=" in arg:
        continue
    sources = shlex.split(arg)[:-1]
    for src in sources:
        if src == ".":
            continue
        check((ROOT / src).exists(), f"Dockerfile: COPY source {src} does not exist")
        check(not ignored(src.rstrip("/")), f"Dockerfile: COPY source {src} is in .dockerignore")
check((ROOT / "deploy/entrypoint.sh").stat().st_mode & 0o111,
      "deploy/entrypoint.sh is not executable")

# fly.toml
fly = tomllib.loads((ROOT / "fly.toml").read_text())
service = fly.get("http_service", {})
check(str(service.get("internal_port")) == port,
      f"fly.toml: internal_port {service.get('internal_port')} != PORT {port}")
check(fly.get("env", {}).get("PORT", port) == port, "fly.toml: env PORT differs from the image")
check([m.get("destination") for m in fly.get("mounts", [])] == [data_dir],
      "fly.toml: the volume must be mounted at the data dir")
check(any(c.get("path") == "/healthz" for c in service.get("checks", [])),
      "fly.toml: no /healthz check")
check(service.get("auto_stop_machines") in ("off", False),
      "fly.toml: the cloud agent must stay on (auto_stop_machines = off)")
check(fly.get("kill_signal") == "SIGTERM", "fly.toml: the server drains on SIGTERM")

# render.yaml
render = yaml.safe_load((ROOT / "render.yaml").read_text())
web = [s for s in render.get("services", []) if s.get("type") == "web"]
check(len(web) == 1, "render.yaml: expected one web service")
if web:
    web = web[0]
    check(web.get("runtime") == "docker", "render.yaml: runtime must be docker")
    check(web.get("healthCheckPath") == "/healthz", "render.yaml: healthCheckPath")
    check(web.get("disk", {}).get("mountPath") == data_dir, "render.yaml: disk not at the data dir")
    check(web.get("numInstances", 1) == 1, "render.yaml: SQLite allows one instance")
    keys = {v.get("key"): v for v in web.get("envVars", [])}
    check(keys.get("ANTHROPIC_API_KEY", {}).get("sync") is False,
          "render.yaml: ANTHROPIC_API_KEY must be a secret set in the dashboard (sync: false)")

# railway.toml
railway = tomllib.loads((ROOT / "railway.toml").read_text())
check(railway.get("build", {}).get("builder") == "DOCKERFILE", "railway.toml: builder")
deploy = railway.get("deploy", {})
check(deploy.get("healthcheckPath") == "/healthz", "railway.toml: healthcheckPath")
check(deploy.get("requiredMountPath") == data_dir, "railway.toml: requiredMountPath")
check(deploy.get("numReplicas", 1) == 1, "railway.toml: SQLite allows one replica")

# docker-compose.yml
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose.get("services", {})
server = services.get("jarvis", {})
check(any(v.endswith(":" + data_dir) for v in server.get("volumes", [])),
      "docker-compose.yml: jarvis has no volume at the data dir")
check(any(str(p).endswith(":" + port) for p in server.get("ports", [])),
      "docker-compose.yml: jarvis does not publish PORT")
background = [name for name, s in services.items() if name != "jarvis"]
check(bool(background), "docker-compose.yml: no background-agent service")
for name in background:
    s = services[name]
    check("jarvis" in s.get("depends_on", {}), f"docker-compose.yml: {name} must wait for jarvis")
    command = " ".join(s.get("command", [])) if isinstance(s.get("command"), list) else s.get("command", "")
    check("http://jarvis:" + port in command, f"docker-compose.yml: {name} must reach the hub by its service name")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print("deployment files consistent")
