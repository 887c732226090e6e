"""Operating pbt: deployment files that validate, the status view, and ``pbt stop`` / ``pbt resume``.

Deployment files are checked with their own tools where this machine has them (``docker compose
config``, ``systemd-analyze verify``) and always for the fields that make them work: a GPU per
worker, time to checkpoint on SIGTERM, secrets only from the environment.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import toy_data, toy_spec
from rich.console import Console

from pbt.analysis.status import overview
from pbt.cli import live
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.testing import kill_group, pbt, pbt_background, status, wait_for, write_study
from pbt.trial import Timings, Trial, TrialStatus

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

# --- docker compose ------------------------------------------------------------------------------


def _compose_tool() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def _compose_env() -> dict[str, str]:
    """The environment without any of the compose file's variables: only the env file counts."""
    names = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    return {k: v for k, v in os.environ.items() if k not in names}


def test_compose_file_has_the_services_and_settings_pbt_needs():
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    assert {"redis", "minio", "minio-init", "flower", "controller", "worker"} <= set(services)
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--requirepass" in redis
    assert "mc mb" in services["minio-init"]["command"][0]
    assert services["minio-init"]["restart"] == "no"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "pbt.tasks", "flower"]
    assert services["controller"]["command"][:2] == ["pbt", "run"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["command"][0] == "pbt-claim-gpu"  # one GPU per replica under --scale worker=N
    assert "container_name" not in worker and "ports" not in worker  # both would break --scale
    assert worker["stop_signal"] == "SIGTERM" and worker["stop_grace_period"] == "15m"
    # Every secret is a required variable: no password has a default in the file.
    for secret in ("REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "FLOWER_PASSWORD", "MINIO_ROOT_USER"):
        assert re.search(r"\$\{" + secret + r":\?", text), secret
        assert not re.search(r"\$\{" + secret + r":-", text), secret
    example = (ROOT / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    defined = set(re.findall(r"^(\w+)=", example, re.M))
    assert required <= defined, f".env.example lacks {required - defined}"
    assert all("CHANGE-ME" in line for line in example.splitlines() if re.match(r"^\w*PASSWORD=", line))


def test_compose_config_validates_with_the_example_env_and_refuses_without_secrets(tmp_path):
    tool = _compose_tool()
    if tool is None:
        pytest.skip("no docker compose / docker-compose here; the structural test above still ran")
    env_file = tmp_path / "example.env"
    shutil.copy(ROOT / ".env.example", env_file)
    base = [*tool, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    ok = subprocess.run([*base, "--env-file", str(env_file), "config", "-q"], capture_output=True, text=True,
                        env=_compose_env(), timeout=60)
    assert ok.returncode == 0, ok.stderr
    empty = tmp_path / "empty.env"
    empty.write_text("")
    missing = subprocess.run([*base, "--env-file", str(empty), "config", "-q"], capture_output=True, text=True,
                             env=_compose_env(), timeout=60)
    assert missing.returncode != 0 and "in .env" in missing.stderr + missing.stdout


@pytest.mark.skipif(not shutil.which("flock"), reason="flock (util-linux) not installed")
def test_gpu_claim_gives_each_replica_its_own_gpu(tmp_path):
    env = {**os.environ, "PBT_GPU_COUNT": "2", "PBT_GPU_LOCKS": str(tmp_path / "locks")}
    script = str(DEPLOY / "claim-gpu.sh")
    hold = [subprocess.Popen([script, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES; sleep 30"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
            for _ in range(2)]
    try:
        got = sorted(p.stdout.readline().strip() for p in hold)
        assert got == ["0", "1"]
        third = subprocess.run([script, "true"], env=env, capture_output=True, text=True, timeout=10)
        assert third.returncode == 1 and "all 2 GPUs are claimed" in third.stderr
        kill_group(hold[0])  # the replica's processes all exit (the lock is held while any lives)
        again = subprocess.run([script, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], env=env, capture_output=True,
                               text=True, timeout=10)
        assert again.returncode == 0 and again.stdout.strip() in got  # a dead replica's GPU is free again
    finally:
        for p in hold:
            kill_group(p)


# --- deploy/: image, Kubernetes, systemd ------------------------------------------------------------


def _k8s() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc.get("metadata", {}).get("name", path.name))] = doc
    return docs


def _env_is_not_secret(container: dict) -> None:
    for var in container.get("env", []):
        if re.search(r"PASSWORD|SECRET|BROKER_URL|BASIC_AUTH", var["name"]):
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], var


def test_kubernetes_manifests_parse_with_gpu_limits_spot_tolerations_and_graceful_stop():
    docs = _k8s()
    kustomization = docs[("Kustomization", "kustomization.yaml")]
    assert all((DEPLOY / "k8s" / r).exists() for r in kustomization["resources"])

    worker = docs[("Deployment", "pbt-worker")]["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][:2] == ["pbt", "worker"]
    keys = {t["key"] for t in worker["tolerations"]}
    assert {"cloud.google.com/gke-spot", "kubernetes.azure.com/scalesetpriority", "nvidia.com/gpu"} <= keys
    assert worker["terminationGracePeriodSeconds"] >= 600  # a trial's chunk + checkpoint save
    assert worker["securityContext"]["runAsNonRoot"] is True
    assert {"configMapRef": {"name": "pbt-config"}} in container["envFrom"]
    _env_is_not_secret(container)

    job = docs[("Job", "pbt-controller")]["spec"]["template"]["spec"]
    (controller,) = job["containers"]
    assert controller["args"][:2] == ["pbt", "run"] and job["restartPolicy"] == "OnFailure"
    assert "tolerations" not in job  # the controller stays off spot nodes
    _env_is_not_secret(controller)
    _env_is_not_secret(docs[("Deployment", "pbt-flower")]["spec"]["template"]["spec"]["containers"][0])
    assert not any(re.search(r"(?i)password|secret_access", k) for k in docs[("ConfigMap", "pbt-config")]["data"])


def test_worker_image_is_cuda_based_non_root_and_holds_no_secret():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:\S+-runtime-", text, re.M) and "FROM ${CUDA_BASE}" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert '"/src[wavenet,monitor,pb2]"' in text and "download.pytorch.org/whl/cu" in text
    env_block = " ".join(re.findall(r"^ENV[^\n]*(?:\\\n[^\n]*)*", text, re.M))
    assert not re.search(r"(?i)password|secret|token|BROKER_URL", env_block)
    assert "claim-gpu.sh" in text


def test_systemd_unit_stops_gracefully_and_verifies(tmp_path):
    unit = (DEPLOY / "systemd" / "pbt-worker@.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings["KillMode"] == "mixed" and settings["KillSignal"] == "SIGTERM"
    assert settings["TimeoutStopSec"] == "15min"
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in unit and settings["EnvironmentFile"] == "/etc/pbt/worker.env"
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not available; the unit's settings were checked above")
    # verify insists that ExecStart's binary exists: point it at this environment's pbt.
    exe = shutil.which("pbt") or str(Path(sys.executable).with_name("pbt"))
    (tmp_path / "pbt-worker@.service").write_text(unit.replace("/opt/pbt/bin/pbt", exe))
    (tmp_path / "pbt-worker@0.service").symlink_to("pbt-worker@.service")
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "pbt-worker@0.service")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pbt-worker" not in proc.stderr, proc.stderr  # unknown or bad settings are only warnings


# --- pbt status's live view -------------------------------------------------------------------------


def _trial(number: int, status: TrialStatus, *, worker: str | None = None, steps_done: int = 4,
           finished_at: float | None = None, objective: float | None = None) -> Trial:
    return Trial(id=f"t{number:06d}", study="toy", number=number, params={"h0": 0.5, "h1": 0.5}, member=number % 4,
                 steps=4, steps_done=steps_done, status=status, worker=worker, created_at=1000.0,
                 started_at=1000.0 + number, finished_at=finished_at, objective=objective, timings=Timings())


def test_overview_counts_workers_budget_and_eta_from_the_records():
    spec = toy_spec(budget={"total_steps": 200})
    trials = [_trial(i, TrialStatus.COMPLETED, worker=f"vm/embedded-{i % 3} (pid {i})", finished_at=1090.0 + i,
                     objective=0.1 * i) for i in range(10)]
    trials += [_trial(10, TrialStatus.RUNNING, worker="vm/embedded-0 (pid 99)", steps_done=2),
               _trial(11, TrialStatus.PENDING, steps_done=0)]
    ov = overview(spec, trials, state=None, control=None, now=1100.0, window=100.0)
    assert ov.state == "running" and ov.counts == {"completed": 10, "pending": 1, "running": 1}
    assert list(ov.busy) == ["vm/embedded-0"] and ov.busy["vm/embedded-0"].id == "t000010"
    assert ov.idle == ["vm/embedded-1", "vm/embedded-2"]  # the pid suffix does not make a new worker
    assert ov.steps_done == 42 and ov.best.id == "t000009"
    assert ov.steps_per_second == pytest.approx(40 / 100)  # 10 trials × 4 steps finished in the window
    assert ov.eta_seconds == pytest.approx((200 - 42) / 0.4)
    paused = overview(spec, trials[:10], state={"paused": True}, now=1100.0)
    assert paused.state == "paused" and paused.eta_seconds is None and not paused.busy
    pausing = overview(spec, trials, control={"paused": True}, now=1100.0)
    assert pausing.state == "pausing"


def test_watch_refreshes_until_the_study_finishes():
    spec = toy_spec(budget={"total_steps": 8})
    frames = [
        [_trial(0, TrialStatus.RUNNING, worker="w@a", steps_done=2)],
        [_trial(0, TrialStatus.COMPLETED, worker="w@a", finished_at=time.time(), objective=0.5),
         _trial(1, TrialStatus.RUNNING, worker="w@b", steps_done=1)],
        [_trial(0, TrialStatus.COMPLETED, worker="w@a", finished_at=time.time(), objective=0.5),
         _trial(1, TrialStatus.COMPLETED, worker="w@b", finished_at=time.time(), objective=0.7)],
    ]
    loads = []

    def load():
        trials = frames[min(len(loads), len(frames) - 1)]
        loads.append(trials)
        return overview(spec, trials, state={"finished": len(loads) >= len(frames)})

    buf = io.StringIO()
    last = live.watch(load, 0.01, Console(file=buf, force_terminal=True, width=120))
    assert last.state == "finished" and len(loads) == 3
    text = buf.getvalue()
    assert "busy" in text and "w@b" in text and "finished" in text and "0.7" in text


# --- pbt stop / pbt resume ----------------------------------------------------------------------------


def test_stop_pauses_after_in_flight_trials_and_resume_finishes_the_same_study(tmp_path):
    data = toy_data(budget={"total_steps": 192}, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.1}},
                    execution={"parallelism": 4, "checkpoint_every": 2})
    study = write_study(tmp_path / "s.yaml", data)
    reference = tmp_path / "reference"
    assert pbt("run", str(study), "--storage", str(reference), "-q").returncode == 0
    storage = tmp_path / "runs"
    log = tmp_path / "run.log"
    proc = pbt_background("run", str(study), "--storage", str(storage), log=log)
    store = StudyStore(open_object_store(str(storage)), "toy")
    try:
        wait_for(lambda: store.exists() and sum(t.usable for t in store.load_trials()) >= 8, 60,
                 what="some completed trials")
        def live_view():  # between two trials a worker may be idle for an instant: ask again
            view = pbt("status", "toy", "--storage", str(storage))
            assert view.returncode == 0, view.stderr
            busy = re.search(r"embedded-\d\s+busy\s+t\d{6}\s+\d+/4\s+h0=", view.stdout)
            return view.stdout if busy and "toy (pbt) — running" in view.stdout else None

        text = wait_for(live_view, 30, what="pbt status showing a busy worker")
        assert re.search(r"\d+ / 192 steps", text) and "ETA" in text and "best q" in text
        in_flight = {t.id for t in store.load_trials() if not t.status.terminal}
        stop = pbt("stop", "toy", "--storage", str(storage), "--wait", "--timeout", "60")
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(timeout=30) == 4  # paused: README "Exit status"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "paused; continue it with `pbt resume toy" in log.read_text()
    paused = status("toy", str(storage))
    assert paused["state"]["paused"] is True and paused["state"]["finished"] is False
    by_id = {t["id"]: t for t in paused["trials"]}
    assert all(t["status"] == "completed" for t in paused["trials"]), "in-flight work finished, nothing queued"
    assert in_flight <= set(by_id), "what was in flight at the stop was finished, not dropped"
    assert sum(t["steps_done"] for t in paused["trials"]) < 192

    resumed = pbt("resume", "toy", "--storage", str(storage), "-q")
    assert resumed.returncode == 0, resumed.stderr
    final = status("toy", str(storage))
    assert final["state"]["finished"] is True and final["state"]["paused"] is False
    ids = [t["id"] for t in final["trials"]]
    assert len(ids) == len(set(ids)) and [t["number"] for t in final["trials"]] == list(range(len(ids)))
    assert all(t["status"] == "completed" and t["attempts"] == 1 for t in final["trials"]), "each trial ran once"
    assert sum(t["steps_done"] for t in final["trials"]) == 192
    for t in paused["trials"]:  # nothing recorded before the pause was redone or changed
        assert next(f for f in final["trials"] if f["id"] == t["id"])["objective"] == t["objective"]
    # The pause changed nothing the policy decided: the same study as an uninterrupted run.
    ref = status("toy", str(reference))
    key = [(t["id"], t["params"], t["parent"], t["objective"]) for t in ref["trials"]]
    assert key == [(t["id"], t["params"], t["parent"], t["objective"]) for t in final["trials"]]


def test_stop_and_resume_fail_clearly(tmp_path):
    missing = pbt("stop", "nope", "--storage", str(tmp_path))
    assert missing.returncode == 1 and "no study 'nope'" in missing.stderr
    storage = tmp_path / "runs"
    spec_doc = toy_spec(storage=str(storage), broker="redis://:s3cret@redis.example:6379/0").public_dict()
    store = StudyStore(open_object_store(str(storage)), "toy")
    store.write_spec(spec_doc)  # a study that ran on Celery: its stored spec has no password
    env = {"PBT_BROKER_URL": ""}
    refused = pbt("resume", "toy", "--storage", str(storage), env=env)
    assert refused.returncode == 2 and "--broker" in refused.stderr and "s3cret" not in refused.stderr
    assert store.read_doc("control") is None  # refused before touching the study
