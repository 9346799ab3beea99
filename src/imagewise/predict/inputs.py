"""What ``predict`` accepts: image files, folders (searched recursively) and glob patterns."""

from __future__ import annotations

import glob
from pathlib import Path

from imagewise.edge.images import find_images, is_image_file
from imagewise.errors import UserError


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image paths from files, folders and globs, in the order given, without duplicates.

    A file named explicitly is kept whatever its extension, so that a mislabelled image is
    decoded (or reported as unreadable) rather than silently dropped.
    """
    found: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = find_images(path)
            if not files:
                raise UserError(
                    f"folder '{item}' has no images (.jpg, .png, .bmp, .tif, .webp, .gif)"
                )
            found.extend(files)
        elif path.is_file():
            found.append(str(path))
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if is_image_file(p))
            if not matches:
                raise UserError(f"no image matches '{item}'")
            found.extend(matches)
        else:
            raise UserError(f"'{item}' does not exist; give image files, folders or glob patterns")
    return list(dict.fromkeys(found))
