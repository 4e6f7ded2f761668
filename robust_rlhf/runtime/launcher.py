"""Scale-out through DeepSpeed's own launcher: the `deepspeed` command line for a stage, built from the
`launcher:` params, and the re-exec that runs it.

`python -m stages.ppo ...` with `launcher.num_gpus: 4` re-runs itself as
`python -m deepspeed.launcher.runner --num_gpus 4 --master_port P --module stages.ppo ...`; the
launcher starts one process per GPU (or per hostfile slot on each node, over pdsh) with RANK,
WORLD_SIZE and LOCAL_RANK set, and each joins the process group in `distributed.init_distributed`.
On DeepSpeed's CPU accelerator the same command starts CPU processes that talk over gloo.
"""

from __future__ import annotations

import os
import subprocess
import sys

from robust_rlhf.config import LauncherParams

# Set in every process the deepspeed (or torchrun) launcher starts; a stage seeing one is a rank, not
# the process that should launch.
LAUNCHED_ENV_KEYS = ("LOCAL_RANK", "RANK")


def deepspeed_launch_command(
    launcher: LauncherParams, module: str, stage_argv: list[str], *, python: str, master_port: int
) -> list[str]:
    """The command that runs `python -m <module> <stage_argv>` on `launcher.world_size` processes.

    It calls the launcher through `python -m deepspeed.launcher.runner` (what the `deepspeed` script
    runs) so the ranks use this interpreter and its venv.
    """
    command = [python, "-m", "deepspeed.launcher.runner", "--num_gpus", str(launcher.num_gpus)]
    if launcher.hostfile is not None:
        command += ["--hostfile", launcher.hostfile, "--num_nodes", str(launcher.num_nodes)]
    if launcher.master_addr is not None:
        command += ["--master_addr", launcher.master_addr]
    command += ["--master_port", str(master_port), "--module", module, *stage_argv]
    return command


def launch_environment(launcher: LauncherParams, environ: dict[str, str]) -> dict[str, str]:
    """The launcher's environment. DeepSpeed's CPU accelerator counts one device per NUMA node unless
    LOCAL_SIZE says how many processes a node runs; with it, `--num_gpus N` starts N CPU ranks."""
    env = dict(environ)
    if env.get("DS_ACCELERATOR") == "cpu":
        env["LOCAL_SIZE"] = str(launcher.num_gpus)
    return env


def launched_by_launcher(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(key in environ for key in LAUNCHED_ENV_KEYS)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunch_under_deepspeed(launcher: LauncherParams, module: str, stage_argv: list[str]) -> int:
    """Run the stage on `launcher.world_size` processes and return the launcher's exit code (a failing
    rank's code, e.g. 2 for bad input)."""
    port = launcher.master_port if launcher.master_port is not None else free_port()
    command = deepspeed_launch_command(launcher, module, stage_argv, python=sys.executable, master_port=port)
    print(f"launching {module} on {launcher.world_size} processes: {' '.join(command)}", flush=True)
    return subprocess.run(command, env=launch_environment(launcher, dict(os.environ))).returncode
