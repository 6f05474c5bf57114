#!/usr/bin/env python3
"""A fake ironic-python-agent (IPA) for tests/bench/ironic-deploy.sh: Ironic's `direct` deploy of a
whole-disk image to sushy-tools fake systems, with every ramdisk "booting" in zero time.

The fake systems cannot network-boot, so this stands in for the deploy ramdisk of every node.
It watches Ironic's node list (one cheap filtered call in flight, 0.5 s apart:
provision_state=wait call-back, two fields) and, for each node that appears there, "boots" an
agent that does what IPA does on a node with a zero boot delay:

  * lookup:    GET  /v1/lookup?addresses=MAC&node_uuid=UUID, for the agent token and the
               heartbeat timeout (retried every second while Ironic holds the node's lock)
  * heartbeat: POST /v1/heartbeat/UUID {callback_url, agent_token, agent_version, agent_verify_ca}
               (Ironic API 1.68), on IPA's
               schedule: the first at once, then every heartbeat_timeout x U(0.3, 0.6) s; when an
               asynchronous command finishes it forces one, but never within 5 s of the last (IPA's
               min_heartbeat_interval); after an error it retries in 5-10 s
  * agent API: its own HTTPS server on 127.0.0.1 (one port per node), IPA's REST API as Ironic's
               agent_client uses it: POST /v1/commands/?wait=true|false&agent_token=T,
               GET /v1/commands/, GET /v1/commands/ID, GET /v1/status. Only one command runs at a
               time (409 "agent is busy" otherwise); the token is checked on every call.
  * auto TLS:  as IPA does by default (Ironic 39 requires it, [agent]require_tls): the agent
               serves HTTPS with a self-signed certificate for its address and sends it as
               agent_verify_ca in its heartbeats; Ironic stores it and verifies the agent with it.
               One RSA-2048 certificate for 127.0.0.1 is made (openssl) at start-up and shared by
               every agent (IPA makes one per boot, on the node's CPU, not the conductor's).

Commands (IPA's name, sync or async as in IPA):
  deploy.get_deploy_steps       sync: GenericHardwareManager's in-band deploy steps (write_image
                                at priority 0: Ironic's out-of-band write_image step calls it)
  deploy.execute_deploy_step    async; step write_image does standby.prepare_image's work: GET the
                                image_info URL over HTTP, hash every byte with the algorithm
                                Ironic passes (os_hash_algo/os_hash_value, else `checksum`),
                                fail on a mismatch; nothing is written anywhere
  standby.get_partition_uuids   sync: the whole-disk image's MBR disk identifier as "root uuid"
  image.install_bootloader      async (UEFI whole-disk images): nothing to do on a fake disk
  standby.sync                  sync: nothing to flush
  standby.power_off             async: powers the system off through its Redfish API (the BMC
                                emulator's ComputerSystem.Reset ForceOff, as the ramdisk's
                                `poweroff` would), then the agent is gone (no more heartbeats)
  log.collect_system_logs       sync: an empty gzip'd tarball (Ironic asks only on failure)
Anything else, and any call outside the agent API, is logged loudly ("UNKNOWN ...") and counted;
tests/bench/ironic-deploy.sh fails the run if the count is not zero.

Each node is booted once per run (the benchmark deploys every node once).

Usage: fake_ipa.py --ironic URL --nodes NODES.tsv --stats FILE --tls-dir DIR [--log FILE]
                   [--wait-signal]   (no polling until SIGUSR1: drive.py sends it when the deploy
                                      phase starts, so enroll/verify/provide run without it)
(NODES.tsv as written by drive.py setup: name, BMC base URL, system path, MAC, user, password.)
Runs until SIGTERM/SIGINT; the stats file (JSON) is rewritten whenever an agent finishes and at
exit. Stdlib only (plus the openssl command for the certificate), loopback only.
"""

import argparse
import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import uuid as uuidlib

AGENT_VERSION = "10.0.0"
# IPA speaks the highest of these Ironic API versions the server supports: 1.68 has everything it
# sends (agent_version 1.36, agent_token 1.62, agent_verify_ca 1.68).
API_VERSION = "1.68"
HARDWARE_MANAGER_VERSION = {"generic_hardware_manager": "1.2"}
# IPA's heartbeater (ironic_python_agent/agent.py: IronicPythonAgentHeartbeater).
MIN_HEARTBEAT_INTERVAL = 5.0
JITTER = (0.3, 0.6)
ERROR_JITTER = (1.0, 2.0)
LOOKUP_INTERVAL = 1.0
IRONIC_TIMEOUT = 900.0
LOOKUP_TIMEOUT = 300.0
# Seconds between two node-list calls (one call in flight). A filtered two-field list is cheap;
# under load its latency is queueing in the busy Ironic process, and a pause scaled to it would
# only delay the "boot" of the ramdisks, which a real zero-delay ramdisk would not wait for.
WATCH_PAUSE = 0.5
CHUNK = 1 << 20

LOG_LOCK = threading.Lock()
LOG_FILE = sys.stderr


def log(message):
    line = f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {message}\n"
    with LOG_LOCK:
        LOG_FILE.write(line)
        LOG_FILE.flush()


class Stats:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.data = {"agents_started": 0, "agents_powered_off": 0, "lookups": 0,
                     "lookup_retries": 0, "heartbeats": 0, "heartbeat_errors": 0,
                     "commands": {}, "unknown": [], "images_verified": 0,
                     "image_bytes_hashed": 0, "image_failures": 0, "watch_polls": 0}

    def add(self, key, amount=1):
        with self.lock:
            self.data[key] += amount

    def command(self, name):
        with self.lock:
            self.data["commands"][name] = self.data["commands"].get(name, 0) + 1

    def unknown(self, what):
        log(f"UNKNOWN {what}")
        with self.lock:
            self.data["unknown"].append(what)

    def write(self):
        with self.lock:
            text = json.dumps(self.data, indent=1, sort_keys=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, self.path)


class Http:
    """A keep-alive HTTP/1.1 connection per thread to one base URL."""

    def __init__(self, base, headers=None, timeout=120):
        self.timeout = timeout
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/")
        self.headers = dict(headers or {})
        self.local = threading.local()

    def call(self, method, path, body=None):
        """(status, parsed body). Raises OSError (http.client's errors included) when there is
        no answer; the connection is then dropped, so the next call starts afresh."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                    timeout=self.timeout)
            try:
                conn.request(method, self.prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self.local.conn = None
                # A keep-alive connection the server closed while idle: once more, afresh.
                stale = isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                       BrokenPipeError))
                if attempt == 1 or not stale:
                    raise OSError(f"{method} {path}: {e!r}") from e
        text = raw.decode(errors="replace")
        try:
            return resp.status, (json.loads(text) if text else None)
        except ValueError:
            return resp.status, text


class CommandResult:
    """One entry of the agent's command list (IPA's BaseCommandResult)."""

    def __init__(self, name, params):
        self.id = str(uuidlib.uuid4())
        self.command_name = name
        self.command_params = params
        self.command_status = "RUNNING"
        self.command_error = None
        self.command_result = None
        self.done = threading.Event()
        self.lock = threading.Lock()

    def succeed(self, result):
        with self.lock:
            self.command_result = result
            self.command_status = "SUCCEEDED"
        self.done.set()

    def fail(self, error):
        with self.lock:
            self.command_error = {"type": "CommandExecutionError", "code": 500,
                                  "message": "Command execution failed",
                                  "details": str(error)}
            self.command_status = "FAILED"
        self.done.set()

    def is_done(self):
        return self.done.is_set()

    def serialize(self):
        with self.lock:
            params = dict(self.command_params)
            # Node dicts and image_info are large and carry secrets: IPA returns them, Ironic never
            # reads them back; keep the answer small.
            for key in ("node", "ports", "step"):
                if key in params:
                    params[key] = "..."
            return {"id": self.id, "command_name": self.command_name,
                    "command_params": params, "command_status": self.command_status,
                    "command_error": self.command_error, "command_result": self.command_result}


def rest_error(code, kind, message, details=""):
    """IPA's error body (Ironic's agent_client reads `faultstring`)."""
    return code, {"type": kind, "code": code, "message": message, "details": details,
                  "faultstring": f"{message}: {details}" if details else message}


class Agent:
    """The deploy ramdisk of one node."""

    def __init__(self, fleet, node_uuid, row):
        self.fleet = fleet
        self.uuid = node_uuid
        self.row = row
        self.name = row["name"]
        self.token = None
        self.heartbeat_timeout = 300.0
        self.results = []  # CommandResult, in order
        self.command_lock = threading.Lock()
        self.stop = threading.Event()
        self.forced = False
        self.previous = 0.0
        self.interval = 0.0
        self.server = None
        self.callback_url = None
        self.started = time.monotonic()
        self.disk_id = None

    # --- life --------------------------------------------------------------------------------

    def boot(self):
        """The agent's life, in this thread; a crash is reported loudly (and fails the run)."""
        try:
            self.live()
        except Exception as e:  # noqa: BLE001
            self.fleet.stats.unknown(f"agent of {self.name} crashed: {e!r}")
            self.shutdown("crashed")

    def live(self):
        """Bind the agent API, look the node up, start heartbeating."""
        agent = self

        class Handler(AgentHandler):
            pass
        Handler.agent = agent
        self.server = TlsServer(("127.0.0.1", 0), Handler, self.fleet.tls)
        self.callback_url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name=f"api-{self.name}",
                         kwargs={"poll_interval": 0.5}, daemon=True).start()
        if not self.lookup():
            self.fleet.stats.unknown(f"lookup of {self.name} failed")
            self.shutdown("lookup failed")
            return
        log(f"{self.name}: agent up at {self.callback_url} "
            f"(heartbeat_timeout {self.heartbeat_timeout:.0f} s)")
        self.heartbeater()

    def lookup(self):
        path = "/v1/lookup?" + urllib.parse.urlencode(
            {"addresses": self.row["mac"], "node_uuid": self.uuid})
        deadline = time.monotonic() + LOOKUP_TIMEOUT
        while not self.stop.is_set():
            try:
                status, body = self.fleet.ironic.call("GET", path)
            except OSError as e:
                status, body = 0, str(e)
            if status == 200:
                config = body.get("config") or {}
                self.token = config.get("agent_token")
                if not self.token or self.token == "******":
                    log(f"{self.name}: lookup gave no usable agent token: {str(body)[:300]}")
                    return False
                self.heartbeat_timeout = float(config.get("heartbeat_timeout") or 300)
                self.fleet.stats.add("lookups")
                return True
            self.fleet.stats.add("lookup_retries")
            if time.monotonic() > deadline:
                log(f"{self.name}: lookup failed for {LOOKUP_TIMEOUT:.0f} s: {status} "
                    f"{str(body)[:300]}")
                return False
            self.stop.wait(LOOKUP_INTERVAL)
        return False

    def heartbeater(self):
        """IPA's IronicPythonAgentHeartbeater loop: wake at least every 5 s; heartbeat when the
        interval is over, or when forced and the last heartbeat is over 5 s old."""
        while True:
            wait = min(MIN_HEARTBEAT_INTERVAL,
                       max(0.0, self.interval - (time.monotonic() - self.previous)))
            if self.stop.wait(wait):
                return
            elapsed = time.monotonic() - self.previous
            if elapsed >= self.interval or (self.forced and elapsed > MIN_HEARTBEAT_INTERVAL):
                self.heartbeat()

    def heartbeat(self):
        body = {"callback_url": self.callback_url, "agent_token": self.token,
                "agent_version": AGENT_VERSION, "agent_verify_ca": self.fleet.cert_pem}
        try:
            status, answer = self.fleet.ironic.call("POST", f"/v1/heartbeat/{self.uuid}", body)
        except OSError as e:
            status, answer = 0, str(e)
        if status in (200, 202, 204):
            self.fleet.stats.add("heartbeats")
            self.forced = False
            self.interval = self.heartbeat_timeout * random.uniform(*JITTER)
        else:
            self.fleet.stats.add("heartbeat_errors")
            log(f"{self.name}: heartbeat failed: {status} {str(answer)[:300]}")
            self.interval = MIN_HEARTBEAT_INTERVAL * random.uniform(*ERROR_JITTER)
        self.previous = time.monotonic()

    def force_heartbeat(self):
        self.forced = True

    def shutdown(self, why):
        self.stop.set()
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()
        self.fleet.agent_gone(self, why)

    # --- commands ----------------------------------------------------------------------------

    def execute(self, name, params, wait):
        """IPA's ExecuteCommandMixin.execute_command: one command at a time."""
        with self.command_lock:
            if self.results and not self.results[-1].is_done():
                return rest_error(409, "CommandExecutionError", "Command execution failed",
                                  "agent is busy")
            ext, _, command = name.partition(".")
            result = CommandResult(command, params)
            self.results.append(result)
        self.fleet.stats.command(name)
        sync = {"deploy.get_deploy_steps": self.get_deploy_steps,
                "standby.get_partition_uuids": self.get_partition_uuids,
                "standby.sync": lambda **_: {},
                "log.collect_system_logs": self.collect_system_logs}
        asynchronous = {"deploy.execute_deploy_step": self.execute_deploy_step,
                        "image.install_bootloader": lambda **_: None,
                        "standby.power_off": self.power_off}
        if name in sync:
            try:
                result.succeed(sync[name](**params))
            except Exception as e:  # noqa: BLE001  (reported to Ironic, as IPA does)
                result.fail(e)
        elif name in asynchronous:
            fn = asynchronous[name]

            def run():
                try:
                    result.succeed(fn(**params))
                except Exception as e:  # noqa: BLE001
                    log(f"{self.name}: {name} failed: {e}")
                    result.fail(e)
                finally:
                    if name != "standby.power_off":
                        self.force_heartbeat()
            threading.Thread(target=run, name=f"{name}-{self.name}", daemon=True).start()
            if wait:
                result.done.wait()
        else:
            self.fleet.stats.unknown(f"command {name} on {self.name}")
            result.fail(f"Unknown command: {name}")
        return 200, result.serialize()

    def get_deploy_steps(self, node=None, ports=None, **_):
        steps = [{"step": "write_image", "priority": 0, "interface": "deploy",
                  "reboot_requested": False},
                 {"step": "erase_devices_metadata", "priority": 0, "interface": "deploy",
                  "reboot_requested": False}]
        return {"deploy_steps": {"GenericHardwareManager": steps},
                "hardware_manager_version": HARDWARE_MANAGER_VERSION}

    def execute_deploy_step(self, step, node=None, ports=None, deploy_version=None, **kwargs):
        if deploy_version not in (None, HARDWARE_MANAGER_VERSION):
            raise RuntimeError(f"hardware manager version mismatch: {deploy_version}")
        args = dict(kwargs)
        args.update(step.get("args") or {})
        if step.get("step") != "write_image":
            self.fleet.stats.unknown(f"deploy step {step.get('step')} on {self.name}")
            raise RuntimeError(f"deploy step {step.get('step')} is not supported")
        message = self.prepare_image(args["image_info"], args.get("configdrive"))
        return {"deploy_result": {"result": f"prepare_image: {message}"}, "deploy_step": step}

    def prepare_image(self, image_info, configdrive=None):
        """standby.prepare_image's download and verification, writing nothing."""
        if image_info.get("os_hash_algo") and image_info.get("os_hash_value"):
            algo, expected = image_info["os_hash_algo"], image_info["os_hash_value"]
        elif image_info.get("checksum"):
            expected = image_info["checksum"]
            algo = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}.get(len(expected))
            if algo is None:
                raise RuntimeError(f"cannot tell the algorithm of checksum {expected!r}")
        else:
            raise RuntimeError("image_info has no checksum")
        errors = []
        for url in image_info.get("urls") or []:
            try:
                digest, size = self.download(url, algo)
            except OSError as e:
                errors.append(f"{url}: {e}")
                continue
            if digest.lower() != expected.lower():
                self.fleet.stats.add("image_failures")
                raise RuntimeError(f"Image checksum error: {url} has {algo} {digest}, "
                                   f"expected {expected}")
            self.fleet.stats.add("images_verified")
            self.fleet.stats.add("image_bytes_hashed", size)
            return (f"image ({image_info.get('id')}): {size} bytes verified ({algo}), "
                    "written to nothing (fake disk)")
        self.fleet.stats.add("image_failures")
        raise RuntimeError(f"Image download failed: {errors}")

    def download(self, url, algo):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname.startswith("127."):
            raise OSError(f"refusing a non-loopback image URL {url}")
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
        try:
            conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            hasher = hashlib.new(algo)
            size = 0
            first = b""
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                if len(first) < 512:
                    first += chunk[:512 - len(first)]
                hasher.update(chunk)
                size += len(chunk)
            length = resp.getheader("Content-Length")
            if length is not None and int(length) != size:
                raise OSError(f"short read: {size} of {length} bytes")
        finally:
            conn.close()
        if len(first) >= 512 and first[510:512] == b"\x55\xaa":
            self.disk_id = "0x" + first[440:444][::-1].hex()
        return hasher.hexdigest(), size

    def get_partition_uuids(self, **_):
        return {"root uuid": self.disk_id} if self.disk_id else {}

    def collect_system_logs(self, **_):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
            with tarfile.open(fileobj=gz, mode="w"):
                pass
        return {"system_logs": base64.b64encode(buf.getvalue()).decode()}

    def power_off(self, **_):
        """The ramdisk's `poweroff`: the machine goes off (through the emulated BMC), and this
        agent stops answering and heartbeating."""
        row = self.row
        status, body = self.fleet.bmc(row).call(
            "POST", f"{row['system']}/Actions/ComputerSystem.Reset", {"ResetType": "ForceOff"})
        if status not in (200, 202, 204):
            raise RuntimeError(f"BMC power off: HTTP {status}: {str(body)[:200]}")
        self.fleet.stats.add("agents_powered_off")
        # Let the HTTP answer to this command go out first.
        threading.Timer(0.2, self.shutdown, args=("powered off",)).start()
        return None


class TlsServer(http.server.ThreadingHTTPServer):
    """HTTPS, the TLS handshake in each connection's own thread (not in the accept loop)."""

    daemon_threads = True

    def __init__(self, address, handler, context):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        request.settimeout(120)
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log(f"TLS handshake from {client_address} failed: {e}")
            return
        try:
            super().finish_request(request, client_address)
        finally:
            try:
                request.close()
            except OSError:
                pass


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1 (IPA's auto TLS: tls_utils.generate_tls_certificate
    makes one like it at every boot). Returns (cert path, key path, cert PEM)."""
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "agent.crt"), os.path.join(directory, "agent.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    with open(cert) as f:
        return cert, key, f.read()


class AgentHandler(http.server.BaseHTTPRequestHandler):
    """IPA's REST API for one agent."""

    protocol_version = "HTTP/1.1"
    agent = None

    def log_message(self, fmt, *args):
        pass

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method):
        agent = self.agent
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path.rstrip("/")
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length) or b"null")
        if agent.stop.is_set():
            # Powered off: a real node would not answer at all.
            self.close_connection = True
            return self._answer(*rest_error(503, "ServiceUnavailable", "agent is off"))
        if path == "/v1/status" and method == "GET":
            return self._answer(200, {"started_at": agent.started, "version": AGENT_VERSION})
        if path.startswith("/v1/commands"):
            if query.get("agent_token") != agent.token:
                agent.fleet.stats.unknown(f"{method} {url.path} on {agent.name} with a wrong "
                                          "agent token")
                return self._answer(*rest_error(401, "InvalidContentError", "Unauthorized",
                                                "invalid or missing agent_token"))
            if path == "/v1/commands" and method == "POST":
                if not isinstance(body, dict) or "name" not in body:
                    agent.fleet.stats.unknown(f"POST /v1/commands body {str(body)[:200]}")
                    return self._answer(*rest_error(400, "InvalidContentError",
                                                    "Invalid command", "no name"))
                wait = query.get("wait", "false").lower() == "true"
                return self._answer(*agent.execute(body["name"], body.get("params") or {},
                                                   wait))
            if path == "/v1/commands" and method == "GET":
                return self._answer(200, {"commands": [r.serialize() for r in agent.results]})
            if method == "GET":
                ident = path.rsplit("/", 1)[1]
                for result in agent.results:
                    if result.id == ident:
                        return self._answer(200, result.serialize())
                return self._answer(*rest_error(404, "RequestedObjectNotFoundError",
                                                "Command Result not found", ident))
        agent.fleet.stats.unknown(f"{method} {self.path} on {agent.name}")
        return self._answer(*rest_error(404, "NotFound", "Not found", url.path))

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")


class Fleet:
    """Every node's ramdisk, booted when Ironic waits for its call-back."""

    def __init__(self, args):
        # A long timeout: a busy single-process Ironic queues requests for minutes, and a lookup
        # whose answer is lost has used up the node's one agent token.
        self.ironic = Http(args.ironic, {"X-OpenStack-Ironic-API-Version": API_VERSION,
                                         "Accept": "application/json"}, timeout=IRONIC_TIMEOUT)
        self.rows = {}
        with open(args.nodes) as f:
            for line in f:
                if line.strip():
                    name, base, system, mac, user, password = line.rstrip("\n").split("\t")
                    self.rows[name] = dict(name=name, base=base, system=system, mac=mac,
                                           user=user, password=password)
        self.stats = Stats(args.stats)
        cert, key, self.cert_pem = make_certificate(args.tls_dir)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.agents = {}  # node uuid -> Agent (running)
        self.booted = set()  # node uuids booted once (one deploy per node per run)
        self.lock = threading.Lock()
        self.bmcs = {}
        self.stop = threading.Event()
        self.go = threading.Event()

    def bmc(self, row):
        with self.lock:
            api = self.bmcs.get(row["base"])
            if api is None:
                auth = base64.b64encode(f"{row['user']}:{row['password']}".encode()).decode()
                api = self.bmcs[row["base"]] = Http(row["base"],
                                                    {"Authorization": f"Basic {auth}"})
            return api

    def agent_gone(self, agent, why):
        with self.lock:
            if self.agents.get(agent.uuid) is agent:
                del self.agents[agent.uuid]
        log(f"{agent.name}: agent gone ({why}) after {time.monotonic() - agent.started:.1f} s")
        self.stats.write()

    def watch(self):
        """Polls the node list for nodes in `wait call-back` and boots their ramdisks."""
        self.go.wait()
        log("watching the node list")
        path = ("/v1/nodes?" + urllib.parse.urlencode(
            {"provision_state": "wait call-back", "fields": "uuid,name", "limit": "10000"}))
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, body = self.ironic.call("GET", path)
            except OSError as e:
                status, body = 0, str(e)
            took = time.monotonic() - t0
            self.stats.add("watch_polls")
            if status != 200:
                log(f"node list: {status} {str(body)[:200]}")
            else:
                for node in body.get("nodes", []):
                    self.boot(node)
            if took > 5:
                log(f"node list took {took:.1f} s")
            self.stop.wait(WATCH_PAUSE)

    def boot(self, node):
        row = self.rows.get(node["name"])
        if row is None:
            self.stats.unknown(f"node {node['name']} is not in the node list")
            return
        with self.lock:
            if node["uuid"] in self.booted:
                return
            self.booted.add(node["uuid"])
            agent = self.agents[node["uuid"]] = Agent(self, node["uuid"], row)
        self.stats.add("agents_started")
        threading.Thread(target=agent.boot, name=f"agent-{row['name']}", daemon=True).start()

    def shutdown(self):
        self.stop.set()
        with self.lock:
            agents = list(self.agents.values())
        for agent in agents:
            agent.stop.set()
            if agent.server is not None:
                agent.server.shutdown()
        self.stats.write()


def main():
    global LOG_FILE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ironic", required=True, help="Ironic's API base URL")
    p.add_argument("--nodes", required=True, help="nodes.tsv from drive.py setup")
    p.add_argument("--stats", required=True, help="JSON counters, rewritten as agents finish")
    p.add_argument("--tls-dir", required=True, help="where the agents' certificate is made")
    p.add_argument("--log", help="log file (default stderr)")
    p.add_argument("--wait-signal", action="store_true",
                   help="poll Ironic only after SIGUSR1 (sent when the deploy phase starts)")
    args = p.parse_args()
    if urllib.parse.urlsplit(args.ironic).hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("fake_ipa: Ironic must be on loopback")
    if args.log:
        LOG_FILE = open(args.log, "a")
    fleet = Fleet(args)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: fleet.go.set())
    if not args.wait_signal:
        fleet.go.set()
    fleet.stats.write()
    watcher = threading.Thread(target=fleet.watch, name="watch", daemon=True)
    watcher.start()
    log(f"fake IPA {AGENT_VERSION}: watching {args.ironic} for {len(fleet.rows)} nodes")
    done.wait()
    fleet.shutdown()
    log(f"fake IPA stopped: {json.dumps(fleet.stats.data, sort_keys=True)}")


if __name__ == "__main__":
    main()
