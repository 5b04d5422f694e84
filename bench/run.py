"""loralab vs HF PEFT on the same models and configs, in one run; prints ratios, writes JSON.

    python bench/run.py                      # everything (tens of minutes on 2 cores)
    python bench/run.py --models minilm --steps 10

Per model shape (MiniLM-L6 with its real weights, GPT-2-small and a 6-layer Llama with
random weights), batch 16 × 128 tokens, 2 threads:

* train step (forward + backward + AdamW) for LoRA r=8 on q/v and on all linear layers,
  DoRA r=8 the same — loralab and PEFT alternating step by step so drift hits both;
* the floor: every weight frozen but gradients flowing to the inputs; and full fine-tuning;
* "floor + inputs": the floor, but each layer a config adapts also keeps its input until its
  backward, as LoRA's ∂L/∂A = s·(g·B)ᵀ·x must. Its rise over the floor is the memory cost
  of LoRA without its arithmetic; LoRA over it is the cost of the rank-r products;
* peak memory of each configuration, each in a fresh subprocess: the peak RSS of 3 train
  steps after the model is built (peak reset through /proc/self/clear_refs), and its rise
  above the loaded model ("step MB": activations, gradients, optimizer state);
* inference latency: base, unmerged adapter, merged; batch 16 and batch 1;
* time to inject adapters into a 24-layer BERT-large-shaped model.

Absolute times on a shared machine are noise; ratios from the same run are the result.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

import loralab as ll

BATCH, SEQ, RANK = 16, 128, 8
MODELS = ("minilm", "gpt2", "llama")
CONFIGS = ("lora-qv", "lora-all", "dora-qv", "dora-all")
QV = {"minilm": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


# ----- models -----------------------------------------------------------------------------------
def build(shape: str, attention: Optional[str] = None) -> torch.nn.Module:
    """The base model (no task head) of each shape, fixed weights, dropout off; ``attention`` is the
    attention implementation ("eager", "sdpa"; None: transformers' default, SDPA)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    impl = {} if attention is None else {"attn_implementation": attention}
    if shape == "minilm":
        from loralab.models import minilm_dir

        return BertModel.from_pretrained(minilm_dir(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                         **impl).train()
    if shape == "gpt2":
        config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model_class = GPT2Model
    elif shape == "llama":
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=6,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
        model_class = LlamaModel
    elif shape == "bert-large":
        config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        model_class = BertModel
    else:
        raise ValueError(shape)
    if attention is not None:
        config._attn_implementation = attention
    return model_class(config).train()


def inputs(model: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=generator)


def targets(shape: str, config: str):
    return QV[shape] if config.endswith("qv") else "all-linear"


def adapt(model: torch.nn.Module, shape: str, config: str, lib: str) -> torch.nn.Module:
    """Apply one config with one library; B is made non-zero so no path is skipped."""
    dora = config.startswith("dora")
    if lib == "loralab":
        ll.inject(model, ll.LoraConfig(r=RANK, alpha=16, targets=targets(shape, config), dora=dora))
    else:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=16, target_modules=targets(shape, config),
                                                           use_dora=dora, init_lora_weights=False))
    return model


def frozen_floor(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    return model


class KeepInput(torch.autograd.Function):
    """Identity on a layer's output that holds the layer's input until the backward reaches it."""

    @staticmethod
    def forward(ctx, out, x):
        ctx.save_for_backward(x)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def floor_keeping_inputs(model: torch.nn.Module, shape: str, config: str) -> torch.nn.Module:
    """The frozen floor where every layer `config` would adapt keeps its input for the backward."""
    from loralab.adapters.inject import match_targets

    frozen_floor(model)
    names = set(match_targets(model, ll.LoraConfig(r=RANK, targets=targets(shape, config))))
    for name, module in model.named_modules():
        if name in names:
            module.register_forward_hook(lambda _module, args, out: KeepInput.apply(out, args[0]))
    return model


# ----- one step -----------------------------------------------------------------------------------
class Trainer:
    """A model and its AdamW; `step()` runs forward + backward + optimizer step."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, floor: bool = False):
        self.model, self.ids, self.floor = model, ids, floor
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
        self.embed = model.get_input_embeddings()

    def step(self) -> None:
        if self.floor:  # gradients flow to the inputs through every frozen layer
            embeds = self.embed(self.ids).detach().requires_grad_()
            out = self.model(inputs_embeds=embeds).last_hidden_state
        else:
            out = self.model(input_ids=self.ids).last_hidden_state
        out.float().square().mean().backward()
        if self.optimizer:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for key, fn in fns.items():
            t = timed(fn)
            if i >= warmup:
                times[key].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


# ----- measurements ---------------------------------------------------------------------------------
def bench_train(shape: str, warmup: int, steps: int) -> dict:
    """Median step time of every configuration, all stepped round-robin so drift hits all alike."""
    base = build(shape)
    ids = inputs(base)
    steps_by_name = {
        "floor": Trainer(frozen_floor(copy.deepcopy(base)), ids, floor=True).step,
        "full": Trainer(copy.deepcopy(base), ids).step,
    }
    for config in ("lora-qv", "lora-all"):
        model = floor_keeping_inputs(copy.deepcopy(base), shape, config)
        steps_by_name[f"floor+inputs/{config}"] = Trainer(model, ids, floor=True).step
    for config in CONFIGS:
        for lib in ("loralab", "peft"):
            steps_by_name[f"{config}/{lib}"] = Trainer(adapt(copy.deepcopy(base), shape, config, lib), ids).step
    results = alternate(steps_by_name, warmup, steps)
    for config in CONFIGS:
        print(f"  {shape} {config}: loralab {results[f'{config}/loralab']:.3f}s  peft {results[f'{config}/peft']:.3f}s",
              flush=True)
    return results


def bench_inference(shape: str, warmup: int, steps: int) -> dict:
    base = build(shape).eval()
    results = {}
    for batch in (16, 1):
        ids = inputs(base)[:batch]
        unmerged = adapt(copy.deepcopy(base), shape, "lora-qv", "loralab").eval()
        merged = adapt(copy.deepcopy(base), shape, "lora-qv", "loralab").eval()
        ll.merge(merged)
        peft_model = adapt(copy.deepcopy(base), shape, "lora-qv", "peft").eval()

        def run(model):
            return lambda: model(input_ids=ids)

        with torch.no_grad():
            times = alternate({"base": run(base), "unmerged": run(unmerged), "merged": run(merged),
                               "peft_unmerged": run(peft_model)}, warmup, steps)
        results.update({f"b{batch}/{k}": v for k, v in times.items()})
    return results


def bench_inject(repeats: int) -> dict:
    import peft

    times: dict[str, list[float]] = {"loralab": [], "peft": []}
    cfg = {"r": RANK, "targets": ["query", "key", "value", "dense"]}
    for _ in range(repeats):  # collect first: garbage left by earlier parts must not be timed
        model = build("bert-large")
        gc.collect()
        times["loralab"].append(timed(lambda: ll.inject(model, ll.LoraConfig(r=cfg["r"], targets=cfg["targets"]))))
        model = build("bert-large")
        gc.collect()
        times["peft"].append(timed(lambda: peft.get_peft_model(
            model, peft.LoraConfig(r=cfg["r"], target_modules=cfg["targets"]))))
    return {k: statistics.median(v) for k, v in times.items()}


def memory_probe(shape: str, config: str, lib: str) -> dict:
    """Run in a fresh process: peak RSS of 3 train steps, and its rise above the loaded model."""
    torch.set_num_threads(2)
    base = build(shape)
    ids = inputs(base)
    if config == "floor":
        trainer = Trainer(frozen_floor(base), ids, floor=True)
    elif config == "full":
        trainer = Trainer(base, ids)
    else:
        trainer = Trainer(adapt(base, shape, config, lib), ids)
    with torch.no_grad():  # page in weights memory-mapped from safetensors, in every config alike
        for param in trainer.model.parameters():
            param.sum()
    gc.collect()
    reset_peak_rss()
    loaded = proc_status_mb("VmRSS")
    for _ in range(3):
        trainer.step()
    peak = proc_status_mb("VmHWM")
    return {"loaded_mb": loaded, "peak_mb": peak, "step_mb": peak - loaded,
            "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def exact_peak_env() -> dict:
    """The environment for a memory probe whose peak RSS follows the live tensor bytes.

    glibc raises its mmap threshold each time a large block is freed, after which blocks of that
    size come from the heap and stay resident when freed: peak RSS then depends on the order of
    frees (the same dropout config measured 450–535 MB in four runs). A fixed 128 KiB threshold
    maps every larger tensor on its own and unmaps it on free.
    """
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


def bench_memory(shape: str) -> dict:
    results = {}
    jobs = [("floor", "-"), ("full", "-")] + [(c, lib) for c in CONFIGS for lib in ("loralab", "peft")]
    for config, lib in jobs:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", shape, config, lib],
                             capture_output=True, text=True, check=True)
        results[config if lib == "-" else f"{config}/{lib}"] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# ----- shared by the bench scripts ---------------------------------------------------------------------
def bench_parser(doc: str, out_name: str, steps: int, warmup: int) -> argparse.ArgumentParser:
    """The flags every bench script takes: --models, --steps, --warmup, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,llama", help="comma-separated model shapes")
    parser.add_argument("--steps", type=int, default=steps, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls first")
    parser.add_argument("--out", default=str(Path(__file__).with_name(out_name)))
    return parser


def finish(results: dict, out: str, table: str, started: float) -> None:
    """Write the JSON, print the table and where it went."""
    results["seconds"] = time.time() - started
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\nwrote {out} ({results['seconds']:.0f} s)")


# ----- report ---------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    import peft
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "loralab": ll.__version__, "batch": BATCH, "seq": SEQ, "rank": RANK}


def table(results: dict) -> str:
    lines = []
    for shape, res in results["models"].items():
        t, m = res["train"], res.get("memory", {})
        lines.append(f"\n## {shape}: train step (median s), batch {BATCH} × {SEQ}")
        lines.append(f"floor {t['floor']:.3f}s   full FT {t['full']:.3f}s   floor + inputs kept: "
                     f"q/v {t['floor+inputs/lora-qv']:.3f}s ({t['floor+inputs/lora-qv'] / t['floor']:.3f}), "
                     f"all {t['floor+inputs/lora-all']:.3f}s ({t['floor+inputs/lora-all'] / t['floor']:.3f})")
        lines.append(f"{'config':<10} {'loralab':>8} {'peft':>8} {'ours/peft':>9} {'ours/floor':>10} "
                     f"{'ours/floor+inputs':>17} {'step MB ours':>12} {'step MB peft':>12}")
        for config in CONFIGS:
            ours, theirs = t[f"{config}/loralab"], t[f"{config}/peft"]
            kept = t["floor+inputs/lora-" + config.split("-")[1]]
            mo, mp = m.get(f"{config}/loralab", {}), m.get(f"{config}/peft", {})
            lines.append(f"{config:<10} {ours:>8.3f} {theirs:>8.3f} {ours / theirs:>9.3f} {ours / t['floor']:>10.3f} "
                         f"{ours / kept:>17.3f} {mo.get('step_mb', float('nan')):>12.0f} "
                         f"{mp.get('step_mb', float('nan')):>12.0f}")
        for kind in ("qv", "all"):
            dora, lora = t[f"dora-{kind}/loralab"], t[f"lora-{kind}/loralab"]
            line = f"DoRA/LoRA ({kind}) step {dora / lora:.3f}"
            if m:
                line += (f"   peak {m[f'dora-{kind}/loralab']['peak_mb'] / m[f'lora-{kind}/loralab']['peak_mb']:.3f}"
                         f"   step memory {m[f'dora-{kind}/loralab']['step_mb'] / m[f'lora-{kind}/loralab']['step_mb']:.3f}")
            lines.append(line)
        inf = res.get("inference")
        if inf:
            for b in (16, 1):
                lines.append(f"inference b{b}: base {inf[f'b{b}/base'] * 1e3:.1f} ms, unmerged/base "
                             f"{inf[f'b{b}/unmerged'] / inf[f'b{b}/base']:.3f}, merged/base "
                             f"{inf[f'b{b}/merged'] / inf[f'b{b}/base']:.3f}, peft unmerged/base "
                             f"{inf[f'b{b}/peft_unmerged'] / inf[f'b{b}/base']:.3f}")
    if "inject" in results:
        i = results["inject"]
        lines.append(f"\n## inject into 24-layer BERT-large: loralab {i['loralab'] * 1e3:.0f} ms, peft "
                     f"{i['peft'] * 1e3:.0f} ms, ratio {i['loralab'] / i['peft']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: minilm,gpt2,llama")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: memory,inference,inject")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--memory-probe", nargs=3, metavar=("SHAPE", "CONFIG", "LIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    torch.set_num_threads(2)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"machine": machine(), "models": {}}
    started = time.time()
    for shape in args.models.split(","):
        print(f"{shape}: train steps", flush=True)
        res = {"train": bench_train(shape, args.warmup, args.steps)}
        if "inference" not in skip:
            print(f"{shape}: inference", flush=True)
            res["inference"] = bench_inference(shape, args.warmup, args.steps)
        if "memory" not in skip:
            print(f"{shape}: memory (fresh processes)", flush=True)
            res["memory"] = bench_memory(shape)
        results["models"][shape] = res
    if "inject" not in skip:
        print("inject: 24-layer BERT-large", flush=True)
        results["inject"] = bench_inject(repeats=5)
    finish(results, args.out, table(results), started)


if __name__ == "__main__":
    main()
