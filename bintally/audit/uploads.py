"""Photos uploaded over HTTP: kept in the store's photos table by their SHA-256 (content-addressed), so the
dashboard can show them and `write_labels` can export them; a snapshot names one as "upload:<sha256>".

    save_photos        store uploaded photos not stored yet (the same bytes twice are one row)
    media_type_of      the image type from the bytes' signature (never from what the client claimed)
    unreadable_photos  the snapshots of a run whose photo could not be read, with the problem
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from bintally.audit.schema import Photo, Score, Snapshot
from bintally.audit.store import Store, insert_ignoring_duplicates

SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
              (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))
UNKNOWN_TYPE = "application/octet-stream"


def media_type_of(data: bytes) -> str:
    """image/jpeg, image/png, image/webp, image/gif or image/bmp from the first bytes; else application/octet-stream."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, media in SIGNATURES:
        if data.startswith(signature):
            return media
    return UNKNOWN_TYPE


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_photos(store: Store, photos: dict[str, bytes]) -> int:
    """Store each photo (sha256 -> bytes) that the photos table does not hold yet, in one transaction; the number added.

    Safe against another process storing the same photo at the same moment (the insert does nothing then)."""
    for digest, data in photos.items():
        if sha256_of(data) != digest:
            raise ValueError(f"photo bytes do not match their digest {digest}")
    if not photos:
        return 0
    added = 0
    with store.session() as session:
        have = set(session.scalars(select(Photo.sha256).where(Photo.sha256.in_(list(photos)))))
        for digest in sorted(set(photos) - have):
            row = {"sha256": digest, "media_type": media_type_of(photos[digest]), "data": photos[digest]}
            added += session.execute(insert_ignoring_duplicates(store, Photo).values(**row)
                                     .on_conflict_do_nothing(index_elements=["sha256"])).rowcount
    return added


def unreadable_photos(store: Store, run_id: int) -> list[dict]:
    """[{"bin_id", "image", "problem"}] for each snapshot of the run whose photo could not be read (sorted by bin)."""
    with store.session() as session:
        rows = session.execute(select(Snapshot.bin_id, Snapshot.image_uri, Score.problem)
                               .join(Score, Score.snapshot_id == Snapshot.id)
                               .where(Score.run_id == run_id, Score.problem.is_not(None))
                               .order_by(Snapshot.bin_id, Snapshot.id)).all()
    return [{"bin_id": bin_id, "image": image, "problem": problem} for bin_id, image, problem in rows]
