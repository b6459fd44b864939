"""The benchmark's processes: install the tools, start nginx, the streaming stand-in and the gateway, stop them.

Every child runs in its own session (process group), so Ctrl-C reaches only this script, which then stops each
child in order; and a child that ignores SIGTERM is killed with its whole group (nginx's worker included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx"}

# The fixed answer of the non-streaming stand-in. It goes inside a single-quoted nginx string: no ' and no $.
COMPLETION_BODY = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
)

T = TypeVar("T")


class BenchError(Exception):
    """A failure that ends the run with a message rather than a traceback."""


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def ensure_tools(names: Sequence[str]) -> dict[str, str]:
    """The path of each tool, installed with apt-get first when missing (retrying after `apt-get update`)."""
    missing = [name for name in names if find_tool(name) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise BenchError(f"missing {', '.join(missing)} and apt-get is not available: install them by hand")
        packages = [APT_PACKAGES[name] for name in missing]
        install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {', '.join(packages)}: {' '.join(install)}", flush=True)
        if subprocess.run(install, env=env, check=False).returncode != 0:
            print("apt-get install failed; running apt-get update and trying again", flush=True)
            try:
                subprocess.run(["apt-get", "update"], env=env, check=True)
                subprocess.run(install, env=env, check=True)
            except subprocess.CalledProcessError as exc:
                hint = "" if os.geteuid() == 0 else " (apt-get needs root)"
                raise BenchError(f"`{' '.join(exc.cmd)}` failed with code {exc.returncode}{hint}") from None
    paths = {name: find_tool(name) for name in names}
    if not all(paths.values()):
        raise BenchError(f"still missing after apt-get: {[n for n, p in paths.items() if p is None]}")
    return {name: path for name, path in paths.items() if path is not None}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One child process listening on 127.0.0.1:`port`, its output in `log`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.process.returncode}; its log ends:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole group if it has not exited within `grace` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"{self.name} ignored SIGTERM for {grace:g}s; killing it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    port: int,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready: str | None = None,
) -> Iterator[Service]:
    """A started child, yielded once it is ready and stopped on the way out, whatever happened meanwhile.
    It runs in `workdir`, its output going to `<workdir>/<name>.log`."""
    log = workdir / f"{name.replace(' ', '-')}.log"
    # A file, not a pipe: nobody drains a pipe during the run, and a full one would stall the child's logging.
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env), cwd=workdir, start_new_session=True,
        )  # fmt: skip
    service = Service(name, port, process, log)
    try:
        wait_until(service, ready)
        yield service
    finally:
        service.stop()


def wait_until(service: Service, ready: str | None, timeout: float = 30.0) -> None:
    """Until `GET ready` answers 200 (or, with `ready=None`, the port accepts connections)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            if ready is None:
                socket.create_connection(("127.0.0.1", service.port), timeout=1.0).close()
                return
            with urllib.request.urlopen(service.url + ready, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise BenchError(f"{service.name} was not ready within {timeout:g}s; its log ends:\n{service.tail()}")


@contextlib.contextmanager
def nginx_upstream(nginx: str, workdir: Path) -> Iterator[Service]:
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    # As root the worker would switch to `nobody`, which cannot enter our private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    template = string.Template((BENCH_DIR / "nginx.conf.template").read_text())
    conf = prefix / "nginx.conf"
    conf.write_text(template.substitute(prefix=prefix, port=port, body=COMPLETION_BODY, user=user))
    argv = [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
    with running("nginx", argv, port, workdir) as service:
        yield service


@contextlib.contextmanager
def stream_upstream(
    workdir: Path, chunks: int, interval_ms: float, usage: tuple[int, int] | None = None
) -> Iterator[Service]:
    """The streaming stand-in; with `usage` (prompt, completion tokens) it reports that usage when asked to."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "upstream_stream.py"), "--port", str(port),
            "--chunks", str(chunks), "--interval-ms", str(interval_ms)]  # fmt: skip
    if usage is not None:
        argv += ["--usage-prompt-tokens", str(usage[0]), "--usage-completion-tokens", str(usage[1])]
    with running("stream upstream", argv, port, workdir) as service:
        yield service


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Service]:
    """A throwaway redis-server: no snapshots, no append-only file, its directory in `workdir`."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH (apt-get install redis-server)")
    data = workdir / "redis"
    data.mkdir()
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)]
    with running("redis", argv, port, workdir) as service:
        yield service


def agent_config(nginx_port: int, stream_port: int) -> str:
    return f"""version: "1.0"
agents:
  - name: bench
    llm: {{provider: openai-compatible, model: bench-model, base_url: "http://127.0.0.1:{nginx_port}/v1", api_key_env: BENCH_UPSTREAM_KEY}}
  - name: bench-stream
    llm: {{provider: openai-compatible, model: bench-model, base_url: "http://127.0.0.1:{stream_port}/v1", api_key_env: BENCH_UPSTREAM_KEY}}
"""  # noqa: E501


# The admin key of the benchmark's throwaway gateway; with it set, every request is checked against a virtual key.
BENCH_ADMIN_KEY = "bench-admin-key"


def gateway_env(keys: bool, settings: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without GATEWAY_* settings, so the gateway runs on its defaults (access log on,
    JSON logs at info) except for the bench's own `settings`: a benchmark that quietly turned the access log off
    would flatter the gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    dropped = sorted(set(os.environ) - set(env))
    if dropped:
        print(f"ignoring {', '.join(dropped)} from the environment: the gateway runs on its defaults", flush=True)
    extra = {"GATEWAY_ADMIN_KEY": BENCH_ADMIN_KEY} if keys else {}
    return {**env, **extra, **settings, "BENCH_UPSTREAM_KEY": "x"}


@contextlib.contextmanager
def gateway(
    workdir: Path, nginx_port: int, stream_port: int, keys: bool, settings: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """`gateway serve` exactly as a user runs it, from a scratch working directory (so no stray `.env` applies
    and nothing it writes lands in the repository). `settings` are environment variables on top of the defaults,
    such as GATEWAY_WORKERS."""
    config = workdir / "config"
    config.mkdir()
    (config / "bench.yaml").write_text(agent_config(nginx_port, stream_port))
    port = free_port()
    argv = [*gateway_command(), "serve", "--config", str(config), "--port", str(port)]
    with running("gateway", argv, port, workdir, env=gateway_env(keys, settings or {}), ready="/readyz") as service:
        yield service


def gateway_command() -> list[str]:
    """How the gateway is started: `BENCH_GATEWAY` (a command line, e.g. `python -m gateway` with PYTHONPATH at
    another checkout, to measure it side by side), else this virtualenv's `gateway` script."""
    given = os.environ.get("BENCH_GATEWAY", "").strip()
    if given:
        return shlex.split(given)
    command = Path(sys.executable).parent / "gateway"
    if not command.exists():
        raise BenchError(f"{command} not found: run `pip install -e '.[dev]'` in this virtualenv first")
    return [str(command)]


def create_virtual_key(gateway: Service, limits: Mapping[str, int] | None = None) -> str:
    """A virtual key made through the admin API, as an operator would, for the load to authenticate with."""
    body = {"name": "bench"} if limits is None else {"name": "bench", "limits": dict(limits)}
    request = urllib.request.Request(
        gateway.url + "/admin/keys",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {BENCH_ADMIN_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["secret"])


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name, which may hold spaces: [0] is field 3 (state)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_ms(pid: int) -> float:
    """User plus system CPU time of the process, all its threads included, in milliseconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def tree_pids(pid: int) -> list[int]:
    """`pid` and every live descendant (gunicorn's arbiter and its workers, say), found by walking /proc for
    parent pids: this kernel has no /proc/<pid>/task/<tid>/children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat(entry)[1]), []).append(int(entry))
    found = [pid]
    for parent in found:  # grows while it is walked: breadth first
        found += children.get(parent, [])
    return found


def tree_cpu_ms(pid: int) -> float:
    """CPU time of `pid` and its live descendants. Exact while none exits during a measurement: a child's time
    moves to its parent's cutime only when reaped, and a worker that gunicorn replaced would be missing."""
    total = 0.0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_ms(member)
    return total


def tree_run_ms(pid: int) -> float:
    """Like `tree_cpu_ms`, from the scheduler's nanosecond count of every thread (/proc/<pid>/task/*/schedstat)
    rather than utime + stime, which are sampled at the timer tick: over a few seconds of light load that sampling
    alone is off by several percent, as much as the small differences some phases look for."""
    total = 0
    for member in tree_pids(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{member}/task"):
                with open(f"/proc/{member}/task/{task}/schedstat") as schedstat:
                    total += int(schedstat.read().split()[0])
    return total / 1e6


def group_cpu_ms(pgid: int) -> float:
    """CPU time of every live process in a process group: nginx's master and worker together, say."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat(entry)
                if int(fields[2]) == pgid:
                    total += (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS
    return total


def machine_busy_ms() -> float:
    """CPU time all cores have spent busy since boot, in ms (from the `cpu` line of /proc/stat; steal included,
    since time the hypervisor gave to another guest was taken from us all the same)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) * 1000 / CLOCK_TICKS


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, such as VmHWM (peak resident set) or VmRSS."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def run_main(name: str, parse_args: Callable[[], T], bench: Callable[[T], int]) -> int:
    """A bench's `main`: SIGTERM leaves the way Ctrl-C does, through every `finally` that stops a child, and
    errors become one line and an exit code."""
    options = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return bench(options)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
