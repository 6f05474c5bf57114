//! sushy-tools (OpenStack's Redfish emulator, fake driver) as a real peer for the Redfish driver
//! tests: a venv under /tmp, a bcrypt htpasswd file, a Python config, one emulator per [`Sushy`]
//! on a free loopback port, stopped when dropped and, for a `static` one, when the test binary
//! exits (a shell watchdog ends the emulator once our end of its stdin pipe closes).

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const VENV: &str = "/tmp/kiln-sushy-venv";
/// What the venv gets from PyPI (bcrypt also makes the htpasswd line).
pub const PIP_PACKAGES: &[&str] = &["sushy-tools==2.2.0", "bcrypt"];
pub const USER: &str = "kiln-admin";
pub const PASSWORD: &str = "Kiln-Redfish-S3cret";

pub struct FakeSystem {
    pub uuid: &'static str,
    pub name: &'static str,
    pub mac: &'static str,
}

impl FakeSystem {
    pub fn path(&self) -> String {
        format!("/redfish/v1/Systems/{}", self.uuid)
    }
}

pub const SYSTEM_A: FakeSystem = FakeSystem {
    uuid: "6e4d8b1a-5c1f-4f0e-9a43-0a7d3c2b1e01",
    name: "kiln-a",
    mac: "52:54:00:4b:00:01",
};
pub const SYSTEM_B: FakeSystem = FakeSystem {
    uuid: "6e4d8b1a-5c1f-4f0e-9a43-0a7d3c2b1e02",
    name: "kiln-b",
    mac: "52:54:00:4b:00:02",
};

#[derive(Clone, Default)]
pub struct SushyOptions {
    /// Run the emulator inside this network namespace (listening on its loopback).
    pub netns: Option<String>,
    /// Put the Redfish SessionService shim (SESSION_SHIM below) in front of sushy-tools.
    pub sessions: bool,
    /// Serve HTTPS with a certificate from a throwaway CA (`Sushy::ca_file`).
    pub tls: bool,
    /// Emulate only SYSTEM_A instead of both.
    pub single_system: bool,
}

pub struct Sushy {
    dir: tempfile::TempDir,
    watchdog: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    /// `http://127.0.0.1:PORT` or `https://…`.
    pub base_url: String,
    pub ca_file: Option<PathBuf>,
    log: PathBuf,
    netns: Option<String>,
}

/// Creates the venv once per machine: built in a staging folder and renamed into place, so
/// parallel test binaries never see half an install. A renamed venv's console scripts keep the
/// staging path in their `#!` line, so everything runs as `venv/bin/python -m ...`.
pub fn venv() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let venv = PathBuf::from(VENV);
        if python_ok(&venv) {
            return venv;
        }
        let staging = PathBuf::from(format!("{VENV}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        run(Command::new("python3").args(["-m", "venv"]).arg(&staging));
        run(Command::new(staging.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES));
        let _ = fs::remove_dir_all(&venv);
        if fs::rename(&staging, &venv).is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        assert!(
            python_ok(&venv),
            "the sushy-tools venv at {VENV} is not usable"
        );
        venv
    })
}

fn python_ok(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import sushy_tools.emulator.main, bcrypt"])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Sushy {
    pub fn start(options: SushyOptions) -> Sushy {
        let venv = venv();
        let dir = tempfile::Builder::new()
            .prefix("kiln-sushy-")
            .tempdir()
            .unwrap();
        let auth_file = dir.path().join("htpasswd");
        let hash = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                PASSWORD,
            ])
            .output()
            .unwrap();
        assert!(hash.status.success(), "bcrypt failed");
        let hash = String::from_utf8(hash.stdout).unwrap();
        fs::write(&auth_file, format!("{USER}:{}\n", hash.trim())).unwrap();

        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        let systems: Vec<&FakeSystem> = if options.single_system {
            vec![&SYSTEM_A]
        } else {
            vec![&SYSTEM_A, &SYSTEM_B]
        };
        // The NIC addresses are never contacted; loopback ones keep even the config local.
        let systems_py: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{{'uuid': '{}', 'name': '{}', 'power_state': 'Off', \
                     'nics': [{{'mac': '{}', 'ip': '127.0.0.{}'}}]}}",
                    s.uuid,
                    s.name,
                    s.mac,
                    i + 11
                )
            })
            .collect();
        let config = dir.path().join("emulator.conf");
        fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n\
                 SUSHY_EMULATOR_AUTH_FILE = {:?}\n\
                 SUSHY_EMULATOR_STATE_DIR = {:?}\n",
                systems_py.join(", "),
                auth_file.display().to_string(),
                state_dir.display().to_string(),
            ),
        )
        .unwrap();

        let port = free_port();
        let mut argv: Vec<String> = match &options.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => Vec::new(),
        };
        argv.extend(if options.sessions {
            let shim = dir.path().join("session_shim.py");
            fs::write(&shim, SESSION_SHIM).unwrap();
            vec![path_str(&venv.join("bin/python")), path_str(&shim)]
        } else {
            // What the `sushy-emulator` console script runs.
            vec![
                path_str(&venv.join("bin/python")),
                "-m".into(),
                "sushy_tools.emulator.main".into(),
            ]
        });
        argv.extend(["--config".into(), path_str(&config)]);
        argv.extend([
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]);
        let mut ca_file = None;
        if options.tls {
            let (ca, cert, key) = make_certificates(dir.path());
            argv.extend(["--ssl-certificate".into(), path_str(&cert)]);
            argv.extend(["--ssl-key".into(), path_str(&key)]);
            ca_file = Some(ca);
        }

        let log = dir.path().join("emulator.log");
        let log_file = fs::File::create(&log).unwrap();
        // The emulator runs in the background while `cat` reads the pipe from us. When the
        // pipe closes (we drop stdin, or this process dies) the emulator is stopped and its files
        // removed; when the emulator exits by itself, so does sh (`wait_until_listening` looks).
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"exec 3<&0
"$@" </dev/null 3<&- & child=$!
(cat <&3 >/dev/null; kill "$child" 2>/dev/null; rm -rf "$KILN_SUSHY_DIR") &
wait "$child""#,
            )
            .arg("sh")
            .args(&argv)
            .env("KILN_SUSHY_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start sh for sushy-emulator");
        let stdin = watchdog.stdin.take();
        let scheme = if options.tls { "https" } else { "http" };
        let mut sushy = Sushy {
            dir,
            watchdog,
            stdin,
            port,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
            log,
            netns: options.netns.clone(),
        };
        sushy.wait_until_listening();
        sushy
    }

    fn wait_until_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.can_connect(addr) {
                return;
            }
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                panic!("sushy-emulator exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "sushy-emulator did not start on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Connects from the emulator's namespace (a thread that entered it) or this one.
    fn can_connect(&self, addr: SocketAddr) -> bool {
        let Some(ns) = self.netns.clone() else {
            return TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        };
        std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let Ok(file) = fs::File::open(format!("/run/netns/{ns}")) else {
                return false;
            };
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .join()
        .unwrap_or(false)
    }

    /// What the emulator printed so far (werkzeug logs one line per request).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// How many `ComputerSystem.Reset` requests the emulator accepted for this system.
    pub fn resets_accepted(&self, system: &FakeSystem) -> usize {
        // werkzeug colours some request lines, so match the parts, not the whole line.
        let request = format!(
            "POST {}/Actions/ComputerSystem.Reset HTTP/1.1",
            system.path()
        );
        self.log()
            .lines()
            .filter(|line| line.contains(&request) && line.contains("\" 204 "))
            .count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=kiln test CA"])
        .args(ec)
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

/// sushy-tools has no SessionService. This WSGI middleware adds one in front of the real
/// emulator: a session token stands for the credentials it was opened with, so sushy-tools' own
/// htpasswd check still decides every request. `/kiln-test/*` lets tests count logins and expire
/// every token (to exercise re-login on 401).
pub const SESSION_SHIM: &str = r#"
import base64, json, secrets, sys, threading
import bcrypt
from sushy_tools.emulator import main as emulator

SESSIONS = '/redfish/v1/SessionService/Sessions'


class SessionShim:
    def __init__(self, app, auth_file):
        self.app, self.auth_file = app, auth_file
        self.tokens, self.logins, self.lock = {}, 0, threading.Lock()

    def valid(self, user, password):
        with open(self.auth_file) as f:
            for line in f:
                name, _, digest = line.strip().partition(':')
                if name == user and digest:
                    return bcrypt.checkpw(password.encode(), digest.encode())
        return False

    def reply(self, start, status, body=None, headers=()):
        data = b'' if body is None else json.dumps(body).encode()
        start(status, [('Content-Type', 'application/json'),
                       ('Content-Length', str(len(data)))] + list(headers))
        return [data]

    def unauthorized(self, start):
        return self.reply(start, '401 Unauthorized', {'error': {
            'code': 'Base.1.0.GeneralError', 'message': 'Invalid session'}})

    def root(self, env, start):
        seen = {}
        def capture(status, headers, exc_info=None):
            seen['status'] = status
        doc = json.loads(b''.join(self.app(env, capture)))
        doc['SessionService'] = {'@odata.id': '/redfish/v1/SessionService'}
        doc['Links'] = {'Sessions': {'@odata.id': SESSIONS}}
        return self.reply(start, seen['status'], doc)

    def login(self, env, start):
        size = int(env.get('CONTENT_LENGTH') or 0)
        try:
            doc = json.loads(env['wsgi.input'].read(size) or b'{}')
        except ValueError:
            return self.reply(start, '400 Bad Request', {'error': {'message': 'not JSON'}})
        user, password = doc.get('UserName', ''), doc.get('Password', '')
        if not self.valid(user, password):
            return self.unauthorized(start)
        token, sid = secrets.token_hex(16), secrets.token_hex(4)
        with self.lock:
            self.tokens[token] = (user, password, sid)
            self.logins += 1
        location = SESSIONS + '/' + sid
        return self.reply(start, '201 Created', {'@odata.id': location, 'Id': sid},
                          [('X-Auth-Token', token), ('Location', location)])

    def __call__(self, env, start):
        method, path = env['REQUEST_METHOD'], env.get('PATH_INFO', '').rstrip('/')
        token = env.get('HTTP_X_AUTH_TOKEN')
        if path == '/kiln-test/stats':
            with self.lock:
                return self.reply(start, '200 OK', {'logins': self.logins,
                                                    'tokens': list(self.tokens)})
        if path == '/kiln-test/expire' and method == 'POST':
            with self.lock:
                self.tokens.clear()
            return self.reply(start, '204 No Content')
        if path == '/redfish/v1' and method == 'GET':
            return self.root(env, start)
        if path == SESSIONS and method == 'POST':
            return self.login(env, start)
        if path.startswith(SESSIONS + '/') and method == 'DELETE':
            with self.lock:
                if token not in self.tokens:
                    return self.unauthorized(start)
                sid = path.rsplit('/', 1)[1]
                for t, (_, _, s) in list(self.tokens.items()):
                    if s == sid:
                        del self.tokens[t]
            return self.reply(start, '204 No Content')
        if token is not None:
            with self.lock:
                creds = self.tokens.get(token)
            if creds is None:
                return self.unauthorized(start)
            pair = (creds[0] + ':' + creds[1]).encode()
            env['HTTP_AUTHORIZATION'] = 'Basic ' + base64.b64encode(pair).decode()
        return self.app(env, start)


original_run = emulator.app.run


def run(*args, **kwargs):
    emulator.app.wsgi_app = SessionShim(emulator.app.wsgi_app,
                                        emulator.app.config['SUSHY_EMULATOR_AUTH_FILE'])
    return original_run(*args, **kwargs)


emulator.app.run = run
sys.argv[0] = 'sushy-emulator'
sys.exit(emulator.main())
"#;
