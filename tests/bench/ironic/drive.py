#!/usr/bin/env python3
"""Client side of tests/bench/ironic.sh: drives Kiln and Ironic through their REST APIs with the
same code (stdlib only: one keep-alive HTTP/1.1 connection per worker thread, CONCURRENCY
workers), times each phase with a monotonic clock (Python start-up is outside the timing), and
reads a process tree's CPU seconds and peak RSS from /proc. Every phase fails loudly if any node
ends anywhere but where it was asked to go.

Nodes file (written by start_bmcs in ironic.sh), one node a line, tab-separated:
    name  redfish_base_url  system_id_path  mac  username  password
"""

import argparse
import base64
import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

POLL_PAUSE = 0.05  # seconds between two list calls of a waiting phase (one call in flight)
PHASE_TIMEOUT = 900


def load_nodes(path):
    nodes = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, base, system, mac, user, password = line.rstrip("\n").split("\t")
                nodes.append(dict(name=name, base=base, system=system, mac=mac,
                                  user=user, password=password))
    return nodes


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

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
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


def report(phase, started, extra=None):
    out = {"phase": phase, "seconds": round(time.monotonic() - started, 3)}
    out.update(extra or {})
    print(json.dumps(out), flush=True)


# --- Ironic ---------------------------------------------------------------------------------

def ironic_api(args):
    return Api(args.api, {"X-OpenStack-Ironic-API-Version": "latest",
                          "Accept": "application/json"})


def ironic_enroll(args):
    """POST /v1/nodes then POST /v1/ports (the node's MAC) per node, CONCURRENCY nodes at once."""
    api, nodes = ironic_api(args), load_nodes(args.nodes)

    def one(node):
        body = {
            "name": node["name"],
            "driver": "redfish",
            "driver_info": {
                "redfish_address": node["base"],
                "redfish_system_id": node["system"],
                "redfish_username": node["user"],
                "redfish_password": node["password"],
                "redfish_verify_ca": False,
            },
        }
        created = expect(*api.call("POST", "/v1/nodes", body), (201,), f"create {node['name']}")
        expect(*api.call("POST", "/v1/ports",
                         {"node_uuid": created["uuid"], "address": node["mac"]}),
               (201,), f"port of {node['name']}")

    started = time.monotonic()
    run_all(one, nodes, args.concurrency)
    status, body = api.call("GET", "/v1/nodes?fields=name,provision_state&limit=0")
    states = [n["provision_state"] for n in expect(status, body, (200,), "list")["nodes"]]
    if len(states) != len(nodes) or set(states) != {"enroll"}:
        raise SystemExit(f"ironic enroll: {len(states)} nodes, states {sorted(set(states))}")
    report("enroll", started, {"requests": api.requests})


def ironic_wait(api, count, done, what, started):
    """Polls the node list until done(node) for all `count` nodes; fails on an error state."""
    fields = "name,provision_state,target_provision_state,power_state,target_power_state,last_error"
    polls = 0
    while True:
        status, body = api.call("GET", f"/v1/nodes?fields={fields}&limit=0")
        polls += 1
        nodes = expect(status, body, (200,), "list")["nodes"]
        bad = [n for n in nodes if n["provision_state"] in ("error", "enroll") and n["last_error"]
               or (n.get("last_error") and not n.get("target_power_state")
                   and not n.get("target_provision_state") and not done(n))]
        if bad:
            raise SystemExit(f"ironic {what}: {len(bad)} nodes failed, e.g. "
                             f"{bad[0]['name']}: {bad[0]['last_error']}")
        finished = sum(1 for n in nodes if done(n))
        if len(nodes) == count and finished == count:
            return polls
        if time.monotonic() - started > PHASE_TIMEOUT:
            raise SystemExit(f"ironic {what}: only {finished}/{count} after {PHASE_TIMEOUT} s")
        time.sleep(POLL_PAUSE)


def ironic_manage(args):
    """PUT /v1/nodes/NAME/states/provision {"target": "manage"} for every node (202: the
    conductor verifies asynchronously), then the node list until all are manageable."""
    api, nodes = ironic_api(args), load_nodes(args.nodes)

    def one(node):
        expect(*api.call("PUT", f"/v1/nodes/{node['name']}/states/provision",
                         {"target": "manage"}), (202,), f"manage {node['name']}")

    started = time.monotonic()
    run_all(one, nodes, args.concurrency)
    accepted = time.monotonic() - started
    polls = ironic_wait(api, len(nodes),
                        lambda n: n["provision_state"] == "manageable"
                        and not n["target_provision_state"], "manage", started)
    report("verify", started, {"accepted": round(accepted, 3), "polls": polls,
                               "requests": api.requests})


def ironic_power(args):
    """PUT /v1/nodes/NAME/states/power {"target": "power on|power off"} for every node (202),
    then the node list until every node's power_state is the target and no change is pending
    (Ironic sets power_state only after its driver saw the BMC report the new state)."""
    api, nodes = ironic_api(args), load_nodes(args.nodes)
    target = args.target

    def one(node):
        expect(*api.call("PUT", f"/v1/nodes/{node['name']}/states/power", {"target": target}),
               (202,), f"{target} {node['name']}")

    started = time.monotonic()
    run_all(one, nodes, args.concurrency)
    accepted = time.monotonic() - started
    polls = ironic_wait(api, len(nodes),
                        lambda n: n["power_state"] == target and not n["target_power_state"],
                        target, started)
    report(target.replace(" ", "-"), started, {"accepted": round(accepted, 3), "polls": polls,
                                               "requests": api.requests})


# --- Kiln -----------------------------------------------------------------------------------

def kiln_api(args):
    token = open(os.path.join(args.data_dir, "api-token")).read().strip()
    url = open(os.path.join(args.data_dir, "api-url")).read().strip()
    return Api(url, {"Authorization": f"Bearer {token}", "Accept": "application/json"})


def kiln_cli(args, *words):
    subprocess.run([args.kiln, "--data-dir", args.data_dir, *words], check=True,
                   stdout=subprocess.DEVNULL)


def kiln_nodes(api):
    return expect(*api.call("GET", "/v1/nodes"), (200,), "list")


def kiln_enroll(args):
    """`kiln enroll rack.yaml`: one CLI process, one API call, one transaction."""
    api, count = kiln_api(args), len(load_nodes(args.nodes))
    started = time.monotonic()
    kiln_cli(args, "enroll", args.inventory)
    elapsed = time.monotonic() - started
    nodes = kiln_nodes(api)
    states = {n["provision_state"] for n in nodes}
    if len(nodes) != count or states != {"enroll"}:
        raise SystemExit(f"kiln enroll: {len(nodes)} nodes, states {sorted(states)}")
    print(json.dumps({"phase": "enroll", "seconds": round(elapsed, 3), "requests": 1}), flush=True)


def kiln_manage(args):
    """`kiln node manage NAME...` (one CLI process: one PUT .../states/provision per node, in
    turn), then GET /v1/nodes until all are manageable (the conductor verifies each node by
    reading its power state through the BMC)."""
    api, nodes = kiln_api(args), load_nodes(args.nodes)
    started = time.monotonic()
    kiln_cli(args, "node", "manage", *[n["name"] for n in nodes])
    accepted = time.monotonic() - started
    polls = 0
    while True:
        listed = kiln_nodes(api)
        polls += 1
        failed = [n for n in listed if n["provision_state"] not in
                  ("enroll", "verifying", "manageable")]
        if failed:
            raise SystemExit(f"kiln manage: {failed[0]['spec']['name']} is "
                             f"{failed[0]['provision_state']}: {failed[0].get('last_error')}")
        if sum(1 for n in listed if n["provision_state"] == "manageable") == len(nodes):
            break
        if time.monotonic() - started > PHASE_TIMEOUT:
            raise SystemExit("kiln manage: timed out")
        time.sleep(POLL_PAUSE)
    report("verify", started, {"accepted": round(accepted, 3), "polls": polls,
                               "requests": len(nodes) + polls})


def kiln_power(args):
    """PUT /v1/nodes/NAME/states/power {"target": "on|off"} for every node, CONCURRENCY at once.
    Kiln's call returns when the BMC reports the new state (its driver polls), with that state."""
    api, nodes = kiln_api(args), load_nodes(args.nodes)
    target = args.target

    def one(node):
        body = expect(*api.call("PUT", f"/v1/nodes/{node['name']}/states/power",
                                {"target": target}), (200,), f"{target} {node['name']}")
        if body.get("power_state") != target:
            raise SystemExit(f"kiln power {target} {node['name']}: now {body}")

    started = time.monotonic()
    run_all(one, nodes, args.concurrency)
    report(f"power-{target}", started, {"requests": api.requests})


def kiln_power_cli(args):
    """The same through the CLI: one `kiln node power NAME on|off` process per node,
    CONCURRENCY processes at once (Kiln's CLI has no bulk power call)."""
    nodes = load_nodes(args.nodes)
    target = args.target

    def one(node):
        kiln_cli(args, "node", "power", node["name"], target)

    started = time.monotonic()
    run_all(one, nodes, args.concurrency)
    report(f"power-{target}-cli", started, {"processes": len(nodes)})


# --- The BMCs and processes -----------------------------------------------------------------

def bmc_check(args):
    """Reads every system's PowerState straight from the BMCs (outside any timed phase)."""
    nodes = load_nodes(args.nodes)
    apis = {}

    def one(node):
        api = apis.get(node["base"])
        if api is None:
            auth = base64.b64encode(f"{node['user']}:{node['password']}".encode()).decode()
            api = apis.setdefault(node["base"], Api(node["base"], {"Authorization": f"Basic {auth}"}))
        status, body = api.call("GET", node["system"])
        return expect(status, body, (200,), f"BMC {node['name']}").get("PowerState")

    states = run_all(one, nodes, 16)
    wrong = [(n["name"], s) for n, s in zip(nodes, states) if s != args.state]
    if wrong:
        raise SystemExit(f"BMC check: {len(wrong)} systems not {args.state}, e.g. {wrong[:3]}")
    print(json.dumps({"bmc_check": args.state, "systems": len(nodes)}), flush=True)


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


def proc_stats(args):
    """CPU seconds (user+system, the tree's live processes) and the sum of their VmHWM / VmRSS."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, hwm, rss, pids = 0.0, 0, 0, []
    for pid in tree(args.pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            pids.append(pid)
        except OSError:
            pass
    print(json.dumps({"pid": args.pid, "cpu": round(cpu, 2), "hwm_mb": round(hwm / 1024, 1),
                      "rss_mb": round(rss / 1024, 1), "processes": len(pids)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, **flags):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        for flag, kw in flags.items():
            s.add_argument("--" + flag.replace("_", "-"), **kw)
        return s

    common_ironic = dict(api=dict(required=True), nodes=dict(required=True),
                         concurrency=dict(type=int, default=134))
    common_kiln = dict(kiln=dict(required=True), data_dir=dict(required=True),
                       nodes=dict(required=True), concurrency=dict(type=int, default=134))
    add("ironic-enroll", ironic_enroll, **common_ironic)
    add("ironic-manage", ironic_manage, **common_ironic)
    add("ironic-power", ironic_power, target=dict(required=True), **common_ironic)
    add("kiln-enroll", kiln_enroll, inventory=dict(required=True), **common_kiln)
    add("kiln-manage", kiln_manage, **common_kiln)
    add("kiln-power", kiln_power, target=dict(required=True), **common_kiln)
    add("kiln-power-cli", kiln_power_cli, target=dict(required=True), **common_kiln)
    add("bmc-check", bmc_check, nodes=dict(required=True), state=dict(required=True))
    add("proc-stats", proc_stats, pid=dict(type=int, required=True))
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
