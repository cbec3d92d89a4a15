"""Image files named by rollouts and benchmark rows: where a path resolves, and whether the file can be read.

Every problem is an [`ImageProblem`] with a `reason` from `IMAGE_REASONS`, so callers can skip the row and count it.
Sizes come from the file header: nothing is decoded, so checking every image of a corpus or a benchmark is fast.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

__all__ = [
    "IMAGE_REASONS",
    "MAX_IMAGE_PIXELS",
    "ImageProblem",
    "open_image",
    "paths_outside_root",
    "read_image_size",
    "resolve_image",
]

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


def _inside(path: str, real_root: str) -> bool:
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def paths_outside_root(paths: pa.Array, root: str | os.PathLike | None) -> np.ndarray:
    """
    For many image paths relative to `root` at once: which ones leave it, as [`resolve_image`] decides.

    Written for whole corpora: only the paths that look suspicious (absolute, a `..` component, a backslash or a
    drive letter) are resolved one by one; symbolic links are found by listing each distinct parent folder once.
    Without a `root` (or while it does not exist), the lexical checks alone decide.

    Example:

    ```python
    >>> paths_outside_root(pa.array(["ai2d/1.png", "../../token", "/etc/passwd", "a/../b.png"]), None)
    array([False,  True,  True, False])

    ```
    """
    outside = np.zeros(len(paths), dtype=bool)
    if len(paths) == 0:
        return outside
    suspicious = pc.or_(
        pc.starts_with(paths, "/"), pc.match_substring_regex(paths, r"(^|[/\\])\.\.([/\\]|$)|\\|^[A-Za-z]:")
    )
    base = os.path.realpath(root) if root is not None else os.path.realpath("/nonexistent-root")
    for index in np.flatnonzero(pc.fill_null(suspicious, False).to_numpy(zero_copy_only=False)):
        path = paths[int(index)].as_py().replace("\\", "/")
        outside[index] = os.path.isabs(path) or path[1:2] == ":" or not _inside(os.path.join(base, path), base)
    if root is None or not os.path.isdir(root):
        return outside
    # symbolic links: list each distinct parent folder once
    parents = pc.replace_substring_regex(paths, r"/?[^/]*$", "")
    for parent in pc.unique(parents).to_pylist():
        folder = os.path.join(base, parent)
        if not _inside(folder, base):
            outside |= pc.equal(parents, parent).to_numpy(zero_copy_only=False)
            continue
        if not os.path.isdir(folder):
            continue
        with os.scandir(folder) as entries:
            links = [
                os.path.join(parent, entry.name) if parent else entry.name for entry in entries if entry.is_symlink()
            ]
        escaping = [link for link in links if not _inside(os.path.join(base, link), base)]
        if escaping:
            outside |= pc.is_in(paths, pa.array(escaping)).to_numpy(zero_copy_only=False)
    return outside


@contextlib.contextmanager
def _checked(path: str | os.PathLike | BinaryIO, max_pixels: int) -> Iterator[Image.Image]:
    """The image at `path` (or in a binary file object), opened lazily once its header says it is not too large;
    any failure, in the header or while the caller decodes it, becomes an [`ImageProblem`]."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise ImageProblem("missing_image", f"image {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageProblem(
                        "image_too_large", f"image {str(path)!r} has {width}x{height} pixels, more than {max_pixels}"
                    )
                yield image
    except ImageProblem:
        raise
    except Image.DecompressionBombError as error:
        raise ImageProblem("image_too_large", f"image {str(path)!r}: {error}") from None
    except Exception as error:  # PIL raises many types for hostile files (OSError, SyntaxError, struct.error, ...)
        raise ImageProblem("image_unreadable", f"image {str(path)!r} cannot be read: {error}") from None


def open_image(path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """
    Decode an image file (a path, or a binary file object such as `io.BytesIO`) as RGB, after checking its size in
    the header.

    Raises:
        [`ImageProblem`]: `missing_image` (no such file), `image_unreadable` (empty, corrupt or not an image) or
        `image_too_large` (more than `max_pixels` pixels: a decompression bomb, or a figure no PRM should decode).

    Example:

    ```python
    >>> open_image("figure.png").mode  # doctest: +SKIP
    'RGB'

    ```
    """
    with _checked(path, max_pixels) as image:
        return image.convert("RGB")


def read_image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """
    `(width, height)` of an image file, read from its header without decoding the pixels.

    Raises:
        [`ImageProblem`]: as [`open_image`].

    Example:

    ```python
    >>> read_image_size("figure.png")  # doctest: +SKIP
    (640, 480)

    ```
    """
    with _checked(path, max_pixels) as image:
        return image.size
