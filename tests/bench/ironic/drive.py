#!/usr/bin/env python3
"""Client side of tests/bench/ironic.sh: Kiln vs OpenStack Ironic on the same Redfish BMCs.

Subcommands:
  setup  DIR COUNT SUSHY_URL   writes the BMC side (sushy config, bcrypt htpasswd: run this one
                               with the venv's python) and both inventories (nodes.tsv, rack.yaml)
  run    kiln|ironic ...       drives one control plane through its REST API, phase after phase,
                               and writes one JSON line per phase (and the daemon's CPU/RSS)
  table  KILN.json IRONIC.json prints the side-by-side table (markdown)
  deploy kiln|ironic ...       tests/bench/ironic-deploy.sh: enroll, manage, provide, (Ironic: set
                               instance_info), deploy every node until all are active; one JSON
                               line per phase, with the daemon's and the rack side's CPU/RSS
  deploy-table KILN.json IRONIC.json   that run's table (markdown)
  ironic-log IRONIC.log        per-node breakdown of Ironic's deploy, from its log (markdown)

Both control planes are driven by the same code: stdlib only, one keep-alive HTTP/1.1 connection
per worker thread, CONCURRENCY per-node requests in flight. Each phase is timed with a monotonic
clock from its first request until the control plane *reports* every node where it was asked to
go (Ironic's verbs and power calls are asynchronous: 202, then the node list is polled; Kiln's
power and boot-device calls reply once the BMC confirmed, its `manage` is asynchronous and polled
the same way). After each phase, outside the timing, every system is read straight from the BMC
to check that the control plane told the truth. Any node that ends anywhere else fails the run.
"""

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
import uuid as uuidlib

POLL_PAUSE = 0.05  # seconds between two list calls while a phase waits (one call in flight)
POLL_DUTY_FACTOR = 4  # ... and at least 4× the last list call's own duration
PHASE_TIMEOUT = 900
USER = "bench-admin"
PASSWORD = "Bench-Redfish-S3cret"


# --- set-up -------------------------------------------------------------------------------------

def system_uuid(i):
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"kiln-bench-ironic-{i}"))


def setup(args):
    """The BMC emulator's config (COUNT fake systems, powered off, bcrypt cost 4 so BMC auth is
    cheap), the node list both drivers read, and Kiln's rack inventory for the same nodes."""
    import bcrypt  # the venv has it (sushy-tools needs it for htpasswd files)

    os.makedirs(args.dir, exist_ok=True)
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    with open(os.path.join(args.dir, "htpasswd"), "w") as f:
        f.write(f"{USER}:{digest}\n")
    systems, rows, rack = [], [], []
    for i in range(1, args.count + 1):
        name, uid = f"bench-{i:03d}", system_uuid(i)
        mac = f"52:54:00:b1:{i // 256:02x}:{i % 256:02x}"
        systems.append({"uuid": uid, "name": name, "power_state": "Off",
                        "nics": [{"mac": mac, "ip": "127.0.0.1"}]})
        rows.append("\t".join([name, args.sushy_url, f"/redfish/v1/Systems/{uid}", mac,
                               USER, PASSWORD]))
        rack.append(f"  - name: {name}\n"
                    f"    bmc: {{system_id: /redfish/v1/Systems/{uid}}}\n"
                    f"    nics: [{{mac: '{mac}'}}]\n")
    with open(os.path.join(args.dir, "sushy.conf"), "w") as f:
        f.write("SUSHY_EMULATOR_FAKE_DRIVER = True\n"
                f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
                f"SUSHY_EMULATOR_AUTH_FILE = {os.path.join(args.dir, 'htpasswd')!r}\n"
                # Filled in by ironic.sh per run (a fresh state directory each time).
                "import os\n"
                "SUSHY_EMULATOR_STATE_DIR = os.environ['BENCH_SUSHY_STATE']\n")
    with open(os.path.join(args.dir, "nodes.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(args.dir, "rack.yaml"), "w") as f:
        f.write("version: 1\n"
                "defaults:\n"
                f"  bmc: {{kind: redfish, address: '{args.sushy_url}', username: {USER}, "
                f"password: {PASSWORD}}}\n"
                "  boot_mode: bios\n"
                "nodes:\n" + "".join(rack))


def load_nodes(path):
    nodes = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, base, system, mac, user, password = line.rstrip("\n").split("\t")
                nodes.append(dict(name=name, base=base, system=system, mac=mac,
                                  user=user, password=password))
    return nodes


# --- HTTP ---------------------------------------------------------------------------------------

class Api:
    """One base URL and fixed headers; a keep-alive connection per thread."""

    def __init__(self, base, headers):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/")
        self.headers = dict(headers)
        self.local = threading.local()
        self.requests = 0
        self.lock = threading.Lock()

    def _conn(self, fresh=False):
        conn = getattr(self.local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
            self.local.conn = conn
        return conn

    def call(self, method, path, body=None, raw_body=None, content_type="application/json"):
        data = raw_body if raw_body is not None else (
            None if body is None else json.dumps(body).encode())
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        with self.lock:
            self.requests += 1
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request(method, self.prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: reconnect once.
                if attempt == 1:
                    raise
        text = raw.decode(errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return resp.status, parsed


def run_all(fn, items, concurrency):
    """fn(item) for every item, `concurrency` at a time; the first exception is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(fn, items))


def expect(status, body, ok, what):
    if status not in ok:
        raise SystemExit(f"{what}: HTTP {status}: {str(body)[:400]}")
    return body


def request_manage(api, nodes, concurrency):
    """PUT /v1/nodes/NAME/states/provision {"target": "manage"} per node, expecting 202: the
    same request on Ironic's API and Kiln's."""
    def one(node):
        expect(*api.call("PUT", f"/v1/nodes/{node['name']}/states/provision",
                         {"target": "manage"}), (202,), f"manage {node['name']}")
    run_all(one, nodes, concurrency)


def wait_all(list_nodes, count, done, failed, what, started):
    """Polls `list_nodes()` (one call in flight) until done(node) holds for all `count` nodes;
    fails at once when failed(node) names a reason. Returns the number of list calls."""
    polls = 0
    while True:
        t0 = time.monotonic()
        nodes = list_nodes()
        took = time.monotonic() - t0
        polls += 1
        bad = [(n, failed(n)) for n in nodes if failed(n)]
        if bad:
            raise SystemExit(f"{what}: {len(bad)} nodes failed, e.g. {bad[0][1]}")
        finished = sum(1 for n in nodes if done(n))
        if len(nodes) == count and finished == count:
            return polls
        if time.monotonic() - started > PHASE_TIMEOUT:
            raise SystemExit(f"{what}: only {finished}/{count} after {PHASE_TIMEOUT} s")
        # The poller must not load the daemon it measures: at most a fifth of the time has a
        # list call in flight (Ironic's node list costs it ~40 ms of CPU at 8 nodes, more at 134).
        time.sleep(max(POLL_PAUSE, POLL_DUTY_FACTOR * took))


# --- the two control planes ---------------------------------------------------------------------

class Ironic:
    """Ironic's REST API (noauth, latest microversion)."""

    name = "ironic"
    FIELDS = ("name,provision_state,target_provision_state,power_state,target_power_state,"
              "last_error")

    def __init__(self, args):
        self.api = Api(args.api, {"X-OpenStack-Ironic-API-Version": "latest",
                                  "Accept": "application/json"})

    def list(self):
        status, body = self.api.call("GET", f"/v1/nodes?fields={self.FIELDS}&limit=10000")
        return expect(status, body, (200,), "ironic list")["nodes"]

    def enroll(self, nodes, args):
        """POST /v1/nodes then POST /v1/ports (the node's MAC) per node: Ironic has no bulk
        enrollment call (`baremetal create FILE` makes the same two calls per node)."""
        def one(node):
            body = {"name": node["name"], "driver": "redfish",
                    "driver_info": {"redfish_address": node["base"],
                                    "redfish_system_id": node["system"],
                                    "redfish_username": node["user"],
                                    "redfish_password": node["password"],
                                    "redfish_verify_ca": False}}
            created = expect(*self.api.call("POST", "/v1/nodes", body), (201,),
                             f"create {node['name']}")
            expect(*self.api.call("POST", "/v1/ports",
                                  {"node_uuid": created["uuid"], "address": node["mac"]}),
                   (201,), f"port of {node['name']}")
        run_all(one, nodes, args.concurrency)
        states = [n["provision_state"] for n in self.list()]
        if len(states) != len(nodes) or set(states) != {"enroll"}:
            raise SystemExit(f"ironic enroll: {len(states)} nodes, states {sorted(set(states))}")
        return {}

    def manage(self, nodes, args, started):
        """PUT .../states/provision {"target": "manage"} per node (202; the conductor verifies
        the BMC: validates driver_info, logs in, reads the power state), then the list until
        every node is manageable with nothing pending."""
        request_manage(self.api, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["provision_state"] == "manageable"
                         and not n["target_provision_state"],
                         lambda n: n["provision_state"] in ("enroll", "error")
                         and not n["target_provision_state"] and n["last_error"]
                         and f"{n['name']}: {n['last_error']}",
                         "ironic manage", started)
        return {"accepted": round(accepted, 3), "polls": polls}

    def power(self, nodes, args, started, target):
        """PUT .../states/power {"target": "power on|power off"} per node (202), then the list
        until each power_state is the target and no change is pending (Ironic records the new
        state once its driver has read it back from the BMC)."""
        word = {"on": "power on", "off": "power off"}[target]

        def one(node):
            expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/states/power",
                                  {"target": word}), (202,), f"{word} {node['name']}")
        run_all(one, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["power_state"] == word and not n["target_power_state"],
                         lambda n: not n["target_power_state"] and n["power_state"] != word
                         and n["last_error"] and f"{n['name']}: {n['last_error']}",
                         f"ironic {word}", started)
        return {"accepted": round(accepted, 3), "polls": polls}

    def boot_pxe(self, nodes, args, started):
        """PUT .../management/boot_device {"boot_device": "pxe", "persistent": false} per node:
        synchronous (the API waits for the conductor's BMC PATCH), 204."""
        def one(node):
            expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/management/boot_device",
                                  {"boot_device": "pxe", "persistent": False}),
                   (200, 202, 204), f"boot device {node['name']}")
        run_all(one, nodes, args.concurrency)
        return {}


class Kiln:
    """Kiln's REST API (/v1, bearer token from the data directory)."""

    name = "kiln"

    def __init__(self, args):
        token = open(os.path.join(args.data_dir, "api-token")).read().strip()
        url = args.api or open(os.path.join(args.data_dir, "api-url")).read().strip()
        self.api = Api(url, {"Authorization": f"Bearer {token}", "Accept": "application/json"})

    def list(self):
        return expect(*self.api.call("GET", "/v1/nodes"), (200,), "kiln list")

    def enroll(self, nodes, args):
        """POST /v1/inventory with the rack file (what `kiln enroll FILE` sends): one request,
        validated whole, one transaction."""
        with open(args.inventory) as f:
            content = f.read()
        report = expect(*self.api.call("POST", "/v1/inventory",
                                       {"file": os.path.basename(args.inventory),
                                        "content": content}), (200,), "kiln enroll")
        listed = self.list()
        states = {n["provision_state"] for n in listed}
        if len(listed) != len(nodes) or states != {"enroll"} or \
                len(report.get("created", [])) != len(nodes):
            raise SystemExit(f"kiln enroll: {len(listed)} nodes, states {sorted(states)}")
        return {}

    def manage(self, nodes, args, started):
        """PUT .../states/provision {"target": "manage"} per node (202; the conductor verifies
        the BMC: reads the power state with the node's credentials), then the list until every
        node is manageable."""
        request_manage(self.api, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["provision_state"] == "manageable",
                         lambda n: n["provision_state"] not in
                         ("enroll", "verifying", "manageable")
                         and f"{n['spec']['name']} is {n['provision_state']}: "
                             f"{n.get('last_error')}",
                         "kiln manage", started)
        return {"accepted": round(accepted, 3), "polls": polls}

    def power(self, nodes, args, started, target):
        """PUT .../states/power {"target": "on|off"} per node: the reply comes once the BMC
        reports the new state (the driver polls it), and carries that state."""
        def one(node):
            body = expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/states/power",
                                         {"target": target}), (200,), f"{target} {node['name']}")
            if body.get("power_state") != target:
                raise SystemExit(f"kiln power {target} {node['name']}: now {body}")
        run_all(one, nodes, args.concurrency)
        return {}

    def boot_pxe(self, nodes, args, started):
        """PUT .../states/boot_device {"device": "pxe", "persistent": false} per node: the
        reply comes after the BMC accepted the PATCH."""
        def one(node):
            expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/states/boot_device",
                                  {"device": "pxe", "persistent": False}), (200,),
                   f"boot device {node['name']}")
        run_all(one, nodes, args.concurrency)
        return {}


# --- the BMCs and the processes -----------------------------------------------------------------

def bmc_systems(nodes):
    """Every system as the BMC reports it now (never timed)."""
    apis = {}
    lock = threading.Lock()

    def one(node):
        with lock:
            api = apis.get(node["base"])
            if api is None:
                auth = base64.b64encode(f"{node['user']}:{node['password']}".encode()).decode()
                api = apis[node["base"]] = Api(node["base"], {"Authorization": f"Basic {auth}"})
        return expect(*api.call("GET", node["system"]), (200,), f"BMC {node['name']}")

    return run_all(one, nodes, 8)


def bmc_check(nodes, power=None, boot_target=None):
    wrong = []
    for node, system in zip(nodes, bmc_systems(nodes)):
        if power and system.get("PowerState") != power:
            wrong.append((node["name"], system.get("PowerState")))
        boot = system.get("Boot", {})
        if boot_target and boot.get("BootSourceOverrideTarget") != boot_target:
            wrong.append((node["name"], boot))
    if wrong:
        raise SystemExit(f"BMC check: {len(wrong)} systems wrong, e.g. {wrong[:2]}")


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_stats(pid):
    """CPU seconds (user+system, with reaped children's) of a process tree, and the sums of its
    processes' VmHWM (peak RSS) and VmRSS, in MiB."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, hwm, rss, count = 0.0, 0, 0, 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime: fields 14-17 of stat, 11-14 after the comm field
            cpu += sum(int(x) for x in fields[11:15]) / ticks
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            count += 1
        except OSError:
            pass
    return {"cpu": round(cpu, 2), "hwm_mb": round(hwm / 1024, 1),
            "rss_mb": round(rss / 1024, 1), "processes": count}


PHASES = ["enroll", "verify", "power-on", "power-off", "boot-pxe"]


def run(args):
    nodes = load_nodes(args.nodes)
    plane = {"kiln": Kiln, "ironic": Ironic}[args.system](args)
    out = open(args.out, "w")

    def emit(record):
        record["system"] = plane.name
        line = json.dumps(record)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    emit({"phase": "start", "daemon": proc_stats(args.pid), "bmc": proc_stats(args.bmc_pid)})
    before_d, before_b = proc_stats(args.pid), proc_stats(args.bmc_pid)
    total = 0.0
    for phase in PHASES:
        requests0 = plane.api.requests
        cpu0, bcpu0 = proc_stats(args.pid)["cpu"], proc_stats(args.bmc_pid)["cpu"]
        started = time.monotonic()
        if phase == "enroll":
            extra = plane.enroll(nodes, args)
        elif phase == "verify":
            extra = plane.manage(nodes, args, started)
        elif phase == "power-on":
            extra = plane.power(nodes, args, started, "on")
        elif phase == "power-off":
            extra = plane.power(nodes, args, started, "off")
        else:
            extra = plane.boot_pxe(nodes, args, started)
        seconds = time.monotonic() - started
        total += seconds
        daemon, bmc = proc_stats(args.pid), proc_stats(args.bmc_pid)
        # The truth, from the BMCs (outside the timing).
        if phase == "verify":
            bmc_check(nodes, power="Off")
        elif phase == "power-on":
            bmc_check(nodes, power="On")
        elif phase == "power-off":
            bmc_check(nodes, power="Off")
        elif phase == "boot-pxe":
            bmc_check(nodes, boot_target="Pxe")
        emit({"phase": phase, "seconds": round(seconds, 3),
              "requests": plane.api.requests - requests0,
              "daemon_cpu": round(daemon["cpu"] - cpu0, 2),
              "bmc_cpu": round(bmc["cpu"] - bcpu0, 2), **extra})
    after_d, after_b = proc_stats(args.pid), proc_stats(args.bmc_pid)
    emit({"phase": "total", "seconds": round(total, 3),
          "daemon_cpu": round(after_d["cpu"] - before_d["cpu"], 2),
          "bmc_cpu": round(after_b["cpu"] - before_b["cpu"], 2),
          "daemon": after_d, "bmc": after_b})


# --- the table ----------------------------------------------------------------------------------

def table(args):
    def load(path):
        return {r["phase"]: r for r in map(json.loads, open(path))}
    kiln, ironic = load(args.kiln), load(args.ironic)
    lines = [
        "| phase | Kiln s | Ironic s | Ironic/Kiln | Kiln CPU s | Ironic CPU s "
        "| BMC CPU s (Kiln / Ironic) | requests (Kiln / Ironic) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES + ["total"]:
        k, i = kiln[phase], ironic[phase]
        ratio = i["seconds"] / k["seconds"] if k["seconds"] > 0 else float("inf")
        req = (f"{k['requests']} / {i['requests']}" if "requests" in k else "")
        lines.append(f"| {phase} | {k['seconds']:.3f} | {i['seconds']:.3f} | {ratio:.1f}× "
                     f"| {k['daemon_cpu']:.2f} | {i['daemon_cpu']:.2f} "
                     f"| {k['bmc_cpu']:.2f} / {i['bmc_cpu']:.2f} | {req} |")
    kd, idd = kiln["total"]["daemon"], ironic["total"]["daemon"]
    ks, iss = kiln["start"]["daemon"], ironic["start"]["daemon"]
    lines += [
        "",
        "| daemon | RSS after start MiB | peak RSS MiB (sum of VmHWM) | processes |",
        "|---|---:|---:|---:|",
        f"| Kiln | {ks['rss_mb']} | {kd['hwm_mb']} | {kd['processes']} |",
        f"| Ironic | {iss['rss_mb']} | {idd['hwm_mb']} | {idd['processes']} |",
    ]
    print("\n".join(lines))

# --- deploy (tests/bench/ironic-deploy.sh) ------------------------------------------------------

DEPLOY_TIMEOUT = 7200


class IronicDeploy(Ironic):
    """Ironic with the direct deploy interface: nodes enrolled with deploy kernel/ramdisk and a
    boot mode, made available, given a whole-disk image, deployed.

    Every per-node write is retried on 409 and 503, as openstacksdk's baremetal proxy does
    (RETRIABLE_STATUS_CODES): with SQLite, a busy single-process Ironic answers "database is
    locked" as 503 TemporaryFailure. Retries are counted and reported."""

    FIELDS = Ironic.FIELDS + ",uuid"
    RETRIES = 20
    RETRY_PAUSE = 1.0

    def __init__(self, args):
        super().__init__(args)
        self.retried = 0
        self.retry_lock = threading.Lock()

    def write(self, method, path, body, ok, what):
        for attempt in range(self.RETRIES + 1):
            status, answer = self.api.call(method, path, body)
            if status in ok or status not in (409, 503) or attempt == self.RETRIES:
                return expect(status, answer, ok, what)
            with self.retry_lock:
                self.retried += 1
            time.sleep(self.RETRY_PAUSE)

    def manage(self, nodes, args, started):
        def one(node):
            self.write("PUT", f"/v1/nodes/{node['name']}/states/provision",
                       {"target": "manage"}, (202,), f"manage {node['name']}")
        run_all(one, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["provision_state"] == "manageable"
                         and not n["target_provision_state"],
                         lambda n: n["provision_state"] in ("enroll", "error")
                         and not n["target_provision_state"] and n["last_error"]
                         and f"{n['name']}: {n['last_error']}",
                         "ironic manage", started)
        return {"accepted": round(accepted, 3), "polls": polls}

    def enroll(self, nodes, args):
        def one(node):
            index = int(node["name"].rsplit("-", 1)[1])
            body = {"name": node["name"], "driver": "redfish",
                    "driver_info": {"redfish_address": node["base"],
                                    "redfish_system_id": node["system"],
                                    "redfish_username": node["user"],
                                    "redfish_password": node["password"],
                                    "redfish_verify_ca": False,
                                    "deploy_kernel": args.deploy_kernel,
                                    "deploy_ramdisk": args.deploy_ramdisk},
                    # The same mix as `kiln sim`'s rack: every 2nd node boots UEFI.
                    "properties": {"capabilities":
                                   f"boot_mode:{'uefi' if index % 2 == 0 else 'bios'}"}}
            created = self.write("POST", "/v1/nodes", body, (201,), f"create {node['name']}")
            self.write("POST", "/v1/ports",
                       {"node_uuid": created["uuid"], "address": node["mac"]},
                       (201,), f"port of {node['name']}")
        run_all(one, nodes, args.concurrency)
        states = [n["provision_state"] for n in self.list()]
        if len(states) != len(nodes) or set(states) != {"enroll"}:
            raise SystemExit(f"ironic enroll: {len(states)} nodes, states {sorted(set(states))}")
        return {}

    def provide(self, nodes, args, started):
        def one(node):
            self.write("PUT", f"/v1/nodes/{node['name']}/states/provision",
                       {"target": "provide"}, (202,), f"provide {node['name']}")
        run_all(one, nodes, args.concurrency)
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["provision_state"] == "available"
                         and not n["target_provision_state"],
                         lambda n: n["provision_state"] in ("clean failed", "manageable")
                         and not n["target_provision_state"] and n["last_error"]
                         and f"{n['name']}: {n['last_error']}",
                         "ironic provide", started)
        return {"polls": polls}

    def instance_info(self, nodes, args, started):
        """PATCH instance_info per node: the whole-disk image's http URL and its sha256 (what
        standalone Ironic needs for an http image)."""
        patch = [{"op": "add", "path": f"/instance_info/{key}", "value": value}
                 for key, value in (("image_source", args.image_url),
                                    ("image_os_hash_algo", "sha256"),
                                    ("image_os_hash_value", args.image_sha256),
                                    ("image_disk_format", "raw"))]

        def one(node):
            self.write("PATCH", f"/v1/nodes/{node['name']}", patch, (200,),
                       f"instance_info {node['name']}")
        run_all(one, nodes, args.concurrency)
        return {}

    def deploy(self, nodes, args, started):
        def one(node):
            self.write("PUT", f"/v1/nodes/{node['name']}/states/provision",
                       {"target": "active"}, (202,), f"deploy {node['name']}")
        run_all(one, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                            lambda n: n["provision_state"] == "active"
                            and not n["target_provision_state"],
                            lambda n: n["provision_state"] in ("deploy failed", "error")
                            and f"{n['name']} is {n['provision_state']}: {n['last_error']}",
                            "ironic deploy", started)
        return {"accepted": round(accepted, 3), "polls": polls}


class KilnDeploy(Kiln):
    """Kiln in a `kiln lab up --sim` namespace: the rack file names the image (sim-os)."""

    def provide(self, nodes, args, started):
        def one(node):
            expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/states/provision",
                                  {"target": "provide"}), (202,), f"provide {node['name']}")
        run_all(one, nodes, args.concurrency)
        polls = wait_all(self.list, len(nodes),
                         lambda n: n["provision_state"] == "available",
                         lambda n: n["provision_state"] in ("clean-failed", "error")
                         and f"{n['spec']['name']} is {n['provision_state']}: "
                             f"{n.get('last_error')}",
                         "kiln provide", started)
        return {"polls": polls}

    def deploy(self, nodes, args, started):
        def one(node):
            expect(*self.api.call("PUT", f"/v1/nodes/{node['name']}/states/provision",
                                  {"target": "deploy"}), (202,), f"deploy {node['name']}")
        run_all(one, nodes, args.concurrency)
        accepted = time.monotonic() - started
        polls = wait_all(self.list, len(nodes),
                            lambda n: n["provision_state"] == "active",
                            lambda n: n["provision_state"] in ("deploy-failed", "error")
                            and f"{n['spec']['name']} is {n['provision_state']}: "
                                f"{n.get('last_error')}",
                            "kiln deploy", started)
        return {"accepted": round(accepted, 3), "polls": polls}


def kiln_nodes(args):
    """The lab's nodes as load_nodes rows (every server is a System of the sim's Redfish
    service, IPMI ones included), read from the rack file `kiln sim` wrote."""
    rows, name = [], None
    password = open(args.bmc_password).read().strip()
    with open(args.inventory) as f:
        for line in f:
            line = line.strip()
            if line.startswith("- name:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("nics:") and name:
                mac = line.split("mac:", 1)[1].strip(" \"'}]")
                rows.append(dict(name=name, base=args.bmc_url,
                                 system=f"/redfish/v1/Systems/{name}", mac=mac,
                                 user=args.bmc_user, password=password))
                name = None
    return rows


DEPLOY_PHASES = ["enroll", "verify", "provide", "instance-info", "deploy"]


def deploy_run(args):
    # Every phase gets the deploy's timeout: 134 pbkdf2-bound Ironic verifies on a loaded 2-core
    # machine can take longer than `run`'s 15 minutes.
    global PHASE_TIMEOUT
    PHASE_TIMEOUT = DEPLOY_TIMEOUT
    if args.system == "kiln":
        nodes, plane = kiln_nodes(args), KilnDeploy(args)
    else:
        nodes, plane = load_nodes(args.nodes), IronicDeploy(args)
    rack_pids = args.rack_pid or []
    out = open(args.out, "w")

    def rack_cpu():
        return round(sum(proc_stats(p)["cpu"] for p in rack_pids), 2)

    def emit(record):
        record["system"] = plane.name
        line = json.dumps(record)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    emit({"phase": "start", "nodes": len(nodes), "daemon": proc_stats(args.pid),
          "rack_cpu": rack_cpu(), "load": open("/proc/loadavg").read().split()[:3]})
    for phase in DEPLOY_PHASES:
        if phase == "instance-info" and args.system == "kiln":
            continue  # the rack file gave every node its image at enrollment
        requests0 = plane.api.requests
        retried0 = getattr(plane, "retried", 0)
        cpu0, rcpu0 = proc_stats(args.pid)["cpu"], rack_cpu()
        load0 = open("/proc/loadavg").read().split()[0]
        if phase == "deploy" and args.ipa_pid:
            os.kill(args.ipa_pid, signal.SIGUSR1)  # the fake IPA starts watching now
        started = time.monotonic()
        if phase == "enroll":
            extra = plane.enroll(nodes, args)
        elif phase == "verify":
            extra = plane.manage(nodes, args, started)
        elif phase == "provide":
            extra = plane.provide(nodes, args, started)
        elif phase == "instance-info":
            extra = plane.instance_info(nodes, args, started)
        else:
            extra = plane.deploy(nodes, args, started)
        seconds = time.monotonic() - started
        daemon = proc_stats(args.pid)
        if phase == "deploy":
            # The truth, from the BMCs (outside the timing): every server is on again.
            bmc_check(nodes, power="On")
        emit({"phase": phase, "seconds": round(seconds, 3),
              "requests": plane.api.requests - requests0,
              "retried": getattr(plane, "retried", 0) - retried0,
              "daemon_cpu": round(daemon["cpu"] - cpu0, 2),
              "rack_cpu": round(rack_cpu() - rcpu0, 2),
              "load": [load0, open("/proc/loadavg").read().split()[0]], **extra})
    emit({"phase": "end", "daemon": proc_stats(args.pid),
          "rack": {str(p): proc_stats(p) for p in rack_pids}})


def deploy_table(args):
    def load(path):
        return {r["phase"]: r for r in map(json.loads, open(path))}
    kiln, ironic = load(args.kiln), load(args.ironic)
    lines = [
        "| phase | Kiln s | Ironic s | Ironic ÷ Kiln | Kiln daemon CPU s | Ironic CPU s "
        "| rack side CPU s (Kiln sim / sushy + fake IPA + nginx) | Ironic writes retried (409/503) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in DEPLOY_PHASES:
        k, i = kiln.get(phase), ironic.get(phase)
        if k is None and i is None:
            continue
        if k is None:
            lines.append(f"| {phase} | – | {i['seconds']:.3f} | – | – | {i['daemon_cpu']:.2f} "
                         f"| – / {i['rack_cpu']:.2f} | {i.get('retried', 0)} |")
            continue
        ratio = i["seconds"] / k["seconds"] if k["seconds"] > 0 else float("inf")
        name = f"**{phase}**" if phase == "deploy" else phase
        lines.append(f"| {name} | {k['seconds']:.3f} | {i['seconds']:.3f} | {ratio:.1f}× "
                     f"| {k['daemon_cpu']:.2f} | {i['daemon_cpu']:.2f} "
                     f"| {k['rack_cpu']:.2f} / {i['rack_cpu']:.2f} | {i.get('retried', 0)} |")
    ks, iss = kiln["start"]["daemon"], ironic["start"]["daemon"]
    ke, ie = kiln["end"]["daemon"], ironic["end"]["daemon"]
    lines += [
        "",
        "| daemon | CPU s, whole run | RSS after start MiB | peak RSS MiB (sum of VmHWM) "
        "| processes |",
        "|---|---:|---:|---:|---:|",
        f"| Kiln | {ke['cpu'] - ks['cpu']:.2f} | {ks['rss_mb']} | {ke['hwm_mb']} "
        f"| {ke['processes']} |",
        f"| Ironic | {ie['cpu'] - iss['cpu']:.2f} | {iss['rss_mb']} | {ie['hwm_mb']} "
        f"| {ie['processes']} |",
    ]
    print("\n".join(lines))


def ironic_log(args):
    """Where each node's deploy went, from Ironic's own log (INFO lines, no debug needed):
    deploy request accepted -> wait call-back (prepare, power off, boot mode, PXE, reboot)
    -> first heartbeat acted on (the ramdisk seen, lookup, heartbeat, conductor worker)
    -> write_image started -> its completion acted on (the agent's next heartbeat that found
    the node unlocked) -> active (boot to disk, tear down the agent, power off/on)."""
    import datetime
    import re
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ")
    node_re = re.compile(r"[Nn]ode ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
    marks = {}
    dropped = 0
    with open(args.log) as f:
        for line in f:
            m = stamp.match(line)
            n = node_re.search(line)
            if not m or not n:
                continue
            t = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            node = marks.setdefault(n[1], {})

            def mark(key):
                node.setdefault(key, t)
            if 'to provision state "deploying" from state "available"' in line:
                mark("requested")
            elif 'to provision state "wait call-back" from state "deploying"' in line:
                mark("wait")
            elif 'to provision state "deploying" from state "wait call-back"' in line:
                mark("called_back")
            elif "'step': 'write_image'" in line and "being executed asynchronously" in line:
                mark("write_started")
            elif "returned deploy command success" in line:
                mark("write_done")
            elif 'to provision state "active"' in line:
                mark("active")
            elif "skipping heartbeat processing" in line:
                dropped += 1
    spans = [("deploy accepted -> wait call-back", "requested", "wait"),
             ("wait call-back -> first heartbeat acted on", "wait", "called_back"),
             ("write_image started -> its completion acted on", "write_started", "write_done"),
             ("completion acted on -> active", "write_done", "active"),
             ("deploy accepted -> active", "requested", "active")]
    lines = ["| per node, from Ironic's log | p50 s | p90 s | max s | nodes |",
             "|---|---:|---:|---:|---:|"]
    for label, a, b in spans:
        values = sorted(n[b] - n[a] for n in marks.values() if a in n and b in n)
        if not values:
            continue

        def pct(p):
            return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
        lines.append(f"| {label} | {pct(50):.1f} | {pct(90):.1f} | {values[-1]:.1f} "
                     f"| {len(values)} |")
    lines += ["", f"Heartbeats Ironic dropped (node locked; the agent's next one comes "
              f"heartbeat_timeout x 0.3-0.6 later): {dropped}."]
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("dir")
    s.add_argument("count", type=int)
    s.add_argument("sushy_url")
    s.set_defaults(fn=setup)
    r = sub.add_parser("run")
    r.add_argument("system", choices=["kiln", "ironic"])
    r.add_argument("--api", help="base URL (Kiln: default DATA_DIR/api-url)")
    r.add_argument("--data-dir", help="Kiln's data directory (token)")
    r.add_argument("--inventory", help="Kiln's rack file")
    r.add_argument("--nodes", required=True)
    r.add_argument("--pid", type=int, required=True, help="the daemon's pid")
    r.add_argument("--bmc-pid", type=int, required=True, help="the BMC emulator's pid")
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument("--out", required=True)
    r.set_defaults(fn=run)
    t = sub.add_parser("table")
    t.add_argument("kiln")
    t.add_argument("ironic")
    t.set_defaults(fn=table)
    d = sub.add_parser("deploy")
    d.add_argument("system", choices=["kiln", "ironic"])
    d.add_argument("--api", help="base URL (Kiln: default DATA_DIR/api-url)")
    d.add_argument("--data-dir", help="Kiln's data directory (token)")
    d.add_argument("--inventory", help="Kiln: the lab's rack file")
    d.add_argument("--bmc-url", default="http://127.0.0.1:8000", help="Kiln: the sim's Redfish")
    d.add_argument("--bmc-user", default="admin")
    d.add_argument("--bmc-password", help="Kiln: the lab's BMC password file")
    d.add_argument("--nodes", help="Ironic: nodes.tsv")
    d.add_argument("--deploy-kernel", help="Ironic: driver_info deploy_kernel URL")
    d.add_argument("--deploy-ramdisk", help="Ironic: driver_info deploy_ramdisk URL")
    d.add_argument("--image-url", help="Ironic: instance_info image_source")
    d.add_argument("--image-sha256", help="Ironic: instance_info image_os_hash_value")
    d.add_argument("--pid", type=int, required=True, help="the daemon's pid")
    d.add_argument("--rack-pid", type=int, action="append",
                   help="pids of the rack side (BMC emulator, fake IPA, image server; repeat)")
    d.add_argument("--ipa-pid", type=int, help="Ironic: the fake IPA (SIGUSR1 at deploy start)")
    d.add_argument("--concurrency", type=int, default=16)
    d.add_argument("--out", required=True)
    d.set_defaults(fn=deploy_run)
    dt = sub.add_parser("deploy-table")
    dt.add_argument("kiln")
    dt.add_argument("ironic")
    dt.set_defaults(fn=deploy_table)
    il = sub.add_parser("ironic-log")
    il.add_argument("log")
    il.set_defaults(fn=ironic_log)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
