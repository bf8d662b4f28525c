"""The Local Climate Zone class table (Stewart & Oke 2012), the one source of truth.

Everything that needs LCZ codes, names or colours (the plugin's map styling, the model
contract, the training package, accuracy reports) imports them from here.

Codes 1-10 are the built types, 11-17 the land-cover types A-G. Label data in the wild also
codes A-G as 101-107 (WUDAPT) or as the letters themselves (WUDAPT KML training areas name
each placemark ``1`` ... ``10``, ``A`` ... ``G``); :func:`parse_lcz_code` accepts all three.
Colours are the WUDAPT / Demuzere et al. palette.
"""

from __future__ import annotations

from dataclasses import dataclass

NODATA_CODE = 0
"""Value of the LCZ class map where no class was assigned."""


@dataclass(frozen=True)
class LczClass:
    code: int
    """Code in the maps this project writes: 1-17."""
    letter: str
    """Stewart & Oke label: '1' ... '10', 'A' ... 'G'."""
    name: str
    colour: str
    """WUDAPT colour as #RRGGBB."""

    @property
    def built(self) -> bool:
        return self.code <= 10

    @property
    def wudapt_code(self) -> int:
        """The WUDAPT numeric coding: 1-10 and 101-107 for A-G."""
        return self.code if self.built else self.code - 10 + 100

    @property
    def label(self) -> str:
        """Legend label, e.g. 'LCZ 2 Compact mid-rise' or 'LCZ A Dense trees'."""
        return f"LCZ {self.letter} {self.name}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.colour[i:i + 2], 16) for i in (1, 3, 5))


LCZ_CLASSES: tuple[LczClass, ...] = (
    LczClass(1, "1", "Compact high-rise", "#8C0000"),
    LczClass(2, "2", "Compact mid-rise", "#D10000"),
    LczClass(3, "3", "Compact low-rise", "#FF0000"),
    LczClass(4, "4", "Open high-rise", "#BF4D00"),
    LczClass(5, "5", "Open mid-rise", "#FF6600"),
    LczClass(6, "6", "Open low-rise", "#FF9955"),
    LczClass(7, "7", "Lightweight low-rise", "#FAEE05"),
    LczClass(8, "8", "Large low-rise", "#BCBCBC"),
    LczClass(9, "9", "Sparsely built", "#FFCCAA"),
    LczClass(10, "10", "Heavy industry", "#555555"),
    LczClass(11, "A", "Dense trees", "#006A00"),
    LczClass(12, "B", "Scattered trees", "#00AA00"),
    LczClass(13, "C", "Bush, scrub", "#648525"),
    LczClass(14, "D", "Low plants", "#B9DB79"),
    LczClass(15, "E", "Bare rock or paved", "#000000"),
    LczClass(16, "F", "Bare soil or sand", "#FBF7AE"),
    LczClass(17, "G", "Water", "#6A6AFF"),
)

LCZ_CODES: tuple[int, ...] = tuple(c.code for c in LCZ_CLASSES)
BUILT_CODES: tuple[int, ...] = tuple(c.code for c in LCZ_CLASSES if c.built)
NATURAL_CODES: tuple[int, ...] = tuple(c.code for c in LCZ_CLASSES if not c.built)

_BY_CODE = {c.code: c for c in LCZ_CLASSES}
_ALIASES: dict[str, int] = {}
for _c in LCZ_CLASSES:
    _ALIASES[str(_c.code)] = _c.code
    _ALIASES[_c.letter.upper()] = _c.code
    _ALIASES[str(_c.wudapt_code)] = _c.code
    _ALIASES[f"LCZ{_c.letter.upper()}"] = _c.code
    _ALIASES[f"LCZ {_c.letter.upper()}"] = _c.code
del _c


def lcz_class(code: int) -> LczClass:
    """The class with map code ``code`` (1-17)."""
    try:
        return _BY_CODE[int(code)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{code!r} is not an LCZ code (expected 1-17)") from None


def parse_lcz_code(label: object) -> int:
    """Map any of the codings found in LCZ label data to the code 1-17.

    Accepts 1-17, WUDAPT 101-107 for A-G, the letters A-G (any case), 'LCZ 3'-style names,
    and floats that hold an integer (as read from shapefile fields). Raises ValueError for
    anything else, so that callers can list the labels they could not understand.
    """
    if isinstance(label, bool):
        raise ValueError(f"{label!r} is not an LCZ label")
    if isinstance(label, float):
        if not label.is_integer():
            raise ValueError(f"{label!r} is not an LCZ label")
        label = int(label)
    key = str(label).strip().upper()
    if key.endswith(".0") and key[:-2].isdigit():
        key = key[:-2]
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(
            f"{label!r} is not an LCZ label (use 1-17, 101-107 or the letters A-G)") from None
