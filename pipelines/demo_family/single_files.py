"""The demo dev transformer as single files: BFL's original `.safetensors` layout and GGUF.

Real FLUX.1 transformers are shared as one file in BFL's key layout (`double_blocks.0.img_attn.qkv.weight`,
as ComfyUI loads them), and city96's GGUF files quantize that same layout. These builders write the
tiny transformer the same ways, offline, so that the loading code (`from_single_file`, diffusers'
own converter back to its layout) runs on them as on a 12B file:

    python -m pipelines.demo_family.single_files [OUT_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# diffusers name -> BFL name of every tensor that is only renamed (per block: {i} is the block).
_RENAMED = {
    "time_text_embed.timestep_embedder.linear_{n}": "time_in.{layer}",
    "time_text_embed.text_embedder.linear_{n}": "vector_in.{layer}",
    "time_text_embed.guidance_embedder.linear_{n}": "guidance_in.{layer}",
}
_TOP = {"context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
_DOUBLE = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_FUSED = {  # BFL fuses these diffusers projections (in this order) into one
    "double_blocks.{i}.img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "double_blocks.{i}.txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "single_blocks.{i}.linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
}


def block_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key.split(".")[1] for key in state if key.startswith(prefix)})


def to_bfl_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`, for the keys a
    FLUX transformer has (the demo's and the real one's)."""
    state, bfl = dict(state), {}

    def move(source: str, target: str, suffixes=("weight", "bias")) -> None:
        for suffix in suffixes:
            bfl[f"{target}.{suffix}"] = state.pop(f"{source}.{suffix}")

    for n, layer in ((1, "in_layer"), (2, "out_layer")):
        for source, target in _RENAMED.items():
            if f"{source.format(n=n)}.weight" in state:
                move(source.format(n=n), target.format(layer=layer))
    for source, target in _TOP.items():
        move(source, target)
    # diffusers' AdaLayerNormContinuous orders (scale, shift); BFL's (shift, scale).
    for suffix in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{suffix}").chunk(2, dim=0)
        bfl[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale])
    for kind, prefix, renamed, norms in (("double", "transformer_blocks", _DOUBLE, _DOUBLE_NORMS),
                                         ("single", "single_transformer_blocks", _SINGLE, _SINGLE_NORMS)):
        for i in range(block_count(state, prefix + ".")):
            block = f"{prefix}.{i}."
            for source, target in renamed.items():
                move(block + source, f"{kind}_blocks.{i}.{target}")
            for source, target in norms.items():
                bfl[f"{kind}_blocks.{i}.{target}.scale"] = state.pop(f"{block}{source}.weight")
            for target, parts in _FUSED.items():
                if target.startswith(kind):
                    for suffix in ("weight", "bias"):
                        bfl[f"{target.format(i=i)}.{suffix}"] = torch.cat(
                            [state.pop(f"{block}{part}.{suffix}") for part in parts])
    if state:
        raise ValueError(f"no BFL name for {sorted(state)[:5]}")
    return bfl


def dev_transformer_state(family: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The demo dev transformer's tensors, in diffusers' layout (its folder is sharded, as the hub's)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(family["dev"], subfolder="transformer", local_files_only=True)
    return {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}


def write_bfl_safetensors(state: dict[str, torch.Tensor], file: Path) -> Path:
    from safetensors.torch import save_file

    save_file({key: tensor.contiguous() for key, tensor in to_bfl_layout(state).items()}, str(file))
    return file


def write_gguf(state: dict[str, torch.Tensor], file: Path, quant: str) -> Path:
    """A GGUF file as city96's FLUX ones are: BFL keys, the matrices quantized to `quant` ("Q8_0",
    "Q4_0", ...), vectors and matrices whose rows do not split into quant blocks kept in float32."""
    import gguf

    kind = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    writer = gguf.GGUFWriter(str(file), arch="flux")
    for key, tensor in to_bfl_layout(state).items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % block == 0:
            writer.add_tensor(key, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return file


SINGLE_FILES = {"bfl": "flux1-dev-tiny.safetensors", "Q8_0": "flux1-dev-tiny-Q8_0.gguf",
                "Q4_0": "flux1-dev-tiny-Q4_0.gguf"}


def build_single_files(family: dict[str, Path], folder: Path) -> dict[str, Path]:
    """The demo dev transformer as BFL's single file and as GGUF Q8_0 and Q4_0, in `folder` (kept
    when there already): {"bfl" | "Q8_0" | "Q4_0": file}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {kind: folder / name for kind, name in SINGLE_FILES.items()}
    state = dev_transformer_state(family)
    for kind, file in files.items():
        if not file.exists():
            partial = file.with_name(".partial-" + file.name)
            (write_bfl_safetensors(state, partial) if kind == "bfl" else write_gguf(state, partial, kind)).replace(file)
    return files


def main(argv: list[str]) -> None:
    from pipelines.demo_family.family import build_tiny_family, default_root

    folder = Path(argv[0]) if argv else default_root() / "single-files"
    for kind, file in build_single_files(build_tiny_family(), folder).items():
        print(f"{kind:5s} {file}")


if __name__ == "__main__":
    main(sys.argv[1:])
