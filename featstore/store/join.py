"""Preflight join of a dataset manifest with feature sets, before any training starts.

Image feature sets are keyed by image key, text feature sets by sample id; the manifest joins them.
Features are never matched by position: every sample's row is found by its key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import FeatstoreError

SHOW = 5


@dataclass
class SideReport:
    ref: str
    key_kind: str
    needed: int
    missing: List[str] = field(default_factory=list)  # needed keys the set lacks (failed ones included)
    failed: List[str] = field(default_factory=list)  # of those, keys whose extraction failed
    extra: List[str] = field(default_factory=list)  # keys in the set no sample uses

    def line(self) -> str:
        def few(xs):
            return ", ".join(map(repr, xs[:SHOW])) + (f" (+{len(xs) - SHOW} more)" if len(xs) > SHOW else "")

        s = f"{self.ref} ({self.key_kind}): {self.needed} needed, {len(self.missing)} missing"
        if self.missing:
            s += f" [{few(self.missing)}]"
        if self.failed:
            s += f", {len(self.failed)} failed at extraction [{few(self.failed)}]"
        s += f", {len(self.extra)} extra"
        if self.extra:
            s += f" [{few(self.extra)}]"
        return s


@dataclass
class JoinReport:
    sides: List[SideReport]

    @property
    def ok(self) -> bool:
        return all(not s.missing for s in self.sides)

    def lines(self) -> List[str]:
        return [s.line() for s in self.sides]

    def raise_if_missing(self) -> None:
        bad = [s for s in self.sides if s.missing]
        if bad:
            raise FeatstoreError("feature sets do not cover the dataset: " + "; ".join(s.line() for s in bad) +
                                 "; " + _how_to_cover(bad))


def _how_to_cover(bad: List[SideReport]) -> str:
    """What helps: keys a set never had come from extracting this manifest (its fingerprint differs from the
    set's, so that writes a new version); failed rows stay failed in their immutable version, and rerunning the
    same extraction does nothing, but fixed inputs change the fingerprint (texts and image bytes), so it then
    extracts a new version."""
    hints = []
    unpadded = [s for s in bad if _unpadded_pair(s)]
    if unpadded:
        missing, extra = _unpadded_pair(unpadded[0])
        hints.append(f"{', '.join(u.ref for u in unpadded)} holds the missing image keys as numbers without their "
                     f"leading zeros ({extra!r} for {missing!r}): re-import it with --dataset (featstore import ... "
                     f"--dataset DATASET) so its keys are matched to the dataset's image names")
    if any(len(s.missing) > len(s.failed) and s not in unpadded for s in bad):
        hints.append("extract the missing samples (run featstore extract on this manifest and use the version it "
                     "writes)")
    failed = [s.ref for s in bad if s.failed]
    if failed:
        hints.append(f"rows that failed at extraction stay failed in {', '.join(failed)} (rerunning the same "
                     f"extraction does nothing; `featstore info {failed[0]}` says why each failed): fix those inputs "
                     f"(or pass --image-root when files were not found) and run featstore extract again, which "
                     f"extracts a new version because the dataset fingerprint covers the texts and image bytes")
    return "; ".join(hints) + ", or filter them out of the dataset"


def _number(key: str):
    return int(key) if key.isascii() and key.isdigit() else None


def _unpadded_pair(side: SideReport) -> Optional[Tuple[str, str]]:
    """(a missing image key, the extra key naming the same number) when every missing key is, as an integer, one
    of the set's extra keys ('01235' missing, '1235' extra): an import without --dataset kept the feature file's
    keys as written, without the image names' leading zeros. None otherwise."""
    extra: Dict[int, str] = {}
    for k in side.extra:
        if _number(k) is not None:
            extra.setdefault(_number(k), k)
    if side.key_kind != "image_key" or not side.missing or side.failed:
        return None
    if not all(_number(k) in extra for k in side.missing):
        return None
    return side.missing[0], extra[_number(side.missing[0])]


def _side(fsv, needed: Sequence[str], expect_kind: str, role: str) -> SideReport:
    if fsv.key_kind != expect_kind:
        raise FeatstoreError(f"{fsv.ref} is keyed by {fsv.key_kind} ({fsv.modality} features) but was passed as the "
                             f"{role} set; pass {'an image' if expect_kind == 'image_key' else 'a text'} feature set "
                             f"(did you swap --image and --text?)")
    have = set(fsv.keys.tolist())
    need_set = set(needed)
    failures = fsv.failures
    missing = [k for k in dict.fromkeys(needed) if k not in have]
    return SideReport(fsv.ref, fsv.key_kind, len(need_set), missing, [k for k in missing if k in failures],
                      sorted(have - need_set))


def preflight(samples: Sequence, image=None, text=None) -> JoinReport:
    """Check that ``image`` (keyed by image key) and ``text`` (keyed by sample id) cover ``samples``.

    ``samples``: objects with ``.id`` and ``.image_key`` (a DatasetManifest's samples).
    """
    if not samples:
        raise FeatstoreError("the dataset has no samples to join; check the manifest path and split")
    sides = []
    if image is not None:
        sides.append(_side(image, [s.image_key for s in samples], "image_key", "image"))
    if text is not None:
        sides.append(_side(text, [s.id for s in samples], "sample_id", "text"))
    return JoinReport(sides)


def manifest_mismatch_warnings(dataset, sets: Dict[str, Any]) -> List[str]:
    """One line per feature set (``{"image": version, "text": ...}``) extracted from another manifest than
    ``dataset``: the version's recipe records the manifest fingerprint it was extracted from (ids, texts, labels,
    image bytes), and a dataset that keeps the ids but moves them to other texts or images joins silently, so the
    features would belong to other samples. Sets without a recorded fingerprint (imports) are not compared;
    `heads train` and the search commands print these."""
    current = getattr(dataset, "fingerprint", None) if dataset is not None else None
    out: List[str] = []
    for modality, fs in sets.items():
        recorded = getattr(fs.recipe, "manifest_fingerprint", "") or ""
        if recorded and current and recorded != current:
            out.append(f"{modality} feature set {fs.name}@{fs.version} was extracted from another version of this "
                       f"dataset (manifest fingerprint {recorded[:12]}, now {current[:12]}): texts, labels or "
                       "images changed, so rows joined by id may belong to other samples; re-extract it, or "
                       "ignore this if only labels or the set of samples changed")
    return out
