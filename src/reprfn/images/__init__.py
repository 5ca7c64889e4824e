"""Image files in and out.

``read``: measurement reads (eval, training), 8 bits, alpha dropped, and the tensor conventions.
``picture``: the full-fidelity ``Picture`` of upscale (bit depth, alpha, ICC, EXIF) and its limits.
``write``: ``save_picture`` / ``encode_picture`` in any of PNG, JPEG, WebP, BMP, TIFF, and the
memory and format limits known before an upscale. ``metadata``: EXIF orientation, kept EXIF, ICC.
``samples``: colour + alpha a block of rows at a time. ``png16``, ``tiff``, ``bmp``: the writers
Pillow lacks; ``wide``: the 16-bit colour decode Pillow lacks.
"""

from .picture import (
    DEFAULT_MAX_PIXELS,
    INPUT_FORMATS,
    Picture,
    load_picture,
    own_pixel_limit,
    picture_from_pil,
    picture_to_pil,
)
from .read import IMAGE_SUFFIXES, check_finite, list_images, read_image, to_tensor, to_uint8, write_png
from .write import encode_picture, output_format, save_picture, write_memory

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "INPUT_FORMATS", "Picture", "check_finite", "encode_picture",
    "list_images", "load_picture", "output_format", "own_pixel_limit", "picture_from_pil", "picture_to_pil",
    "read_image", "save_picture", "to_tensor", "to_uint8", "write_memory", "write_png",
]
