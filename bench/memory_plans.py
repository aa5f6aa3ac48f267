"""The memory plan `--residency auto` chooses for the full-size models on 80, 48, 24, 16 and 12 GB
cards, with and without `--quantize auto`.

The sizes are counted on the real architectures built on the meta device
(`pipelines.models.architectures`); each card's free memory is its size less the CUDA context
(`memory_plan.simulated_free_bytes`). Nothing is downloaded and no GPU is needed:

    python -m bench.memory_plans [--fill] [--no-fp8] [--readme]

`--readme` prints only the table of README's "Speed and memory" (a test checks it is there).
"""

from __future__ import annotations

import argparse

from pipelines.models.architectures import FLUX_TRANSFORMER, FLUX_VAE, component_sizes
from pipelines.models.components import TRANSFORMERS
from pipelines.models.memory_plan import (
    T5,
    MemoryPlan,
    activation_bytes,
    choose_plan,
    simulated_free_bytes,
    size_text,
)
from pipelines.models.sources import ModelSources

CARDS_GIB = (80, 48, 24, 16, 12)


def card_plans(sources: ModelSources, fp8_available: bool = True) -> list[tuple[int, bool, MemoryPlan]]:
    """(card GiB, quantization allowed, plan) for every card, without quantization and with it."""
    sizes = component_sizes(sources)
    activation = activation_bytes(FLUX_TRANSFORMER, FLUX_VAE, 2, kontext=bool(sources.kontext))
    return [(card, allowed, choose_plan(simulated_free_bytes(card), sizes, activation, quantize_allowed=allowed,
                                        fp8_available=fp8_available))
            for card in CARDS_GIB for allowed in (False, True)]


def _stored(plan: MemoryPlan, names: tuple[str, ...]) -> str:
    """How components are stored and placed, e.g. "2 × 11.92 GB fp8, swap"."""
    chosen = [c for c in plan.components if c.name in names]
    storages = sorted({f"{c.storage}, {c.place}" for c in chosen})
    count = f"{len(chosen)} × " if len(chosen) > 1 else ""
    return f"{count}{size_text(max(c.bytes for c in chosen))} {' / '.join(storages)}"


def readme_table(plans: list[tuple[int, bool, MemoryPlan]]) -> str:
    """The README's table: per card and `--quantize`, the plan, the transformers, T5, the rest and the peak."""
    rows = ["| card | `--quantize` | plan | FLUX transformers | T5-XXL | the rest | expected peak |",
            "|---|---|---|---|---|---|---:|"]
    for card, allowed, plan in plans:
        rest = [c for c in plan.components if c.name not in (*TRANSFORMERS, T5)]
        rest_text = f"{size_text(sum(c.bytes for c in rest))} {' / '.join(sorted({c.place for c in rest}))}"
        peak = f"{size_text(plan.peak_bytes)}{'' if plan.fits else ' (does not fit)'}"
        rows.append(f"| {card} GB | {'auto' if allowed else 'none'} | {plan.step} | "
                    f"{_stored(plan, TRANSFORMERS)} | {_stored(plan, (T5,))} | {rest_text} | {peak} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", action="store_true", help="with FLUX.1-Fill-dev configured (a third transformer)")
    parser.add_argument("--no-fp8", action="store_true", help="a card without float8 (compute capability < 8.9)")
    parser.add_argument("--readme", action="store_true", help="only the README's table")
    args = parser.parse_args(argv)
    sources = ModelSources(fill="black-forest-labs/FLUX.1-Fill-dev" if args.fill else "")
    plans = card_plans(sources, fp8_available=not args.no_fp8)
    if not args.readme:
        for card, allowed, plan in plans:
            print(f"\n## {card} GB card, --quantize {'auto' if allowed else 'none'}\n{plan.table()}")
        print()
    print(readme_table(plans))


if __name__ == "__main__":
    main()
