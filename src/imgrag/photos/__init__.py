"""Photo files: find them (`discover`, symlinks kept inside the folder), hash them, read their
EXIF metadata, and load + orient + downscale them for a vision model (`images`).

Knows nothing about `.imgrag/`; used by the scan, describe and the server's thumbnails.
"""
