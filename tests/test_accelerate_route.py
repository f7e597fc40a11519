"""The accelerate route: config files accelerate's own loader reads, the CLI that writes them, real `accelerate
launch` runs of 2 CPU ranks at ZeRO 1-3, the check that fails a run without DeepSpeed, the same command in a local
MPIJob."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import tempfile
import types
from dataclasses import asdict
from pathlib import Path

import pytest
from fake_rbac import SERVICE_ACCOUNT
from kit_testing import ROOT, fake_cluster, wait_for_no_kit_processes

from labkit import accelerate_route as route
from labkit import devices, launch, manifests
from labkit.cli import main as cli_main
from labkit.errors import ConfigError, LaunchError
from labkit.jobs import LocalBackend
from labkit.manifests import JobSpec
from labkit.ranks import accelerate_train


# ------------------------------------------------------------------------------------------------- the config file
# every stage 1-3 with and without offload (parameter offload exists at stage 3 only: refused elsewhere, see below)
@pytest.mark.parametrize(
    "stage,offload",
    [
        (1, "none"),
        (1, "optimizer"),
        (2, "none"),
        (2, "optimizer"),
        (3, "none"),
        (3, "optimizer"),
        (3, "optimizer+param"),
    ],  # fmt: skip
)
def test_config_loads_through_accelerates_own_loader(stage, offload, tmp_path):
    cfg = route.AccelerateConfig(stage=stage, num_processes=2, mixed_precision="bf16",
                                 offload_optimizer="cpu" if offload != "none" else "none",
                                 offload_param="cpu" if "param" in offload else "none")  # fmt: skip
    loaded = route.load_with_accelerate(cfg.write(tmp_path / "acc.yaml"))
    assert type(loaded).__name__ == "ClusterConfig"
    assert str(loaded.distributed_type).endswith("DEEPSPEED") and loaded.use_cpu is False
    assert loaded.num_processes == 2 and loaded.mixed_precision == "bf16" and loaded.num_machines == 1
    ds = loaded.deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == cfg.offload_optimizer and ds["offload_param_device"] == cfg.offload_param
    # ...and accelerate turns those keys into the DeepSpeed config it hands to deepspeed.initialize
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        gradient_clipping=ds["gradient_clipping"],
    )
    zero = plugin.deepspeed_config["zero_optimization"]  # fmt: skip
    assert zero["stage"] == stage and zero["offload_optimizer"]["device"] == cfg.offload_optimizer


def test_multi_machine_config_names_the_mpijob_hostfile_and_avoids_num_gpus(tmp_path):
    cfg = route.AccelerateConfig(stage=2, num_processes=4, num_machines=2)
    ds = route.load_with_accelerate(cfg.write(tmp_path / "acc.yaml")).deepspeed_config
    assert ds["deepspeed_hostfile"] == "/etc/mpi/hostfile" and ds["deepspeed_multinode_launcher"] == "openmpi"
    assert ds["deepspeed_exclusion_filter"] == ""  # accelerate then passes --exclude "" instead of --num_gpus
    cmd = route.launch_command("acc.yaml", ["--x"], hostfile=route.CLUSTER_HOSTFILE)
    assert cmd[cmd.index("--deepspeed_hostfile") + 1] == "/etc/mpi/hostfile"
    assert cmd[cmd.index("--deepspeed_multinode_launcher") + 1] == "openmpi"
    assert cmd[-3:] == ["-m", route.TRAIN_MODULE, "--x"]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"stage": 4}, "stage"),
        ({"stage": "2"}, "stage"),
        ({"num_processes": 0}, "num_processes"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"offload_optimizer": "nvme"}, "offload_optimizer"),
        ({"offload_optimizer": "cpu", "stage": 0}, "offload_optimizer"),
        ({"offload_param": "cpu", "offload_optimizer": "cpu", "stage": 2}, "offload_param"),
        ({"num_machines": 2, "num_processes": 3}, "num_processes"),
        ({"num_machines": 0}, "num_machines"),
        ({"zero3_init": True, "stage": 2}, "zero3_init"),
        ({"gradient_clipping": -1.0}, "gradient_clipping"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        route.AccelerateConfig(**kwargs).validated()
    assert err.value.field == field and "Fix:" in str(err.value)


@pytest.mark.parametrize(
    "config",
    [
        route.AccelerateConfig(stage=2, num_processes=1, mixed_precision="bf16"),  # notebook 06 on one GPU
        route.AccelerateConfig(
            stage=3,
            num_processes=8,
            mixed_precision="fp16",
            offload_optimizer="cpu",
            offload_param="cpu",
            num_machines=2,
            gradient_accumulation_steps=4,
        ),  # fmt: skip
    ],
)
def test_the_command_line_shown_writes_the_same_file(config, tmp_path):
    """Notebook 06 shows the shell line for its own answers (it once printed a fixed --num-processes 2 beside a
    1-process file): that line, run, writes the file the notebook wrote."""
    line = config.command_line("--out", str(tmp_path / "typed.yaml"))
    assert shlex.split(line)[:3] == ["labkit", "accelerate", "config"]
    assert cli_main(shlex.split(line)[1:]) == 0
    assert (tmp_path / "typed.yaml").read_text() == config.to_yaml()


def test_cli_writes_a_file_accelerate_reads(tmp_path, capsys):
    out = tmp_path / "a.yaml"
    flags = ["--stage", "3", "--num-processes", "2", "--mixed-precision", "bf16", "--offload-optimizer", "cpu"]
    assert cli_main(["accelerate", "config", *flags, "--offload-param", "cpu", "--out", str(out)]) == 0
    loaded = route.load_with_accelerate(out)
    assert loaded.deepspeed_config["zero_stage"] == 3 and loaded.deepspeed_config["offload_param_device"] == "cpu"
    assert cli_main(["accelerate", "config", *flags, "--out", str(out)]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    # a folder is never written over, --force or not (it was an IsADirectoryError traceback)
    assert cli_main(["accelerate", "config", *flags, "--out", str(tmp_path), "--force"]) == 2
    assert capsys.readouterr().err.startswith(f"labkit: error: --out: {tmp_path} is a folder")


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--stage", "5", "--num-processes", "2", "--mixed-precision", "bf16"], "--stage"),
        (["--stage", "2", "--num-processes", "2", "--mixed-precision", "bf32"], "--mixed-precision"),
        (["--stage", "2", "--num-processes", "2", "--mixed-precision", "no", "--offload-param", "cpu"],
         "--offload-param"),
        (["--stage", "2", "--num-processes", "3", "--mixed-precision", "no", "--num-machines", "2"], "--num-processes"),
        (["--stage", "1", "--num-processes", "2", "--mixed-precision", "no", "--offload-optimizer", "gpu"],
         "--offload-optimizer"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_values_with_the_flag_and_writes_nothing(flags, named, tmp_path, capsys):
    out = tmp_path / "a.yaml"
    assert cli_main(["accelerate", "config", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"labkit: error: {named}:") and "Fix:" in err and not out.exists()


# --------------------------------------------------------------------------------------- the DeepSpeed-active check
def _fake_accelerator(kind: str, processes: int):
    return types.SimpleNamespace(distributed_type=f"DistributedType.{kind}", num_processes=processes)


def test_check_refuses_a_model_that_is_not_a_deepspeed_engine():
    import torch

    ddp_like = torch.nn.Linear(2, 2)
    with pytest.raises(accelerate_train.DeepSpeedNotActive, match="not a DeepSpeedEngine.*ACCELERATE_USE_CPU"):
        accelerate_train.check_deepspeed_active(_fake_accelerator("MULTI_CPU", 2), ddp_like, 2, 2, 2)


def test_check_refuses_a_wrong_stage_or_world_size(monkeypatch):
    import deepspeed

    class Engine(deepspeed.DeepSpeedEngine):
        def __init__(self, stage):  # no real engine: only what the check reads
            self.stage = stage

        def zero_optimization_stage(self):
            return self.stage

    acc = _fake_accelerator("DEEPSPEED", 2)
    assert accelerate_train.check_deepspeed_active(acc, Engine(3), 3, 2, 2)["zero_stage"] == 3
    with pytest.raises(accelerate_train.DeepSpeedNotActive, match="ZeRO stage 1, the config asked for 3"):
        accelerate_train.check_deepspeed_active(acc, Engine(1), 3, 2, 2)
    with pytest.raises(accelerate_train.DeepSpeedNotActive, match="2 accelerate processes, a world of 1, 2 configured"):
        accelerate_train.check_deepspeed_active(acc, Engine(3), 3, 2, 1)


def test_bad_plan_values_fail_before_anything_is_launched(monkeypatch, tmp_path):
    def no_launch(*a, **k):
        raise AssertionError("launched despite bad input")

    monkeypatch.setattr(launch, "run_command", no_launch)
    cases = [({"steps": 0}, "steps"), ({"hidden": 96}, "hidden"), ({"lr": 0.0}, "lr"), ({"device": "tpu"}, "device")]
    cases.append(({"config": route.AccelerateConfig(mixed_precision="fp16")}, "mixed_precision"))  # CPU ranks
    for kwargs, field in cases:
        plan = route.TrainPlan(**({"config": route.AccelerateConfig(), "device": "cpu"} | kwargs), run_dir=tmp_path)
        with pytest.raises(ConfigError) as err:
            route.run_training(plan)
        assert err.value.field == field
    assert not list(tmp_path.iterdir())


def test_cpu_ranks_hide_the_gpus_deepspeeds_launcher_made_visible():
    env = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "0,1"}  # what deepspeed.launcher.launch hands 2 CPU ranks
    accelerate_train.hide_gpus_from_cpu_ranks(env)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    gpu = {"DS_ACCELERATOR": "cuda", "CUDA_VISIBLE_DEVICES": "0"}
    accelerate_train.hide_gpus_from_cpu_ranks(gpu)
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0"


# ------------------------------------------------------------------------------------------------- real launches
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stages_train_on_two_cpu_ranks_through_accelerate_launch(stage, tmp_path):
    plan = route.TrainPlan(route.AccelerateConfig(stage=stage, num_processes=2), tmp_path, device="cpu", steps=12)
    elastic_logs = set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
    report = route.run_training(plan)
    assert set(Path(tempfile.gettempdir()).glob("torchelastic_*")) == elastic_logs, "torchrun's logs left behind"
    assert report["command"][:2] == ["accelerate", "launch"] and "--config_file" in report["command"]
    ranks = report["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["check"] == {"engine": "DeepSpeedEngine", "distributed_type": "DEEPSPEED", "num_processes": 2,
                              "world_size": 2, "zero_stage": stage}  # fmt: skip
        assert len(r["losses"]) == 12 and r["losses"][-1] < 0.5 * r["losses"][0]
        assert r["generated"] == r["expected"], "the trained model continues the count"
        counted = r["memory"]["step"]["device"]
        # ZeRO partitions: from stage 1 each rank holds half the Adam moments (2 x fp32 = 8 bytes per parameter) and
        # half the fp32 master weights. (This model's tensors are all under ZeRO-3's persistence threshold, so
        # stage 3 keeps its bf16 parameters whole on every rank: the test does not expect them halved.)
        assert counted["optimizer_states"] == pytest.approx(8 * r["params"] / 2, rel=0.02)
        assert counted["master_params"] == pytest.approx(4 * r["params"] / 2, rel=0.02)
        zero_optimizer = "DeepSpeedZeroOptimizer_Stage3" if stage == 3 else "DeepSpeedZeroOptimizer"
        assert r["optimizer_class"] == zero_optimizer
    assert wait_for_no_kit_processes() == []


@pytest.mark.slow
def test_a_run_that_falls_back_without_deepspeed_fails_with_one_clear_line(tmp_path):
    plan = route.TrainPlan(route.AccelerateConfig(stage=2), tmp_path, device="cpu", steps=2,
                           extra_env={"ACCELERATE_USE_CPU": "1"})  # fmt: skip
    with pytest.raises(LaunchError) as err:
        route.run_training(plan)
    line = str(err.value)
    assert "\n" not in line and "DeepSpeed is not active" in line and "DistributedDataParallel" in line
    assert "ACCELERATE_USE_CPU=1" in line
    assert wait_for_no_kit_processes() == []


@pytest.mark.slow
def test_a_rank_killed_under_accelerate_launch_is_named_with_its_signal(tmp_path):
    """torchrun's agent (accelerate launch) SIGTERMs the survivor: the rank named is the one SIGKILLed (as the OOM
    killer ends one), read from the ranks, not from the agent's table of both."""
    answers = route.AccelerateConfig(stage=0, num_processes=2, mixed_precision="no").validated()
    config = answers.write(tmp_path / "accelerate.yaml")
    accelerate = route.launch_command(config, [], port=launch.free_port())[:-2]  # without `-m labkit.ranks...`
    script = ROOT / "tests" / "rank_scripts" / "allreduce.py"
    with pytest.raises(LaunchError) as err:
        launch.run_command([*accelerate, str(script), "--kill-rank", "1"], launch.kit_env(world_size=2), timeout=180)
    assert str(err.value) == "rank 1 died (killed by signal 9); the other ranks were stopped", err.value.output[-3000:]
    assert err.value.failed_rank == 1 and wait_for_no_kit_processes() == []


@pytest.mark.slow
def test_the_mpijob_command_runs_in_a_local_launcher(tmp_path):
    """`accelerate launch --deepspeed_hostfile /etc/mpi/hostfile --deepspeed_multinode_launcher openmpi` exec'd in a
    local job's launcher, as in the cluster's launcher pod, its config written there through exec first. With 29500
    (accelerate's default port, which it refuses when held) held, as another job on this host may hold it."""
    backend = LocalBackend(root=tmp_path / "jobs")
    plan = route.TrainPlan(route.AccelerateConfig(stage=2, num_processes=2, num_machines=2),
                           route.job_run_dir("accelerate"), device="cpu", steps=4)  # fmt: skip
    seen: list[str] = []
    with (
        contextlib.ExitStack() as held,
        backend.submit(JobSpec(name="accelerate", workers=2, slots_per_worker=1)) as job,
    ):
        with contextlib.suppress(OSError):  # already held by something else: as good
            held.enter_context(socket.create_server(("127.0.0.1", 29500)))
        job.wait_ready(20)
        written = route.send_config(plan, job)
        argv = route.job_command(plan, job)
        # what a learner types in the cluster's launcher pod, character for character (the Kubernetes test below)
        assert argv[:4] == ["accelerate", "launch", "--config_file", written] and "/etc/mpi/hostfile" in argv
        assert "--out=/shared/runs/accelerate/accelerate" in argv
        rc = job.exec(argv, on_output=seen.append, timeout=300)
        assert rc == 0, "".join(seen)[-4000:]  # a failure shows why (the ranks' own error is in the tail)
    here = backend.shared_path(plan.run_dir)  # the local job's /shared
    assert route.load_with_accelerate(backend.shared_path(written)).num_machines == 2
    # Both ranks in one world: with accelerate's default `--num_gpus N/machines` DeepSpeed would start 1 rank here
    # (and refuse the flag on a real multi-host hostfile); the config's empty exclusion filter avoids it.
    assert "LABKIT_PROGRESS step=4" in "".join(seen)
    ranks = route.read_report(here, plan, 0.0, argv)["ranks"]
    assert [r["check"]["world_size"] for r in ranks] == [2, 2] and all(r["check"]["zero_stage"] == 2 for r in ranks)
    assert wait_for_no_kit_processes() == []


# The image's `accelerate` on the fake API server's "pod" (this host): accelerate's own CLI, config loading and
# DeepSpeed command, stopped where it would start DeepSpeed's runner (the fake's workers are names, not hosts).
# Stands in for DeepSpeed's runner: `accelerate launch` runs the `deepspeed` found on PATH (a subprocess in every
# accelerate version; patching accelerate's own helper only worked from 1.16, which added `_run_subprocess`). The
# real runner would then ssh to the operator's worker hostnames, which this host cannot resolve.
DEEPSPEED_SHIM = """#!{python}
import json, sys
print("LAUNCHES " + json.dumps(["deepspeed", *sys.argv[1:]]), flush=True)
"""
# accelerate's own console script, as the image's PATH provides it (this interpreter's bin may not be on PATH).
ACCELERATE_CLI = """#!{python}
import socket
import sys
from accelerate.commands.accelerate_cli import main
sys.exit(main())
"""


def test_the_mpijob_command_on_the_kubernetes_backend(tmp_path, monkeypatch, capsys):
    """As the kit's ServiceAccount on the fake API server: submit, wait, write the config onto the job's shared
    volume through exec, exec the accelerate line in the launcher, delete."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("deepspeed", DEEPSPEED_SHIM), ("accelerate", ACCELERATE_CLI)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # the exec'd command's PATH
    cfg = route.AccelerateConfig(stage=3, num_processes=4, num_machines=2, mixed_precision="bf16")
    plan = route.TrainPlan(cfg, route.job_run_dir("acc"))
    with fake_cluster() as (api, backend):
        assert api.identity == SERVICE_ACCOUNT
        job = backend.submit(JobSpec(name="acc", workers=2, slots_per_worker=2))
        mpijob = api.objects[("/apis/kubeflow.org/v2beta1", "mpijobs", "workloads", "acc")]
        launcher = mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
        assert launcher["containers"][0]["args"] == ["sleep", "infinity"]  # you exec the training into it
        own = {"name": "shared", "mountPath": "/shared/runs/acc", "subPath": "runs/acc"}  # the job's own folder only
        assert own in launcher["containers"][0]["volumeMounts"] and plan.run_dir.startswith(own["mountPath"] + "/")
        assert mpijob["spec"]["slotsPerWorker"] == 2 and mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
        job.wait_ready(60)  # a bound, not a timing: generous for a loaded machine
        for shape, field in (({"num_machines": 4}, "num_machines"), ({"num_processes": 2}, "num_processes")):
            other = route.TrainPlan(route.AccelerateConfig(**(asdict(cfg) | shape)), plan.run_dir, device="cpu")
            with pytest.raises(ConfigError) as err:  # not the job's 2 workers x 2 slots: refused before any exec
                route.job_command(other, job)
            assert err.value.field == field and "num_machines=2 (its workers), num_processes=4" in err.value.fix
        written = route.send_config(plan, job)
        argv = route.job_command(plan, job)
        # The CLI does the same: `labkit accelerate config ... --job acc` sends the file and prints the line to exec.
        flags = ["--stage", "3", "--num-processes", "4", "--num-machines", "2", "--mixed-precision", "bf16", "--job",
                 "acc", "--backend", "kubernetes", "--kubeconfig", api.kubeconfig]  # fmt: skip
        assert cli_main(["accelerate", "config", *flags]) == 0
        typed = shlex.split(capsys.readouterr().out.split("run: ", 1)[1])
        assert typed[: typed.index("--") + 1] == ["labkit", "job", "exec", "acc", "--backend", "kubernetes", "-n",
                                                  "workloads", "--"]  # fmt: skip
        assert typed[typed.index("--") + 1 :] == argv
        flags[3] = "2"  # not the job's 2 workers x 2 slots
        assert cli_main(["accelerate", "config", *flags]) == 2
        assert capsys.readouterr().err.startswith("labkit: error: --num-processes: 2 machine(s), 2 process(es) for job")
        assert argv == [
            "accelerate", "launch", "--config_file", "/shared/runs/acc/accelerate/accelerate_config.yaml",
            "--deepspeed_hostfile", "/etc/mpi/hostfile", "--deepspeed_multinode_launcher", "openmpi",
            "-m", "labkit.ranks.accelerate_train", "--out=/shared/runs/acc/accelerate", "--stage=3",
            "--num-processes=4", "--steps=30", "--micro-batch=8", "--seq=32", "--hidden=128", "--layers=2",
            "--vocab=64", "--lr=0.003", "--generate=12",
        ]  # fmt: skip
        result = job.run(argv, timeout=120)
        assert result.ok, result.output
        # The file reached the job's volume byte for byte, and accelerate in the pod read it from there: DeepSpeed's
        # openmpi runner over the operator's hostfile, every slot of it (no --num_gpus), the rank script as a module.
        volume = api.root / "workloads" / "pvc" / "labkit-shared"  # where the fake keeps the claim (subPath runs/acc)
        assert written == "/shared/runs/acc/accelerate/accelerate_config.yaml"
        assert (volume / written.removeprefix("/shared/")).read_text() == cfg.to_yaml()
        (line,) = [x for x in result.output.splitlines() if x.startswith("LAUNCHES ")]
        deepspeed = json.loads(line.split(" ", 1)[1])
        hostfile = str(api.root / "workloads" / "acc" / "etc-mpi" / "hostfile")  # the fake's /etc/mpi/hostfile
        runner = deepspeed[: deepspeed.index("--module")]  # its order differs between accelerate versions
        given = {flag: runner[runner.index(flag) + 1] for flag in ("--hostfile", "--launcher", "--exclude")}
        assert runner[0] == "deepspeed" and "--no_local_rank" in runner
        # The flag's value (mapped by the fake, like a pod's mount) or the config file's (accelerate 1.0 prefers it; the
        # fake maps exec arguments, not file contents): in a pod both are the operator's /etc/mpi/hostfile.
        assert given["--hostfile"] in (hostfile, "/etc/mpi/hostfile")
        assert (given["--launcher"], given["--exclude"]) == ("openmpi", "")
        assert "--num_gpus" not in runner  # an empty --exclude keeps accelerate from capping each host's slots
        script = [a.replace("=/shared/", f"={volume}/") for a in argv[argv.index("-m") + 1 :]]  # --out on the volume
        assert deepspeed[deepspeed.index("--module") + 1 :] == script
        assert "ACCELERATE_DEEPSPEED_ZERO_STAGE=3" in (api.root / ".deepspeed_env").read_text()  # the ranks' env
        job.delete()
        assert not api.pods and not api.exec_tag_pids()
        assert api.denied == []  # nothing beyond the kit's Role
    # What the learner types is the same line in a local job of that shape.
    with LocalBackend(root=tmp_path / "jobs").submit(JobSpec(name="acc", workers=2, slots_per_worker=2)) as local:
        local.wait_ready(60)
        assert route.job_command(plan, local) == argv


# ------------------------------------------------------------------------------------------------------ notebook 06
@pytest.mark.parametrize(
    "params,field",
    [
        ({"zero_stage": 4}, "zero_stage"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"offload_param": "cpu"}, "offload_param"),
        ({"num_machines": 2}, "num_machines"),
        ({"num_processes": -1}, "num_processes"),
        ({"dynamo_backend": "inductor"}, "dynamo_backend"),
        ({"device": "tpu"}, "device"),
        ({"steps": 0}, "steps"),
        ({"steps": 1}, "steps"),  # the step time is read after the first (warm-up) step: one step left none
    ],
)
def test_notebook_parameters_fail_with_the_parameter_named(params, field, tmp_path):
    from labkit.chapters import accelerate as chapter

    answers = {"num_machines": 1, "num_processes": 0, "zero_stage": 2, "mixed_precision": "bf16", "device": "cpu",
               "offload_optimizer": "none", "offload_param": "none", "dynamo_backend": "no", "steps": 5}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        chapter.plan_run(**(answers | params), run_dir=tmp_path)
    assert err.value.field == field
    assert not list(tmp_path.iterdir())


def test_plan_values_are_named_as_notebook_06_names_them_with_a_fix_it_can_apply(tmp_path):
    from labkit.chapters import accelerate as chapter

    with pytest.raises(ConfigError) as err:
        chapter.stage_advice(7 * 10**9, "bf16", "H100", 0)
    assert err.value.field == "plan_devices"
    with pytest.raises(ConfigError) as err:
        chapter.fit_rows(7 * 10**9, "int8", "H100")
    assert err.value.field == "plan_dtype"
    answers = {"num_machines": 1, "num_processes": 0, "zero_stage": 3, "mixed_precision": "bf16", "device": "cpu",
               "offload_optimizer": "none", "offload_param": "cpu", "dynamo_backend": "no", "steps": 5}  # fmt: skip
    with pytest.raises(ConfigError) as err:  # 06 has no `offload` parameter: the fix names the one it has
        chapter.plan_run(**answers, run_dir=tmp_path)
    assert err.value.field == "offload_param" and "offload_optimizer" in err.value.fix
    assert "offload=" not in err.value.fix


def test_the_plan_never_says_bf16_training_fits_a_device_without_bf16():
    from labkit.chapters import accelerate as chapter

    advice = chapter.stage_advice(350 * 10**6, "bf16", "T4", 1)
    assert advice["best"] is None and not advice["holds"] and "no BF16" in advice["text"]
    assert {
        cell for row in chapter.fit_rows(350 * 10**6, "bf16", "T4") for k, cell in row.items() if k != "config"
    } == {"n/a (no BF16)"}


def test_stage_advice_is_checked_against_the_fit_numbers():
    from labkit.chapters import accelerate as chapter

    small = chapter.stage_advice(7 * 10**9, "bf16", "H100", 8)  # 14 GB of weights fit one H100: the rule says 2
    assert small["rule_stage"] == 2 and small["holds"] and small["best"] == "ZeRO-1"
    big = chapter.stage_advice(70 * 10**9, "bf16", "H100", 8)  # 140 GB do not: 3, and even ZeRO-3 needs offload
    assert big["rule_stage"] == 3 and not big["holds"] and big["best"] == "ZeRO-3 + CPU optimizer"
    # the sentence gives what the rule compared: 70.00 GB of weights fit an 80 GB H100, not with the head-room
    border = chapter.stage_advice(35 * 10**9, "bf16", "H100", 8)
    assert (
        border["rule_stage"] == 3
        and "(70.00 GB of bf16 weights, 87.50 GB with x1.25 head-room, do not fit" in (border["text"])
    )
    rows = chapter.fit_rows(70 * 10**9, "bf16", "H100")
    assert [r["config"] for r in rows][:3] == ["ZeRO-0", "ZeRO-1", "ZeRO-2"]
    assert rows[4]["N=8"].endswith("no") and rows[5]["N=8"].endswith("fits")  # ZeRO-3 vs ZeRO-3 + CPU optimizer


@pytest.mark.slow
def test_notebook_06_trains_through_accelerate_and_answers_from_its_run(executed_notebook):
    from labkit import results

    got = results.read(executed_notebook("06_accelerate_and_planning"))
    run, processes = got["run"], devices.auto_ranks("auto")[0]  # 2 CPU ranks here; one per GPU on a GPU machine
    assert run["engine"] == "DeepSpeedEngine" and run["stage"] == 3 and run["world_size"] == processes
    assert run["loss_last"] < run["loss_first"] and run["generated_right"] == run["generated"]
    assert [m["rank"] for m in got["memory"]] == list(range(processes))
    assert all(m["model states"] > 0 for m in got["memory"])
    assert got["plan"]["advice"]["rule_stage"] == 2


@pytest.mark.slow
def test_notebook_06s_cluster_lines_name_the_jobs_namespace(executed_notebook):
    """Its `labkit job exec deepspeed-interactive --backend kubernetes -- ...` named no namespace, unlike every line
    the CLI prints: both lines name the one the job commands use by default (where `accelerate config` wrote)."""
    cells = json.loads(executed_notebook("06_accelerate_and_planning").read_text())["cells"]
    printed = "".join("".join(o.get("text", [])) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    lines = [shlex.split(line) for line in printed.splitlines() if line.startswith("labkit ")]
    heads = {tuple(line[:3]): line[: line.index("--")] if "--" in line else line for line in lines}
    assert set(heads) == {("labkit", "accelerate", "config"), ("labkit", "job", "exec")}
    for head in heads.values():
        assert "-n" in head and head[head.index("-n") + 1] == manifests.NAMESPACES["cpu"], head


def test_the_printed_exec_line_finds_the_job_in_its_namespace_and_jobs_folder(tmp_path, capsys):
    """`accelerate config --job NAME -n team2 --jobs-dir D` printed `labkit job exec NAME -- ...` on the local
    backend: run as printed it looked in `workloads` of the default jobs folder ("does not exist")."""
    jobs = tmp_path / "jobs"
    spec = JobSpec(name="j4", namespace="team2", workers=2, slots_per_worker=1)
    with LocalBackend(root=jobs, namespace="team2").submit(spec) as job:
        job.wait_ready(timeout=30)
        flags = ["--stage", "2", "--num-processes", "2", "--num-machines", "2", "--mixed-precision", "no"]
        assert cli_main(["accelerate", "config", *flags, "--job", "j4", "-n", "team2", "--jobs-dir", str(jobs)]) == 0
        typed = shlex.split(capsys.readouterr().out.split("run: ", 1)[1])
        head = typed[: typed.index("--")]
        assert head == ["labkit", "job", "exec", "j4", "-n", "team2", "--jobs-dir", str(jobs)]
        assert cli_main(["job", "exec", *head[3:], "--", "true"]) == 0  # the same options find the same job
