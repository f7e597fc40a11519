"""What a local exec reads in the command line it is given: the launcher's own options (DeepSpeed's runner, mpirun,
`accelerate launch`), the rank count typed there, the rendezvous port.

Every worker of a local job is this host, so a count typed into the line is the number of ranks started here; a pod's
mpirun refuses more ranks than its hostfile's slots ("There are not enough slots available in the system"), and the
local exec refuses them the same way, before anything starts (LocalBackend.exec).
"""

from __future__ import annotations

import re
from pathlib import Path

from labkit import launch
from labkit.jobs.base import CLUSTER_HOSTFILE


def _runner_at(argv: list[str]) -> int | None:
    """Where DeepSpeed's runner's own arguments start in `argv` (`deepspeed ...`, `python -m
    deepspeed.launcher.runner ...`); None for any other command."""
    if Path(argv[0]).name == "deepspeed":
        return 1
    return argv.index("deepspeed.launcher.runner") + 1 if "deepspeed.launcher.runner" in argv else None


def _accelerate_at(argv: list[str]) -> int | None:
    """Where `accelerate launch`'s own arguments start in `argv` (`accelerate launch ...`, `python -m
    accelerate.commands.accelerate_cli launch ...`); None for any other command."""
    if "launch" in argv and (Path(argv[0]).name == "accelerate" or "accelerate.commands.accelerate_cli" in argv):
        return argv.index("launch") + 1
    return None


def _accelerate_own(argv: list[str]) -> list[str]:
    """`accelerate launch`'s own arguments: options after `-m`/the script are the script's."""
    at = _accelerate_at(argv) or len(argv)
    script = (i for i in range(at, len(argv)) if argv[i] in ("-m", "--module") or argv[i].endswith(".py"))
    return argv[at : next(script, len(argv))]


def option_values(args: list[str], *names: str) -> list[tuple[str, str]]:
    """(the name as typed, its value) for each of `names` in `args`, as `--name VALUE` or `--name=VALUE`, in the order
    they stand."""
    found = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in names:
            found.append((name, value))
        elif arg in names and i + 1 < len(args):
            found.append((arg, args[i + 1]))
    return found


# Open MPI 4 mpirun: the options a rank count is typed with, those that take no value and those that take two.
# Any other option takes one (a value never starts with "-"); the first argument that is no option is the program.
MPIRUN_COUNTS = ("-n", "-np", "--n", "--np", "-c")
_MPIRUN_SWITCHES = set(
    "--oversubscribe -oversubscribe --allow-run-as-root --tag-output -tag-output --timestamp-output --report-bindings"
    " --display-map -display-map --display-allocation --use-hwthread-cpus --merge-stderr-to-stdout --noprefix"
    " -q --quiet -v --verbose -V --version --nolocal --no-oversubscribe --enable-recovery --disable-recovery".split()
)
_MPIRUN_PAIRS = ("--mca", "-mca", "--gmca", "-gmca")
MPIRUN_OVERSUBSCRIBE = ("--oversubscribe", "-oversubscribe")
MPIRUN_HOSTS = ("-H", "-host", "--host")  # hosts of the command's own, with slots of their own
MPIRUN_HOSTFILES = ("--hostfile", "-hostfile", "--machinefile", "-machinefile", "--default-hostfile")
_MCA_TRUE = ("1", "true", "yes", "on", "enabled")  # what Open MPI reads as true in a boolean MCA parameter


def mpirun_options(args: list[str]) -> list[tuple[str, str]]:
    """(option, value) for each of mpirun's own options in `args` (what follows `mpirun`); a switch's value is ""."""
    found, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        option, taken = args[i], 2 if args[i] in _MPIRUN_PAIRS else 1
        if option in _MPIRUN_SWITCHES or i + 1 >= len(args) or args[i + 1].startswith("-"):
            taken = 0
        found.append((option, " ".join(args[i + 1 : i + 1 + taken])))
        i += 1 + taken
    return found


def _mpirun_makes_room(options: list[tuple[str, str]], job_hostfile: str) -> bool:
    """Whether an mpirun line places ranks beyond the job's slots by itself, as mpirun 4.1 runs them: it oversubscribes
    (--oversubscribe, a --map-by ...:OVERSUBSCRIBE modifier, MCA rmaps_base_oversubscribe) or names its own hosts (-H,
    a hostfile other than the job's)."""
    for option, value in options:
        mca = value.split() if option in _MPIRUN_PAIRS else []
        if (
            option in (*MPIRUN_OVERSUBSCRIBE, *MPIRUN_HOSTS)
            or (option in ("--map-by", "-map-by") and re.search(r"(?<!no)oversubscribe", value, re.IGNORECASE))
            or (mca[:1] == ["rmaps_base_oversubscribe"] and mca[-1].lower() in _MCA_TRUE)
            or (option in MPIRUN_HOSTFILES and value != job_hostfile)
        ):
            return True
    return False


def typed_ranks(argv: list[str], job_hostfile: str = CLUSTER_HOSTFILE) -> tuple[str, int, str] | None:
    """(the flag as typed, N, what N must fit) for a rank count typed into a launcher line, else None; what it must fit:
    "slots" (the job's workers x slots), "worker" (each worker's slots) or "" (only this machine).

    DeepSpeed's runner: --num_gpus N (or its alias --num_accelerators), N ranks per host, and every worker of a local
    job is this host; --num_nodes cannot add to it (the local hostfile has one line, and without one the runner refuses
    more than 1). Over the job's hostfile N must fit each worker's slots: the runner gives every host N ranks whatever
    its slots (runner.py apply_num_nodes_and_gpus), so on a pod of S devices ranks S..N-1 find none. mpirun: -n/-np N
    over the slots of `job_hostfile` (a pod's mpirun refuses more, unless the line oversubscribes or names its own
    hosts: _mpirun_makes_room). accelerate launch: --num_processes N, the TOTAL over the hostfile's slots (DeepSpeed
    starts a rank per slot; accelerate_route.job_command refuses any other count the same way)."""
    name, runner_at = Path(argv[0]).name, _runner_at(argv)
    if runner_at is not None:
        options = runner_options(argv[runner_at:])
        counts = [(o, v) for o, v in options if o in _RUNNER_RANKS]
        hostfiles = [v for o, v in options if o == "--hostfile"]
        fits = "worker" if hostfiles[-1:] == [job_hostfile] else ""
    elif name in ("mpirun", "mpiexec"):
        options = mpirun_options(argv[1:])
        counts = [(o, v) for o, v in options if o in MPIRUN_COUNTS]
        fits = "" if _mpirun_makes_room(options, job_hostfile) else "slots"
    elif _accelerate_at(argv) is not None:
        counts, fits = option_values(_accelerate_own(argv), "--num_processes", "--num-processes"), "slots"
    else:
        return None
    flag, value = counts[-1] if counts else ("", "")  # the last one counts (argparse; mpirun refuses two)
    return (flag, int(value), fits) if value.isdigit() and int(value) > 0 else None  # -1, 0: every slot


# deepspeed/launcher/multinode_runner.py (0.19.8): the runners whose validate_args refuses --num_nodes/--num_gpus
# and --include/--exclude, in these words; pdsh and slurm take them.
MPI_RUNNER_LAUNCHERS = ("openmpi", "mpich", "impi", "mvapich")


def runner_limit_refused(argv: list[str], job_hostfile: str, workers: int) -> tuple[str, str, str] | None:
    """(the flag, the launcher, what the runner says) where DeepSpeed's runner in the job's launcher pod refuses the
    line, else None.

    Over the job's hostfile (a host per worker there; one line here, so the runner here launches its ranks itself) the
    runner builds its MPI launcher when the launch is multi-node: more than one host once --num_nodes or an
    --include/--exclude filter has trimmed the hostfile, or --force_multi, and no --no_ssh (runner.py main); that
    launcher's validate_args refuses any --num_nodes or --num_gpus other than the default -1, and any filter. A limit
    beside a filter, or --include beside --exclude, the runner refuses on its own, here too."""
    at = _runner_at(argv)
    typed = runner_options(argv[at:]) if at is not None else []
    options = dict(typed)  # the last of each counts (argparse)
    dest = {"--num_accelerators": "--num_gpus"}  # aliases: one value, the last typed
    limits = {dest.get(o, o): (o, v) for o, v in typed if o in (*_RUNNER_RANKS, "--num_nodes")}
    limited = [flag for flag, value in limits.values() if value.lstrip("-").isdigit() and int(value) != -1]
    launcher = options.get("--launcher", "pdsh").lower()
    if options.get("--hostfile") != job_hostfile or launcher not in MPI_RUNNER_LAUNCHERS or "--no_ssh" in options:
        return None
    include, exclude = options.get("--include", ""), options.get("--exclude", "")
    if ((include or exclude) and limited) or (include and exclude):  # the runner refuses those itself, here too
        return None
    hosts = _hosts_left(workers, options.get("--num_nodes", "-1"), include, exclude)
    if hosts < 2 and "--force_multi" not in options:
        return None
    if include or exclude:
        flag, what = ("--include" if include else "--exclude"), "worker include/exclusion"
    elif limited:
        flag, what = limited[0], "limiting num nodes/gpus"
    else:
        return None
    return flag, launcher, f"{launcher} backend does not support {what}"


def _hosts_left(workers: int, nodes: str, include: str, exclude: str) -> int:
    """How many of the job's hosts the runner launches on: `--num_nodes` (apply_num_nodes_and_gpus) or a filter
    (parse_resource_filter: HOST[:SLOT,...]@...; --exclude drops a host only where it names no slots)."""
    if include:
        return len({entry.split(":")[0] for entry in include.split("@")})
    if exclude:
        return workers - len({entry for entry in exclude.split("@") if ":" not in entry})
    return min(workers, int(nodes)) if nodes.isdigit() and int(nodes) > 0 else workers


def with_master_port(argv: list[str]) -> tuple[list[str], str]:
    """The command and its rendezvous port: the command's own --master_port, else a free one.

    In a pod 29500 is always free (its own network namespace); on one host it is not. DeepSpeed's runner on one host
    hands its --master_port (default 29500) to the ranks, so a runner line without one gets the free port added; its
    openmpi launcher passes none (MPI discovery falls back to 29500): ranks of a local mpirun inherit MASTER_PORT.
    """
    if _accelerate_at(argv) is not None:
        return _with_main_process_port(argv)
    at = _runner_at(argv)
    if at is None:  # not DeepSpeed's runner: a --master_port anywhere is the port the command meant
        given = [value for _, value in option_values(argv, "--master_port")]
    else:  # the runner's own options only: after the script they are the script's
        given = [value for option, value in runner_options(argv[at:]) if option == "--master_port"]
    for value in given:
        if value.isdigit():
            return argv, value
    port = str(launch.free_port())
    return (argv, port) if at is None else ([*argv[:at], "--master_port", port, *argv[at:]], port)


def _with_main_process_port(argv: list[str]) -> tuple[list[str], str]:
    """`accelerate launch`: its --main_process_port (default 29500, refused when held: accelerate/utils/launch.py
    prepare_deepspeed_cmd_env) is the port it hands DeepSpeed's runner; options after `-m`/the script are the
    script's."""
    launch_at = _accelerate_at(argv)
    for _, value in option_values(_accelerate_own(argv), "--main_process_port"):
        if value.isdigit():
            return argv, value
    port = str(launch.free_port())
    return [*argv[:launch_at], "--main_process_port", port, *argv[launch_at:]], port


# deepspeed/launcher/runner.py (0.19.8) parse_args: its options, True for those that take a value (the rest are
# store_true). argparse also takes a unique prefix of a long one (--master_p) and a short one's value attached (-Hfile).
# The first argument that is no option is `user_script`, after which all is the script's own (argparse.REMAINDER).
_RUNNER_SWITCHES = "--module --no_python --no_local_rank --no_ssh --no_ssh_check --force_multi --save_pid"
_RUNNER_SWITCHES += " --bind_cores_to_rank --quiet"
_RUNNER_VALUED = "--hostfile --include --exclude --num_nodes --num_gpus --num_accelerators --master_port --master_addr"
_RUNNER_VALUED += " --node_rank --launcher --launcher_args --enable_each_rank_log --autotuning --bind_core_list"
_RUNNER_VALUED += " --ssh_port --venv_script --log_level"
_RUNNER_OPTIONS = {**dict.fromkeys(_RUNNER_VALUED.split(), True), **dict.fromkeys(_RUNNER_SWITCHES.split(), False)}
_RUNNER_RANKS = ("--num_gpus", "--num_accelerators")  # one dest: argparse aliases
_RUNNER_SHORT = {"-H": "--hostfile", "-i": "--include", "-e": "--exclude", "-q": "--quiet"}


def runner_options(args: list[str]) -> list[tuple[str, str]]:
    """(option, value) for each of the runner's own options in `args` (what follows `deepspeed`), named in full as
    argparse reads them; a switch's value is ""."""
    found, i = [], 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":  # "--": the script comes next
        if args[i][:2] in _RUNNER_SHORT:  # -H FILE or -HFILE
            name, value = _RUNNER_SHORT[args[i][:2]], args[i][2:] or None
        else:  # --name VALUE, --name=VALUE, or a unique prefix of the name
            name, eq, value = args[i].partition("=")
            value = value if eq else None
            prefixed = [o for o in _RUNNER_OPTIONS if o.startswith(name)]
            name = prefixed[0] if name not in _RUNNER_OPTIONS and len(prefixed) == 1 else name
        if value is None and _RUNNER_OPTIONS.get(name, True):  # an unknown option: the runner refuses it anyway
            i += 1
            value = args[i] if i < len(args) else ""
        found.append((name, value or ""))
        i += 1
    return found
