"""Run the real `tritonserver` shipped inside the `nvidia-pytriton` wheel as a subprocess.

The wheel carries Triton 2.51 (binary, its shared libraries, the python backend and one
python-backend stub per Python version) but no onnxruntime/tensorrt backend: network
models run through ONNX Runtime inside python-backend models (see serving/profiles.py).

    with TritonServer(repo, log_path=Path("build/triton.log")) as server:
        server.start(timeout_s=300)
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

Hardened by default: models are loaded once at start (`--model-control-mode none`), the
model-repository and shared-memory APIs need the header `admin-key: <key>` on HTTP (on
gRPC the metadata key is `triton-grpc-protocol-admin-key`), and every endpoint binds 127.0.0.1
(tritonserver's own default is 0.0.0.0).

Several servers per host (tests, benchmarks, one Triton per GPU): `start()` refuses ports
that are already taken, gives the server a unique `--id` and accepts readiness only from
the server whose metadata carries that id, logs to a per-instance file
(build/logs/triton-<host>-<grpc port>.log), and a server that fails to start leaves no
python-backend stub or /dev/shm region behind.

Fleet flags (gateway/fleet.py balances over replicas): gRPC connections are closed after
`max_connection_age_s` (+ `grace_s` for calls in flight) so direct gRPC clients
(tritonclient, perf_analyzer) reconnect and spread over new replicas too; keepalive pings
are accepted every 5 s, also without calls, so the gateway's 10 s pings never earn a
GOAWAY "too_many_pings". On SIGTERM/SIGINT Triton 2.51 at once answers health calls
"Server exiting" and new inferences NOT_FOUND, finishes the ones in flight (up to
`exit_timeout_s`), then closes: the gateway retries the refused ones elsewhere.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from contract import REPO_ROOT, defaults

from .triton_install import BACKENDS_DIR, TritonInstall, TritonServerError

# Behind the admin key: control, memory registration, and what reveals or changes internals.
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
# Pings accepted this often (ms), with or without calls; the gateway pings every 10 s.
MIN_PING_INTERVAL_MS = 5000
ADMIN_HEADER = defaults.ADMIN_HEADER
GRPC_ADMIN_METADATA = defaults.GRPC_ADMIN_METADATA   # the same key over gRPC
# Triton's `local` cache fails to initialise below about 1 KiB, and a cache smaller than one
# face answer (faces_encoded: ~130 KiB per image) caches nothing useful.
MIN_RESPONSE_CACHE_BYTES = 1 << 20
# 256 MiB: ~120,000 caption embeddings (2 KiB each) or ~2,000 faces_encoded answers (~130 KiB
# per image: 64 x 512 float32 embeddings); filled as answers come, evicted least recently
# used first. Small beside what a Triton holds (weights, the python backend's shared memory).
DEFAULT_RESPONSE_CACHE_BYTES = 256 << 20
RESPONSE_CACHE_ENV = "VISIONSERVE_RESPONSE_CACHE_BYTES"    # containers set it (compose, k8s values)


def trace_args(otlp: str, rate: int = 0, server_id: str | None = None) -> tuple[str, ...]:
    """Triton's OpenTelemetry trace mode (2.51: `--trace-config`), spans sent as OTLP/HTTP
    protobuf to `otlp` (a collector's base URL gets /v1/traces). A request carrying a W3C
    `traceparent` (the gateway's Triton calls, when it traces them) is always traced, as a
    child of that span; of the others every `rate`-th (0: none). Level TIMESTAMPS: Triton's
    default level OFF traces nothing."""
    if rate < 0:
        raise ValueError(f"the trace rate is a count of requests (0: only those with a "
                         f"traceparent), got {rate}")
    args = ("--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS",
            f"--trace-config=rate={rate}", "--trace-config=count=-1",
            f"--trace-config=opentelemetry,url={defaults.otlp_traces_url(otlp)}")
    if server_id:   # which replica a span came from
        args += (f"--trace-config=opentelemetry,resource=service.instance.id={server_id}",)
    return args


def response_cache_bytes(environ=os.environ) -> int:
    """The response cache size a container asks for ($VISIONSERVE_RESPONSE_CACHE_BYTES), else the default."""
    raw = environ.get(RESPONSE_CACHE_ENV, "").strip()
    if not raw:
        return DEFAULT_RESPONSE_CACHE_BYTES
    try:
        return int(raw)
    except ValueError:
        raise TritonServerError(f"{RESPONSE_CACHE_ENV}={raw!r}: expected a number of bytes (0 = off)") from None


def _die_with_parent() -> None:
    """Linux: SIGKILL tritonserver if the Python process that started it dies (a killed
    test run must not leave a server holding ports and gigabytes)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now that this process has not handed out before: the kernel may give the
    same ephemeral port to two calls in a row (one Triton was once given it for HTTP and
    gRPC, and refused to start)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise OSError("no free port that was not handed out already in 100 tries")


def port_taken(host: str, port: int) -> bool:
    """Can nobody bind host:port? (The probe binds it the way tritonserver will: a
    server listening there, on this address or on 0.0.0.0, makes it fail.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _reap_group(pgid: int) -> None:
    """SIGKILL whatever is left of process group `pgid` (python-backend stubs outlive a
    tritonserver that failed at model load) and unlink the python backend's /dev/shm
    regions those processes had mapped. Only this server's group is touched."""
    regions = _mapped_shm_files(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for path in regions:
        Path(path).unlink(missing_ok=True)


def _mapped_shm_files(pgid: int) -> set[str]:
    """/dev/shm files of Triton's python backend mapped by any process of group `pgid`."""
    found: set[str] = set()
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc_dir.name)) != pgid:
                continue
            for line in (proc_dir / "maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith("/dev/shm/triton_python_backend_shm_region_"):
                    found.add(path.removesuffix(" (deleted)"))
        except (OSError, ValueError):   # the process ended meanwhile, or is not ours to read
            continue
    return found


class TritonServer:
    """One tritonserver subprocess serving `repository`; a context manager that stops it."""

    def __init__(self, repository: Path, http_port: int = defaults.TRITON_HTTP_PORT,
                 grpc_port: int = defaults.TRITON_GRPC_PORT, metrics_port: int = defaults.TRITON_METRICS_PORT,
                 log_path: Path | None = None, host: str = defaults.HOST,
                 admin_key: str | None = None, backends_dir: Path = BACKENDS_DIR,
                 extra_args: tuple[str, ...] = (), log_verbose: int = 0,
                 max_connection_age_s: float = 60.0, max_connection_age_grace_s: float = 30.0,
                 exit_timeout_s: int = 30, trace_otlp: str | None = None, trace_rate: int = 0,
                 response_cache_bytes: int = 0):
        self.repository = Path(repository).resolve()
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        # "-" streams Triton's log to our stdout (containers: `kubectl logs`); else a file,
        # one per instance so a second server never truncates a running one's log.
        self.log_to_stdout = str(log_path) == "-"
        self.log_path = (Path(log_path) if log_path and not self.log_to_stdout
                         else REPO_ROOT / "build" / "logs" / f"triton-{host}-{grpc_port}.log")
        self.max_connection_age_s = max_connection_age_s
        self.max_connection_age_grace_s = max_connection_age_grace_s
        self.exit_timeout_s = exit_timeout_s
        # Triton's response cache (its `local` implementation, in this process's memory, LRU):
        # 0 = none. Used by the models whose config enables it (contract/cache.py).
        if response_cache_bytes < 0:
            raise TritonServerError(f"response cache size {response_cache_bytes}: must be 0 (off) or positive")
        if response_cache_bytes and response_cache_bytes < MIN_RESPONSE_CACHE_BYTES:
            raise TritonServerError(f"a response cache of {response_cache_bytes} bytes is too small: 0 turns it "
                                    f"off, else at least {MIN_RESPONSE_CACHE_BYTES} (1 MiB)")
        self.response_cache_bytes = int(response_cache_bytes)
        # what this server answers as its name (server metadata): readiness is ours
        self.server_id = f"visionserve-{host}-{grpc_port}-{secrets.token_hex(4)}"
        self.trace_args = trace_args(trace_otlp, trace_rate, self.server_id) if trace_otlp else ()
        # A fresh random key unless given: nobody can reach the restricted APIs by accident.
        self.admin_key = admin_key or os.environ.get("VISIONSERVE_TRITON_ADMIN_KEY") or secrets.token_hex(16)
        self.backends_dir = Path(backends_dir)
        self.extra_args = tuple(extra_args)
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self._log_file = None

    # -- addresses -----------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_key}

    # -- lifecycle -----------------------------------------------------------------
    def command(self, install: TritonInstall) -> list[str]:
        restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends_dir}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            f"--id={self.server_id}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-max-connection-age={int(self.max_connection_age_s * 1000)}",
            f"--grpc-max-connection-age-grace={int(self.max_connection_age_grace_s * 1000)}",
            "--grpc-keepalive-permit-without-calls=1",
            f"--grpc-http2-min-recv-ping-interval-without-data={MIN_PING_INTERVAL_MS}",
            f"--log-verbose={self.log_verbose}",
            *self.trace_args,
            *self.cache_args(install),
            *self.extra_args,
        ]

    def cache_args(self, install: TritonInstall) -> list[str]:
        """The response cache's flags; its library from the install's caches folder (the
        wheel's; Triton's default /opt/tritonserver/caches when the install names none)."""
        if not self.response_cache_bytes:
            return []
        where = [f"--cache-directory={install.caches}"] if install.caches else []
        return [*where, f"--cache-config=local,size={self.response_cache_bytes}"]

    def start(self, timeout_s: float = 300.0, progress=None) -> "TritonServer":
        """Start and wait until the server and all its models are ready."""
        self.launch()
        try:
            self.wait_ready(timeout_s, progress)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> "TritonServer":
        """Start the process without waiting (several servers: launch all, then
        `wait_ready` each). Call it from a thread that lives as long as the server:
        Linux's parent-death signal fires when the THREAD that forked it ends."""
        if self.process is not None:
            raise TritonServerError("already started")
        if not self.repository.is_dir():
            raise TritonServerError(f"model repository {self.repository} does not exist")
        install = TritonInstall.locate()
        taken = [f"{name} {self.host}:{port}" for name, port in (
            ("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port))
            if port_taken(self.host, port)]
        if taken:
            raise TritonServerError(
                "port already in use: " + ", ".join(taken) + " (another server is running "
                "there; stop it or choose other ports)")
        install.backend_dir(self.backends_dir)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
        # The python-backend stub runs `python` from PATH: it must be this venv's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # python-backend models import pipelines.* and contract; make the project importable.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        if not self.log_to_stdout:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "wb")
        # Own session: a terminal's Ctrl-C reaches us, and we stop Triton in order.
        self.process = subprocess.Popen(self.command(install), stdout=self._log_file,  # None: inherit
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, timeout_s: float, progress=None) -> None:
        """Until this server (its --id, not whoever answers on the port) and all its
        models are ready; TritonServerError if it exits or the time is up."""
        deadline = time.monotonic() + timeout_s
        last_report = time.monotonic()
        while True:
            code = self.process.poll() if self.process else None
            if code is not None:
                raise TritonServerError(f"tritonserver exited with code {code} while starting; "
                                        f"last log lines:\n{self.log_tail()}")
            if self._get(f"http://{self.http_url}/v2/health/ready") == 200:
                name = self.server_name()
                if name == self.server_id:
                    return
                raise TritonServerError(
                    f"another server answers on {self.http_url} (its name is {name!r}, "
                    f"ours {self.server_id!r})")
            now = time.monotonic()
            if now > deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {timeout_s:.0f}s; models not ready: "
                    f"{', '.join(self.loading_models()) or '?'}; log {self.log_path}:\n{self.log_tail()}")
            if progress and now - last_report > 10:
                last_report = now
                loading = self.loading_models()
                if loading:
                    progress(f"waiting for Triton: still loading {', '.join(loading)}")
            time.sleep(0.5)

    def loading_models(self) -> list[str]:
        """Names of models in the repository that are not READY (needs the admin key)."""
        try:
            req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}",
                                         headers=self.admin_headers, method="POST")
            with urllib.request.urlopen(req, timeout=2) as resp:
                index = json.loads(resp.read())
        except (OSError, ValueError):
            return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))
        return sorted(m["name"] for m in index if m.get("state") != "READY")

    def server_name(self) -> str | None:
        """The `name` of the server answering on our HTTP port (Triton's `--id`)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=2) as resp:
                return json.loads(resp.read()).get("name")
        except (OSError, ValueError):
            return None

    def is_ready(self) -> bool:
        return self.process is not None and self.process.poll() is None and \
            self._get(f"http://{self.http_url}/v2/health/ready") == 200

    def kill(self) -> int | None:
        """SIGKILL the whole server (a crash, for fault tests), then remove the python
        backend's shared-memory files its processes had mapped: a killed server cannot
        unlink them and they would pile up in /dev/shm. Only files mapped by THIS
        server's processes are touched, so other servers on the machine are safe."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return self.stop()
        regions = _mapped_shm_files(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        code = self.stop(5)
        for path in regions:
            Path(path).unlink(missing_ok=True)
        return code

    def terminate(self) -> None:
        """SIGTERM (what Kubernetes sends): Triton drains and exits; `stop()` waits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGINT (Triton drains in-flight work and unloads), SIGKILL after `timeout_s`
        (default: Triton's exit timeout + 10 s); then whatever is left of its process
        group (stubs of a server that failed to start) is killed and its regions removed."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(self.exit_timeout_s + 10 if timeout_s is None else timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            code = proc.returncode
            _reap_group(proc.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def log_tail(self, lines: int = 30) -> str:
        if self.log_to_stdout:
            return "(Triton's log went to standard output, above)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @staticmethod
    def _get(url: str) -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
