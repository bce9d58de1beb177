"""Checks the deployment files against the quiver binary (run by tests/tests/integration/deployment.rs).

    python deploy_check.py QUIVER_BIN REPO_ROOT

They cannot be applied here, so this checks what can be checked without a cluster:
* every document of deploy/k8s/*.yaml parses, has a kind and a name, and names no namespace;
* every container of every Deployment runs the image's entrypoint (`args`, no `command`), and
  `quiver <args> --check` accepts its arguments: `$(VAR)` references are replaced by sample
  values (the downward API's pod IP, plain env values), and paths under its volume mounts point
  into a scratch directory holding sample files for the Secret keys it mounts;
* the ports: every container port is one the arguments listen on, the probes hit /healthz and
  /readyz on the --http-listen port, every Service selects a Deployment's pods and targets one
  of their ports, and an executor registers at a Service that targets the coordinator's
  Flight port and advertises the port it listens on;
* terminationGracePeriodSeconds is the effective drain grace + 10 s;
* the Dockerfile's runtime stage is debian:bookworm-slim with a non-root user, `quiver` is its
  entrypoint, and it exposes exactly the ports the manifests use.
"""

import glob
import os
import re
import secrets
import subprocess
import sys
import tempfile

import yaml

SAMPLE_ENV = {"status.podIP": "10.1.2.3"}


def fail(message):
    sys.exit(f"deploy check: {message}")


def load_documents(root):
    documents = []
    files = sorted(glob.glob(os.path.join(root, "deploy/k8s/*.yaml")))
    if not files:
        fail("no manifests in deploy/k8s/")
    for path in files:
        with open(path) as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                fail(f"{path}: {e}")
        for doc in docs:
            name = doc.get("metadata", {}).get("name")
            if not doc.get("apiVersion") or not doc.get("kind") or not name:
                fail(f"{path}: a document without apiVersion, kind or metadata.name")
            if "namespace" in doc["metadata"]:
                fail(f"{path}: {name} names a namespace (the manifests are namespace-less)")
            documents.append((path, doc))
    return documents


def flag_value(args, flag):
    """The value of --flag in args (as --flag=V or --flag V), or None."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def port_of(address):
    match = re.search(r":(\d+)/?$", address)
    if not match:
        fail(f"no port in '{address}'")
    return int(match.group(1))


def substitute_env(container, text):
    values = {}
    for env in container.get("env", []):
        if "value" in env:
            values[env["name"]] = env["value"]
        else:
            field = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if field not in SAMPLE_ENV:
                fail(f"env {env['name']}: no sample value for {env.get('valueFrom')}")
            values[env["name"]] = SAMPLE_ENV[field]

    def replace(match):
        name = match.group(1)
        if name not in values:
            fail(f"$({name}) in '{text}' is no env var of container {container['name']}")
        return values[name]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, text)


def sample_secret(bin, key):
    """Sample content for a Secret key a container mounts."""
    if key == "cluster-secret":
        return secrets.token_urlsafe(48)
    if key == "config.toml":
        password_hash = subprocess.run(
            [bin, "hash-password"], input="sample password\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        return (
            "[auth]\n"
            f'token_secret = "{secrets.token_urlsafe(32)}"\n'
            "[[auth.users]]\n"
            'name = "analyst"\n'
            f'password_hash = "{password_hash}"\n'
        )
    fail(f"no sample content for Secret key {key}")


def prepare_mounts(bin, pod_spec, container, scratch):
    """Maps each mount path of the container to a scratch directory with sample files."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            fail(f"container {container['name']} mounts unknown volume {mount['name']}")
        directory = tempfile.mkdtemp(dir=scratch)
        if "secret" in volume:
            items = volume["secret"].get("items")
            if not items:
                fail(f"Secret volume {mount['name']}: list its items, so file names are explicit")
            for item in items:
                with open(os.path.join(directory, item["path"]), "w") as f:
                    f.write(sample_secret(bin, item["key"]))
        elif not ("persistentVolumeClaim" in volume or "emptyDir" in volume):
            fail(f"volume {mount['name']}: unexpected kind {sorted(volume)}")
        mounts[mount["mountPath"].rstrip("/")] = directory
    return mounts


def localize(arg, mounts):
    """arg with a path under a mount path moved into the mount's scratch directory."""
    flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if not value.startswith("/"):
        return arg
    for mount_path, directory in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return flag + eq + directory + value[len(mount_path) :]
    fail(f"'{arg}' is a path under no volume mount")


def check_container(bin, pod_spec, container, scratch):
    if "command" in container:
        fail(f"container {container['name']}: set args, not command (the entrypoint is quiver)")
    args = [substitute_env(container, a) for a in container["args"]]
    mounts = prepare_mounts(bin, pod_spec, container, scratch)
    local = [localize(a, mounts) for a in args]
    result = subprocess.run([bin, *local, "--check"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"quiver {' '.join(local)} --check failed:\n{result.stdout}{result.stderr}")
    settings = dict(
        line.split(" = ", 1) for line in result.stdout.splitlines() if " = " in line
    )
    # Ports the process listens on, by flag.
    listen = {flag: port_of(flag_value(args, flag)) for flag in ("--listen", "--http-listen")}
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for name, number in ports.items():
        if number not in listen.values():
            fail(f"container {container['name']}: port {name}={number} is not one it listens on {listen}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet")
        if not get or get.get("path") != path:
            fail(f"container {container['name']}: {probe} must GET {path}")
        port = ports.get(get["port"], get["port"])
        if port != listen["--http-listen"]:
            fail(f"container {container['name']}: {probe} on port {port}, not --http-listen's")
    grace = re.fullmatch(r"(\d+) s", settings.get("drain_grace", ""))
    if not grace:
        fail(f"container {container['name']}: --check printed no drain_grace:\n{result.stdout}")
    expected = int(grace.group(1)) + 10
    if pod_spec.get("terminationGracePeriodSeconds") != expected:
        fail(f"container {container['name']}: terminationGracePeriodSeconds must be {expected}")
    return args, ports


def main():
    bin, root = sys.argv[1], sys.argv[2]
    documents = load_documents(root)
    deployments = [d for _, d in documents if d["kind"] == "Deployment"]
    services = [d for _, d in documents if d["kind"] == "Service"]
    if not deployments:
        fail("no Deployment")
    used_ports = set()
    pods = []  # (labels, ports by name, args)
    with tempfile.TemporaryDirectory() as scratch:
        for deployment in deployments:
            template = deployment["spec"]["template"]
            labels = template["metadata"]["labels"]
            selector = deployment["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                fail(f"Deployment {deployment['metadata']['name']}: its selector misses its pods")
            for container in template["spec"]["containers"]:
                args, ports = check_container(bin, template["spec"], container, scratch)
                used_ports.update(ports.values())
                pods.append((labels, ports, args))
    service_ports = {}  # service name -> {port: container port}
    for service in services:
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        selected = [p for p in pods if all(p[0].get(k) == v for k, v in selector.items())]
        if not selected:
            fail(f"Service {name} selects no Deployment's pods")
        service_ports[name] = {}
        for port in service["spec"]["ports"]:
            for _, ports, _ in selected:
                target = port.get("targetPort", port["port"])
                number = ports.get(target, target)
                if number not in ports.values():
                    fail(f"Service {name}: targetPort {target} is no port of its pods")
                service_ports[name][port["port"]] = number
    coordinator_ports = [p for labels, p, args in pods if args[0] == "coordinator"]
    for labels, ports, args in pods:
        if args[0] != "executor":
            continue
        url = flag_value(args, "--coordinator")
        match = re.fullmatch(r"grpc://([^:/]+):(\d+)", url)
        if not match or match.group(1) not in service_ports:
            fail(f"executor --coordinator {url} is no Service of these manifests")
        target = service_ports[match.group(1)].get(int(match.group(2)))
        if not any(target == p.get("flight-sql") for p in coordinator_ports):
            fail(f"executor --coordinator {url} does not reach the coordinator's Flight port")
        if port_of(flag_value(args, "--advertise")) != port_of(flag_value(args, "--listen")):
            fail("executor --advertise names another port than --listen")

    with open(os.path.join(root, "Dockerfile")) as f:
        dockerfile = f.read()
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    if len(stages) < 2 or stages[-1] != "debian:bookworm-slim":
        fail(f"the Dockerfile must build in one stage and run on debian:bookworm-slim: {stages}")
    runtime = dockerfile[dockerfile.rindex("FROM") :]
    user = re.search(r"^USER\s+(\S+)", runtime, re.M)
    if not user or user.group(1).split(":")[0] in ("root", "0"):
        fail("the runtime stage must run as a non-root USER")
    if not re.search(r'^ENTRYPOINT\s+\["quiver"\]', runtime, re.M):
        fail('the runtime stage must have ENTRYPOINT ["quiver"]')
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", runtime, re.M) for p in line.split()}
    if exposed != used_ports:
        fail(f"the Dockerfile exposes {sorted(exposed)}, the manifests use {sorted(used_ports)}")
    print(f"deploy check: {len(documents)} documents, {len(pods)} containers, ports {sorted(used_ports)}: OK")


if __name__ == "__main__":
    main()
