"""Image files named by rollouts and benchmark rows: where a path resolves, and whether the file can be read.

Every problem is an [`ImageProblem`] with a `reason` from `IMAGE_REASONS`, so callers can skip the row and count it.
Sizes come from the file header: nothing is decoded, so checking every image of a corpus or a benchmark is fast.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

__all__ = ["IMAGE_REASONS", "MAX_IMAGE_PIXELS", "ImageProblem", "read_image_size", "resolve_image"]

IMAGE_REASONS = ("missing_image", "image_outside_root", "image_unreadable", "image_too_large")
# PIL's own decompression-bomb limit (~89.5 megapixels); larger images are refused before decoding
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageProblem(ValueError):
    """An image that cannot be used; `reason` is one of `IMAGE_REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def resolve_image(path: str | os.PathLike, root: str | os.PathLike | None, contained: bool = True) -> Path:
    """
    The file an image path names: relative paths are joined to `root`.

    With `contained=True`, the path must stay inside `root` once `..` and symbolic links are resolved (an absolute
    path, `../../token` or a link pointing out of the corpus raise `ImageProblem("image_outside_root")`): nothing
    outside a corpus is ever read, embedded or uploaded.

    Example:

    ```python
    >>> resolve_image("ai2d/1.png", "/data/corpus")
    PosixPath('/data/corpus/ai2d/1.png')
    >>> resolve_image("../secret", "/data/corpus")
    Traceback (most recent call last):
    ...
    bis_prm.data.images.ImageProblem: image path '../secret' resolves outside the root /data/corpus
    ```
    """
    path = Path(path)
    if root is None:
        return path
    joined = Path(root) / path
    if contained:
        real_root = os.path.realpath(root)
        real = os.path.realpath(joined)
        if os.path.commonpath([real_root, real]) != real_root:
            raise ImageProblem("image_outside_root", f"image path {str(path)!r} resolves outside the root {root}")
    return joined


def read_image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """
    `(width, height)` of an image file, read from its header without decoding the pixels.

    Raises:
        [`ImageProblem`]: `missing_image` (no such file), `image_unreadable` (empty, corrupt or not an image) or
        `image_too_large` (more than `max_pixels` pixels: a decompression bomb, or a figure no PRM should decode).

    Example:

    ```python
    >>> read_image_size("figure.png")
    (640, 480)
    ```
    """
    if not os.path.isfile(path):
        raise ImageProblem("missing_image", f"image {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:
        raise ImageProblem("image_too_large", f"image {str(path)!r}: {error}") from None
    except Exception as error:  # PIL raises many types for hostile files (OSError, SyntaxError, struct.error, ...)
        raise ImageProblem("image_unreadable", f"image {str(path)!r} cannot be read: {error}") from None
    if width * height > max_pixels:
        raise ImageProblem(
            "image_too_large", f"image {str(path)!r} has {width}x{height} pixels, more than {max_pixels}"
        )
    return width, height
