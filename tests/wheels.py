"""Tiny pure-Python wheels made at test time, so the installer's tests need no network."""

import base64
import hashlib
import os
import zipfile


def make_wheel(folder, name: str, version: str, requires=(), code: str = "VALUE = 1\n") -> str:
    """Write ``name-version-py3-none-any.whl`` (module ``name`` with ``__version__``) into
    ``folder``; ``requires``: its Requires-Dist lines. Returns the wheel's path."""
    dist = f"{name}-{version}"
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                + "".join(f"Requires-Dist: {r}\n" for r in requires))
    files = {f"{name}/__init__.py": f"{code}__version__ = '{version}'\n",
             f"{dist}.dist-info/METADATA": metadata,
             f"{dist}.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: lcz-tests\n"
                                         "Root-Is-Purelib: true\nTag: py3-none-any\n")}
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(os.fspath(folder), f"{dist}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, text in files.items():
            archive.writestr(name_in_zip, text)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return path
