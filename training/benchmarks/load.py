"""HTTP load generation with wrk (Debian's `wrk`): maximum throughput and latency at a fixed rate.

wrk is a real, separate load generator written in C, so the Python service is measured, not the client.
Requests rotate over a list: paths (GET) or whole requests (a method, a path and a JSON body, e.g. the
``POST /events`` of a replayed session), formatted once when wrk starts. A fixed rate is held by a
schedule, not a fixed pause: wrk asks the script's ``delay()`` before every request, and the script
answers with the time left until the next slot of ``start + n / rate`` (monotonic clock through LuaJIT's
FFI), so the rate does not sag as the server's latency grows (a fixed pause per connection would give
``connections / (pause + latency)``). When every connection is busy at a slot, that request goes out
late and the achieved rate shows it. Percentiles (p50/p95/p99) come from wrk's own histogram and run
from the moment a request is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

_SCRIPT = r"""
local api_key = %(api_key)s
local reqs = {}
-- one request a line: a path (GET), or METHOD <tab> path <tab> JSON body
for line in io.lines(%(paths)s) do
  local method, path, body = line:match("^(%%u+)\t([^\t]+)\t(.*)$")
  if method == nil then
    reqs[#reqs + 1] = wrk.format("GET", line, {["X-API-Key"] = api_key})
  else
    local headers = {["X-API-Key"] = api_key, ["Content-Type"] = "application/json"}
    reqs[#reqs + 1] = wrk.format(method, path, headers, body)
  end
end
local interval_ms = %(interval_ms)f
local i = 0
request = function()
  i = i + 1
  return reqs[(i %% #reqs) + 1]
end
if interval_ms > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } learnrec_timespec;
    int clock_gettime(int clk_id, learnrec_timespec *tp);
  ]]
  local ts = ffi.new("learnrec_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local slot = nil  -- when the next request of this thread is due
  delay = function()
    local now = now_ms()
    if slot == nil then slot = now end
    local wait = slot - now
    slot = slot + interval_ms
    if wait < 0 then wait = 0 end
    return wait
  end
end
done = function(summary, latency, requests)
  local out = io.open(%(out)s, "w")
  out:write(string.format(
    '{"requests": %%d, "duration_s": %%f, "errors_status": %%d, "errors_connect": %%d, ' ..
    '"errors_read": %%d, "errors_write": %%d, "errors_timeout": %%d, ' ..
    '"p50_ms": %%f, "p95_ms": %%f, "p99_ms": %%f, "max_ms": %%f, "mean_ms": %%f}',
    summary.requests, summary.duration / 1e6, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
  out:close()
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    label: str
    requests: int
    duration_s: float
    rps: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    target_rps: float | None
    mean_ms: float = 0.0
    connections: int = 0
    threads: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


#: What the serve suite needs from the system, and how to get it.
WRK_NEEDED = (
    "wrk, the serve suite's load generator, from the system "
    "(Debian/Ubuntu: `apt-get install wrk`; on a separated network, from its package mirror)"
)


def ensure_wrk() -> str:
    """Path of `wrk` (never installed from here: the bench makes no outbound connection).

    Raises:
        RuntimeError: wrk is not installed (the message says how to get it).
    """
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError(f"wrk is not on PATH: the bench needs {WRK_NEEDED}")
    return found


def run_wrk(
    base_url: str,
    paths: list[str],
    *,
    label: str,
    api_key: str = "",
    seconds: int = 15,
    connections: int = 16,
    threads: int = 1,
    rate: float | None = None,
) -> LoadResult:
    """Drive `base_url` with wrk for `seconds`, rotating over `paths`.

    Args:
        base_url: e.g. http://127.0.0.1:8000
        paths: request paths with query strings (GET), or ``METHOD\tpath\tbody`` lines, used
            round-robin.
        label: name of this run in the results.
        api_key: sent as X-API-Key.
        seconds: run length.
        connections: open connections (closed loop).
        threads: wrk threads (1 leaves the other core to the server).
        rate: total requests per second to hold (split evenly over the threads); None = as fast as
            possible.

    Returns:
        The measured throughput, errors and latency percentiles.

    Raises:
        RuntimeError: wrk is missing or failed (its message is quoted).
        ValueError: `rate` is not positive.
    """
    wrk = ensure_wrk()
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    interval_ms = 1000.0 * threads / rate if rate else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        paths_file = Path(tmp) / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n", encoding="utf-8")
        out = Path(tmp) / "out.json"
        script = Path(tmp) / "bench.lua"
        script.write_text(
            # JSON string literals are valid Lua string literals for these ASCII values
            _SCRIPT
            % {
                "paths": json.dumps(str(paths_file)),
                "api_key": json.dumps(api_key),
                "interval_ms": interval_ms,
                "out": json.dumps(str(out)),
            },
            encoding="utf-8",
        )
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "2s",
            "-s",
            str(script),
        ]
        done = subprocess.run([*argv, base_url], check=False, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = " ".join((done.stderr or done.stdout).split())[-300:]
            raise RuntimeError(f"wrk failed against {base_url} (exit {done.returncode}): {tail}")
        raw = json.loads(out.read_text(encoding="utf-8"))
    errors = sum(int(raw[k]) for k in raw if k.startswith("errors_"))
    return LoadResult(
        label=label,
        requests=int(raw["requests"]),
        duration_s=float(raw["duration_s"]),
        rps=raw["requests"] / raw["duration_s"] if raw["duration_s"] else 0.0,
        errors=errors,
        p50_ms=float(raw["p50_ms"]),
        p95_ms=float(raw["p95_ms"]),
        p99_ms=float(raw["p99_ms"]),
        max_ms=float(raw["max_ms"]),
        target_rps=rate,
        mean_ms=float(raw["mean_ms"]),
        connections=connections,
        threads=threads,
    )
