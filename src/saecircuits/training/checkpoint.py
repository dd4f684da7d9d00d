"""A training run's checkpoint in ``OUT/checkpoint``: every SAE, its Adam state and the stream position.

Layout::

    state.safetensors   sae{i}/<weight or buffer>, opt{i}/<param id>/<Adam state>, store/<carried rows>
    rank{r}.safetensors several processes: rank r's part (its stream position; with parallel: saes also its SAEs)
    state.json          step, tokens_emitted, names, config, optimizer_param_groups, store, history, seconds;
                        several processes also world_size, parallel and ranks (every rank's stream position)

``i`` indexes ``cfg.saes``. Rank 0 writes the whole folder beside the old one and swaps it in, so a
kill leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saecircuits.core import distributed
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import read_json, staged_dir, write_json
from saecircuits.core.tensors import load_tensors, save_tensors

if TYPE_CHECKING:  # for annotations only: the trainer imports this module
    from saecircuits.training.trainer import Trainer

# fields that do not change the trained weights: a checkpoint made with other values resumes
NOT_IN_CHECKPOINT = {"out", "wandb", "checkpoint_every_tokens", "parallel", "n_devices"}


def checkpoint_dir(out: Path) -> Path:
    return out / "checkpoint"


def save(t: Trainer) -> None:
    """Every SAE, its Adam state and the stream position, written by rank 0 into a fresh folder swapped in whole.

    Several processes: ``state.safetensors`` holds rank 0's part, ``rank{r}.safetensors`` rank r's (its
    stream position; with ``parallel: saes`` also its SAEs), ``state.json`` every rank's stream position."""
    tensors, opt_meta = _sae_tensors(t)
    store_json, store_tensors = t.store.state()
    tensors.update({f"store/{k}": v for k, v in store_tensors.items()})
    if t.rank != 0:  # hand this rank's part to rank 0, which writes it
        if t.data_parallel:  # the SAEs are rank 0's
            tensors, opt_meta = {k: v for k, v in tensors.items() if k.startswith("store/")}, {}
        distributed.send_to_main((tensors, opt_meta, {"store": store_json, "tokens_emitted": t.store.tokens_emitted}))
        return
    state = {"step": t.step, "tokens_emitted": t.store.tokens_emitted, "names": t.all_names,
             "config": t.cfg.model_dump(mode="json", exclude=NOT_IN_CHECKPOINT),
             "optimizer_param_groups": None, "store": store_json, "history": t.history, "seconds": t.seconds}
    with staged_dir(checkpoint_dir(t.out), ".checkpoint.") as tmp:
        save_tensors(tmp / "state.safetensors", tensors)
        if t.world > 1:
            state.update(world_size=t.world, parallel="data" if t.data_parallel else "saes",
                         ranks=[{"store": store_json, "tokens_emitted": t.store.tokens_emitted}])
            for r in range(1, t.world):  # one rank's part in memory at a time
                part, metas, info = distributed.receive_from(r)
                save_tensors(tmp / f"rank{r}.safetensors", part)
                opt_meta.update(metas)
                state["ranks"].append(info)
        state["optimizer_param_groups"] = [opt_meta[i] for i in sorted(opt_meta)]
        write_json(tmp / "state.json", state)


def _sae_tensors(t: Trainer) -> tuple[dict[str, torch.Tensor], dict[int, list]]:
    """This process's SAEs (``sae{i}/...``) and their Adam state (``opt{i}/{param id}/...``), and Adam's
    param groups by SAE index i."""
    tensors: dict[str, torch.Tensor] = {}
    opt_meta = {}
    for i, sae, opt in zip(t.index, t.saes, t.opts, strict=True):
        for k, v in sae.state_dict().items():
            tensors[f"sae{i}/{k}"] = v
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"opt{i}/{pid}/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        opt_meta[i] = sd["param_groups"]
    return tensors, opt_meta


def load(t: Trainer) -> bool:
    """Restore the trainer from its checkpoint; False when there is none. Refuses one made by another run."""
    folder = checkpoint_dir(t.out)
    if not (folder / "state.json").exists():
        return False
    state = read_json(folder / "state.json", what="checkpoint")
    _check_same_run(t, state, folder)
    tensors = load_tensors(folder / "state.safetensors", what="checkpoint")
    if t.rank != 0:  # this rank's stream position (and, with parallel: saes, its SAEs)
        own = load_tensors(folder / f"rank{t.rank}.safetensors", what="checkpoint")
        tensors = {**{k: v for k, v in tensors.items() if not k.startswith("store/")}, **own} if t.data_parallel else own
    for i, sae, opt in zip(t.index, t.saes, t.opts, strict=True):
        sae.load_state_dict({k[len(f"sae{i}/"):]: v for k, v in tensors.items() if k.startswith(f"sae{i}/")})
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith(f"opt{i}/"):
                _, pid, name = k.split("/", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"][i]})
    position = state["ranks"][t.rank] if t.world > 1 else state
    t.store.load_state(position["store"], {k[len("store/"):]: v for k, v in tensors.items() if k.startswith("store/")})
    t.store.tokens_emitted = position["tokens_emitted"]
    t.step = state["step"]
    t.history = state["history"]
    t.seconds = state["seconds"]
    return True


def _check_same_run(t: Trainer, state: dict, folder: Path) -> None:
    """The checkpoint was made with this config, this many processes and this parallel setting."""
    mine = t.cfg.model_dump(mode="json", exclude=NOT_IN_CHECKPOINT)
    if state["config"] != mine:
        diff = sorted(k for k in mine if mine.get(k) != state["config"].get(k))
        raise SaecircuitsError(f"the checkpoint in {folder} was made with another config (differs in: {', '.join(diff)})",
                               "resume with the same config, or choose another --out")
    made_by = state.get("world_size", 1)
    if made_by != t.world:
        how = f"torchrun --nproc_per_node {made_by} ..." if made_by > 1 else "one process (without torchrun)"
        raise SaecircuitsError(f"the checkpoint in {folder} was made by {made_by} process(es), this run has {t.world}",
                               f"resume it with {how}, or choose another --out")
    parallel = "data" if t.data_parallel else "saes"
    if t.world > 1 and state.get("parallel") != parallel:
        raise SaecircuitsError(f"the checkpoint in {folder} was made with parallel: {state.get('parallel')}, this run "
                               f"has parallel: {parallel}", "resume with the same parallel setting")
