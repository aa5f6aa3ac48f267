"""What the text encoders will read of a prompt: FLUX's CLIP reads 77 tokens, its T5 512.

The pipelines truncate silently; these functions say so, so that a long prompt's lost tail
is never a surprise.
"""

from __future__ import annotations


def token_count(tokenizer, text: str) -> int:
    """Tokens the encoder would see without truncation, special tokens included."""
    return len(tokenizer(text, truncation=False, verbose=False).input_ids)


def truncation_warnings(field: str, text: str, clip_tokenizer, t5_tokenizer, t5_max: int = 512) -> list[str]:
    """Warnings for a prompt longer than the encoders take; none for one that fits."""
    if not text:
        return []
    warnings = []
    clip_max = clip_tokenizer.model_max_length
    clip_tokens = token_count(clip_tokenizer, text)
    t5_tokens = token_count(t5_tokenizer, text)
    if t5_tokens > t5_max:
        warnings.append(f"{field} is {t5_tokens} T5 tokens; only the first {t5_max} are used, the end of "
                        "the prompt is ignored")
    if clip_tokens > clip_max:
        warnings.append(f"{field} is {clip_tokens} CLIP tokens; CLIP reads only the first {clip_max} "
                        f"(T5 reads up to {t5_max}, so the rest still guides the image through T5)")
    return warnings
