"""Many processes, real launchers: torchrun as the README types it, FSDP2 training, and saving adapters from
FSDP1/FSDP2-wrapped models (gloo on CPU; CUDA variants skip without a GPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training import ENV, adapter_tensors, run_cli

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def launch(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def flags(tiny: dict, out: Path, *extra: str) -> list[str]:
    """The README's torchrun command's flags, spelt as there (--rank, not --r, which torchrun would take)."""
    return ["train", "--model", tiny["model"], "--data", tiny["data"], "--method", "lora", "--rank", "8",
            "--alpha", "16", "--targets", "query,value", "--epochs", "1", "--batch-size", "8", "--lr", "5e-3",
            "--max-length", "32", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """One process, the same run: the reference."""
    out = tmp_path_factory.mktemp("single") / "run"
    run_cli(flags(tiny, out, "--threads", "1"))
    return out


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    """The adapters of runs a and b agree."""
    one, two = adapter_tensors(a), adapter_tensors(b)
    assert one.keys() == two.keys()
    assert max(one[k].abs().max().item() for k in one if "lora_B" in k) > 1e-3  # training moved B
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=atol, rtol=0, msg=key)


@pytest.mark.skipif(shutil.which(TORCHRUN) is None and not Path(TORCHRUN).exists(), reason="no torchrun")
def test_readme_torchrun_command_as_written(tiny, single, tmp_path):
    """`torchrun --standalone --nproc_per_node=2 -m loralab train … --rank 8 …` (torchrun used to swallow --r)."""
    proc = launch([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "loralab", *flags(tiny, tmp_path / "ddp")])
    assert sum(line.startswith('{"out"') for line in proc.stdout.splitlines()) == 1  # one result line, not one per process
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["device"] == "cpu"
    assert_same_adapter(single, tmp_path / "ddp")


def test_fsdp2_trains_two_processes_like_one(tiny, single, tmp_path):
    """--fsdp: each block sharded over 2 processes (FSDP2, gloo); the saved adapter equals one process's."""
    launch([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "loralab",
            *flags(tiny, tmp_path / "fsdp", "--fsdp", "--checkpoint-every", "5")])
    result = json.loads((tmp_path / "fsdp" / "result.json").read_text())
    assert result["world_size"] == 2
    assert_same_adapter(single, tmp_path / "fsdp")
    reference = json.loads((single / "result.json").read_text())
    assert result["test"]["accuracy"] == reference["test"]["accuracy"]


def test_fsdp_needs_several_processes(tiny, tmp_path):
    proc = run_cli(flags(tiny, tmp_path / "one", "--fsdp"), check=False)
    assert proc.returncode == 2
    assert "--fsdp shards a model over the processes of torchrun; this is one process." in proc.stderr


WRAPPED = '''
import os, sys, torch, torch.distributed as dist
from torch import nn
import loralab as ll

dist.init_process_group("gloo")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
ll.inject(model, ll.LoraConfig(r=2, targets=["0", "2"], dora={dora}))
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_()
if dist.get_rank() == 0:
    ll.save_adapter(model, "{out}/plain")
kind = "{kind}"
if kind == "fsdp2":
    from torch.distributed.fsdp import fully_shard
    fully_shard(model[0]); fully_shard(model[2]); fully_shard(model)
    wrapped = model
else:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    wrapped = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))  # CPU: name the device
ll.save_adapter(wrapped, "{out}/sharded", write=dist.get_rank() == 0)
try:
    ll.merge(wrapped)
except ll.AdapterError as err:
    if dist.get_rank() == 0:
        print("REFUSED", err)
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # everything is written: skip interpreter teardown, where gloo's threads rarely abort (SIGABRT, CI 2026-12-04)
'''


@pytest.mark.parametrize("kind", ["fsdp2", "fsdp1"])
@pytest.mark.parametrize("dora", [False, True])
def test_save_adapter_from_a_sharded_model(tmp_path, kind, dora):
    """ll.save_adapter on an FSDP2 (fully_shard) or FSDP1 (use_orig_params) model gathers the adapter's shards: the
    file equals the unsharded model's (it failed with 'invalid python storage' / 'no adapter named default');
    merging a sharded model is refused with what to do instead."""
    script = tmp_path / "wrapped.py"
    script.write_text(WRAPPED.format(out=tmp_path, kind=kind, dora=dora))
    proc = launch([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script)], timeout=300)
    from safetensors.torch import load_file

    plain = load_file(str(tmp_path / "plain" / "adapter_model.safetensors"))
    sharded = load_file(str(tmp_path / "sharded" / "adapter_model.safetensors"))
    assert plain.keys() == sharded.keys()
    for key in plain:
        torch.testing.assert_close(sharded[key], plain[key], atol=0, rtol=0, msg=key)
    assert f"REFUSED merge changes the model's layers or weights, which {kind.upper()} has sharded" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu(tiny, single, tmp_path):
    """--device cuda trains the same run on a GPU; the adapter agrees with the CPU's to float tolerance."""
    run_cli(flags(tiny, tmp_path / "gpu", "--device", "cuda"))
    result = json.loads((tmp_path / "gpu" / "result.json").read_text())
    assert result["device"].startswith("cuda") and result["peak_device_memory_mb"] > 0
    assert_same_adapter(single, tmp_path / "gpu", atol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_ddp_on_two_gpus(tiny, single, tmp_path):
    launch([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "loralab", *flags(tiny, tmp_path / "nccl")])
    assert_same_adapter(single, tmp_path / "nccl", atol=1e-3)


def test_training_flags_are_not_taken_by_launchers():
    """No train flag is an abbreviation torchrun's parser would take (--r matched --rdzv-*, --role, …)."""
    from torch.distributed.run import get_args_parser

    from loralab.cli import build_parser

    theirs = [o for action in get_args_parser()._actions for o in action.option_strings if o.startswith("--")]
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    ours = [o for action in train._actions for o in action.option_strings if o.startswith("--")
            and o not in ("--help", "--r", "--d")]  # the old short aliases: still accepted, documented as unsafe
    clashes = {o: [t for t in theirs if t.startswith(o)] for o in ours if any(t.startswith(o) for t in theirs)}
    assert clashes == {}



ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate is not installed")
def test_accelerate_launch_two_cpu_processes(tiny, single, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m loralab train …` on CPU: accelerate's torchrun starts 2
    processes (without --multi_gpu, accelerate starts one process on a machine without GPUs)."""
    launch([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loralab", *flags(tiny, tmp_path / "acc")])
    result = json.loads((tmp_path / "acc" / "result.json").read_text())
    assert result["world_size"] == 2 and result["device"] == "cpu"
    assert_same_adapter(single, tmp_path / "acc")
