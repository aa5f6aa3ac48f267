"""Each mode's own fields, read from raw values into the values of its request.

`read_<mode>(fields, values)` adds to `values` what the mode's request type needs beyond the
shared fields; problems go to `fields` (every one is reported at once).
"""

from __future__ import annotations

from PIL import Image

from pipelines.imaging.images import fit_size, size_at_area
from pipelines.imaging.masks import ASPECT_RATIOS, outpaint_canvas, outpaint_layout
from pipelines.modes.fields import FieldReader, is_editor_value
from presets import PRESETS

# Redux and image-to-image outputs that follow the input are about this many pixels.
MATCH_INPUT_AREA = 1024 * 1024


def fit_to_range(width: int, height: int) -> tuple[int, int]:
    """An input's size as an output size: its aspect kept, each side within the custom range."""
    return fit_size(width, height, PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)


def one_megapixel(width: int, height: int) -> tuple[int, int]:
    """An input's aspect at about one megapixel (Redux's variations)."""
    return fit_to_range(*size_at_area(width, height, MATCH_INPUT_AREA, PRESETS.size_multiple))


def read_sized(fields: FieldReader, values: dict) -> None:
    values["width"], values["height"] = fields.size(values.get("image"))


def read_text_to_image(fields: FieldReader, values: dict) -> None:
    values["negative_prompt"] = fields.text("negative_prompt", required=False)
    values["true_cfg_scale"] = fields.number("true_cfg_scale")
    read_sized(fields, values)


def read_image_to_image(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["strength"] = fields.number("strength")
    read_sized(fields, values)


def read_kontext_edit(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    read_text_to_image(fields, values)


def read_redux_variation(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["prompt_embeds_scale"] = fields.number("prompt_embeds_scale")
    values["pooled_prompt_embeds_scale"] = fields.number("pooled_prompt_embeds_scale")
    read_sized(fields, values)


def read_inpaint(fields: FieldReader, values: dict) -> None:
    image, painted = fields.edited_image("image")
    uploaded = fields.image("mask_image", as_mask=True, required=False)
    values["image"], values["strength"], values["mask_blur"] = image, fields.number("strength"), fields.number("mask_blur")
    read_sized(fields, values)
    mask = uploaded if uploaded is not None else painted
    if image is None:
        return
    painted_on_image = uploaded is None and is_editor_value(fields.raw.get("image"))
    if painted_on_image and (mask is None or mask.getextrema()[1] == 0):  # the page shows it next to the editor
        fields.fail("image", "image has nothing painted on it: paint over what to change, or upload a mask_image "
                             "(white is repainted)")
    elif mask is None:
        fields.fail("mask_image", "mask_image is required: paint over what to change, or upload a mask "
                                  "(white where the image is repainted)")
    elif mask.getextrema()[1] == 0:
        fields.fail("mask_image", "mask_image is empty: paint over what to change (white is repainted)")
    elif values["width"] and values["height"]:
        values["image"] = image.resize((values["width"], values["height"]), Image.Resampling.LANCZOS)
        values["mask"] = mask.resize((values["width"], values["height"]), Image.Resampling.BILINEAR)


def read_outpaint(fields: FieldReader, values: dict) -> None:
    image = fields.image("image")
    margins = {side: fields.number(f"expand_{side}") for side in ("left", "right", "top", "bottom")}
    # The default aspect ratio grows an image no margin is given for; given margins replace it.
    aspect = fields.choice("aspect_ratio") if fields.given("aspect_ratio") or not any(margins.values()) else "none"
    values.update({f"expand_{side}": value for side, value in margins.items()}, aspect_ratio=aspect)
    values["strength"], values["mask_blur"] = fields.number("strength"), fields.number("mask_blur")
    if None in margins.values():
        return
    # Both are the aspect ratio's problems (the page shows them next to its control); API error lists
    # put its name first, so the messages leave it out.
    if aspect != "none" and any(margins.values()):
        fields.fail("aspect_ratio", "give either an aspect ratio or margins (expand_left, expand_right, expand_top, "
                                    "expand_bottom), not both")
    elif aspect == "none" and not any(margins.values()):
        fields.fail("aspect_ratio", "choose where to extend the image: an aspect ratio other than none, or a margin "
                                    "(expand_left, expand_right, expand_top or expand_bottom) above 0")
    elif image is not None:
        layout = outpaint_layout(image.size, (margins["left"], margins["top"], margins["right"], margins["bottom"]),
                                 ASPECT_RATIOS.get(aspect), PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)
        values["image"], values["mask"] = outpaint_canvas(image, layout)
        values["width"], values["height"] = layout.canvas


def read_control(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["control_type"] = fields.choice("control_type")
    values["preprocess"] = fields.flag("preprocess")
    values["canny_low_threshold"] = fields.number("canny_low_threshold")
    values["canny_high_threshold"] = fields.number("canny_high_threshold")
    low, high = values["canny_low_threshold"], values["canny_high_threshold"]
    if low is not None and high is not None and low > high:
        fields.fail("canny_low_threshold", f"canny_low_threshold must not be above canny_high_threshold ({high}), "
                                           f"got {low}")
    read_sized(fields, values)
