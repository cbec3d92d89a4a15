"""Images sent to `bis-prm serve`: base64 data URLs, or server-side paths only inside an allowed directory.

Safe by default, as vLLM's `--allowed-local-media-path`: a request cannot make the server read a file unless the
server was started with a directory, and then only files inside it (`..` and symbolic links resolved). Nothing is
downloaded: `http(s)://` URLs are refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
import os
import re

from PIL import Image

from bis_prm.data.images import MAX_IMAGE_PIXELS, ImageProblem, open_image, resolve_image

__all__ = ["MediaError", "load_request_image", "to_data_url"]

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_IN_MEMORY = re.compile(r"(image ')?<_io\.BytesIO object at 0x[0-9a-f]+>'?")


class MediaError(ValueError):
    """An image of a request that cannot be used; `reason` is a [`~bis_prm.serving.protocol.RowError`] reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_request_image(
    value: str, allowed_local_media_path: str | os.PathLike | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """
    Decode one image of a request: a `data:image/<type>;base64,...` URL, or a path inside
    `allowed_local_media_path` (relative paths are joined to it).

    Raises:
        [`MediaError`]: `image_not_allowed` (a path without an allowed directory, outside it, or a URL),
        `image_unreadable`, `missing_image` or `image_too_large` (checked in the header, before decoding).

    Example:

    ```python
    >>> load_request_image(to_data_url(Image.new("RGB", (3, 2)))).size
    (3, 2)
    >>> load_request_image("/etc/passwd")
    Traceback (most recent call last):
    ...
    bis_prm.serving.media.MediaError: image paths are not allowed: ...

    ```
    """
    try:
        if _DATA_URL.match(value):
            try:
                data = base64.b64decode(value[value.index(",") + 1 :], validate=True)
            except (binascii.Error, ValueError) as error:
                raise MediaError("image_unreadable", f"the image's base64 data cannot be decoded: {error}") from None
            return open_image(io.BytesIO(data), max_pixels)
        if value.startswith(("http://", "https://", "data:")):
            raise MediaError(
                "image_not_allowed", "images are data:image/...;base64 URLs or paths, nothing is downloaded"
            )
        if allowed_local_media_path is None:
            raise MediaError(
                "image_not_allowed",
                "image paths are not allowed: this server was started without --allowed-local-media-path; "
                "send the image as a data:image/...;base64 URL",
            )
        return open_image(resolve_image(value, allowed_local_media_path, contained=True), max_pixels)
    except ImageProblem as problem:
        reason = "image_not_allowed" if problem.reason == "image_outside_root" else problem.reason
        message = _IN_MEMORY.sub(lambda match: "the data URL's image" if match.group(1) else "it", str(problem))
        raise MediaError(reason, message) from None


def to_data_url(image: Image.Image | str | os.PathLike) -> str:
    """
    A `data:image/...;base64,` URL of a PIL image (PNG) or of an image file (its bytes as they are).

    Example:

    ```python
    >>> to_data_url(Image.new("L", (1, 1)))[:22]
    'data:image/png;base64,'

    ```
    """
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, kind = buffer.getvalue(), "image/png"
    else:
        with open(image, "rb") as f:
            data = f.read()
        # the server decodes and checks the image; the type only has to look like one
        kind = mimetypes.guess_type(os.fspath(image))[0] or ""
        kind = kind if kind.startswith("image/") else "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
