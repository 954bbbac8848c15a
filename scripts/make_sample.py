"""Copy the bundled sample out of a local ABID mirror (run once; the result is committed).

The sample is stratified by count and taken in whole blocks of ten consecutive ids, so that
photos of the same bin before and after a pick stay together (as `bintally data split` groups them).

    python scripts/make_sample.py ../shared/abid bintally/sample
"""

import json
import random
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

QUOTA = {0: 110, 1: 200, 2: 170, 3: 170, 4: 170, 5: 200, 6: 220}  # 6 stands for 6 and more
BLOCK = 10


def count_of(meta: Path) -> int:
    return int(json.loads(meta.read_text())["EXPECTED_QUANTITY"])


def main(mirror: str, out: str, seed: int = 0) -> None:
    mirror, out = Path(mirror), Path(out)
    blocks = defaultdict(list)
    for img in sorted((mirror / "bin-images").glob("*.jpg")):
        blocks[(len(img.stem), int(img.stem) // BLOCK)].append(img.stem)
    counts = {i: count_of(mirror / "metadata" / f"{i}.json") for ids in blocks.values() for i in ids}
    keys = sorted(blocks)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: min(counts[i] for i in blocks[k]) != 0)  # zero-count bins are rare: first
    need = dict(QUOTA)
    chosen = []
    for key in keys:
        classes = Counter(min(counts[i], 6) for i in blocks[key])
        useful = sum(n for c, n in classes.items() if need[c] > 0)
        overflow = any(n > need[c] + 2 for c, n in classes.items() if c in (0, 6))
        if useful * 2 >= sum(classes.values()) and not overflow:
            chosen.extend(blocks[key])
            for c, n in classes.items():
                need[c] -= n
        if all(v <= 0 for v in need.values()):
            break
    for sub in ("bin-images", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in sorted(chosen):
        shutil.copy2(mirror / "bin-images" / f"{i}.jpg", out / "bin-images" / f"{i}.jpg")
        shutil.copy2(mirror / "metadata" / f"{i}.json", out / "metadata" / f"{i}.json")
    print(len(chosen), "photos;", dict(sorted(Counter(min(counts[i], 6) for i in chosen).items())))


if __name__ == "__main__":
    main(*sys.argv[1:3])
