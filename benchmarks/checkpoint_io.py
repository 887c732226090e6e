"""Checkpoint save/load throughput and peak memory, against the plain-copy floor.

For each size (1 MB, 100 MB, 1 GB by default) and back end (``file://`` and ``s3://`` on a moto
server over real HTTP) this measures ``CheckpointStore.save`` and ``load`` of a one-file
checkpoint, and the floor: the same bytes moved by ``shutil.copy`` (file) or by one boto3
``upload_file`` / ``download_file`` with boto3's default transfer settings (S3). pbt's extra
work over the floor is the SHA-256 of every part on both sides, the manifest round trip, the
atomic publish (temp file + fsync + rename on disk) and, on load, staging and verification.

Every operation runs in a fresh child process, so its peak resident memory is its own: the
child resets the kernel's high-water mark (``/proc/self/clear_refs``) just before the operation
and reads ``VmHWM`` after it; ``peak_rss_MB`` is that peak, ``peak_rss_over_baseline_MB`` the
part added by the operation (imports and clients excluded). Streaming means it stays far below
the checkpoint size. The moto server runs in this parent process, so its memory (moto keeps
uploads in its own buffers) is not counted. Files come from the page cache on both sides of each
comparison. Prints one JSON object.

    python benchmarks/checkpoint_io.py --quick          # 1 MB and 100 MB
    python benchmarks/checkpoint_io.py --sizes 1GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SIZES = {"1MB": 10**6, "100MB": 10**8, "1GB": 10**9}
NAME = "bench/trials/t0000/step-000001"


# --- the child: one operation, timed, with its own peak RSS --------------------------------------


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


class _PeakRss:
    """Peak RSS of this process while the block runs, in bytes.

    Resets the kernel's high-water mark where Linux allows it (exact); otherwise samples RSS
    every millisecond in a thread (may miss a spike shorter than that).
    """

    def __enter__(self) -> _PeakRss:
        self.baseline = _status_kib("VmRSS") * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
            self._stop = threading.Event()
            self._sampled = self.baseline
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _status_kib("VmRSS") * 1024)

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._sampled


def _child(job: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from pbt.storage import open_object_store
    from pbt.storage.checkpoints import CheckpointStore, sha256_file

    op, src, out = job["op"], Path(job["src"]), Path(job["out"])
    run: Any
    if op in ("save", "load"):
        store = CheckpointStore(open_object_store(job["uri"]))
        store.exists(NAME)  # build the client (and its connection) before the clock starts
        run = (lambda: store.save(NAME, src.parent)) if op == "save" else (lambda: store.load(NAME, out))
    elif job["backend"] == "file":
        dest = Path(job["floor_path"])
        run = (lambda: shutil.copy(src, dest)) if op == "floor_save" else (lambda: shutil.copy(dest, out))
    else:
        client = boto3.client("s3", endpoint_url=job["endpoint"])
        client.list_buckets()
        bucket, key, config = job["bucket"], f"floor/{src.name}", TransferConfig()
        if op == "floor_save":
            run = lambda: client.upload_file(str(src), bucket, key, Config=config)  # noqa: E731
        else:
            run = lambda: client.download_file(bucket, key, str(out), Config=config)  # noqa: E731
    with _PeakRss() as rss:
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "peak_rss": rss.peak, "baseline_rss": rss.baseline, "exact_peak": rss.exact}
    if op == "floor_save" and job["backend"] == "file":
        # What durability adds to the floor: pbt's local store fsyncs before it publishes.
        t0 = time.perf_counter()
        with open(job["floor_path"], "rb+") as f:
            os.fsync(f.fileno())
        result["fsync_seconds"] = time.perf_counter() - t0
    if op in ("load", "floor_load"):  # check the bytes arrived, outside the timing
        got = out / src.name if op == "load" else out
        result["verified"] = sha256_file(got) == job["sha256"]
    return result


# --- the parent: data, server, one child per measurement ----------------------------------------


def _write_source(path: Path, size: int) -> str:
    """Incompressible bytes, written (and hashed) a megabyte at a time."""
    import hashlib

    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _run_child(job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    os.sync()  # every operation starts with no dirty pages queued by the one before it
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{job['op']} on {job['backend']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _start_moto() -> tuple[Any, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _mb(n: float) -> float:
    return round(n / 1e6, 1)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def measure(
    size_label: str, backend: str, work: Path, env: dict[str, str], endpoint: str | None, repeat: int
) -> dict:
    size = SIZES[size_label]
    root = work / f"{backend}-{size_label}"
    src = root / "checkpoint" / "weights.bin"
    sha = _write_source(src, size)
    base = {"backend": backend, "src": str(src), "sha256": sha, "endpoint": endpoint}
    if backend == "file":
        base["uri"] = (root / "store").as_uri()
        base["floor_path"] = str(root / "floor-copy.bin")
    else:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        base |= {"uri": f"s3://{bucket}/pbt", "bucket": bucket}
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(repeat):
        for op in ("save", "load", "floor_save", "floor_load"):
            out = root / f"out-{op}-{i}"
            if op == "load":
                out.mkdir()
            runs.setdefault(op, []).append(_run_child({**base, "op": op, "out": str(out)}, env))
            if op in ("load", "floor_load"):
                if not runs[op][-1]["verified"]:
                    raise RuntimeError(f"{op} on {backend} returned different bytes")
                if out.is_dir():
                    shutil.rmtree(out)
                else:
                    out.unlink()
    shutil.rmtree(root, ignore_errors=True)
    # Median time, worst memory: one slow run (writeback, a GC pause) should not set the
    # throughput, and one spike is exactly what a memory bound has to cover.
    results = {
        op: {
            "seconds": _median([r["seconds"] for r in rs]),
            "peak_rss": max(r["peak_rss"] for r in rs),
            "baseline_rss": min(r["baseline_rss"] for r in rs),
            "exact_peak": all(r["exact_peak"] for r in rs),
            "fsync_seconds": _median([r.get("fsync_seconds", 0.0) for r in rs]),
        }
        for op, rs in runs.items()
    }

    save, load = results["save"]["seconds"], results["load"]["seconds"]
    floor_save, floor_load = results["floor_save"]["seconds"], results["floor_load"]["seconds"]
    peak = max(results["save"]["peak_rss"], results["load"]["peak_rss"])
    over = max(r["peak_rss"] - r["baseline_rss"] for r in (results["save"], results["load"]))
    floor_over = max(r["peak_rss"] - r["baseline_rss"] for r in (results["floor_save"], results["floor_load"]))
    extra = {"floor_fsync_s": round(results["floor_save"]["fsync_seconds"], 4)} if backend == "file" else {}
    return {
        "size_bytes": size,
        "repeats": repeat,
        "save_s": round(save, 4),
        "load_s": round(load, 4),
        "save_MBps": round(size / 1e6 / save, 1),
        "load_MBps": round(size / 1e6 / load, 1),
        "floor_save_s": round(floor_save, 4),
        "floor_load_s": round(floor_load, 4),
        "ratio_to_floor": round((save + load) / (floor_save + floor_load), 2),
        "save_ratio_to_floor": round(save / floor_save, 2),
        "load_ratio_to_floor": round(load / floor_load, 2),
        "peak_rss_MB": _mb(peak),
        "peak_rss_over_baseline_MB": _mb(over),
        "save_peak_rss_MB": _mb(results["save"]["peak_rss"]),
        "load_peak_rss_MB": _mb(results["load"]["peak_rss"]),
        "floor_peak_rss_over_baseline_MB": _mb(floor_over),
        "exact_peak": all(r["exact_peak"] for r in results.values()),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated from 1MB,100MB,1GB")
    parser.add_argument("--quick", action="store_true", help="1MB and 100MB only")
    parser.add_argument("--backends", default="file,s3", help="comma-separated from file,s3")
    parser.add_argument("--repeat", type=int, default=3, help="runs per operation (median time, max memory)")
    parser.add_argument("--s3-part-mib", type=int, default=None,
                        help="pbt's S3 multipart threshold and part size (default: pbt's own default)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    sizes = ["1MB", "100MB"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [s for s in sizes if s not in SIZES] + [b for b in backends if b not in ("file", "s3")]
    if unknown:
        parser.error(f"unknown size or back end: {', '.join(unknown)}")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PBT_S3_"))}
    env |= {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    server, endpoint = _start_moto() if "s3" in backends else (None, None)
    if endpoint:
        env["PBT_S3_ENDPOINT_URL"] = endpoint
    if args.s3_part_mib:
        env["PBT_S3_MULTIPART_THRESHOLD"] = env["PBT_S3_MULTIPART_CHUNKSIZE"] = f"{args.s3_part_mib}MiB"
    from pbt.storage.s3 import S3Settings

    defaults = S3Settings.from_env(env)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pbt-ckpt-bench-"))
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "checkpoint_io",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "s3_server": "moto ThreadedMotoServer over HTTP on 127.0.0.1 (in the parent process)",
        "pbt_s3_transfer": {
            "multipart_threshold_MiB": defaults.multipart_threshold >> 20,
            "multipart_chunksize_MiB": defaults.multipart_chunksize >> 20,
            "max_concurrency": defaults.max_concurrency,
        },
        "floor": {"file": "shutil.copy", "s3": "boto3 upload_file/download_file, default TransferConfig"},
        "results": {},
    }
    try:
        for size in sizes:
            for backend in backends:
                row = measure(size, backend, work, env, endpoint, args.repeat)
                report["results"].setdefault(size, {})[backend] = row
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()
    report["total_s"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
