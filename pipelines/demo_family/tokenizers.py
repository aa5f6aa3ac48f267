"""Real, working tokenizers for the tiny FLUX family, built offline and deterministically.

CLIP gets a byte-level BPE vocabulary and T5 a SentencePiece unigram model, each written in
the files the hub has (vocab.json + merges.txt; spiece.model + tokenizer.json), over a word
list in which every word is one token, as common words are in the real vocabularies.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

T5_EXTRA_IDS = 100

# A few hundred common (prompt) words: each becomes one whole-word token in both tokenizers.
WORDS = ["a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "from", "with", "without", "by", "for", "as", "is", "are", "was", "be", "it", "its", "this", "that", "these", "those", "there", "here", "i", "you", "he", "she", "we", "they", "my", "your", "his", "her", "our", "their", "what", "which", "who", "where", "when", "how", "why", "not", "no", "yes", "all", "some", "any", "many", "more", "most", "few", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "very", "so", "too", "up", "down", "out", "over", "under", "into", "through", "between", "behind", "above", "below", "near", "far", "left", "right", "top", "bottom", "front", "back", "inside", "outside", "new", "old", "big", "small", "large", "tiny", "long", "short", "tall", "wide", "high", "low", "little", "huge", "good", "bad", "best", "beautiful", "pretty", "cute", "ugly", "happy", "sad", "angry", "calm", "quiet", "loud", "bright", "dark", "light", "black", "white", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "gray", "grey", "gold", "golden", "silver", "colorful", "man", "woman", "boy", "girl", "child", "children", "people", "person", "face", "eyes", "eye", "hair", "hand", "hands", "head", "body", "smile", "portrait", "cat", "cats", "dog", "dogs", "bird", "birds", "horse", "fish", "animal", "animals", "tree", "trees", "flower", "flowers", "grass", "forest", "mountain", "mountains", "river", "lake", "sea", "ocean", "beach", "sand", "sky", "cloud", "clouds", "sun", "moon", "star", "stars", "rain", "snow", "fire", "water", "ice", "wind", "storm", "city", "street", "road", "house", "houses", "building", "buildings", "castle", "tower", "bridge", "car", "cars", "train", "boat", "ship", "plane", "window", "door", "wall", "floor", "room", "table", "chair", "bed", "book", "food", "cake", "coffee", "tea", "apple", "fruit", "garden", "park", "field", "farm", "village", "night", "day", "morning", "evening", "sunset", "sunrise", "winter", "summer", "spring", "autumn", "photo", "photograph", "picture", "image", "painting", "drawing", "sketch", "illustration", "art", "style", "render", "detailed", "realistic", "cinematic", "lighting", "shot", "close", "view", "background", "foreground", "scene", "landscape", "texture", "pattern", "wearing", "holding", "sitting", "standing", "walking", "running", "flying", "looking", "made", "make", "change", "turn", "add", "remove", "replace", "keep", "same", "different", "color", "colors", "shape", "simple", "soft", "sharp", "focus", "blur", "vintage", "modern", "futuristic", "fantasy", "magic", "robot", "space", "planet", "world", "earth", "glass", "metal", "wood", "stone", "paper", "cloth", "dress", "shirt", "hat", "glasses"]




def _t5_pieces() -> list[tuple[str, float]]:
    """SentencePiece unigram pieces: whole words (lower and Capitalised), then single characters."""
    words = [w for word in dict.fromkeys(WORDS) for w in dict.fromkeys([word, word.capitalize()])]
    pieces = [("▁", -2.0)]  # the real spiece.model also has "▁" at id 3
    pieces += [("▁" + w, -4.0 - i / 1000) for i, w in enumerate(words)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()/&%+*=#@_"
    pieces += [(c, -10.0 - i / 1000) for i, c in enumerate(chars)]
    return pieces


def write_t5_tokenizer(folder: Path) -> None:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    proto = sp_pb2.ModelProto()
    for piece, score, kind in [("<pad>", 0.0, "CONTROL"), ("</s>", 0.0, "CONTROL"), ("<unk>", 0.0, "UNKNOWN")]:
        proto.pieces.add(piece=piece, score=score, type=getattr(sp_pb2.ModelProto.SentencePiece, kind))
    for piece, score in _t5_pieces():
        proto.pieces.add(piece=piece, score=score)
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size = sp_pb2.TrainerSpec.UNIGRAM, len(proto.pieces)
    spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = 0, 1, 2, -1
    # T5 normalises with nmt_nfkc; sentencepiece only hands out that (constant) table from a
    # trainer run, so train a throwaway model in memory and keep its normalizer spec.
    scratch = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 4), model_writer=scratch, vocab_size=40,
        normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2)
    proto.normalizer_spec.CopyFrom(sp_pb2.ModelProto.FromString(scratch.getvalue()).normalizer_spec)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())

    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    config = {
        "add_prefix_space": True, "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": True, "eos_token": "</s>", "extra_ids": T5_EXTRA_IDS,
        "legacy": True, "model_max_length": 512, "pad_token": "<pad>", "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>",
    }
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": extra, "eos_token": _special("</s>"),
        "pad_token": _special("<pad>"), "unk_token": _special("<unk>")})
    # tokenizer.json is the converted spiece.model (what the fast tokenizer actually loads).
    tokenizer = T5TokenizerFast.from_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(pretty=True) + "\n")


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one lower-case word: repeatedly apply the best-ranked merge."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, len(ranks) + 1))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def _clip_vocab_and_merges() -> tuple[list[str], list[tuple[str, str]]]:
    """Real CLIP vocab order: 256 byte chars, the same with </w>, merge results, then specials.

    Merges are added (at lowest priority) until BPE turns every word into one token; merges only
    ever join the pieces BPE currently yields, so earlier words stay whole."""
    chars = list(bytes_to_unicode().values())
    vocab, merges, ranks = chars + [c + "</w>" for c in chars], [], {}
    for word in dict.fromkeys(WORDS):
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
            if parts[0] + parts[1] not in vocab:
                vocab.append(parts[0] + parts[1])
    return vocab + ["<|startoftext|>", "<|endoftext|>"], merges


def write_clip_tokenizer(folder: Path) -> None:
    vocab, merges = _clip_vocab_and_merges()
    write_json(folder / "vocab.json", {token: i for i, token in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    bos, eos = _special("<|startoftext|>", True), _special("<|endoftext|>", True)
    write_json(folder / "special_tokens_map.json",
                {"bos_token": bos, "eos_token": eos, "pad_token": "<|endoftext|>", "unk_token": eos})
    write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(len(vocab) - 2): {**bos, "special": True},
                                 str(len(vocab) - 1): {**eos, "special": True}},
        "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
    })


def _special(content: str, normalized: bool = False) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def clip_vocab_size() -> int:
    return len(_clip_vocab_and_merges()[0])


def t5_token_count() -> int:
    """Tokens of the T5 tokenizer: 3 specials, the pieces and the extra ids."""
    return 3 + len(_t5_pieces()) + T5_EXTRA_IDS
