"""The Cloud TPU scripts in tpu/, run against a fake gcloud that records its arguments.

The fake keeps a little state (does the TPU / queued resource exist, in which state, how
many times was training launched) so the run-until-done loop can be driven through
create -> setup -> train -> PREEMPTED -> delete -> create -> ... -> summary.json.
No cloud, no network, no real sleeps (POLL_SECONDS=0).
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "train.sh", "logs.sh", "status.sh", "delete.sh", "run_until_done.sh"]
README = TPU / "README.md"

FAKE_GCLOUD = r'''#!__PYTHON__
"""Fake gcloud: appends its argv (shell-quoted, one line per call) to $FAKE_GCLOUD_DIR/calls.log
and keeps TPU / queued-resource state in $FAKE_GCLOUD_DIR/state.json."""
import json, os, pathlib, shlex, sys

d = pathlib.Path(os.environ["FAKE_GCLOUD_DIR"])
args = sys.argv[1:]
with open(d / "calls.log", "a") as f:
    f.write(shlex.join(["gcloud"] + args) + "\n")

sf = d / "state.json"
st = json.loads(sf.read_text()) if sf.exists() else {}
st.setdefault("tpu", None)          # None (missing) or a node state: READY, PREEMPTED, ...
st.setdefault("qr", None)           # None or a queued resource state
st.setdefault("qr_waits", 0)
st.setdefault("launches", 0)
st.setdefault("probes", 0)
st.setdefault("probes_since_launch", 0)
st.setdefault("creates", 0)
env = os.environ.get
preempt_at = [int(x) for x in env("FAKE_PREEMPT_AT_PROBES", "").split(",") if x]
done_after = int(env("FAKE_DONE_AFTER_LAUNCHES", "1"))
create_failures = int(env("FAKE_CREATE_FAILURES", "0"))
rc = 0

def save():
    sf.write_text(json.dumps(st))

def not_found(what):
    print(f"ERROR: (gcloud.compute.tpus) NOT_FOUND: Resource '{what}' was not found", file=sys.stderr)
    sys.exit(1)

def done():
    return st["launches"] >= done_after and st["probes_since_launch"] >= 1 and not env("FAKE_NEVER_DONE")

cmd = args[:4]
if cmd[:3] == ["compute", "tpus", "tpu-vm"] and cmd[3] == "create":
    st["creates"] += 1
    if st["creates"] <= create_failures:
        print("ERROR: (gcloud.compute.tpus.tpu-vm.create) no more capacity in the zone", file=sys.stderr)
        rc = 1
    else:
        st["tpu"] = "READY"
elif cmd[:3] == ["compute", "tpus", "queued-resources"] and cmd[3] == "create":
    st["creates"] += 1
    st["qr"] = "WAITING_FOR_RESOURCES"
    st["qr_waits"] = int(env("FAKE_QR_WAITS", "1"))
elif cmd[:3] == ["compute", "tpus", "tpu-vm"] and cmd[3] == "delete":
    st["tpu"] = None
elif cmd[:3] == ["compute", "tpus", "queued-resources"] and cmd[3] == "delete":
    st["qr"] = None
    st["tpu"] = None
elif cmd[:3] == ["compute", "tpus", "tpu-vm"] and cmd[3] == "describe":
    if env("FAKE_DESCRIBE_ERROR"):
        print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) There was a problem refreshing your credentials.",
              file=sys.stderr)
        sys.exit(1)
    if st["tpu"] is None:
        not_found(args[4])
    print(st["tpu"])
elif cmd[:3] == ["compute", "tpus", "queued-resources"] and cmd[3] == "describe":
    if st["qr"] is None:
        not_found(args[4])
    if st["qr"] == "WAITING_FOR_RESOURCES":
        if st["qr_waits"] <= 0:
            st["qr"] = "ACTIVE"
            st["tpu"] = "READY"
        st["qr_waits"] -= 1
    print(st["qr"])
elif args[:2] == ["storage", "ls"]:
    if done():
        print(args[2])
    else:
        print("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.", file=sys.stderr)
        rc = 1
elif args[:2] == ["storage", "cat"]:
    print(json.dumps({"eval": {"accuracy": 0.86}}))
elif cmd[:3] == ["compute", "tpus", "tpu-vm"] and cmd[3] == "ssh":
    command = args[args.index("--command") + 1]
    if "FLAXFT_RUNNING" in command:  # run_until_done's "is training running?" probe
        st["probes"] += 1
        st["probes_since_launch"] += 1
        stopped = env("FAKE_TRAINING_STOPS") or st["launches"] == 0
        print("FLAXFT_STOPPED" if stopped else "FLAXFT_RUNNING")
        if st["probes"] in preempt_at:
            if st["qr"] is not None:
                st["qr"] = "SUSPENDED"
            st["tpu"] = "PREEMPTED"
    elif "nohup" in command:
        st["launches"] += 1
        st["probes_since_launch"] = 0
        print("started flaxft.train on fake-host")
    elif "pip install" in command and env("FAKE_SETUP_FAILS"):
        print("ERROR: pip failed", file=sys.stderr)
        rc = 1
save()
sys.exit(rc)
'''


@pytest.fixture
def fake(tmp_path):
    """A fake gcloud on PATH; returns a helper to run the scripts and read its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("__PYTHON__", sys.executable))
    gcloud.chmod(0o755)
    python3 = bindir / "python3"  # LOCAL_PYTHON's default: this test's Python, whatever python3 is here
    python3.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python3.chmod(0o755)
    state = tmp_path / "gcloud_state"
    state.mkdir()
    return Fake(tmp_path, bindir, state)


class Fake:
    def __init__(self, tmp, bindir, state):
        self.tmp, self.bindir, self.state = tmp, bindir, state
        self.env_file = tmp / "settings.env"
        self.config = ROOT / "configs" / "glue" / "mrpc.yaml"
        if not self.config.exists():  # the package's configs are built alongside; keep these tests independent
            cfg = tmp / "configs" / "glue"
            cfg.mkdir(parents=True)
            (tmp / "configs" / "base.yaml").write_text("train:\n  seed: 0\n")
            (cfg / "mrpc.yaml").write_text("base: ../base.yaml\ndata:\n  task: mrpc\n")
            self.config = cfg / "mrpc.yaml"

    def settings(self, **kw):
        values = dict(
            TPU_NAME="flaxft-test",
            ZONE="us-central2-b",
            ACCELERATOR_TYPE="v4-8",
            RUNTIME_VERSION="tpu-ubuntu2204-base",
            FLAXFT_SOURCE="git+https://github.com/example/flaxft.git@main",
            CONFIG=str(self.config),
            OUTPUT_DIR="gs://bucket/run1",
            POLL_SECONDS="0",
        )
        values.update(kw)
        lines = [f"{k}={shlex.quote(str(v))}" for k, v in values.items() if v is not None]
        self.env_file.write_text("\n".join(lines) + "\n")
        return self.env_file

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD", "FLAXFT_TPU_ENV")}
        env["PATH"] = f"{self.bindir}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_GCLOUD_DIR"] = str(self.state)
        env["TMPDIR"] = str(self.tmp)
        env.update(extra)
        return env

    def run(self, script, *args, env_file=True, check=True, **extra_env):
        argv = [str(TPU / script)]
        if env_file:
            argv += ["--env", str(self.env_file)]
        argv += list(args)
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env(**extra_env), timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"{script} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def calls(self):
        log = self.state / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def argv_calls(self):
        return [shlex.split(c) for c in self.calls()]


def stage(fake):
    """Where copy_config stages the config files (TMPDIR is the test's tmp_path)."""
    return f"{fake.tmp}/flaxft-tpu-flaxft-test/configs"


def ssh_command(argv):
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
    return argv[argv.index("--command") + 1]


# --------------------------------------------------------------------------- shellcheck, help


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    files = [str(p.relative_to(ROOT)) for p in sorted(TPU.glob("*.sh"))]
    p = subprocess.run([shellcheck, "-x", *files], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_and_strict_mode(script):
    text = (TPU / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(TPU / script, os.X_OK)
    p = subprocess.run([str(TPU / script), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    assert p.stdout.startswith(f"Usage: tpu/{script}")
    assert "--dry-run" in p.stdout and "--tpu-name" in p.stdout


def test_settings_example_documents_every_setting():
    spec = (TPU / "common.sh").read_text()
    names = re.findall(r'^  "([A-Z_]+)\|', spec, flags=re.M)
    assert len(names) > 15
    example = (TPU / "settings.env.example").read_text()
    for name in names:
        assert re.search(rf"^{name}=", example, flags=re.M), f"{name} missing from settings.env.example"


# --------------------------------------------------------------------------- settings and errors


def test_missing_setting_is_one_clear_line(fake):
    fake.settings(TPU_NAME=None)
    p = fake.run("create.sh", check=False)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: TPU_NAME is not set; set TPU_NAME=... in ")
    assert "--tpu-name" in p.stderr
    assert fake.calls() == []


def test_empty_settings_file(fake):
    fake.env_file.write_text("# nothing yet\n")
    p = fake.run("delete.sh", check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("error: TPU_NAME is not set")
    assert fake.calls() == []


@pytest.mark.parametrize(
    "script,missing",
    [("setup.sh", "FLAXFT_SOURCE"), ("train.sh", "OUTPUT_DIR"), ("train.sh", "CONFIG"),
     ("run_until_done.sh", "ACCELERATOR_TYPE")],
)
def test_each_script_names_the_missing_setting(fake, script, missing):
    fake.settings(**{missing: None})
    p = fake.run(script, check=False)
    assert p.returncode != 0
    assert p.stderr == f"error: {missing} is not set; set {missing}=... in {fake.env_file} or pass --{missing.lower().replace('_', '-')} VALUE\n"
    assert fake.calls() == []


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(OUTPUT_DIR="/tmp/out"), "OUTPUT_DIR must be a gs:// folder"),
        (dict(CAPACITY="cheap"), "CAPACITY must be on-demand, spot, preemptible or reserved"),
        (dict(CAPACITY="preemptible", QUEUED_RESOURCE="qr"), "does not work with QUEUED_RESOURCE"),
        (dict(TPU_NAME="My_TPU"), "TPU_NAME must be lowercase letters"),
        (dict(POLL_SECONDS="soon"), "POLL_SECONDS must be a number"),
        (dict(CONFIG="no/such.yaml"), "CONFIG file 'no/such.yaml' not found"),
        (dict(FLAXFT_SOURCE="dist/none.whl"), "FLAXFT_SOURCE wheel 'dist/none.whl' not found"),
        (dict(DATA_SOURCE="./glue"), "DATA_SOURCE must be a gs:// folder"),
    ],
)
def test_bad_settings_fail_clearly(fake, settings, message):
    fake.settings(**settings)
    p = fake.run("run_until_done.sh", check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("error: ") and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert fake.calls() == []


def test_unknown_setting_in_file_is_refused(fake):
    env = fake.settings()
    env.write_text(env.read_text() + "ACCELERATOR=v4-8\n")
    p = fake.run("create.sh", check=False)
    assert p.returncode != 0
    assert f"{env}:9: unknown setting 'ACCELERATOR'" in p.stderr
    assert fake.calls() == []


def test_missing_env_file(fake):
    p = fake.run("create.sh", "--env", str(fake.tmp / "nope.env"), env_file=False, check=False)
    assert p.returncode != 0
    assert "settings file" in p.stderr and "nope.env" in p.stderr


def test_flags_override_the_env_file_and_env_var_names_the_file(fake):
    fake.settings(ZONE="us-central2-b")
    p = fake.run("create.sh", "--zone", "europe-west4-a", "--accelerator-type=v5litepod-8",
                 "--runtime-version", "v2-alpha-tpuv5-lite", env_file=False, FLAXFT_TPU_ENV=str(fake.env_file))
    assert fake.calls() == [
        "gcloud compute tpus tpu-vm create flaxft-test --zone=europe-west4-a --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite"
    ]
    assert p.stdout.startswith("+ gcloud compute tpus tpu-vm create")


def test_environment_variables_other_than_gcloud_are_not_settings(fake):
    fake.settings(ZONE=None)
    p = fake.run("create.sh", check=False, ZONE="us-central2-b")
    assert p.returncode != 0 and "ZONE is not set" in p.stderr


def test_gcloud_env_var_names_the_executable(fake):
    fake.settings()
    other = fake.tmp / "my-gcloud"
    shutil.copy(fake.bindir / "gcloud", other)
    (fake.bindir / "gcloud").unlink()  # not on PATH any more
    p = fake.run("delete.sh", GCLOUD=str(other))
    assert p.stdout == f"+ {other} compute tpus tpu-vm delete flaxft-test --zone=us-central2-b --quiet\n"
    assert fake.calls() == ["gcloud compute tpus tpu-vm delete flaxft-test --zone=us-central2-b --quiet"]


def test_missing_gcloud_is_a_clear_error(fake):
    fake.settings()
    p = fake.run("delete.sh", check=False, GCLOUD=str(fake.tmp / "no-gcloud"))
    assert p.returncode != 0
    assert p.stderr.startswith("error: gcloud not found")


# --------------------------------------------------------------------------- create / delete


@pytest.mark.parametrize(
    "capacity,flag", [("on-demand", ""), ("spot", " --spot"), ("preemptible", " --preemptible"),
                      ("reserved", " --reserved")],
)
def test_create_tpu_vm(fake, capacity, flag):
    fake.settings(CAPACITY=capacity, PROJECT="my-proj")
    fake.run("create.sh")
    assert fake.calls() == [
        "gcloud compute tpus tpu-vm create flaxft-test --zone=us-central2-b --project=my-proj "
        f"--accelerator-type=v4-8 --version=tpu-ubuntu2204-base{flag}"
    ]


def test_create_with_extra_flags(fake):
    fake.settings(CREATE_FLAGS="--network=my-net --service-account=sa@p.iam.gserviceaccount.com")
    fake.run("create.sh")
    assert fake.calls() == [
        "gcloud compute tpus tpu-vm create flaxft-test --zone=us-central2-b --accelerator-type=v4-8 "
        "--version=tpu-ubuntu2204-base --network=my-net --service-account=sa@p.iam.gserviceaccount.com"
    ]


def test_create_queued_resource(fake):
    fake.settings(QUEUED_RESOURCE="flaxft-qr", CAPACITY="spot", QUEUED_VALID_FOR="6h", ACCELERATOR_TYPE="v4-32")
    fake.run("create.sh")
    assert fake.calls() == [
        "gcloud compute tpus queued-resources create flaxft-qr --node-id=flaxft-test --zone=us-central2-b "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot --valid-until-duration=6h"
    ]


def test_delete(fake):
    fake.settings()
    fake.run("delete.sh")
    assert fake.calls() == ["gcloud compute tpus tpu-vm delete flaxft-test --zone=us-central2-b --quiet"]


def test_delete_queued_resource_forces_the_node_too(fake):
    fake.settings(QUEUED_RESOURCE="flaxft-qr", PROJECT="p")
    fake.run("delete.sh")
    assert fake.calls() == [
        "gcloud compute tpus queued-resources delete flaxft-qr --zone=us-central2-b --project=p --quiet --force"
    ]


# --------------------------------------------------------------------------- setup


def test_setup_installs_on_every_worker(fake):
    fake.settings(DATA_SOURCE="gs://bucket/glue/")
    fake.run("setup.sh")
    (call,) = fake.argv_calls()
    assert call[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "flaxft-test", "--zone=us-central2-b",
                        "--worker=all", "--command"]
    assert ssh_command(call) == (
        "set -e; mkdir -p flaxft-run; python3 -m pip install --upgrade pip; "
        'python3 -m pip install --upgrade "jax[tpu]" git+https://github.com/example/flaxft.git@main gcsfs; '
        "gcloud storage rsync --recursive gs://bucket/glue flaxft-run/data; "
        'python3 -c "import flaxft, jax; print(flaxft.__name__, flaxft.__version__, jax.__name__, jax.__version__)"'
    )


def test_setup_copies_a_local_wheel_first(fake):
    wheel = fake.tmp / "flaxft-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    fake.settings(FLAXFT_SOURCE=str(wheel), SSH_FLAGS="--internal-ip", EXTRA_PACKAGES="gcsfs tensorboard")
    fake.run("setup.sh")
    scp, ssh = fake.argv_calls()
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(wheel), "flaxft-test:flaxft-0.1.0-py3-none-any.whl",
                   "--zone=us-central2-b", "--worker=all", "--internal-ip"]
    assert ssh[7:9] == ["--worker=all", "--internal-ip"]
    assert 'pip install --upgrade "jax[tpu]" flaxft-0.1.0-py3-none-any.whl gcsfs tensorboard;' in ssh_command(ssh)


def test_setup_command_runs_in_a_shell(fake, tmp_path):
    """Run the remote setup command locally with a stub python3 to check it is valid shell."""
    fake.settings()
    fake.run("setup.sh")
    command = ssh_command(fake.argv_calls()[0])
    home, stubs = tmp_path / "home", tmp_path / "stubs"
    home.mkdir()
    stubs.mkdir()
    (stubs / "python3").write_text('#!/bin/sh\necho "python3 $*" >> "$HOME/python.log"\n')
    (stubs / "python3").chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home)}
    subprocess.run(["bash", "-c", command], cwd=home, env=env, check=True)
    assert (home / "flaxft-run").is_dir()
    log = (home / "python.log").read_text().splitlines()
    assert log[:2] == [
        "python3 -m pip install --upgrade pip",
        "python3 -m pip install --upgrade jax[tpu] git+https://github.com/example/flaxft.git@main gcsfs",
    ]
    assert log[2].startswith("python3 -c import flaxft, jax;")


# --------------------------------------------------------------------------- train / logs / status


def test_train_launches_on_all_workers(fake):
    fake.settings(TRAIN_OVERRIDES="model.name_or_path=bert-base-uncased train.batch_size=32")
    p = fake.run("train.sh", "train.learning_rate=3e-5")
    scp, ssh = fake.argv_calls()
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", stage(fake), "flaxft-test:flaxft-run/",
                   "--zone=us-central2-b", "--worker=all"]
    staged = pathlib.Path(stage(fake))
    assert (staged / "glue" / "mrpc.yaml").read_text() == fake.config.read_text()
    assert (staged / "base.yaml").exists()  # mrpc.yaml's `base: ../base.yaml` travels with it
    assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "flaxft-test", "--zone=us-central2-b",
                       "--worker=all", "--command"]
    command = ssh_command(ssh)
    assert command.startswith("cd flaxft-run && ")
    assert (
        " nohup python3 -m flaxft.train --config configs/glue/mrpc.yaml output_dir=gs://bucket/run1 "
        "model.name_or_path=bert-base-uncased train.batch_size=32 train.learning_rate=3e-5 "
        ">>train.log 2>&1 </dev/null & echo $! >train.pid;" in command
    )
    assert p.stdout.splitlines()[1] == "+ " + shlex.join(ssh)


def test_train_command_runs_detached_once(fake, tmp_path):
    """Execute the launch and probe commands locally with a stub python3: nohup, pid file, no double start."""
    fake.settings()
    fake.run("train.sh", "train.epochs=1")
    launch = ssh_command(fake.argv_calls()[1])
    home, stubs = tmp_path / "home", tmp_path / "stubs"
    (home / "flaxft-run").mkdir(parents=True)
    stubs.mkdir()
    (stubs / "python3").write_text('#!/bin/sh\necho "args: $*"\nexec sleep 30\n')
    (stubs / "python3").chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home)}
    first = subprocess.run(["bash", "-c", launch], cwd=home, env=env, capture_output=True, text=True, timeout=20)
    assert first.returncode == 0 and "started flaxft.train on" in first.stdout
    pid = int((home / "flaxft-run" / "train.pid").read_text())
    try:
        second = subprocess.run(["bash", "-c", launch], cwd=home, env=env, capture_output=True, text=True, timeout=20)
        assert "already running" in second.stdout
        # run_until_done's probe sees it running
        fake.settings(POLL_SECONDS="0")
        probe = subprocess.run(
            ["bash", "-c", "source tpu/common.sh; REMOTE_DIR=flaxft-run; probe_command"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout
        out = subprocess.run(["bash", "-c", probe], cwd=home, env=env, capture_output=True, text=True)
        assert out.stdout.strip() == "FLAXFT_RUNNING"
        for _ in range(100):
            log = (home / "flaxft-run" / "train.log").read_text()
            if "args:" in log:
                break
            subprocess.run(["sleep", "0.05"])
        assert "=== launch " in log
        assert "args: -m flaxft.train --config configs/glue/mrpc.yaml output_dir=gs://bucket/run1 train.epochs=1" in log
    finally:
        os.kill(pid, 15)
    for _ in range(100):
        out = subprocess.run(["bash", "-c", probe], cwd=home, env=env, capture_output=True, text=True)
        if out.stdout.strip() == "FLAXFT_STOPPED":
            break
        subprocess.run(["sleep", "0.05"])
    assert out.stdout.strip() == "FLAXFT_STOPPED"


def test_train_foreground_and_stop(fake):
    fake.settings()
    fake.run("train.sh", "--foreground")
    command = ssh_command(fake.argv_calls()[1])
    assert command == ("set -o pipefail; cd flaxft-run && python3 -m flaxft.train --config configs/glue/mrpc.yaml "
                       "output_dir=gs://bucket/run1 2>&1 | tee -a train.log")
    fake.run("train.sh", "--stop")
    stop = fake.argv_calls()[2]
    assert "--worker=all" in stop and 'kill "$(cat train.pid)"' in ssh_command(stop)


def test_train_rejects_non_override_arguments(fake):
    fake.settings()
    p = fake.run("train.sh", "mrpc", check=False)
    assert p.returncode != 0 and "'mrpc' is not a key=value override" in p.stderr
    assert fake.calls() == []



@pytest.mark.parametrize(
    "files,message",
    [
        ({"c.yaml": "base: gone.yaml\n"}, "config file '{d}/gone.yaml' not found"),
        ({"c.yaml": "base: b.yaml\n", "b.yaml": "base: c.yaml\n"},
         "config file '{d}/c.yaml' includes itself through `base:`; remove the cycle"),
        ({"c.yaml": "base: b.yaml\n", "b.yaml": "train: [\n"}, "config file '{d}/b.yaml' is not valid YAML"),
    ],
)
def test_bad_base_chain_is_one_clear_line(fake, files, message):
    d = fake.tmp / "cfg"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    fake.settings(CONFIG=str(d / "c.yaml"))
    for args in [(), ("--dry-run",)]:
        p = fake.run("train.sh", *args, check=False)
        assert p.returncode == 2
        assert p.stderr.startswith("error: CONFIG: " + message.format(d=d)) and p.stderr.count("\n") == 1, p.stderr
    assert fake.calls() == []


def test_config_files_sharing_only_the_root_folder_are_refused(fake):
    if fake.tmp.parts[1] == ROOT.parts[1]:
        pytest.skip("the test's tmp folder and the checkout share their top folder")
    config = fake.tmp / "c.yaml"
    config.write_text(f"base: {ROOT / 'configs' / 'base.yaml'}\n")
    fake.settings(CONFIG=str(config))
    p = fake.run("train.sh", check=False)
    assert p.returncode == 2
    assert p.stderr == f"error: CONFIG: '{config}' and its base: files only share the folder /; keep them under one folder\n"
    assert fake.calls() == []


def test_local_python_reads_the_config_with_this_checkout(fake):
    fake.settings()
    log = fake.tmp / "python.log"
    other = fake.tmp / "my-python"
    other.write_text(f'#!/bin/sh\necho "$PYTHONPATH $*" >> {log}\nexec {shlex.quote(sys.executable)} "$@"\n')
    other.chmod(0o755)
    (fake.bindir / "python3").unlink()
    fake.run("train.sh", LOCAL_PYTHON=str(other), PYTHONPATH="/elsewhere")
    assert log.read_text() == f"{ROOT}:/elsewhere -m flaxft.config --files {fake.config}\n"
    assert (pathlib.Path(stage(fake)) / "base.yaml").exists()


def test_local_python_problems_are_one_clear_line(fake):
    fake.settings()
    p = fake.run("train.sh", check=False, LOCAL_PYTHON=str(fake.tmp / "no-python"))
    assert p.returncode == 2
    assert p.stderr.startswith(f"error: python not found (LOCAL_PYTHON={fake.tmp / 'no-python'}); ")
    assert p.stderr.count("\n") == 1
    broken = fake.tmp / "python-without-yaml"
    broken.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                      "echo \"ModuleNotFoundError: No module named 'yaml'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    p = fake.run("train.sh", check=False, LOCAL_PYTHON=str(broken))
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: could not list CONFIG's base: files with ")
    assert "(ModuleNotFoundError: No module named 'yaml')" in p.stderr and "LOCAL_PYTHON" in p.stderr
    assert fake.calls() == []

def test_logs(fake):
    fake.settings()
    fake.run("logs.sh")
    fake.run("logs.sh", "--follow", "--worker", "all", "--lines", "20")
    fake.run("logs.sh", "--download", str(fake.tmp / "logs"), "--worker=1")
    assert fake.calls() == [
        "gcloud compute tpus tpu-vm ssh flaxft-test --zone=us-central2-b --worker=0 --command "
        "'tail -n 100 flaxft-run/train.log'",
        "gcloud compute tpus tpu-vm ssh flaxft-test --zone=us-central2-b --worker=all --command "
        "'tail -n 20 -F flaxft-run/train.log'",
        f"gcloud compute tpus tpu-vm scp flaxft-test:flaxft-run/train.log {fake.tmp}/logs/ --zone=us-central2-b "
        "--worker=1",
    ]


def test_status(fake):
    fake.settings()
    p = fake.run("status.sh")
    assert p.stdout == ("tpu flaxft-test: MISSING\n"
                        "training: not finished (no gs://bucket/run1/summary.json yet)\n")
    fake.run("create.sh")
    p = fake.run("status.sh")
    assert p.stdout.startswith("tpu flaxft-test: READY\n")
    assert "gcloud compute tpus tpu-vm describe flaxft-test --zone=us-central2-b '--format=value(state)'" in fake.calls()


# --------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_prints_commands_and_runs_nothing(fake, script):
    fake.settings(QUEUED_RESOURCE="flaxft-qr" if script == "run_until_done.sh" else None)
    p = fake.run(script, "--dry-run")
    lines = [line for line in p.stdout.splitlines() if not line.startswith("#")]
    assert lines and all(line.startswith("+ gcloud ") for line in lines), p.stdout
    for line in lines:
        shlex.split(line[2:])  # valid shell
    assert fake.calls() == []
    assert not (fake.tmp / "flaxft-tpu-flaxft-test").exists()


def test_dry_run_matches_what_a_real_run_executes(fake):
    fake.settings(TRAIN_OVERRIDES="train.batch_size=32")
    for script in ["create.sh", "setup.sh", "train.sh", "delete.sh"]:
        dry = fake.run(script, "--dry-run").stdout.splitlines()
        before = len(fake.calls())
        real = [line for line in fake.run(script).stdout.splitlines() if line.startswith("+ ")]
        assert dry == real
        assert ["+ " + c for c in fake.calls()[before:]] == dry


# --------------------------------------------------------------------------- run_until_done


def actions(calls):
    """The calls that change something (drop the polling: describe, storage ls, probes)."""
    out = []
    for c in calls:
        argv = shlex.split(c)
        if argv[1] == "storage" or argv[4] == "describe":
            continue
        if argv[4] == "ssh":
            command = ssh_command(argv)
            kind = ("probe" if "FLAXFT_RUNNING" in command else "train" if "nohup" in command
                    else "setup" if "pip install" in command else "tail" if "tail" in command else command)
            assert "--worker=all" in argv
            out.append(f"ssh {kind}")
        else:
            out.append(" ".join(argv[3:5]))
    return [a for a in out if a != "ssh probe"]


def test_run_until_done_happy_path(fake):
    fake.settings()
    p = fake.run("run_until_done.sh", "train.epochs=2")
    assert actions(fake.calls()) == ["tpu-vm create", "ssh setup", "tpu-vm scp", "ssh train", "tpu-vm delete"]
    launch = [c for c in fake.calls() if "nohup" in c]
    assert "python3 -m flaxft.train --config configs/glue/mrpc.yaml output_dir=gs://bucket/run1 train.epochs=2" in launch[0]
    assert "gcloud storage cat gs://bucket/run1/summary.json" in fake.calls()
    assert fake.calls()[-1] == "gcloud compute tpus tpu-vm delete flaxft-test --zone=us-central2-b --quiet"
    assert '"accuracy": 0.86' in p.stdout


def test_run_until_done_relaunches_after_preemption(fake):
    fake.settings(CAPACITY="spot")
    p = fake.run("run_until_done.sh", FAKE_PREEMPT_AT_PROBES="2,4", FAKE_DONE_AFTER_LAUNCHES="3")
    create = ("gcloud compute tpus tpu-vm create flaxft-test --zone=us-central2-b --accelerator-type=v4-8 "
              "--version=tpu-ubuntu2204-base --spot")
    delete = "gcloud compute tpus tpu-vm delete flaxft-test --zone=us-central2-b --quiet"
    calls = fake.calls()
    assert calls.count(create) == 3
    assert calls.count(delete) == 3  # two preemptions + the end
    assert actions(calls) == ["tpu-vm create", "ssh setup", "tpu-vm scp", "ssh train"] + \
        ["tpu-vm delete", "tpu-vm create", "ssh setup", "tpu-vm scp", "ssh train"] * 2 + ["tpu-vm delete"]
    # every launch is the same command line on all workers; flaxft resumes from OUTPUT_DIR
    launches = {ssh_command(shlex.split(c)) for c in calls if "nohup" in c}
    assert len(launches) == 1
    assert "PREEMPTED" in p.stdout and "restart 2 of at most 20" in p.stdout


def test_run_until_done_with_queued_resource(fake):
    fake.settings(QUEUED_RESOURCE="flaxft-qr", CAPACITY="spot")
    p = fake.run("run_until_done.sh", FAKE_PREEMPT_AT_PROBES="1", FAKE_DONE_AFTER_LAUNCHES="2", FAKE_QR_WAITS="2")
    calls = fake.calls()
    create = ("gcloud compute tpus queued-resources create flaxft-qr --node-id=flaxft-test --zone=us-central2-b "
              "--accelerator-type=v4-8 --runtime-version=tpu-ubuntu2204-base --spot")
    delete = "gcloud compute tpus queued-resources delete flaxft-qr --zone=us-central2-b --quiet --force"
    assert calls.count(create) == 2 and calls.count(delete) == 2
    assert actions(calls) == ["queued-resources create", "ssh setup", "tpu-vm scp", "ssh train",
                              "queued-resources delete", "queued-resources create", "ssh setup", "tpu-vm scp",
                              "ssh train", "queued-resources delete"]
    assert "waiting: queued resource WAITING_FOR_RESOURCES" in p.stdout
    assert "queued resource SUSPENDED" in p.stdout


def test_run_until_done_retries_create_when_there_is_no_capacity(fake):
    fake.settings(CAPACITY="spot")
    fake.run("run_until_done.sh", FAKE_CREATE_FAILURES="2")
    assert actions(fake.calls()) == ["tpu-vm create"] * 3 + ["ssh setup", "tpu-vm scp", "ssh train", "tpu-vm delete"]


def test_run_until_done_gives_up_after_max_restarts(fake):
    fake.settings(CAPACITY="spot", MAX_RESTARTS="1")
    p = fake.run("run_until_done.sh", check=False, FAKE_PREEMPT_AT_PROBES="1,2,3", FAKE_NEVER_DONE="1")
    assert p.returncode == 1
    assert "MAX_RESTARTS=1 restarts are used up" in p.stdout
    calls = actions(fake.calls())
    assert calls.count("tpu-vm create") == 2
    assert calls[-1] == "tpu-vm delete"  # nothing left billing


def test_run_until_done_stops_when_training_crashes(fake):
    fake.settings()
    p = fake.run("run_until_done.sh", check=False, FAKE_TRAINING_STOPS="1", FAKE_NEVER_DONE="1")
    assert p.returncode == 1
    assert "training stopped on a worker without writing gs://bucket/run1/summary.json" in p.stdout
    assert actions(fake.calls()) == ["tpu-vm create", "ssh setup", "tpu-vm scp", "ssh train", "ssh tail",
                                     "tpu-vm delete"]


def test_run_until_done_keeps_the_tpu_if_asked(fake):
    fake.settings()
    p = fake.run("run_until_done.sh", "--delete-when-done", "no")
    assert "delete" not in " ".join(actions(fake.calls()))
    assert "keeping flaxft-test (DELETE_WHEN_DONE=no)" in p.stdout


def test_run_until_done_watches_training_already_running(fake):
    fake.settings()
    fake.run("create.sh")
    fake.run("setup.sh")
    fake.run("train.sh")
    before = len(fake.calls())
    p = fake.run("run_until_done.sh")
    assert actions(fake.calls()[before:]) == ["tpu-vm delete"]
    assert "already runs flaxft.train; watching it" in p.stdout


def test_run_until_done_returns_at_once_when_already_finished(fake):
    fake.settings()
    (fake.state / "state.json").write_text(json.dumps({"launches": 1, "probes_since_launch": 1}))
    fake.run("run_until_done.sh")
    assert actions(fake.calls()) == []


def test_run_until_done_gives_up_when_gcloud_keeps_failing(fake):
    fake.settings()
    p = fake.run("run_until_done.sh", check=False, FAKE_DESCRIBE_ERROR="1")
    assert p.returncode == 1
    assert "gcloud keeps failing" in p.stderr
    assert "problem refreshing your credentials" in p.stdout


def test_run_until_done_setup_failure(fake):
    fake.settings()
    p = fake.run("run_until_done.sh", check=False, FAKE_SETUP_FAILS="1")
    assert p.returncode == 1
    assert "setup or launch failed 5 times in a row" in p.stdout
    assert actions(fake.calls()) == ["tpu-vm create"] + ["ssh setup"] * 5 + ["ssh tail", "tpu-vm delete"]


# --------------------------------------------------------------------------- README


def readme_blocks():
    """(command, expected output) for every ```console block after a <!-- dry-run --> marker."""
    text = README.read_text()
    pattern = re.compile(r"<!-- dry-run -->\n```console\n\$ (.*?)\n(.*?)```\n", re.S)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)], pattern, text


def dry_run_output(command):
    env = {k: v for k, v in os.environ.items() if k not in ("GCLOUD", "FLAXFT_TPU_ENV")}
    env["TMPDIR"] = "/tmp"
    env["LOCAL_PYTHON"] = sys.executable
    p = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_readme_shows_the_real_dry_run_output():
    """Regenerate with: FLAXFT_UPDATE_README=1 python -m pytest tests/test_tpu_scripts.py -k readme"""
    blocks, pattern, text = readme_blocks()
    assert len(blocks) >= 8
    if os.environ.get("FLAXFT_UPDATE_README"):
        def repl(m):
            return f"<!-- dry-run -->\n```console\n$ {m.group(1)}\n{dry_run_output(m.group(1))}```\n"
        README.write_text(pattern.sub(repl, text))
        blocks, _, _ = readme_blocks()
    for command, expected in blocks:
        assert "--dry-run" in command
        assert dry_run_output(command) == expected, f"README block for `{command}` is stale; see the docstring"
