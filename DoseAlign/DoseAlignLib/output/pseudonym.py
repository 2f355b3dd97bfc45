"""Pseudonymized export: outputs that carry no patient identity, and a local map back to it.

With ``dosealign export --pseudonymize`` every case id, file name, manifest row, meta.json and
whatever else a case writes (qa.png title, NIfTI/NRRD/HDF5 headers, report.html, dataset.json)
is built from pseudonyms instead of the input's identity:

* a patient becomes ``P<12 hex>``: HMAC-SHA256 of its PatientID under a secret key, so the same
  patient gets the same pseudonym in every run with the same key, and nobody without the key can
  link it back or test a guess;
* a case id becomes ``<patient pseudonym>_<summation type>_<8 hex>`` (no PatientID, plan label or
  file name in it);
* source paths become tokens, one per path component (``d<10 hex>/f<10 hex>.dcm``): folder
  names, which often hold patient names, never reach the output;
* UIDs become keyed-hash UIDs (``2.25.<decimal>``, stable under the key) unless ``keep_uids``;
* patient names, IDs and every date of the input headers (in the usual spellings: 20240102,
  2024-01-02, 2024-1-2, 02.01.2024, 01/02/2024, 02012024, 240102, 2 Jan 2024, ...) are removed from any text that still holds them;
* a key-less guard checks the finished meta.json before it is written and fails the case rather
  than leak.

The key file (64 hex characters, created with a random key and mode 0600 when absent) and the
mapping file (CSV: kind, pseudonym, original; mode 0600) stay outside the shareable output
folder; whoever holds them can link pseudonyms back to patients, files and UIDs.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import dataclasses
import datetime
import errno
import functools
import hashlib
import hmac
import io
import itertools
import json
import os
import re
import secrets
import stat
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from .. import __version__
from ..dicom.headers import IDENTIFYING_KEYWORDS, ORDER_KEYWORDS, dates_of_value
from ..errors import DoseAlignError
from ..limits import limit, open_regular
from .around_out import entries_below, export_kinds
from .cjk_variants import PAIRS as _CJK_PAIRS
from .files import given_within, within
from .message_pairs import without_message_words

#: DoseSummationType (3004,000A) as DICOM defines it (PS3.3 C.8.8.3), and DoseAlign's sums of doses (BEAM_SUM,
#: PLAN_SUM): the only values a pseudonymized case id and meta.json carry; any other is ``OTHER``. The value is input
#: text: a date or an ID there was the case id's middle, in every file and folder name (thirty-sixth hostile trial
#: AJ2), and 300 characters of it a file name too long that stopped the batch (AJ5).
SUMMATION_TYPES = frozenset(
    {
        "PLAN",
        "MULTI_PLAN",
        "PLAN_OVERVIEW",
        "FRACTION",
        "BEAM",
        "BRACHY",
        "FRACTION_SESSION",
        "BEAM_SESSION",
        "BRACHY_SESSION",
        "CONTROL_POINT",
        "RECORD",
        "BEAM_SUM",
        "PLAN_SUM",
    }
)
KEY_BYTES = 32
DEFAULT_KEY_NAME = "dosealign-pseudonym.key"
MAP_COLUMNS = ["kind", "pseudonym", "original"]
REMOVED = "[removed]"
#: The option meta.json records beside ``centre`` when it is ``roi:NAME``: a keyed hash of it, compared in its stead
#: (see :func:`~DoseAlignLib.output.out_folder.request_differences`).
CENTRE_DIGEST = "centre_keyed_sha256"
#: Shorter PatientIDs and other IDs of the patient (OtherPatientIDs, AdmissionID, MedicalRecordLocator...), and
#: shorter accession numbers, study IDs and issuers (:data:`VISIT_KEYWORDS`), are not removed from free text (a
#: PatientID is replaced wherever it stands alone: case ids, the patient column, meta.json's patient_id).
MIN_ID_LENGTH = 3
MIN_OTHER_ID_LENGTH = 5
#: The identifying attributes whose values count from :data:`MIN_OTHER_ID_LENGTH` characters: numbers of a visit or
#: an issuer's name (``1``, ``HIS``), which short would be found in every text; the patient's other IDs count from
#: :data:`MIN_ID_LENGTH`, as PatientID does (an OtherPatientIDs ``Q774`` was kept: twenty-sixth hostile trial Z6).
VISIT_KEYWORDS = ("AccessionNumber", "StudyID", "IssuerOfPatientID", *ORDER_KEYWORDS)
#: An ID shorter than :data:`MIN_OTHER_ID_LENGTH` of this form is a decimal number, not removed from free text.
_SHORT_DECIMAL = re.compile(r"[0-9]+[.,][0-9.,]*")
#: A number of an ID written without its leading zeros (``0072315`` as ``72315``, as HIS exports and spreadsheets
#: print MRNs) is removed too when at least this many digits remain (``0000007`` as ``7`` is not).
MIN_UNPADDED_DIGITS = 4
#: The digits of an ID that holds letters or separators too (``MRN1072315``, ``10-72315``) are removed as a word of
#: their own where they run to at least this many (``PTV_1072315``: an MRN printed without its letters; thirtieth
#: hostile trial AD8); shorter runs only when they began with zeros (:data:`MIN_UNPADDED_DIGITS`).
MIN_BARE_DIGITS = 5
#: A number of digits only (an ID of digits, an ID's number, a date of digits) is read before a decimal point and
#: digits where it runs to at least this many: ``PTV_1072315.1``, ``C_15042023.1`` are a structure's version, not a
#: number DoseAlign writes (thirty-first hostile trial AE12, AE13, AE15); a shorter one there is a number's whole
#: part (``123.5``). After a decimal point (``63.0584``) none is read.
MIN_WHOLE_PART = 5
#: Dict keys whose string values are input paths (relative to the input root).
PATH_KEYS = {
    "ct_files",
    "rtdose_files",
    "rtplan_file",
    "rtstruct_files",
    "summed_files",
    "related_beam_doses",
    "file",
    "files",
    "source",
    "source_file",
    "path",
    "folder",
    "ct_folder",
}
_UID = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+){2,}(?![\w.])")
#: A dotted run of digits glued to letters or ``_`` (``PTV_1.2.3...``): hashed only when it is one of the input's UIDs
#: (the check finds those there; a case with one failed "please report it": thirty-sixth hostile trial AJ22).
_GLUED_UID = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9]|\.[0-9])")
_DICOM_DEFINED_UID = "1.2.840.10008."
_FILE_SUFFIXES = {".dcm", ".dicom", ".ima", ".img"}

try:  # POSIX advisory locks: runs sharing one map update it one at a time
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


#: A dotted run of digits shorter than this that is none of the input's UIDs is not taken for a UID in free text.
MIN_TEXT_UID_LENGTH = 10


def looks_like_uid(text: str) -> bool:
    """Whether ``text``, found in free text, is a UID the way DICOM writes them (PS3.5 9.1): at most 64
    characters, at least two numeric components separated by periods, none with a leading zero but a single ``0``,
    rooted as an OID (ISO/IEC 9834-1: a first component 0, 1 or 2; a second below 40 after 0 or 1), and, in free
    text, at least :data:`MIN_TEXT_UID_LENGTH` characters. A date (``03.10.2025``, ``17.10.2025``, ``2025.10.03``)
    or a version number is none."""
    parts = text.split(".")
    if not MIN_TEXT_UID_LENGTH <= len(text) <= 64 or len(parts) < 2:
        return False
    if any(not (part.isascii() and part.isdigit()) or (part[0] == "0" and len(part) > 1) for part in parts):
        return False
    first, second = int(parts[0]), int(parts[1])
    return first == 2 or (first in (0, 1) and second < 40)


class PseudonymError(DoseAlignError):
    """The key or map file cannot be used, or an output would still identify a patient."""


# ---- the key -----------------------------------------------------------------------------------


def load_or_create_key(path: Path) -> tuple:
    """``(key bytes, created)``: read the hex key in ``path``, or write a new random one (mode 0600)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise PseudonymError(
            "the key file is a link to nothing", path=path, hint="remove the link or point it at the key"
        )
    if path.exists():
        try:
            key = bytes.fromhex(_read_key_text(path))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise PseudonymError(
                f"cannot read the key: {error}", path=path, hint="a key file holds 64 hexadecimal characters"
            ) from None
        if len(key) < 16:
            raise PseudonymError(
                f"the key has {len(key)} bytes, at least 16 are needed", path=path, hint="delete it to get a new one"
            )
        return key, False
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, (key.hex() + "\n").encode("ascii"), replace=False)
    except FileExistsError:  # another run created it meanwhile: use that one
        return load_or_create_key(path)
    except OSError as error:
        raise PseudonymError(f"cannot create the key file: {_cause(error)}", path=path) from None
    return key, True


#: A key file holds 64 hexadecimal characters; anything much larger is not a key.
KEY_FILE_MAX_BYTES = 4096


#: The UTF-8 byte order mark.
_UTF8_BOM = b"\xef\xbb\xbf"


def _read_key_text(path: Path) -> str:
    """The key file's text, read only from a regular file of at most KEY_FILE_MAX_BYTES (a pipe, a device or a
    huge file would block or fill memory)."""
    handle = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        if info.st_size > KEY_FILE_MAX_BYTES:
            raise ValueError(f"it has {info.st_size} bytes, a key file has about 65")
        data = os.read(handle, KEY_FILE_MAX_BYTES + 1)
        # a byte order mark, as Notepad and Excel's "CSV UTF-8" write one, is no part of the key (eighty-first
        # hostile trial CC5: "'ascii' codec can't decode byte 0xef")
        return data.removeprefix(_UTF8_BOM).decode("ascii").strip()
    finally:
        os.close(handle)


def _cause(error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, "")
    return f"{error.strerror or error}" + (f" ({code})" if code else "")


_NO_LINKS = {errno.EPERM, errno.EXDEV, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EPERM)}
_NO_LINKS.add(getattr(errno, "EOPNOTSUPP", errno.EPERM))


def _write_private(path: Path, data: bytes, replace: bool) -> None:
    """Write ``data`` to ``path`` (mode 0600) whole or not at all: a temporary file beside it, synced, then
    renamed (``replace``) or linked into place (never over an existing file); the temporary file never stays."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    handle = os.open(str(temp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(handle, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view) :]
            os.fsync(handle)
        finally:
            os.close(handle)
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # never over a key another run just created
            except FileExistsError:
                raise
            except OSError as error:  # a file system without hard links (FAT, some network shares)
                if error.errno not in _NO_LINKS or path.exists():
                    raise
                os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def key_fingerprint(key: bytes) -> str:
    """What meta.json records of the key (``pseudonymized.key``): a keyed hash of a fixed text under it, 16 hex
    digits. It tells whether two exports used one key; it reveals nothing of the key (HMAC-SHA256)."""
    return hmac.new(key, b"dosealign|key fingerprint", hashlib.sha256).hexdigest()[:16]


def key_is_private(path: Path) -> bool:
    """Whether only the owner may read the key file."""
    return not (Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def default_paths(out_dir: Path) -> tuple:
    """``(key file, map file)`` beside, not inside, the output folder."""
    out_dir = Path(out_dir).absolute()
    return out_dir.parent / DEFAULT_KEY_NAME, out_dir.parent / f"{out_dir.name}.pseudonym-map.csv"


def check_outside(path: Path, out_dir: Path, what: str, input_root: Optional[Path] = None, writes: bool = True) -> None:
    """The key and the map must not end up in the folder that is shared, nor be written into the input.

    Paths are compared after resolving symbolic links (of every existing part), so a key path that
    reaches OUT through a link is refused too, and folders also by identity (device and inode), so one that
    reaches OUT or the input through a bind mount is refused as well.
    """
    real = Path(os.path.realpath(path))
    # by resolved paths and folder identity (bind mounts), and as written (a folder link inside OUT)
    if within(path, out_dir) is not None or given_within(path, out_dir):
        raise PseudonymError(
            f"the {what} would be inside the output folder {out_dir}"
            + (f" (it resolves to {real})" if real != Path(path).absolute() else "")
            + ", which is meant to be shared",
            path=path,
            hint=f"put the {what} elsewhere",
        )
    if input_root is not None and writes and (within(path, input_root) is not None or given_within(path, input_root)):
        raise PseudonymError(
            f"the {what} would be written inside the input folder {input_root}, which is never written to",
            path=path,
            hint=f"give --{'key' if 'key' in what else 'map'}-file outside the input",
        )


# ---- identity of the input ---------------------------------------------------------------------


#: Apostrophes written otherwise than ``'``, read as it by both sides: the modifier letters of Ukrainian (``ʼ``) and Uzbek
#: or Hawaiian (``ʻ``) are letters to Unicode, and ``Gʻulomov`` was one word that neither ``Gulomov`` nor ``G'ulomov``
#: spelt (fifty-third hostile trial BA4); also the turned comma, the prime, the grave and acute accents typed for one.
#: So are the marks transliterations write for Arabic ʿayn and hamza (``Saʿadi``), the stress mark, the Latin saltillo
#: and the Hebrew geresh (``ח׳ורי``: fifty-fifth trial BC1, BC6), and the fullwidth apostrophe.
_APOSTROPHES = str.maketrans(
    {c: "'" for c in "\u02bc\u02bb\u02b9\u2018\u2019\u201b\u2032\u0060\u00b4\u02bd\u02be\u02bf\u02c8\ua78c\u05f3\uff07"}
)


#: Letters of Arabic script that Arabic, Persian and Urdu keyboards type differently for one name, as one form (Persian
#: ``ی ک`` and Arabic ``ي ك``, the alef maksura ``ى`` for a final ``ي``, the ta marbuta ``ة`` and Urdu forms of ``ه``,
#: the alef wasla ``ٱ``), and the tatweel ``ـ`` that only stretches a word (``يـوسـف``) dropped: ``کریمی`` in an ROI name
#: for a header's ``كريمي`` stayed in clear (fifty-third hostile trial BA1, BA2). NFKC folds none of them.
_ARABIC_FORMS = {
    "\u06cc": "\u064a", "\u0649": "\u064a", "\u06a9": "\u0643", "\u0629": "\u0647", "\u06c1": "\u0647",
    "\u06be": "\u0647", "\u06d5": "\u0647", "\u06c3": "\u0647", "\u06aa": "\u0643", "\u0671": "\u0627",
    "\u0640": "",
}  # fmt: skip
_ARABIC_FOLD = str.maketrans(_ARABIC_FORMS)


#: Letters of Malayalam and Bengali written in two ways, as one code point (the chillu ``ൽ``, the khanda ta ``ৎ``) or
#: as the consonant, virama and zero width joiner: a name in one, an ROI in the other stayed in clear (fifty-fifth
#: hostile trial BC4). A name is held in both.
_ATOMIC_LETTERS = {
    "\u0d7a": "\u0d23\u0d4d\u200d", "\u0d7b": "\u0d28\u0d4d\u200d", "\u0d7c": "\u0d30\u0d4d\u200d",
    "\u0d7d": "\u0d32\u0d4d\u200d", "\u0d7e": "\u0d33\u0d4d\u200d", "\u0d7f": "\u0d15\u0d4d\u200d",
    "\u09ce": "\u09a4\u09cd\u200d",
}  # fmt: skip


def _other_encodings(name: str) -> set:
    """``name`` with each letter of :data:`_ATOMIC_LETTERS` written the other ways (one code point, three, or two,
    without the joiner, as older text wrote it at a word's end: ``അനില്``), whichever way it holds it."""
    found = set()
    atomic = name
    for letter, sequence in _ATOMIC_LETTERS.items():
        atomic = atomic.replace(sequence, letter)
        # the bare form (base and virama) is the letter only where no letter or mark follows: inside a word it
        # starts a conjunct
        atomic = re.sub(
            re.escape(sequence[:2]) + r"(?![^\W\d_]|[\u0300-\u036f\u0900-\u0dff\u200c\u200d])", letter, atomic
        )
    spelled, bare = atomic, atomic
    for letter, sequence in _ATOMIC_LETTERS.items():
        spelled = spelled.replace(letter, sequence)
        bare = bare.replace(letter, sequence[:2])
    found.update({atomic, spelled, bare})
    return found - {name}


def _name_pieces_of(part: str, apostrophes: bool = True) -> list:
    """A name component parted where a double-barrelled or apostrophe name is: at any punctuation, symbol or space
    (hyphens and dashes of any script, apostrophes, points, the middle and katakana dots, bullets, the Hebrew maqaf,
    minus: fifty-fifth and fifty-seventh hostile trials BC2, BE2, where a list of them missed the next one)."""
    pieces, piece = [], []
    for char in part:
        if unicodedata.category(char)[0] in "PSZ" and (apostrophes or char not in _APOSTROPHE_CHARS):
            pieces.append("".join(piece))
            piece = []
        else:
            piece.append(char)
    pieces.append("".join(piece))
    return [p for p in pieces if p]


#: The apostrophe and what both sides read as one (:data:`_APOSTROPHES`).
_APOSTROPHE_CHARS = frozenset("'" + "".join(chr(code) for code in _APOSTROPHES))


@dataclass
class Identity:
    """Everything in an input tree that identifies a patient: values to remove and values to replace."""

    patient_ids: set = field(default_factory=set)
    names: set = field(default_factory=set)  # full PN values and their components
    #: (PatientID, study UID where there is none) -> the patient's names (PatientName, OtherPatientNames,
    #: PatientBirthName, every PN of its headers), other IDs and visit IDs as the headers give them (for the map)
    patient_names: dict = field(default_factory=dict)
    patient_other_ids: dict = field(default_factory=dict)
    patient_visit_ids: dict = field(default_factory=dict)
    dates: set = field(default_factory=set)  # YYYYMMDD
    other: set = field(default_factory=set)  # accession numbers, other IDs
    visit_ids: set = field(default_factory=set)  # the values of :data:`VISIT_KEYWORDS` (also in ``other``)
    roi_names: set = field(default_factory=set)  # the ROI names of the input's structure sets (at most MAX_RENAMED)
    #: per structure set (its path), the ROI names it gives that hold DoseAlign's mark itself (``[removed]_L``)
    marked_roi_names: dict = field(default_factory=dict)
    uids: set = field(default_factory=set)
    paths: set = field(default_factory=set)  # relative paths (files and folders, posix)
    persons: set = field(default_factory=set)  # each PN value's components, in order (joined spellings)

    @property
    def identifiers(self) -> set:
        """IDs worth removing from text: a StudyID "1" identifies nobody, and removing every "1" breaks text."""
        visits = self.visit_ids
        # a visit's number (accession, study, order, procedure step) is one only with a digit: worklists put
        # procedure codes there (PROSTATE, PELVIS), and every ROI of that organ lost its name (thirty-second hostile
        # trial AF8)
        found = {i for i in self.patient_ids if len(i) >= MIN_ID_LENGTH} | {
            i
            for i in self.other
            if len(i) >= (MIN_OTHER_ID_LENGTH if i in visits else MIN_ID_LENGTH)
            and (i not in visits or any(c.isdigit() for c in _ascii_digits(i)))
        }
        # an ID written in digits of another script is also the ID in ASCII digits, as texts are read (thirty-first
        # hostile trial AE7: MRN-١٠٧٢٣١٥ left PTV_1072315)
        found |= {_ascii_digits(i) for i in found}
        # an ID that reads as a short decimal number (2.5, 1.0) is every step and version number in the outputs:
        # the check refused each case "please report it" (twenty-seventh hostile trial AA3)
        return {i for i in found if len(i) >= MIN_OTHER_ID_LENGTH or not _SHORT_DECIMAL.fullmatch(i)}

    def add_dataset(self, ds, dates: Optional[set] = None) -> tuple:
        """Collect the identifying values of one header (top level, IDs in sequences, and PN/DA/DT anywhere);
        its dates into ``dates`` where given (its patient's, bounded before they join :attr:`dates`). Returns
        ``(other IDs, visit IDs, names)`` of the header, for the pseudonym map."""
        dates = self.dates if dates is None else dates
        other, visits, names = set(), set(), set()
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            for item in _values(value):
                if keyword == "PatientID":
                    self.patient_ids.add(item)
                else:
                    other.add(item)
                    if keyword in VISIT_KEYWORDS:
                        visits.add(item)
        for element in _iter_elements(ds):
            vr = getattr(element, "VR", "")
            if vr == "SQ":
                for item in element.value or []:  # an ID in a sequence (OtherPatientIDsSequence) is another ID
                    for keyword in IDENTIFYING_KEYWORDS:
                        other.update(_values(item.get(keyword)))
                        if keyword in VISIT_KEYWORDS:
                            visits.update(_values(item.get(keyword)))
            elif vr == "PN":
                for item in _values(element.value):
                    self.add_name(item)
                    names.add(item.strip())
            elif vr in ("DA", "DT"):
                for item in _values(element.value):
                    dates.update(dates_of_value(item, vr))
            elif vr == "UI" and element.tag.group != 0x0002:
                for item in _values(element.value):
                    if not item.startswith(_DICOM_DEFINED_UID):
                        self.uids.add(item)
        self.other |= other
        self.visit_ids |= visits
        return other, visits, {n for n in names if n}

    def add_name(self, name: str) -> None:
        name = name.strip()
        if not name:
            return
        if "\\" in name:  # several PN values, as DICOM writes them (Doe^John\Roe^Jane): each a name
            for value in name.split("\\"):
                self.add_name(value)
            return
        repaired = _utf8_read_as_latin1(name)
        if repaired is not None:  # the name as typed, where a system stored it decoded with the wrong character set
            self.add_name(repaired)
        plain = name.translate(_APOSTROPHES).translate(_ARABIC_FOLD)
        if plain != name:  # (also with its apostrophes and Arabic letters as typed on another keyboard: BA4, BA1)
            self.add_name(plain)
        compatible = unicodedata.normalize("NFKC", name)
        if compatible != name:  # (fullwidth letters and marks as their plain forms: ＧＡＲＣＩＡ－ＬＯＰＥＺ, BC2)
            self.add_name(compatible)
        self.names.add(name)
        # a component written with a one-letter piece apart (O NEIL, D ANGELO: an apostrophe typed as a space) is
        # also the pieces joined (ONEIL), as a letter alone is no component (sixty-first hostile trial BI3)
        joined = re.sub(r"(?<![^\W\d_])([^\W\d_])\s+(?=[^\W\d_]{2})", r"\1", name)
        if joined != name:
            self.add_name(joined)
        if any(c in name for c in "\u0d4d\u09cd\u0d7a\u0d7b\u0d7c\u0d7d\u0d7e\u0d7f\u09ce"):
            for other in _other_encodings(name) - self.names:  # (ൽ and ല്‍, ৎ and ত্‍: BC4)
                self.add_name(other)
        parts = tuple(p for p in re.split(r"[\^=,\s]+", name) if p)
        # a double-barrelled or apostrophe name (García-López, O'Brien) is written by its parts too
        # (also parted by the dots and hyphens of other scripts and widths: スミス・ジョン, 买买提•艾力: BC2)
        pieces = tuple(p for part in parts for p in _name_pieces_of(part) if p)
        # and parted at all but its apostrophes: O'Neil of O'Neil-Smith is a component, PTV_ONEIL stayed in clear
        # (fifty-ninth hostile trial BG5)
        compounds = tuple(p for part in parts for p in _name_pieces_of(part, apostrophes=False) if p)
        spellings = {parts, *transliterations(parts)}
        if pieces != parts:
            spellings |= {pieces, *transliterations(pieces)}
        if compounds not in (parts, pieces):
            spellings |= {compounds, *transliterations(compounds)}
        for spelled in spellings:  # Müller also as Mueller and Muller
            for part in spelled:
                if len(part) >= min_name_part(part):
                    self.names.add(part)
            if len(spelled) <= MAX_JOINED_PARTS:
                if spelled:
                    self.persons.add(spelled)
                continue
            # more components than a name has (a damaged value, a list pasted into one field): joined spellings
            # are of neighbours only, each run of five (one PN group) a name of its own; the spellings of two or
            # three of n components in any order grow as n^3 (100 components took 4 GB and a batch down)
            for start in range(len(spelled) - _PN_GROUP + 1):
                self.persons.add(spelled[start : start + _PN_GROUP])

    def add_path(self, rel: str) -> None:
        parts = PurePosixPath(rel).parts
        for n in range(1, len(parts) + 1):
            self.paths.add("/".join(parts[:n]))


#: The most components of one name whose spellings are joined in any order: a PN has five in each of its three groups
#: (PS3.5 6.2), and a name written in two of them (Yamada^Tarou=山田^太郎) has four to six.
MAX_JOINED_PARTS = 8
#: The components of one PN group (family, given, middle, prefix, suffix).
_PN_GROUP = 5


def _values(value) -> list:
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _iter_elements(ds, depth: int = 0):
    """Elements of ``ds`` and of its sequences (not into contour or pixel-sized data)."""
    for element in ds:
        if element.tag == 0x7FE00010:
            continue
        yield element
        if getattr(element, "VR", "") == "SQ" and depth < 4 and element.keyword not in ("ROIContourSequence",):
            for item in element.value or []:
                yield from _iter_elements(item, depth + 1)


def _other_values(obj) -> set:
    """The other patient names and IDs a scanned file holds (see :func:`_other_name_words`) and its other IDs."""
    return _other_name_words(obj) | set(obj.info.get("other_ids", ()))


def _other_name_words(obj) -> set:
    """The words of the other patient names a scanned file holds (OtherPatientNames, birth names, a CT slice's other
    person names, and PatientName's values after its first: 600 000 of them in each CT slice took a case 3 min and
    3.1 GB, twenty-fifth hostile trial Y1), a name by its words (each a name to find: one value of 3000 words on each
    of 40 slices took a case 80 s and 2.2 GB, twenty-sixth hostile trial Z3)."""
    first, *others = obj.info.get("patient_name", "").split("\\")
    names = list(obj.info.get("other_names", ())) + others
    words: set = set()
    for name in names:
        for value in name.split("\\"):
            words |= _name_cost(value)
    if len([word for word in _NAME_WORDS.split(first) if word]) > MAX_JOINED_PARTS:
        words |= _name_cost(first)  # the patient's name itself, of more words than a name has, counts too
    return words


def _name_cost(value: str) -> set:
    """What one name value costs the rewriting and the check, as :meth:`Identity.add_name` takes it: a name of as
    many words as a name has counts once; a longer one by its words and the spellings joined of them (each run of
    five words): 800 values of 12 words in other orders counted 12 and held a case past 290 s (twenty-eighth
    hostile trial AB4)."""
    pieces = tuple(word for word in _NAME_WORDS.split(value) if word)
    if not pieces:
        return set()
    # each spelling the rewriting also takes (Müller as Mueller and Muller: thousands of accented names made 44 625
    # entries of 1809 counted, twenty-ninth hostile trial AC4)
    spellings = {pieces, *transliterations(pieces)}
    if len(pieces) <= MAX_JOINED_PARTS:  # a name as names are: it counts once a spelling, as it always did
        return spellings
    cost: set = set()
    for spelled in spellings:
        cost.update(spelled)
        cost.update(tuple(spelled[n : n + _PN_GROUP]) for n in range(len(spelled) - _PN_GROUP + 1))
    return cost


#: What parts a person name into the words :meth:`Identity.add_name` takes, its parts and their pieces (``-``, ``'``
#: and ``.`` part them further: a value of hyphen-joined words held a case 158 s and 3.5 GB, twenty-seventh hostile
#: trial AA4).
_NAME_WORDS = re.compile(r"[\^=,\s\-\u2010-\u2015'\u2019.]+")


def _longest_value(obj) -> int:
    """The length of the longest name or ID a scanned file holds (PatientID, PatientName, other names and IDs)."""
    values = [obj.patient_id or "", obj.info.get("patient_name", "")]
    values += list(obj.info.get("other_names", ())) + list(obj.info.get("other_ids", ()))
    return max((len(v) for value in values for v in str(value).split("\\")), default=0)


def _too_long(length: int) -> str:
    """The reason a file is left out for a name or ID of ``length`` characters ("" within the bound): each character
    of an ID costs the rewriting and the check (a 2 MB PatientAddress on one CT slice held the input 423 s and 8.9 GB
    before its first case: twenty-sixth hostile trial Z8)."""
    most = limit("DOSEALIGN_IDENTITY_CHARS")
    if length <= most:
        return ""
    return (
        f"it holds a name or ID of {length} characters, more than the {most:g} a pseudonymized export takes "
        "(DOSEALIGN_IDENTITY_CHARS)"
    )


def _identity_values(ds) -> tuple:
    """``(count, longest)``: how many names (their distinct words), IDs and dates :meth:`Identity.add_dataset` would
    take of a header, and the length of its longest name or ID (counted before any is taken: the rewriting and the check
    pay for each)."""
    count = longest = 0
    words: set = set()  # a name's words, each counted once (a word two names share is one name to find)
    for element in _iter_elements(ds):
        vr = getattr(element, "VR", "")
        if vr in ("PN", "DA", "DT") or element.keyword in IDENTIFYING_KEYWORDS:
            for item in _values(element.value):
                if vr in ("DA", "DT"):
                    count += 1
                    continue
                if vr == "PN":
                    words |= _name_cost(item)
                else:
                    count += 1
                longest = max(longest, len(item))
    return count + len(words), longest


#: The other names a pseudonymized export takes of one input, as a multiple of the other names and IDs of one patient.
INPUT_OTHER_NAMES = 4


def crowded_files(scan) -> dict:
    """``{rel_path: reason}`` of the files whose other patient names and IDs a pseudonymized export does not take:
    those of a patient whose files hold more distinct ones than ``DOSEALIGN_OTHER_NAMES``, and, where all patients'
    together hold more than :data:`INPUT_OTHER_NAMES` times that, those of the patients holding most, until the rest
    do not. Each name costs the check some 80 kB and 2.5 ms: 60 000 in one CT slice took 150 s and 4.9 GB, 150 000
    in ten ended the export in a MemoryError (twenty-fourth hostile trial X3). A series repeating its few names in
    every slice holds those few. The input's bound counts names only: IDs are looked up by an index (X7), and a
    cohort of thousands of patients, each with its accession numbers, admission and study IDs, holds more than
    the bound of them."""
    most = limit("DOSEALIGN_OTHER_NAMES")
    patients: dict = {}
    crowded = {}
    for obj in scan.objects:
        why = _too_long(_longest_value(obj))
        if why:
            crowded[obj.rel_path] = why
            continue
        values = _other_values(obj)
        if values:
            held = patients.setdefault(_patient_key(obj.patient_id), (set(), [], set()))
            held[0].update(values)
            held[1].append(obj.rel_path)
            held[2].update(_other_name_words(obj))
    for values, files, _names in patients.values():
        if len(values) > most:
            why = f"its patient's files hold {len(values)} other patient names and IDs, more than the {most:g}"
            crowded.update(dict.fromkeys(files, why + " a pseudonymized export takes of one patient"))
    kept = sorted((p for p in patients.values() if p[1][0] not in crowded), key=lambda p: -len(p[2]))
    # how many kept patients hold each name: the distinct ones are its keys, and a patient left out takes away only
    # its own (a union computed again for each patient left out took 93 s for 800 patients: twenty-fifth trial Y7)
    holders: dict = {}
    for _values, _files, names in kept:
        for value in names:
            holders[value] = holders.get(value, 0) + 1
    for _values, files, names in kept:
        if len(holders) <= INPUT_OTHER_NAMES * most:
            break
        why = (
            f"the input's patients hold {len(holders)} other patient names, more than the "
            f"{INPUT_OTHER_NAMES * most:g} a pseudonymized export takes of one input; its patient holds the most"
        )
        crowded.update(dict.fromkeys(files, why))
        for value in names:
            holders[value] -= 1
            if not holders[value]:
                del holders[value]
    return crowded


def identity_of_scan(scan, read_header=None, leave_out=frozenset(), crowded: Optional[dict] = None) -> Identity:
    """The identity of every object a scan found: UIDs and paths from the scan, values from the headers.

    Headers are read for every non-CT object and for one slice of each CT series (names and dates
    are the same across a series); the other names and IDs the scan recorded of every file
    (:func:`~DoseAlignLib.dicom.headers.other_identity`) are added, so one CT slice holding them is enough.
    Of the files in ``leave_out`` (:func:`crowded_files`) the headers are not read and their other names and IDs
    not taken: their cases are not exported. Neither is a header read here that holds more names, IDs and dates than
    ``DOSEALIGN_OTHER_NAMES`` (20 000 dates in one structure set held each case of the input: twenty-fifth hostile
    trial Y5); it is added to ``crowded`` with the reason. Nor are the dates of a patient whose files (each CT slice,
    each header read) hold more distinct ones than that: its files are added to ``crowded``.
    """
    from ..dicom import headers as dicom_headers

    read_header = read_header or dicom_headers.read_header
    ident = Identity()
    patient_dates: dict = {}  # PatientID -> (its files' dates, its files)
    for obj in scan.objects:
        held = patient_dates.setdefault(_patient_key(obj.patient_id), (set(), []))
        held[0].update(obj.info.get("dates", ()))  # each CT slice's dates
        held[1].append(obj.rel_path)
        ident.add_path(obj.rel_path)
        longest = limit("DOSEALIGN_IDENTITY_CHARS")
        if obj.patient_id and len(obj.patient_id) <= longest:
            ident.patient_ids.add(obj.patient_id)
        name = obj.info.get("patient_name", "")
        if obj.rel_path in leave_out:  # (its other names: not taken, the first only where it is a name's length)
            name = name.split("\\")[0] if len(name.split("\\")[0]) <= longest else ""
        ident.add_name(name)
        whose = (obj.patient_id, "" if obj.patient_id else obj.study_uid)  # (a patient without PatientID is told by
        # its study, as its pseudonym is: eighty-third hostile trial CE1)
        if name.strip():
            ident.patient_names.setdefault(whose, set()).add(name.strip())
        if obj.rel_path not in leave_out:
            for name in obj.info.get("other_names", ()):  # other names and IDs of every file, CT slices too
                ident.add_name(name)
                if name.strip():
                    ident.patient_names.setdefault(whose, set()).add(name.strip())
            ident.other.update(obj.info.get("other_ids", ()))
            visits = set(obj.info.get("visit_ids", ()))
            ident.patient_other_ids.setdefault(whose, set()).update(i for i in obj.info.get("other_ids", ()) if i)
            ident.patient_visit_ids.setdefault(whose, set()).update(i for i in visits if i)
            ident.visit_ids.update(visits)
        for uid in (obj.sop_instance_uid, obj.series_uid, obj.study_uid, obj.frame_of_reference_uid):
            if uid:
                ident.uids.add(uid)
        for key in ("plan_uids", "struct_uids", "ct_series_uids", "frame_uids", "roi_frame_uids", "ct_image_uids"):
            ident.uids.update(u for u in obj.info.get(key, []) or [] if u)
    for rel, _reason in scan.skipped:
        ident.add_path(rel)
    # what the scan could not read or left out is named in rows and warnings too (a folder it cannot list, named
    # after the patient, was in clear: thirty-eighth hostile trial AL12)
    for rel, *_rest in [*getattr(scan, "unreadable", []), *getattr(scan, "ignored", [])]:
        if isinstance(rel, str) and rel.rstrip("/"):
            ident.add_path(rel.rstrip("/"))
    headers = [o for o in scan.objects if o.kind != "CT"] + [s.slices[0] for s in scan.ct_series if s.slices]
    most = limit("DOSEALIGN_OTHER_NAMES")
    for obj in (o for o in headers if o.rel_path not in leave_out):
        try:
            ds = read_header(obj.path)
            many, longest = _identity_values(ds)
            if many > most or _too_long(longest):
                if crowded is not None:
                    crowded[obj.rel_path] = _too_long(longest) or (
                        f"its header holds {many} names, IDs and dates, more than the {most:g} a pseudonymized "
                        "export takes of one file"
                    )
                continue
            other, visits, names = ident.add_dataset(ds, dates=patient_dates[_patient_key(obj.patient_id)][0])
            whose = (obj.patient_id, "" if obj.patient_id else obj.study_uid)  # (what only an RT header holds, an
            # AdmissionID, a trial subject: eighty-fifth hostile trial CG2)
            ident.patient_other_ids.setdefault(whose, set()).update(other)
            ident.patient_visit_ids.setdefault(whose, set()).update(visits)
            ident.patient_names.setdefault(whose, set()).update(names)
            if obj.kind == "RTSTRUCT":
                for roi in ds.get("StructureSetROISequence") or []:
                    roi_name = str(roi.get("ROIName", "") or "").strip()
                    if len(ident.roi_names) < MAX_RENAMED:
                        ident.roi_names.add(roi_name)
                    if REMOVED in roi_name:
                        ident.marked_roi_names.setdefault(obj.rel_path, set()).add(roi_name.casefold())
        except Exception:  # a header that cannot be read again adds nothing: its scanned values are in
            continue
    for dates, files in patient_dates.values():
        if len(dates) > most:  # many headers that each stay under the bound (twenty-fifth hostile trial's addendum)
            if crowded is not None:
                why = f"its patient's files hold {len(dates)} dates, more than the {most:g} a pseudonymized export "
                crowded.update({rel: why + "takes of one patient" for rel in files if rel not in crowded})
            continue
        ident.dates |= dates
    ident.uids = {u for u in ident.uids if not u.startswith(_DICOM_DEFINED_UID)}
    _without_placeholders(ident)
    return ident


def _is_placeholder(value: str) -> bool:
    """Whether a name, component or ID is the word of DoseAlign's own mark (``REMOVED``, ``[Removed]``): what an
    earlier de-identification wrote, no identity; read as one, every ``[removed]`` DoseAlign wrote was a leak and the
    cases failed "please report it" (forty-second hostile trial AP6)."""
    return "".join(c for c in value.casefold() if c.isalnum()) == REMOVED.strip("[]")


def _without_placeholders(ident: Identity) -> None:
    """``ident`` without :func:`_is_placeholder` names, components and IDs."""
    ident.patient_ids = {i for i in ident.patient_ids if not _is_placeholder(i)}
    ident.other = {i for i in ident.other if not _is_placeholder(i)}
    ident.visit_ids = {i for i in ident.visit_ids if not _is_placeholder(i)}
    ident.names = {n for n in ident.names if not _is_placeholder(n)}
    persons = set()
    for parts in ident.persons:
        kept = tuple(part for part in parts if not _is_placeholder(part))
        if kept:
            persons.add(kept)
    ident.persons = persons


def _patient_key(patient_id: Optional[str]) -> str:
    """A PatientID as the bounds group files by patient: as the pairing compares it (letter case and blanks around
    it aside: an MR of ``pat001`` was no file of patient ``PAT001`` here, yet its case's: twenty-seventh hostile
    trial AA5)."""
    return (patient_id or "").strip().casefold()


def _refuse_crowded(case, crowded: dict, patients: Optional[dict] = None) -> None:
    """A case one of whose files :func:`crowded_files` left out is not exported: its identity is not all known.
    Nor is one of a patient another file of whom was left out (``patients``: PatientID -> that file): an MR image
    no case uses, read for identity only, held an AdmissionID and dates the case's ROI names held (twenty-sixth
    hostile trial Z7)."""
    objects = list(case.doses) + ([case.plan] if case.plan is not None else []) + list(case.structs)
    objects += list(case.ct.file_objects) if case.ct is not None else []
    found = next((obj.rel_path for obj in objects if obj.rel_path in crowded), None)
    where = found
    if found is None and patients and _patient_key(case.patient_id) in patients:
        found = patients[_patient_key(case.patient_id)]
        where = f"{found} (another file of the case's patient)"
    elif found is None and patients and "" in patients:  # a file of no PatientID may be any patient's
        found = patients[""]
        where = f"{found} (a file of no PatientID, which may be the case's patient's)"
    if found is not None and not case.error:
        why = crowded[found] if "(DOSEALIGN_" in crowded[found] else f"{crowded[found]} (DOSEALIGN_OTHER_NAMES)"
        case.error = (
            f"{where}: {why}: the case is not exported, as its identity could not be checked within bounds (remove "
            "them from the files, or raise the limit)"
        )


# ---- the pseudonymizer -------------------------------------------------------------------------


@dataclass
class Pseudonymizer:
    """Turns cases, rows and case results into their pseudonymous form (picklable: plain data)."""

    key: bytes
    keep_uids: bool = False
    input_root: str = ""
    identity: Identity = field(default_factory=Identity)
    entries: dict = field(default_factory=dict)  # (kind, pseudonym) -> original
    map_path: Optional[str] = None  # where :meth:`prepare` writes the mapping file

    @property
    def fingerprint(self) -> str:
        """:func:`key_fingerprint` of the key (recorded in each case's meta.json)."""
        return key_fingerprint(self.key)

    # -- pseudonyms
    def keyed_digest(self, kind: str, value: str) -> str:
        """A hash of ``value`` only this key makes (hex): to compare what may name patients without writing it."""
        return self._digest(kind, value).hex()

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"dosealign|{kind}|{value}".encode(), hashlib.sha256).digest()

    def patient(self, patient_id: str, fallback: str = "") -> str:
        value = patient_id or f"(no PatientID) {fallback}"
        pseudonym = "P" + self._digest("patient", value).hex()[:12]
        self.entries[("patient", pseudonym)] = patient_id or fallback
        return pseudonym

    def uid(self, uid: str) -> str:
        if self.keep_uids:
            return uid
        return self.hashed_uid(uid)

    def hashed_uid(self, uid: str) -> str:
        """``uid`` as a keyed hash ``2.25.<decimal>``, also with ``keep_uids`` (to compare a case recorded with real
        UIDs with one recorded with hashes); DICOM's own UIDs (transfer syntaxes, SOP classes) stay."""
        if not uid or uid.startswith(_DICOM_DEFINED_UID):
            return uid
        pseudonym = "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))
        self.entries[("uid", pseudonym)] = uid
        return pseudonym

    def path(self, rel: str) -> str:
        """One token per path component, so files of one folder share its folder token. The input's paths are
        POSIX: a backslash is a character of a name (``Nowak\\Anna``; it was read as a separator, and the CT's folder
        token was not its files' folder token: thirty-sixth hostile trial AJ17)."""
        rel = str(rel)
        parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
        if not parts:
            return rel
        tokens = []
        for n, part in enumerate(parts):
            prefix = "/".join(parts[: n + 1])
            digest = self._digest("path", prefix).hex()[:10]
            last = n == len(parts) - 1
            suffix = PurePosixPath(part).suffix.lower() if last else ""
            if last and suffix in _FILE_SUFFIXES:
                tokens.append(f"f{digest}{suffix}")
            else:
                tokens.append(f"d{digest}" if not last or prefix in self._folders else f"f{digest}")
            self.entries[("path", "/".join(tokens))] = prefix
        return "/".join(tokens)

    @property
    def _folders(self) -> set:
        folders = getattr(self, "_folder_cache", None)
        if folders is None:
            folders = {str(PurePosixPath(p).parent) for p in self.identity.paths} - {"."}
            object.__setattr__(self, "_folder_cache", folders)
        return folders

    # -- preparing a batch
    def prepare(
        self,
        scan,
        cases: Iterable,
        extra_rows: Iterable = (),
        channels: Iterable[str] = (),
        mapped: Iterable[str] = (),
        present_patients: Optional[set] = None,
    ) -> list:
        """Learn the input's identity and give every case its pseudonymous id and patient.

        Returns ``extra_rows`` (rows that are no case, e.g. damaged files) pseudonymized, and writes
        the mapping file to ``map_path`` before any case is exported, so a killed run has it too.
        ``channels``, the mask channel names the user chose (``--rois``), are refused first, before anything
        is written, when one holds a value that identifies a patient of the input (:meth:`check_channels`); so are
        ``mapped``, the names ``--roi-map`` gives ROIs (twenty-fourth hostile trial X2: rewritten without a word).
        ``present_patients``: the patient pseudonyms of the cases OUT holds, whose IDs and names the map gives are
        identity too (all the map's when None).
        """
        self.input_root = str(scan.root)
        cases = list(cases)
        crowded = crowded_files(scan)
        self.identity = identity_of_scan(scan, leave_out=frozenset(crowded), crowded=crowded)
        if self.map_path:
            self._take_mapped_patients(cases, present_patients)
        self.check_channels(channels)
        self.check_channels(mapped, option="--roi-map")
        self._check_marked_channels(channels, mapped)
        for rel in sorted(self.identity.paths):
            self.path(rel)
        if not self.keep_uids:
            for uid in sorted(self.identity.uids):
                self.uid(uid)
        self._find_alike()
        patients: dict = {}
        for obj in scan.objects:
            if obj.rel_path in crowded:
                patients.setdefault(_patient_key(obj.patient_id), obj.rel_path)
        for case in cases:
            _refuse_crowded(case, crowded, patients)
            original = case.case_id
            patient = self.patient(case.patient_id, _fallback(case))
            if case.summation_type and case.summation_type not in SUMMATION_TYPES:
                case.summation_type = "OTHER"
            case.case_id = self._case_pseudonym(patient, case.summation_type, original)
            case.patient_id = patient
            self.entries[("case", case.case_id)] = original
        rows = [self.row(r) for r in extra_rows]
        if self.map_path:
            self.write_map(Path(self.map_path))
        return rows

    def _case_pseudonym(self, patient: str, summation_type: Optional[str], original: str) -> str:
        label = re.sub(r"[^a-z0-9]+", "", (summation_type or "dose").lower()) or "dose"
        return f"{patient}_{label}_{self._digest('case', original).hex()[:8]}"

    def case_pseudonym(self, case) -> str:
        """The id :meth:`prepare` gives ``case``, without recording it: another shard's case of this input is this
        input's, not another's (forty-fourth hostile trial AR1)."""
        value = case.patient_id or f"(no PatientID) {_fallback(case)}"
        patient = "P" + self._digest("patient", value).hex()[:12]
        summation = case.summation_type
        return self._case_pseudonym(patient, summation if summation in SUMMATION_TYPES or not summation else "OTHER",
                                    case.case_id)  # fmt: skip

    def _check_marked_channels(self, channels: Iterable[str], mapped: Iterable[str]) -> None:
        """Refuse a ``--rois`` channel that holds DoseAlign's mark :data:`REMOVED` and names neither an ROI of the input
        nor a ``--roi-map`` channel: a name as an earlier pseudonymized export wrote it (its dataset.json's advice),
        which selects no ROI (ROIs are matched by their names before the rewriting): every channel all zeros, every
        case ok (forty-fourth hostile trial AR9)."""
        roi_names = self.identity.roi_names
        if len(roi_names) >= MAX_RENAMED:  # (not all of them known)
            return
        known = {n.casefold() for n in roi_names} | {str(n).casefold() for n in mapped}
        for name in channels:
            if REMOVED in name and name.casefold() not in known:
                raise PseudonymError(
                    f"--rois {name!r}: no ROI of the input has this name; it is a name --pseudonymize wrote, and --rois "
                    "selects ROIs by the names the input gives them; no case was written",
                    hint="name the ROIs as the input does, or map them to a channel name of your own with --roi-map",
                )

    def _take_mapped_patients(self, cases: list, present_patients: Optional[set]) -> None:
        """The PatientIDs, names, other IDs and visit numbers the map gives of the patients with a case in OUT are
        identity too, and this input's patients' are written to it (see :meth:`prepare`)."""
        # exported together, an ROI "Ring_as_QX-12345" naming another input's patient lost the ID, or another patient's
        # ROI "Ring" a patient Ring's name; appended, they stood in clear beside that patient's case (eighty-first
        # hostile trial CC1, CC2); only of patients with a case in OUT: a run refused after it wrote the map named a
        # patient OUT does not hold, and that refused the next --append
        mapped_ids, mapped_names, mapped_other, mapped_visits = mapped_patients(Path(self.map_path), present_patients)
        self.identity.patient_ids |= mapped_ids
        self.identity.other |= mapped_other | mapped_visits  # (their other IDs and names too: eighty-third CE5;
        # a visit's number as one, only with a digit: a StudyID LUNG refused the append, eighty-fifth CG1)
        self.identity.visit_ids |= mapped_visits
        for name in sorted(mapped_names):
            self.identity.add_name(name)
        _without_placeholders(self.identity)  # (a patient REMOVED in the map: eighty-third trial CE4)
        identity = self.identity
        # (a file's PatientID in another case, zy-77777 for ZY-77777, is its case's patient: eighty-fifth CG4)
        spelled = {_patient_key(case.patient_id): case.patient_id for case in cases if case.patient_id}
        for kind, held in (
            ("name", identity.patient_names),
            ("id", identity.patient_other_ids),
            ("visit", identity.patient_visit_ids),
        ):
            for (patient_id, study), values in sorted(held.items()):
                patient = self.patient(spelled.get(_patient_key(patient_id), patient_id), study)
                own_visits = identity.patient_visit_ids.get((patient_id, study), set())
                for value in sorted(values):
                    if kind == "id" and value in own_visits:  # (written once, as a visit)
                        continue
                    self.entries[(kind, f"{patient}.{self._digest(kind, value).hex()[:8]}")] = value

    def check_channels(self, channels: Iterable[str], option: str = "--rois") -> None:
        """Refuse mask channel names (``--rois``) that hold a patient's name, ID or date of the input (a surname
        ``Lung`` in ``Lung_L``): the channel could only be written rewritten (``[removed]_L``), which a loader
        choosing channels by name takes for an absent ROI. The ROIs are selected by their names before the
        rewriting; the channel's name is the user's, so it must be one the outputs can carry as it is."""
        for name in channels:
            rewritten = self.name(name)
            leak = self.guard.find(name, own=False)
            if rewritten != name or leak:
                hint = (
                    "give the channel a name without it: --roi-map maps the ROIs to a name of your choice "
                    '(e.g. {"Pulmo_L": ["Lung_L"]} with --rois ...,Pulmo_L), or leave the ROI out of --rois'
                    if option == "--rois"
                    else 'give the ROIs another name in the map (e.g. {"Pulmo_L": ["Lung_L"]})'
                )
                raise PseudonymError(
                    f"{option} {name!r}: the channel name holds {leak or 'an identifying value'} of the input: under "
                    f"--pseudonymize it could only be written as {rewritten!r}, where a loader choosing channels by "
                    "name finds no ROI; no case was written",
                    hint=hint,
                )

    # -- rewriting
    def text(self, value: str) -> str:
        """A free text with paths tokenized, UIDs hashed and identifying values removed (DoseAlign's own words,
        :data:`OWN_VOCABULARY`, are kept where a name component is one of them; an ROI name this pseudonymizer
        rewrote with :meth:`name` is written as rewritten there too: ``renamed from 'PTV_Lang'``)."""
        if not value:
            return value
        value = self._renamed_in(value)
        value = self._replace_paths(value, own=True)
        value = self._uids_in_text(value)
        rewritten = self._redact(value)
        if REMOVED in rewritten and self.guard.find(rewritten.replace(REMOVED, "")):  # (a mark that splits: AJ18)
            rewritten = self._redact(value.replace(REMOVED, ""))
        return rewritten

    def name(self, value: str) -> str:
        """A name the input gave (an ROI name, a label) rewritten as :meth:`text` does, but without DoseAlign's own
        words exempted: a surname ``Lang``, ``Block`` or ``Rule`` is removed from ``PTV_Lang`` (only DoseAlign's
        own text keeps its words). The marks :data:`REMOVED` of an earlier rewriting stay as they are."""
        if not value:
            return value
        most = limit("DOSEALIGN_IDENTITY_CHARS")
        # each character costs the rewriting and the check: 400 kB took 140 s (AA6); the marks of an earlier
        # rewriting are not the input's (a name of 1017 characters read again as 1242: thirty-fifth trial AI5)
        if len(value.replace(REMOVED, "")) > most:
            raise PseudonymError(
                f"a name the input gives (an ROI name, a label) of {len(value)} characters is longer than the "
                f"{most:g} --pseudonymize rewrites (DOSEALIGN_IDENTITY_CHARS); DICOM's LO holds 64",
                hint="shorten the name in the input, or raise the limit",
            )
        rewritten = self._rewritten_name(value)
        if rewritten != value and rewritten.casefold() in getattr(self, "_alike", ()):
            # two of the input's ROI names rewrite alike (Lung_L and Lens_L of patients Lung and Lens: [removed]_L):
            # each gets a keyed tag of itself, one channel name for one ROI in every case, where the structure set's
            # order numbered them, the lung's channel the lens in another case (twenty-second hostile trial V4)
            rewritten = f"{rewritten}_{self._roi_tag(value)}"
        elif rewritten == value and value.casefold() in getattr(self, "_literal_taken", ()):
            # the input names an ROI [removed]_L itself, and the cases of another input kept in OUT hold a channel of
            # that name for another ROI, which cannot be renamed there (--append): this one is told apart (fifty-third
            # hostile trial BA3: the right lung and the left were one channel)
            return f"{value}_{self._roi_tag(value)}"
        if rewritten != value:
            renamed = getattr(self, "_renamed", None)
            if renamed is None:
                renamed = {}
                object.__setattr__(self, "_renamed", renamed)
            if len(renamed) < MAX_RENAMED and REMOVED not in value:
                renamed[value] = rewritten
        return rewritten

    def _rewritten_name(self, value: str) -> str:
        """:meth:`name`'s rewriting of ``value``, before names that rewrite alike are told apart."""
        pieces = value.split(REMOVED)
        rewritten = REMOVED.join(self._name_piece(piece) for piece in pieces)
        if len(pieces) > 1 and self.guard.find(rewritten.replace(REMOVED, ""), own=False):
            # the input's own mark inside a name, an ID or a date (PTV_Lukasi[removed]ewicz) hid it from the rewriting
            # of each piece and from the check: read without the marks (thirty-sixth hostile trial AJ18)
            rewritten = self._name_piece("".join(pieces))
        if rewritten != value and not _alnum(rewritten.replace(REMOVED, "")):
            # a name that was identity as a whole (an ROI named after a surname: Ring, Cord) gets a keyed tag of
            # itself: two such ROIs were [removed] and [removed]_2 by their order in each structure set, one channel
            # the ring in one case and the cord in another (twenty-first hostile trial U12)
            tag = self._digest("roi", value.strip().casefold()).hex()[:8]
            self.entries[("roi", tag)] = value.strip()
            rewritten = f"{REMOVED}_{tag}"
        return rewritten

    def _roi_tag(self, value: str) -> str:
        """The keyed tag of an ROI name that rewrites like another (see :meth:`name`), listed in the map."""
        tag = self._digest("roi", value.strip().casefold()).hex()[:8]
        self.entries[("roi", tag)] = value.strip()
        return tag

    def _tag_alike(self, rewrites: dict) -> bool:
        """List in the map, now, the tags :meth:`name` gives the input's ROI names that rewrite alike (``rewrites``:
        name -> rewritten name): the workers' own were written with the map at the run's end only, and a run killed
        before it lost those of its finished cases, which --resume keeps and never names again (thirty-sixth hostile
        trial AJ21). Whether any was new."""
        before = len(self.entries)
        alike = getattr(self, "_alike", ())
        for roi_name, rewritten in rewrites.items():
            if roi_name and rewritten != roi_name and rewritten.casefold() in alike:
                self._roi_tag(roi_name)
        return len(self.entries) != before

    def avoid_names(self, taken: Iterable[str]) -> None:
        """Tell apart, with a keyed tag, this input's ROI names that rewrite to a name ``taken`` already (another
        input's channel in OUT, under --append): ``[removed]_L`` was the lung of the cases kept and the lens of the
        cases appended (twenty-eighth hostile trial AB2)."""
        # each name rewritten once: _find_alike did it at prepare (and kept it for here only: not sent to workers)
        rewrites = getattr(self, "_rewrites", {})
        object.__setattr__(self, "_rewrites", {})
        taken = {str(name).casefold() for name in taken}
        if not taken:
            return
        most = limit("DOSEALIGN_IDENTITY_CHARS")
        alike = set(getattr(self, "_alike", ()))
        done = {}
        literal = set()  # the input's own marked names ([removed]_L) that another input's channel holds
        for roi_name in sorted(n for n in self.identity.roi_names if n and len(n) <= most):
            rewritten = done[roi_name] = rewrites.get(roi_name) or self._rewritten_name(roi_name)
            if rewritten != roi_name and rewritten.casefold() in taken:
                alike.add(rewritten.casefold())
            elif rewritten == roi_name and REMOVED in roi_name and roi_name.casefold() in taken:
                literal.add(roi_name.casefold())
        object.__setattr__(self, "_alike", frozenset(alike))
        object.__setattr__(self, "_literal_taken", frozenset(literal))
        before = len(self.entries)
        for roi_name in done:
            if roi_name.casefold() in literal:
                self._roi_tag(roi_name)
        if (self._tag_alike(done) or len(self.entries) != before) and self.map_path:  # (written at prepare: again)
            self.write_map(Path(self.map_path))

    def _find_alike(self) -> None:
        """The rewritten ROI names (case folded) that two of the input's ROI names, other than in case, rewrite to."""
        originals: dict = {}
        rewrites: dict = {}
        most = limit("DOSEALIGN_IDENTITY_CHARS")
        for roi_name in sorted(n for n in self.identity.roi_names if len(n) <= most):  # (longer: its case fails)
            rewritten = rewrites[roi_name] = self._rewritten_name(roi_name) if roi_name else roi_name
            if rewritten != roi_name or REMOVED in roi_name:  # (an ROI the input named [removed]_L itself: AB9)
                originals.setdefault(rewritten.casefold(), set()).add(roi_name.casefold())
        object.__setattr__(self, "_alike", frozenset(k for k, names in originals.items() if len(names) > 1))
        object.__setattr__(self, "_rewrites", rewrites)
        self._tag_alike(rewrites)

    def names_written_otherwise(self, meta: dict, struct_paths: Iterable[str] = ()) -> list:
        """The ROI names a kept case's meta.json records otherwise than this run writes them: without the keyed tag this
        run gives them (two of the input's ROI names rewrite to them now: the input gained Lens_L of a patient Lens
        beside Lung_L of a patient Lung, forty-fourth hostile trial AR8), or with one it no longer gives (the patient
        Lens left the input: forty-sixth AT7). The case would name that ROI otherwise than this run's cases."""
        structures = meta.get("structures") if isinstance(meta, dict) else None
        if not isinstance(structures, dict):
            return []
        names = list(structures.get("names") or []) + [
            s.get("name") for s in structures.get("skipped") or [] if isinstance(s, dict)
        ]
        alike = getattr(self, "_alike", frozenset())
        # (an ROI the case's own structure set names with the mark, [removed]_L, is written as it is, never tagged:
        # AV2; another case's such ROI makes no name of this case right: fiftieth hostile trial AX1)
        marked = self.identity.marked_roi_names
        literal = set().union(*(marked.get(path, set()) for path in struct_paths))
        stale = set()
        literal_taken = getattr(self, "_literal_taken", frozenset())
        for name in (n for n in names if isinstance(n, str) and REMOVED in n):
            if name.casefold() in literal_taken:  # (written untagged before another input took its name: BA3)
                stale.add(name)
                continue
            if name.casefold() in alike:
                if name.casefold() not in literal:
                    stale.add(name)
                continue
            tagged = re.fullmatch(r"(.+)_([0-9a-f]{8})", name)
            if (
                tagged
                and tagged.group(1) != REMOVED  # (a name that was identity as a whole is always tagged: U12)
                and tagged.group(1).casefold() not in alike
                and tagged.group(1).casefold() not in literal_taken
                and tagged.group(2) in self._roi_tags()
            ):
                stale.add(name)
        return sorted(stale)

    def _roi_tags(self) -> frozenset:
        """The keyed tags of the input's ROI names (whichever of them this run tags)."""
        cached = getattr(self, "_roi_tags_cache", None)
        if cached is None or cached[0] is not self.identity:
            tags = frozenset(self._digest("roi", n.strip().casefold()).hex()[:8] for n in self.identity.roi_names if n)
            cached = (self.identity, tags)
            object.__setattr__(self, "_roi_tags_cache", cached)
        return cached[1]

    def _name_piece(self, value: str) -> str:
        if not value:
            return value
        value = self._replace_paths(value)
        value = self._uids_in_text(value)
        return self._redact(value, own=False)

    def _renamed_in(self, value: str) -> str:
        """``value`` with the names :meth:`name` rewrote, where they stand whole (no letter or digit beside them),
        written as rewritten: DoseAlign's prose quoting an ROI name as the input gave it keeps no name component
        that is also one of DoseAlign's words."""
        renamed = getattr(self, "_renamed", None)
        if not renamed:
            return value
        for original in sorted(renamed, key=len, reverse=True):
            if original in value:
                if _alnum(original).casefold() in OWN_VOCABULARY:  # an ROI "Plan": only where the prose quotes it
                    pattern = re.compile(r"(?<=['\"])" + re.escape(original) + r"(?=['\"])")
                else:
                    pattern = re.compile(r"(?<![^\W_])" + re.escape(original) + r"(?![^\W_])")
                value = pattern.sub(lambda _m, new=renamed[original]: new, value)
        return value

    def _uids_in_text(self, value: str) -> str:
        """``value`` with its UIDs hashed (:meth:`_uid_in_text`), and the input's own UIDs glued to letters too, and
        written with other separators (:meth:`_uids_spelled_otherwise`)."""
        value = _UID.sub(lambda m: self._uid_in_text(m.group(0)), value)
        if self.identity.uids and "." in value:
            value = _GLUED_UID.sub(lambda m: self._input_uid_in(m.group(0)), value)
        if self.identity.uids and not self.keep_uids:
            value = self._uids_spelled_otherwise(value)
        return value

    def _uids_spelled_otherwise(self, value: str) -> str:
        """``value`` with each run of digits (between which short separators may stand) that holds one of the input's
        UIDs written without its points, or one of its long components, removed: ``2_25_2414...``, ``2 25 2414...``,
        ``22524...`` or ``...10293847561029384756`` alone stood in clear, in every output (seventy-fifth hostile trial
        BW1)."""
        needles = _uid_needles(self.identity.uids)
        if not needles:
            return value

        def held(run: str) -> bool:
            digits = _ascii_digits(re.sub(r"\D", "", run))
            return len(digits) >= MIN_UID_DIGITS and needles.found_in(digits)

        value = _removed_as_compatible(_SPREAD_DIGITS, value, held)
        uuids = _uid_uuids(self.identity.uids)
        if uuids:  # a 2.25 UID written as the UUID it holds (059f5878-b7b2-...: seventy-seventh hostile trial BY6)
            value = _removed_as_compatible(
                _UUID_RUN, value, lambda run: re.sub(r"[-_:\s]", "", run).casefold() in uuids
            )
        return value

    def _input_uid_in(self, run: str) -> str:
        """A dotted run of digits with the longest of the input's UIDs it begins with hashed (``<StudyUID>.1``, a
        versioned name: the run is no UID of the input, and the UID stood in clear: thirty-eighth hostile trial AL4)."""
        uids, parts = self.identity.uids, run.split(".")
        for end in range(len(parts), 2, -1):
            prefix = ".".join(parts[:end])
            if prefix in uids:
                return self.uid(prefix) + run[len(prefix) :]
        return run

    def _uid_in_text(self, candidate: str) -> str:
        """A dotted run of digits in a text: hashed when it is one of the input's UIDs, or another UID as DICOM writes
        them (:func:`looks_like_uid`); anything else (a date ``03.10.2025``, a version ``10.2.1.5``) stays as it is,
        for the rewriting of dates and IDs to read."""
        if ("uid", candidate) in self.entries:
            return candidate  # already a pseudonym
        if candidate in self.identity.uids or (
            looks_like_uid(candidate) and not candidate.startswith(_DICOM_DEFINED_UID)
        ):
            return self.uid(candidate)
        return candidate

    def _path_needles(self) -> _Needles:
        """The input's paths (:attr:`Identity.paths`) to look for in a text, made again when they changed."""
        cached = getattr(self, "_paths_cache", None)
        paths = self.identity.paths
        if cached is None or cached[0] is not paths or cached[1] != len(paths):
            cached = (paths, len(paths), _Needles(paths))
            object.__setattr__(self, "_paths_cache", cached)
        return cached[2]

    def _replace_paths(self, value: str, own: bool = False) -> str:
        """``value`` with the input's paths as path tokens. ``own``: DoseAlign's own text, where a file at the input's
        top whose name has no suffix (``Kowalski_Jan_3``, as PACS exports name them) is a path wherever it stands
        whole (it stood in clear in meta.json's prose: thirty-sixth hostile trial AJ15); in a name the input gave
        (an ROI ``Heart`` beside a file ``Heart``) only where it is unmistakably a path, as a single folder name."""
        root = self.input_root.rstrip("/")
        # only the paths the value holds, found in one reading of it (a loop over every path for every value was
        # quadratic in the input's files: 20 000 damaged files held a run for half an hour, sixty-seventh trial BO1)
        # (by a loop over the paths where they are fewer than the value's positions times their lengths: long paths
        # of many lengths made the one reading slower than the loop, sixty-ninth trial BQ2)
        index, every = self._path_needles(), self.identity.paths
        if len(every) <= len(value) * max(1, len(index.lengths)):
            held = sorted(rel for rel in every if rel in value)
        else:
            held = sorted(index.found_in(value))
        candidates = []
        if root and root in value:
            for rel in held:
                full = f"{root}/{rel}"
                if full in value:
                    candidates.append((full, rel))
        for rel in held:
            # single folder names only where they are unmistakably paths: quoted, as a path start, or joined with
            # " + " (a CT of several folders, ``Kowalski_CT1 + Kowalski_CT2``: thirty-sixth hostile trial AJ27)
            unmistakable = "/" in rel or "." in rel or f"'{rel}'" in value or f"{rel}/" in value
            unmistakable = unmistakable or f"{rel} + " in value or f" + {rel}" in value
            # (not a name of under 3 characters, nor one of DoseAlign's words: CT, RS, plan stay words; nor one without
            # a letter: files named 1 to 123 made DoseAlign's counts path tokens, thirty-eighth hostile trial AL1)
            loose = (
                own
                and len(rel) >= 3
                and any(c.isalpha() for c in rel)
                and rel not in self._folders
                and rel.casefold() not in OWN_VOCABULARY
            )
            if unmistakable or loose:
                candidates.append((rel, rel))
        for text, rel in sorted(candidates, key=lambda c: -len(c[0])):
            # whole, and before a "/" that ends it ("Kowalski_sub/: the folder cannot be listed": thirty-eighth AL12)
            whole = r"(?<![\w.\-/])" + re.escape(text) + r"(?![\w\-]|/[\w.\-]|\.\w)"
            if "/" in text or "." in text:
                pattern = re.compile(whole)
            else:  # a bare folder name only where it is a path: quoted, or before a "/", or joined with " + " (not a
                # word of a sentence); in DoseAlign's own text a file's anywhere whole (see above)
                bare = (
                    r"(?:^|(?<=')|(?<= \+ ))"
                    + re.escape(text)
                    + r"(?=$|'| \+ )|(?<![\w.\-/])"
                    + re.escape(text)
                    + r"(?=/)"
                )
                pattern = re.compile(bare + ("|" + whole if own and text not in self._folders else ""))
            value = pattern.sub(lambda _m, rel=rel: self.path(rel), value)
        if root and root in value:  # the root itself, where it stands as a path (a relative "in" is no word)
            tail = r"(?=/)" if not root.startswith("/") else r"(?![\w\-.])"
            value = re.sub(r"(?<![\w.\-/])" + re.escape(root) + tail, "<input>", value)
        return value

    @property
    def _names(self) -> NameSpellings:
        matcher = getattr(self, "_name_cache", None)
        if matcher is None or matcher.source is not self.identity:
            matcher = NameSpellings(self.identity)
            object.__setattr__(self, "_name_cache", matcher)
        return matcher

    def _redact(self, value: str, own: bool = True) -> str:
        """Identity removed; where the text's NFKC form holds identity the text does not show (fullwidth
        ``ＱＸ７７４１５``, ``ＰＴＶ＿Ｄｏｅ``), that form is rewritten instead. ``own``: DoseAlign's own words are
        no name there (its own text; not in a name the input gave)."""
        before = value
        value = self._redact_text(value, own)
        if REMOVED in value and value.count(REMOVED) > before.count(REMOVED):
            # what stood glued to a removed name or ID stands alone now, as the check reads it: read again (the ID's
            # digits after a surname, Lung2024001 for Lung^Wai Man, LW-2024-001, failed the case "please report it":
            # a fuzz of the rewriting against the check)
            value = REMOVED.join(self._redact_text(piece, own) if piece else piece for piece in value.split(REMOVED))
            while REMOVED + REMOVED in value:  # (one mark where two removals meet)
                value = value.replace(REMOVED + REMOVED, REMOVED)
            # and a name whose components the removal brought together (Na 12345 Li for Li^Na: Na [removed] Li), as
            # the check reads names without the marks (AJ18)
            joined = value.replace(REMOVED, "")
            renamed = self._outside_own(joined, lambda piece: self._names.redact(piece, own=own))
            if renamed != joined:
                value = renamed
        if not value.isascii() and self.identity.dates:
            # a month's name with a mark (14. Mär 1958, 24 déc. 1958): the check reads dates folded, so the rewriting
            # reads them so too (eighty-seventh hostile trial CI2: the case failed "please report it")
            folded = "".join(_marks_dropped(c) for c in unicodedata.normalize("NFC", value))  # (decomposed, as macOS
            # writes it, Ma\u0308r, composed first: eighty-eighth trial CJ1)
            if folded != value:
                dated = folded
                for date in self._dates_in_reach(folded):
                    dated = self._remove_date(date, dated)
                if dated != folded:
                    value = self._redact_text(folded, own)
        if not value.isascii():
            # NFKC composes what macOS writes decomposed (Mu\u0308ller) and reads fullwidth forms; invisible
            # characters (:func:`visible`) are dropped, as the check reads through them too
            normalized = _ascii_digits(unicodedata.normalize("NFKC", visible(value)))
            if normalized != value:
                again = self._redact_text(normalized, own)
                if again != normalized:
                    value = again
        return value

    @property
    def _own(self) -> OwnTokens:
        """The hash digests of the pseudonyms made so far (see :func:`own_tokens`), the key's fingerprint and the
        keyed digests meta.json records (``options.roi_map.keyed_sha256``): their hex digits are no date and no ID.
        A fingerprint ``581006c90bf9fac6`` failed every case of an input holding a birth date 1958-10-06 "please
        report it", about one key in 25 (twenty-fifth hostile trial Y6)."""
        own = getattr(self, "_own_cache", None)
        extra = getattr(self, "_own_digests", frozenset())
        if own is None or len(extra) < own.digests_read:  # (digests taken back: pseudonyms_of's block ended)
            own = OwnTokens()
            object.__setattr__(self, "_own_cache", own)
        if own.entries_read != len(self.entries) or own.digests_read != len(extra):
            # only the entries and digests added since are read, the newest first (entries only grow): every row of
            # a damaged file added a few, and reading or copying all of them again for each was quadratic (20 000
            # such files took half an hour, sixty-seventh trial BO1; a copy of the set each time, 134 s, seventieth
            # BR4)
            new = len(self.entries) - own.entries_read
            own.add(own_tokens(p for _kind, p in itertools.islice(reversed(self.entries), new)))
            own.add((self.fingerprint,))
            own.add(extra - own.tokens)
            own.entries_read, own.digests_read = len(self.entries), len(extra)
        return own

    def add_own_digests(self, *digests: str) -> None:
        """Keyed digests DoseAlign writes (the input files' stamps, the ROI map's digest): no date, no ID in them."""
        object.__setattr__(self, "_own_digests", getattr(self, "_own_digests", frozenset()) | set(digests))

    def _add_own_digest(self, digest: str) -> str:
        self.add_own_digests(digest)
        return digest

    def _remove_id(self, identifier: str, value: str, own_words: bool = True) -> str:
        """``identifier`` removed from ``value`` (:func:`_id_pattern`); where it is glued to letters, not inside
        DoseAlign's own words (:data:`_OWN_WORDS`: ``d0.03cc_gy``, ``48x160x192``, ``1.25e-05``; only in its own
        text, ``own_words``: an ROI name ``PTV 1072315x2`` is the input's, thirty-sixth hostile trial AJ8) or
        pseudonyms."""
        pattern = _id_pattern(identifier)
        if not pattern.search(value):
            return value
        own = self._own
        kept = [m.span() for m in _OWN_WORDS.finditer(value)] if own_words else []
        kept += [m.span() for m in re.finditer(r"[0-9A-Za-z]{8,}", value) if m.group(0) in own]

        def replace(match) -> str:
            start, end = match.span()
            alone = not (start and _is_ascii_alnum(value[start - 1])) and not (
                end < len(value) and _is_ascii_alnum(value[end])
            )
            if alone or not any(a < end and start < b for a, b in kept):
                return REMOVED
            return match.group(0)

        return pattern.sub(replace, value)

    @property
    def _unpadded(self) -> tuple:
        """:func:`unpadded_ids` of the input's IDs (cached while they stay the same)."""
        identifiers = frozenset(self.identity.identifiers)
        cached = getattr(self, "_unpadded_cache", None)
        if cached is None or cached[0] != identifiers:
            cached = (identifiers, unpadded_ids(identifiers))
            object.__setattr__(self, "_unpadded_cache", cached)
        return cached[1]

    @property
    def _id_index(self) -> tuple:
        """The IDs to remove, longest first, an index of their letters and digits, and the bare numbers (cached
        while the identity's IDs stay the same)."""
        identity = self.identity
        stamp = (id(identity), len(identity.patient_ids), len(identity.other), len(identity.visit_ids))
        cached = getattr(self, "_id_index_cache", None)
        if cached is None or cached[0] != stamp:
            variants, numbers = self._unpadded
            # (an ID of other letters is searched in every text: its pattern is not of ASCII letters and digits)
            items = [
                (i, _ascii_squeezed(i) if i.isascii() else None)
                for i in sorted(identity.identifiers | variants, key=len, reverse=True)
            ]
            cached = (stamp, (items, _Needles(q for _i, q in items if q), numbers))
            object.__setattr__(self, "_id_index_cache", cached)
        return cached[1]

    def _redact_text(self, value: str, own: bool = True) -> str:
        if not value:
            return value
        if value.count(".") >= 2:  # an ID grouped by points as thousands (12.345.678), where commas group it alike
            # (forty-fourth hostile trial AR7: only the commas were read)
            value = self._outside_kept_uids(
                value, lambda piece: _POINT_GROUPED.sub(lambda m: self._grouped_id_removed(m.group(0)), piece)
            )
        value = self._remove_ids(value, own)
        value = self._outside_own(value, lambda piece: self._names.redact(piece, own=own))
        dated = value
        for date in self._dates_in_reach(value):
            if any(c.isdigit() for c in value):
                value = self._remove_date(date, value)
        if self.identity.dates and any(c.isdigit() for c in value):
            value = self._outside_own(value, self._remove_coded_dates)
        if value != dated:  # an ID's digits a date held as a number's decimals stand alone now: 15.72315 (U9)
            value = self._remove_ids(value, own)
        return value

    def _grouped_id_removed(self, run: str) -> str:
        """A run of digit groups (:data:`_POINT_GROUPED`) with each sequence of its groups that is an ID of digits
        :data:`REMOVED`."""
        spans = _grouped_id_spans(run, _digit_ids(self.identity))
        for start, end in reversed(spans):
            run = run[:start] + REMOVED + run[end:]
        return run

    def _remove_coded_dates(self, value: str) -> str:
        """``value`` without the input's dates written as counts (:data:`_CODED_DATE`)."""
        dates = self.identity.dates
        return _CODED_DATE.sub(functools.partial(_without_coded_date, dates=dates), value)

    def _dates_in_reach(self, value: str) -> list:
        """The input's dates whose pattern (:func:`_date_pattern`) could match ``value``: every spelling holds the
        year's last two digits, the day's digits and the month's digits or name as they are. Looked up by year and
        day (at most 100 x 110 keys), not tried one by one: 2000 dates cost 300 short texts 10 s, 20 000 dates 84 s
        (each date's pattern is compiled when first tried)."""
        if not any("0" <= c <= "9" for c in value):
            return []
        dates = self.identity.dates
        stamp = (id(dates), len(dates))
        cached = getattr(self, "_date_index_cache", None)
        if cached is None or cached[0] != stamp:
            index: dict = {}
            for date in dates:
                index.setdefault((date[2:4], str(int(date[6:8]) if date[6:8].isdigit() else date[6:8])), []).append(
                    date
                )
            cached = (stamp, index)
            object.__setattr__(self, "_date_index_cache", cached)
        index = cached[1]
        own = self._own
        if own:  # the digits of this run's own hash digests are no date (they stay as they are)
            value = re.sub(r"[0-9A-Za-z]{8,}", lambda m: " " if m.group(0) in own else m.group(0), value)
        runs = re.findall(r"[0-9]+", value)
        pairs = {run[i : i + 2] for run in runs for i in range(len(run) - 1)}
        days = pairs | {c for run in runs for c in run}
        lower = value.lower()
        named = {n + 1 for n, names in enumerate(zip(*_MONTHS)) if any(name in lower for name in names)}
        found = []
        for year in pairs:
            for day in days:
                for date in index.get((year, day), ()):
                    month = int(date[4:6]) if date[4:6].isdigit() else 0
                    if str(month) in days or month in named:  # its month as digits (0?M) or by its name
                        found.append(date)
        return sorted(found)

    def _remove_ids(self, value: str, own_words: bool = True) -> str:
        # again while something is removed: an ID right after one removed before a point (1072315.1072315) was
        # passed over, its neighbour still a digit when it was read (thirty-third hostile trial AG2; a third: AH3;
        # each pass removes one at least, so the text's length bounds them: AI1)
        for _pass in range(len(value) + 1):
            removed = self._remove_ids_once(value, own_words)
            if removed == value:
                break
            value = removed
        return value

    def _remove_ids_once(self, value: str, own_words: bool = True) -> str:
        items, needles, numbers = self._id_index
        if len(needles) > _Needles.PLAIN_LOOP:  # only the IDs whose letters and digits the text holds (X7)
            present = needles.found_in(_ascii_squeezed(value))
            items = [(i, squeezed) for i, squeezed in items if squeezed is None or squeezed in present]
        for item, _squeezed in items:
            if own_words and is_own_word(item):  # (a PatientID PLAN: AJ20; D95, INT16: AL2)
                continue
            value = self._remove_id(item, value, own_words)
        for number in numbers:  # the number of an ID of letters and digits, as a word of its own
            if number in value:
                value = _bare_number(number).sub(REMOVED, value)
        return value

    def _outside_kept_uids(self, value: str, rewrite) -> str:
        """``rewrite`` applied to ``value`` between the input's UIDs that ``--keep-uids`` keeps, which stay as they
        are, as the check reads them: a kept UID is not read for an ID grouped by points (1.2.246.352.71.2.1072315...
        for a PatientID 1072315 failed every case: eighty-fifth hostile trial CG3)."""
        if not (self.keep_uids and self.identity.uids):
            return rewrite(value)
        kept = [m.span() for m in _DOTTED_RUN.finditer(value) if m.group(0) in self.identity.uids]
        pieces, start = [], 0
        for a, b in kept:
            pieces += [rewrite(value[start:a]) if start < a else "", value[a:b]]
            start = b
        return "".join(pieces) + (rewrite(value[start:]) if start < len(value) else "")

    def _outside_own(self, value: str, rewrite) -> str:
        """``rewrite`` applied to ``value`` between this run's own hash digests, which stay as they are: a name's
        letters inside a path token (``fbecca12345``) are no name (seventeenth hostile trial Q6's sibling)."""
        own = self._own
        kept = [m.span() for m in re.finditer(r"[0-9A-Za-z]{8,}", value) if m.group(0) in own] if own else []
        if not kept:
            return rewrite(value)
        pieces, start = [], 0
        for a, b in kept:
            pieces += [rewrite(value[start:a]) if start < a else "", value[a:b]]
            start = b
        return "".join(pieces) + (rewrite(value[start:]) if start < len(value) else "")

    def _remove_date(self, date: str, value: str) -> str:
        """``date`` removed from ``value`` (:func:`_date_pattern`), not from within this run's own hash digests,
        where its digits sit by chance (``f42de930525``: seventeenth hostile trial Q6)."""
        pattern = _date_pattern(date)
        if not pattern.search(value):
            return value
        own = self._own
        kept = [m.span() for m in re.finditer(r"[0-9A-Za-z]{8,}", value) if m.group(0) in own]
        if not kept:
            return pattern.sub(REMOVED, value)
        return pattern.sub(
            lambda m: m.group(0) if any(a <= m.start() and m.end() <= b for a, b in kept) else REMOVED, value
        )

    def value(self, value: Any, key: Optional[str] = None, text_keys: frozenset = frozenset()) -> Any:
        """Rewrite a JSON-like value; strings under path keys are tokenized as paths; keys in ``text_keys``
        (ROI names used as keys) are rewritten as text."""
        if isinstance(value, dict):
            out: dict = {}
            # ROI names as keys (audit.reference_dvh.rois) are names; elsewhere a key equal to one is DoseAlign's
            # (a patient Rule with an ROI "rule": meta.json's own "rule" keys stay)
            as_text = self.name if key in _NAME_KEYS else self.text
            for k, v in value.items():
                new_key = as_text(k) if k in text_keys else self._key(k)
                n = 1
                while new_key in out:  # two names that read alike once rewritten (PTV_Doe, PTV_John) both stay
                    n += 1
                    new_key = f"{as_text(k) if k in text_keys else self._key(k)} ({n})"
                out[new_key] = self.value(v, str(k), text_keys)
            return out
        if isinstance(value, (list, tuple)):
            return [self.value(v, key, text_keys) for v in value]
        if isinstance(value, str):
            if key in PATH_KEYS and value:
                return self._path_field(value)
            if value in self.identity.uids and ("uid", value) not in self.entries:
                return self.uid(value)
            if key in _INPUT_NAME_KEYS:
                return self.name(value)
            return value if _own_number(key, value) else self.text(value)  # (a measure written as text: AB6)
        return value

    def _key(self, key):
        """Keys are the writers' vocabulary: only a path or UID used as a key is replaced; not a key of DoseAlign's
        own shape (a lower-case word): an input file named ``dose`` or ``audit`` at the input's top made meta.json's
        own ``dose`` and ``audit`` keys path tokens, and a case failed "please report it" (thirty-ninth hostile trial
        AM1)."""
        if isinstance(key, str):
            if key in self.identity.paths and not _VOCABULARY.fullmatch(key):
                return self.path(key)
            if key in self.identity.uids:
                return self.uid(key)
        return key

    def _path_field(self, value: str) -> str:
        """A path field's value as path tokens: one path, or several joined by ``;`` (the manifest's list), joined
        again where parts make one of the input's paths, whose names may hold ``;`` (a folder ``Kowalski Jan;CT``:
        its first part went through :meth:`text`, which knows only the headers' identity, and was written in clear:
        thirty-sixth hostile trial AJ10). A part that is no path (a description) is text."""
        root = self.input_root.rstrip("/")

        def relative(text: str) -> str:  # (blanks around it kept where they are the path's: "Kowalski Jan " was
            # written stripped, as no path, in clear: thirty-eighth hostile trial AL3)
            for form in (text, text.strip()):
                form = form[len(root) + 1 :] if root and form.startswith(root + "/") else form
                if form in self.identity.paths:
                    return form
            return form

        def tokens(text: str) -> str:  # (a field may hold a description: "ROI 'External' (...)")
            if text in self.identity.paths or text.endswith(tuple(_FILE_SUFFIXES)) or "/" in text:
                return self.path(text)
            return text if text in (".", "") else self.text(text)

        def joined(text: str, separator: str, each) -> str:
            """``text`` split at ``separator``, its parts joined again where they make one of the input's paths."""
            parts = text.split(separator)
            most = max((p.count(separator) for p in self.identity.paths), default=0)  # (0 but for such names)
            out, start = [], 0
            while start < len(parts):
                end = start + 1
                for longer in range(min(len(parts), start + 1 + most), start + 1, -1):
                    if relative(separator.join(parts[start:longer])) in self.identity.paths:
                        end = longer
                        break
                out.append(each(separator.join(parts[start:end])))
                start = end
            return separator.join(out)

        whole = relative(value)
        if whole in self.identity.paths:
            return tokens(whole)
        # a CT of several folders, "DICOM/0001 + DICOM/0002": each its own path (thirty-ninth AM2), before the split
        # at ";" where each is one of the input's paths ("Kowalski;1 + Kowalski;2" was split at ";" first: AM7)
        if " + " in value and all(relative(part) in self.identity.paths for part in value.split(" + ")):
            return " + ".join(tokens(relative(part)) for part in value.split(" + "))
        if ";" in value:
            return joined(value, ";", self._path_field)
        if " + " in value:
            return joined(value, " + ", lambda part: tokens(relative(part)))
        return tokens(whole)

    def options(self, recorded: dict) -> dict:
        """The options as meta.json records them under pseudonymization: the ``--roi-map`` as its channel names and
        a keyed hash of the whole map. Its synonyms are ROI names of a whole cohort, which may name patients this
        input does not hold (so neither rewritten nor found by the check); the hash still tells two maps apart
        (``--resume``, ``--append`` and merge compare it), and only with this key. ``--centre roi:NAME`` with a
        keyed hash of it beside (:data:`CENTRE_DIGEST`), compared in its stead. ``--ct`` (a folder or CSV that
        may be named after the patient, wherever it lies) as path tokens, or a UID's pseudonym."""
        recorded = dict(recorded)
        roi_map = recorded.get("roi_map")
        if isinstance(roi_map, dict) and roi_map:
            canonical = json.dumps(roi_map, sort_keys=True, ensure_ascii=False)
            recorded["roi_map"] = {
                "channels": sorted(str(name) for name in roi_map),
                "keyed_sha256": self._add_own_digest(self._digest("roi_map", canonical).hex()),
            }
        centre = recorded.get("centre")
        if isinstance(centre, str) and centre.lower().startswith("roi:"):
            # the ROI's name is recorded rewritten, as this input's identity has it; two cohorts run with one
            # --centre are told the same (and two names that rewrite alike apart) by this keyed hash of it
            recorded[CENTRE_DIGEST] = self._add_own_digest(self._digest("centre", centre).hex())
        ct = recorded.get("ct")
        if isinstance(ct, str) and ct.strip():  # --ct: a CT folder, a CSV's path or a SeriesInstanceUID
            value = ct.strip().replace("\\", "/")
            root = self.input_root.rstrip("/")
            if root and value.startswith(root + "/"):
                value = value[len(root) + 1 :]  # the folder's token, as ct_folder has it
            recorded["ct"] = self.uid(value) if value in self.identity.uids else self.path(value)
        return recorded

    def row(self, row: dict) -> dict:
        """A manifest row without identity (its case id and patient were set by :meth:`prepare`)."""
        # a cell that is a number is DoseAlign's (a Dmax 33.8645 was written [removed] for an ID of those digits:
        # twenty-eighth hostile trial AB6)
        out = {
            key: (self.value(v, key) if key not in ("case_id", "patient") and not _own_number(key, v) else v)
            for key, v in row.items()
        }
        case_id = str(row.get("case_id", ""))
        if ("case", case_id) not in self.entries:  # a row that is no case (a damaged file): its id holds a name
            prefix = case_id.split("_", 1)[0] if "_" in case_id else "row"
            out["case_id"] = f"{prefix}_{self._digest('row', case_id).hex()[:10]}"
            self.entries[("case", out["case_id"])] = case_id
        if out.get("patient") and ("patient", out["patient"]) not in self.entries:
            out["patient"] = self.patient(str(row["patient"]))
        return out

    def result(self, result) -> None:
        """Rewrite a case result in place before anything is written: meta, arrays of text."""
        if isinstance(result.meta.get("options"), dict):
            result.meta["options"] = self.options(result.meta["options"])
        meta = self.value(result.meta, text_keys=frozenset(_named(result.meta)))  # ROI names used as keys
        meta["case_id"] = result.case_id
        meta["pseudonymized"] = {
            "uids": "kept" if self.keep_uids else "keyed hashes",
            "paths": "tokens",
            "key": self.fingerprint,  # an OUT takes no case made with another key (one patient, two pseudonyms)
        }
        result.meta = meta
        for name, array in list(result.extra_arrays.items()):
            if isinstance(array, np.ndarray) and array.dtype.kind in "USO":
                result.extra_arrays[name] = np.vectorize(lambda v: self.text(str(v)), otypes=[array.dtype])(array)
        self.check(meta)

    def check(self, meta: dict) -> None:
        """Fail rather than leak: no identifying value may remain in the meta's values or keys.

        The search is :class:`IdentityGuard`'s, written apart from the rewriting (other tokenizing,
        other matching), so that a spelling the rewriting misses is not missed by the check too.
        """
        leak = self._leak_in_json(meta)
        if leak:
            raise PseudonymError(
                f"pseudonymization left {leak} in meta.json; the case is not written",
                hint="please report it",
            )

    def _leak_in_json(self, meta, guard: Optional[IdentityGuard] = None) -> str:
        """The kind of identity found in a JSON-like value's strings and keys ('' when none); its numbers are
        DoseAlign's (shapes, spacings, doses), not text the input gave, and are not read. ``guard`` reads all but the
        names the input gave (:attr:`guard` where not given)."""
        guard = guard or self.guard
        keys = set(_keys(meta))
        own = {k for k in keys if _OWN_KEY.fullmatch(k) and all(map(_own_key_word, k.split("_")))}
        vocabulary = {k for k in keys if _VOCABULARY.fullmatch(k)} | own
        # each value and key on its own: joined, two harmless ROI names read as one date or ID across them
        # ("CTV 15" and "April 2023"; "PTV 77" and "415 boost" for ID 77415), and the case was refused
        # (sixteenth hostile trial P11)
        leak = (
            next(
                (f for f in map(guard.find, dict.fromkeys(_strings(_without_own_numbers(meta)))) if f),
                "",
            )
            # keys of DoseAlign's words alone, each apart, for IDs, dates and UIDs: their words are no name, one by
            # one (a surname "Dose") nor joined (Sum^Max in beam_sum_max_diff_gy, or across two keys read joined:
            # twenty-second hostile trial V3); other keys of its form (an ROI name ptv_summax) for joined names too
            # (their words of DoseAlign's shapes left out: d0.03cc_gy holds no PatientID 03CC, fortieth trial AN2)
            or next(
                (f for f in (guard.find(_own_key_text(k), words=False, joined_names=False) for k in sorted(own)) if f),
                "",
            )
            or next((f for f in (guard.find(k, words=False) for k in sorted(vocabulary - own)) if f), "")
            or next((found for found in map(guard.find, sorted(keys - vocabulary)) if found), "")  # free text
            # the names the input gave (ROI names under name keys), each apart: no word of DoseAlign's is exempt
            or next(
                (found for found in map(self._guard_name, sorted(set(_named(meta, keys=_INPUT_NAME_KEYS)))) if found),
                "",
            )
        )
        return leak

    def _guard_name(self, name: str) -> str:
        return self.guard.find(name, own=False)

    @property
    def guard(self) -> IdentityGuard:
        guard = getattr(self, "_guard_cache", None)
        if guard is None or guard.source is not self.identity:
            guard = IdentityGuard(self.identity, keep_uids=self.keep_uids)
            object.__setattr__(self, "_guard_cache", guard)
        guard.own = self._own
        guard.kept_case_uids = getattr(self, "_kept_case_uids", False)
        return guard

    @property
    def _kept_guard(self) -> IdentityGuard:
        """:attr:`guard` without the IDs of digits alone, for DoseAlign's prose in a kept case: there its tag numbers
        and its counts are no identity (:attr:`IdentityGuard.prose`)."""
        cached = getattr(self, "_kept_guard_cache", None)
        if cached is None or cached[0] is not self.identity or cached[1].keep_uids != self.keep_uids:
            identity = self.identity
            digits_only = {i for i in identity.patient_ids | identity.other if _ascii_digits(i).isdigit()}
            trimmed = dataclasses.replace(
                identity,
                patient_ids=identity.patient_ids - digits_only,
                other=identity.other - digits_only,
                visit_ids=identity.visit_ids - digits_only,
            )
            cached = (identity, IdentityGuard(trimmed, keep_uids=self.keep_uids))
            cached[1].prose = True
            object.__setattr__(self, "_kept_guard_cache", cached)
        cached[1].own = self._own
        cached[1].kept_case_uids = getattr(self, "_kept_case_uids", False)
        return cached[1]

    def find_identity(self, text: str) -> str:
        """The kind of identifying value found in ``text`` ('' when none), by the independent guard."""
        return self.guard.find(text)

    def check_row(self, row: dict) -> None:
        """A manifest row (and so report.html) must hold no identity either (its cells that are numbers are
        DoseAlign's, as :meth:`row` leaves them)."""
        leak = self.guard.find("\n".join(str(v) for k, v in row.items() if not _own_number(k, v)))
        if leak:
            raise PseudonymError(f"pseudonymization left {leak} in a manifest row", hint="please report it")

    def check_folder(self, folder: Path, roi_names: Optional[Iterable[str]] = None) -> None:
        """A case's files before they are renamed into place: every file name, and every text a format
        writes in the clear (JSON, CSV, NRRD headers), must hold no identity; else the case is not written.

        The formats' own numbers are DoseAlign's, not the input's: a patient ID ``100`` or ``128`` is no leak in
        an NRRD header's ``space directions: (1,0,0)`` nor in OpenKBP's 128-voxel grid (twenty-third hostile
        trial W2). So NRRD fields of DoseAlign's own form, JSON numbers and CSV cells that are numbers are not
        read; every other field, string, key and cell is."""
        folder = Path(folder)
        written = _mask_file_stems(folder, roi_names)  # (``roi_names``: meta.json's, not yet written)
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            # (a file name made of an ROI name meta.json holds, read there, is not read again: the letters a file name
            # cannot hold are _ there, and Weiße_Substanz as Wei__Substanz was patient Wei's name, fifty-ninth BG2)
            named = rel
            for stem in written:
                named = named.replace(stem, "_")
            leak = self.guard.find(named)
            if not leak and path.is_file() and path.suffix in (".json", ".csv", ".txt", ".nrrd", ".nhdr"):
                leak = self._leak_in_file(path, written)
            if leak:
                raise PseudonymError(
                    f"pseudonymization left {leak} in {rel}; the case is not written", hint="please report it"
                )

    def leak_in_kept_case(self, folder: Path, meta: dict) -> str:
        """Where a case folder of an earlier run, about to be kept by --resume, holds identity of the input as it is
        now ('' where none): an MR naming the patient added since made a kept case's ROI name ``Kowalski_PTV``
        identity, and it was kept (twenty-seventh hostile trial AA10). Its meta.json is read as the check read it
        before it was written (what was added after: its files' names and digests, the dose digest, left out);
        every file name and clear-text file as :meth:`check_folder` reads them. UIDs are read as that case's export
        wrote them (kept with --keep-uids: no identity there)."""
        recorded = meta.get("pseudonymized") if isinstance(meta.get("pseudonymized"), dict) else {}
        kept = recorded.get("uids") == "kept"
        # its kept UIDs are its input's, which may be another input's: read as UIDs whole, not for this input's dates
        # (a UID holding a scan day shared with this input's patient refused every --append: eighty-seventh CI1)
        object.__setattr__(self, "_kept_case_uids", kept)
        try:
            if kept == self.keep_uids:
                with self.pseudonyms_of(meta):
                    return self._leak_in_kept(folder, meta)
            saved = self.keep_uids, getattr(self, "_guard_cache", None)
            object.__setattr__(self, "keep_uids", kept)
            object.__setattr__(self, "_guard_cache", None)
            try:
                with self.pseudonyms_of(meta):
                    return self._leak_in_kept(folder, meta)
            finally:
                object.__setattr__(self, "keep_uids", saved[0])
                object.__setattr__(self, "_guard_cache", saved[1])
        finally:
            object.__setattr__(self, "_kept_case_uids", False)

    def leak_in_kept_row(self, row: dict) -> str:
        """Where another input's manifest row, kept by --append, holds what this input tells to be identity ('' where
        none), as the check reads its cells: its pseudonyms are DoseAlign's (AN1), and an ID of digits alone is looked
        for in its ROI name only; in DoseAlign's prose of a failed row's reason (``(3004,000C) GridFrameOffsetVector
        ...``) its numbers are DoseAlign's, as in a kept case's meta.json (forty-eighth hostile trial AV1, after AR3)."""
        with self.pseudonyms_of(row):
            for key, value in row.items():
                if value:
                    found = (self.guard if key in _NAME_KEYS else self._kept_guard).find(str(value))
                    if found:
                        return f"{found} in manifest.csv"
        return ""

    @contextlib.contextmanager
    def pseudonyms_of(self, *written) -> Iterator[None]:
        """While the block runs, the pseudonyms an earlier export wrote in ``written`` (its meta.json, its manifest
        row: :func:`written_pseudonyms`) are DoseAlign's own, as this run's are: their hex digits are no ID. Another
        input's kept case whose path token ``d3808ab12cd`` held this input's PatientID ``3808`` refused --append
        (fortieth hostile trial, beside AN1)."""
        saved = getattr(self, "_own_digests", frozenset())
        self.add_own_digests(*own_tokens(written_pseudonyms(written)))
        try:
            yield
        finally:
            object.__setattr__(self, "_own_digests", saved)

    def _leak_in_kept(self, folder: Path, meta: dict) -> str:
        trimmed = {k: v for k, v in meta.items() if k not in ("exports", "case_files", "storage", "file_sha256")}
        if isinstance(trimmed.get("options"), dict):  # its keyed hashes of a ROI map and a centre ROI: DoseAlign's
            # (another input's options.roi_map.keyed_sha256 held this input's PatientID 54364: forty-fourth trial AR1)
            trimmed["options"] = _without_keyed_hashes(trimmed["options"])
        if isinstance(trimmed.get("source"), dict):
            source = {k: v for k, v in trimmed["source"].items() if k != "rtdose_digest"}
            if isinstance(source.get("input_files"), list):  # their stamps: keyed hashes written after the check
                # (another input's stamp 7201098d867c... held a 7-digit PatientID of this one: --append and --shard
                # were refused, fortieth hostile trial AN1); a stamp of another shape is read as text
                source["input_files"] = [_without_stamp(record) for record in source["input_files"]]
            trimmed["source"] = source
        # an ID of digits alone only in the names the input gave: in DoseAlign's prose of a case kept as it is, its
        # numbers are DoseAlign's ("110 slices", "[128, 128, 128] voxels"), which only the rewriting of this input's own
        # cases removes (another input's kept case refused a PatientID 110: forty-fourth hostile trial AR3)
        leak = self._leak_in_json(trimmed, guard=self._kept_guard)
        if leak:
            return f"{leak} in meta.json"
        folder = Path(folder)
        written = _mask_file_stems(folder)  # (as check_folder reads them: BG2)
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            named = rel
            for stem in written:
                named = named.replace(stem, "_")
            leak = self.guard.find(named)
            if not leak and rel != "meta.json" and path.is_file() and path.suffix in (".json", ".csv", ".nrrd"):
                leak = self._leak_in_file(path, written)
            if leak:
                return f"{leak} in {rel}"
        return ""

    def _leak_in_file(self, path: Path, written: Sequence[str] = ()) -> str:
        """The identity a clear-text file of a case holds ('' when none); ``written``: the file-name forms of its ROI
        names, which an NRRD header names too (:func:`_mask_file_stems`: BG2)."""
        nrrd = path.suffix in (".nrrd", ".nhdr")
        with open(path, "rb") as handle:
            head = handle.read(65536 if nrrd else MAX_CHECKED_JSON_BYTES if path.suffix == ".json" else 1 << 20)
        if nrrd:
            free = _nrrd_free_text(head.split(b"\n\n", 1)[0].decode("utf-8", "replace"))
            for stem in written:
                free = free.replace(stem, "_")
            return self.guard.find(free)
        text = head.decode("utf-8", "replace")
        if path.suffix == ".json":
            try:
                return self._leak_in_json(json.loads(text))
            except ValueError:  # not JSON (or beyond the bound): read as free text, numbers and all
                pass
        elif path.suffix == ".csv":
            text = _csv_free_text(text)
        return self.guard.find(text)

    # -- the map
    def write_map(self, path: Path) -> Path:
        """Write (merging with what is there) the mapping file, mode 0600.

        Runs that share a map (``--shard`` jobs into one OUT, one ``--map-file`` for parallel exports) each
        read, merge and replace it while holding :func:`map_lock`, so that no run's rows are lost to another's.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PseudonymError(f"cannot write the pseudonym map: {_cause(error)}", path=path) from None
        with map_lock(path):
            rows = read_map(path)
            rows.update(self.entries)
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(MAP_COLUMNS)
            for (kind, pseudonym), original in sorted(rows.items()):
                writer.writerow([kind, pseudonym, original.replace("\x00", "\\x00")])  # Python 3.9's csv: no NUL
            try:
                _write_private(path, buffer.getvalue().encode("utf-8"), replace=True)
            except OSError as error:
                raise PseudonymError(f"cannot write the pseudonym map: {_cause(error)}", path=path) from None
        return path


#: What DoseAlign writes into a map's lock file while it holds it (a file of that name holding other bytes is not its).
_LOCK_MARK = b"dosealign pseudonym map lock\n"


def map_lock_path(path: Path) -> Path:
    """The lock file of a pseudonym map: ``.<map name>.lock`` beside it, there only while a run holds it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def map_lock_seconds() -> float:
    """How long a run waits for another run's hold on a shared map (``DOSEALIGN_MAP_LOCK_SECONDS``)."""
    return limit("DOSEALIGN_MAP_LOCK_SECONDS")


@contextlib.contextmanager
def map_lock(path: Path):
    """Hold the exclusive lock of the map at ``path`` for the ``with`` block: ``flock`` of :func:`map_lock_path`.

    The holder removes the lock file before it lets go; a run that got the lock of a file removed meanwhile
    (or replaced) tries again, so one run at a time holds the lock of the file at that path. Another run's hold
    is waited for up to :func:`map_lock_seconds`; then, or where the file system offers no locks,
    :class:`PseudonymError` says so and the map is not written (never without the lock). Where Python has no
    ``fcntl`` (Windows) the map is written without one.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock = map_lock_path(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    seconds = map_lock_seconds()
    end = time.monotonic() + seconds
    while True:
        try:
            handle = os.open(str(lock), flags, 0o600)
        except OSError as error:
            raise PseudonymError(
                f"cannot open the pseudonym map's lock file {lock.name}: {_cause(error)}; the map is not written",
                path=path,
            ) from None
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise PseudonymError(
                    f"the map's lock file {lock.name} is not a regular file; the map is not written", path=path
                )
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            if time.monotonic() >= end:
                raise PseudonymError(
                    f"another run has held the pseudonym map (its lock file {lock.name}) for {seconds:g} s; "
                    "the map is not written and no case is exported",
                    path=path,
                    hint="run again when it has finished, or set DOSEALIGN_MAP_LOCK_SECONDS to wait longer",
                ) from None
            time.sleep(0.02)
            continue
        except OSError as error:
            os.close(handle)
            raise PseudonymError(
                f"cannot lock the pseudonym map ({lock.name}): {_cause(error)}; it is not written without a "
                "lock, as a run beside this one would lose its rows",
                path=path,
                hint="give --map-file on a file system that has file locks",
            ) from None
        except BaseException:
            os.close(handle)
            raise
        try:
            now = os.lstat(lock)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):  # removed by its last holder
            os.close(handle)
            continue
        # a file of that name that is not DoseAlign's lock (it holds other bytes) is left as it is: the holder removes
        # its lock file as it lets go, and a user's file was deleted (eighty-eighth hostile trial CJ8)
        held = os.pread(handle, len(_LOCK_MARK) + 1, 0)
        if held not in (b"", _LOCK_MARK):
            os.close(handle)
            raise PseudonymError(
                f"{lock.name} beside the pseudonym map is not DoseAlign's lock file (it holds other bytes): it is left "
                "as it is, and the map is not written",
                path=path,
                hint="move that file away, or give --map-file elsewhere",
            )
        if not held:
            os.pwrite(handle, _LOCK_MARK, 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # while still held: a waiter that gets this file's lock sees it gone
            os.close(handle)
        return


#: A pseudonym map larger than this is not read (a map holds a few lines per case: ~100 bytes each).
MAX_MAP_BYTES = 256 * 1024 * 1024


def mapped_patients(path: Path, present: Optional[set] = None) -> tuple:
    """``(PatientIDs, patient names, other IDs, visit IDs)`` the pseudonym map at ``path`` names (those of every input
    exported with it), of the patient pseudonyms ``present`` only (all when None); not the study UIDs that stand for a
    patient without a PatientID (:func:`_fallback`)."""
    rows = read_map(path)
    ids = {
        original
        for (kind, pseudonym), original in rows.items()
        if kind == "patient"
        and (present is None or pseudonym in present)
        and original.strip()
        and not looks_like_uid(original)
    }
    held = {
        kind: {
            original
            for (row_kind, pseudonym), original in rows.items()
            if row_kind == kind and (present is None or pseudonym.split(".")[0] in present) and original.strip()
        }
        for kind in ("name", "id", "visit")
    }
    return ids, held["name"], held["id"], held["visit"]


def read_map(path: Path) -> dict:
    """The rows of an existing pseudonym map, ``(kind, pseudonym) -> original``; ``{}`` when there is none.

    Anything that is not such a map (another file, another CSV, an entry that is no regular file, a map
    beyond :data:`MAX_MAP_BYTES`) raises :class:`PseudonymError` naming it: it is never replaced.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return {}
    why = "it is not DoseAlign's pseudonym map"
    try:
        with open_regular(path, "pseudonym map") as handle:
            data = handle.read(MAX_MAP_BYTES + 1)
    except OSError as error:
        raise PseudonymError(f"cannot read the pseudonym map: {_cause(error)}", path=path) from None
    if len(data) > MAX_MAP_BYTES:
        raise PseudonymError(f"{why} (larger than {MAX_MAP_BYTES // 2**20} MiB); it is not replaced", path=path)
    if not data.strip():
        return {}  # an empty file holds nothing to keep
    try:
        # (a byte order mark, as a spreadsheet saves it: CC5); lines end at CR and LF only, as csv writes them: a
        # name or path holding U+2028 or a form feed, read by str.splitlines, broke the map for every later run
        # (eighty-third hostile trial CE3)
        text = data.decode("utf-8-sig")
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, MAX_MAP_BYTES))
        try:
            table = list(csv.reader(io.StringIO(text, newline="")))
        finally:
            csv.field_size_limit(limit)
    except (UnicodeDecodeError, csv.Error) as error:
        raise PseudonymError(f"{why} ({type(error).__name__}); it is not replaced", path=path) from None
    if not table or table[0] != MAP_COLUMNS:
        raise PseudonymError(
            f"{why} (its first line is not {','.join(MAP_COLUMNS)}); it is not replaced: choose another --map-file",
            path=path,
        )
    rows = {}
    for number, row in enumerate(table[1:], start=2):
        if not row:
            continue
        if len(row) != len(MAP_COLUMNS):
            raise PseudonymError(f"{why} (line {number} has {len(row)} fields, not 3); it is not replaced", path=path)
        rows[(row[0], row[1])] = row[2]
    return rows


#: A JSON file a case's check reads as JSON up to this size (geometry.json: some kB); a larger one as free text.
MAX_CHECKED_JSON_BYTES = 64 * 1024 * 1024

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VECTOR = rf"\({_NUMBER}(?:,{_NUMBER})*\)"
#: NRRD header fields whose values DoseAlign's NRRD writer makes of numbers and its own words, in their forms.
_NRRD_OWN_FIELDS = {
    "type": re.compile(r"u?int(?:8|16|32|64)|float|double"),
    "dimension": re.compile(r"\d+"),
    "sizes": re.compile(r"\d+(?: \d+)*"),
    "space directions": re.compile(rf"(?:{_VECTOR}|none)(?: (?:{_VECTOR}|none))*"),
    "space origin": re.compile(_VECTOR),
    "space": re.compile(r"left-posterior-superior"),
    "kinds": re.compile(r"domain(?: domain)*"),
    "endian": re.compile(r"little|big"),
    "encoding": re.compile(r"gzip|raw"),
    "space units": re.compile(r'"mm"(?: "mm")*'),
    "dosealign_units": re.compile(r"HU|GY|mask"),
}
#: pynrrd's comment lines (the time of writing made letters by the NRRD writer).
_NRRD_OWN_LINES = re.compile(
    r"NRRD000\d|# This NRRD file was generated by pynrrd|# on YYYY-MM-DD hh:mm:ss\(GMT\)\."
    r"|# Complete NRRD file format specification at:|# http://teem\.sourceforge\.net/nrrd/format\.html"
)


def _mask_file_stems(folder: Path, names: Optional[Iterable[str]] = None) -> list:
    """The file-name forms (:func:`~DoseAlignLib.output.file_names.safe_name`) and NRRD-header forms (escaped) of
    ``names`` (by default the ROI names a case folder's meta.json records) that differ from the names, longest first."""
    from .file_names import safe_name

    if names is None:
        try:
            structures = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8")).get("structures") or {}
        except (OSError, ValueError, AttributeError):
            return []
        names = list(structures.get("names") or []) + [
            s.get("name") for s in structures.get("skipped") or [] if isinstance(s, dict)
        ]
    names = list(names)
    names = [n for n in names if isinstance(n, str) and n]
    # (and as an NRRD header's ``content`` escapes them: ROI Wei\xdfe_Substanz)
    stems = {safe_name(n) for n in names} | {n.encode("unicode_escape").decode("ascii") for n in names}
    stems -= set(names)
    return sorted((s for s in stems if s), key=len, reverse=True)


def _nrrd_free_text(header: str) -> str:
    """An NRRD header without the lines DoseAlign's writer makes of its own numbers and words: what is left (the
    ``content``, ``dosealign_case_id``, anything else) is text to check."""
    free = []
    for line in header.splitlines():
        key, separator, value = line.partition(":=" if ":=" in line else ": ")
        own = _NRRD_OWN_FIELDS.get(key) if separator else None
        if _NRRD_OWN_LINES.fullmatch(line) or (own is not None and own.fullmatch(value)):
            continue
        free.append(line)
    return "\n".join(free)


_NUMBER_CELL = re.compile(rf"\s*{_NUMBER}\s*")


def _csv_free_text(text: str) -> str:
    """A CSV text with its number cells left out (OpenKBP's flat indices and values are DoseAlign's numbers);
    each other line once."""
    lines = (
        ",".join("" if _NUMBER_CELL.fullmatch(cell) else cell for cell in line.split(",")) for line in text.splitlines()
    )
    return "\n".join(dict.fromkeys(lines))


def _strings(value) -> Iterable[str]:
    """Every string value (not key) in a JSON-like value."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


#: At most this many names rewritten by :meth:`Pseudonymizer.name` are recalled to rewrite DoseAlign's prose quoting them.
MAX_RENAMED = 4096

#: Keys DoseAlign's writers use (snake_case); any other key (an ROI name used as a key) is free text.
_VOCABULARY = re.compile(r"[a-z][a-z0-9_]*")
#: A key DoseAlign may write of its own words alone (:func:`_own_key_word`): DVH points have a decimal point.
_OWN_KEY = re.compile(r"[a-z][a-z0-9_.]*")


def _own_key_word(word: str) -> bool:
    """Whether a word of a key (split at ``_``) is DoseAlign's: one of its words, two characters or less, or of the
    shapes of its DVH points, units and types (``d0.03cc``, ``v20``, ``int16``)."""
    return word in OWN_VOCABULARY or len(word) <= 2 or bool(_OWN_WORD_SHAPES.fullmatch(word))


def _own_key_text(key: str) -> str:
    """A key of DoseAlign's words as the check reads it for IDs, dates and UIDs: the words of its shapes left out."""
    return " ".join(" " if _OWN_WORD_SHAPES.fullmatch(word) else word for word in key.split("_"))


#: Keys whose values are names (ROI names): where those names stand as keys, they are free text too.
_NAME_KEYS = {"name", "names", "roi", "rois", "original_name", "roi_names", "worst_dvh_roi"}
#: Keys whose values are names the input gave (ROI names, plan labels): rewritten and checked as names, where
#: DoseAlign's own words are no exception (a surname ``Lang`` in ``PTV_Lang``).
_INPUT_NAME_KEYS = _NAME_KEYS | {"plan_label"}


def _named(value, parent: str = "", keys: frozenset = frozenset(_NAME_KEYS)) -> Iterable[str]:
    """Every string held under a name key (``structures.names``, ``rois[].name``; ``keys``) of a JSON-like value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _named(item, str(key), keys)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _named(item, parent, keys)
    elif isinstance(value, str) and parent in keys:
        yield value


def _keys(value) -> Iterable[str]:
    """Every key in a JSON-like value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _keys(item)


# ---- names and IDs in the spellings people use -------------------------------------------------

#: Name components shorter than this are removed only joined with another (``LiWei``, ``Wei_Li``).
MIN_NAME_PART = 3


def _ideographic(text: str) -> bool:
    """Whether ``text`` is written in a script whose names have one- or two-character components (CJK, kana,
    hangul): there ``山田`` is as much a surname as ``Zorbaz`` is in Latin letters."""
    return any(unicodedata.name(c, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) for c in text)


def min_name_part(part: str) -> int:
    """The shortest name component removed on its own: two characters in ideographic scripts, else
    :data:`MIN_NAME_PART` letters."""
    return 2 if _ideographic(part) else MIN_NAME_PART


#: Joined spellings shorter than this (letters) are not searched inside other words.
MIN_JOINED = 5

_CJK_TABLE: dict = {}


def cjk_fold(text: str) -> str:
    """``text`` with hiragana written as katakana (``やまだ`` as ``ヤマダ``) and each CJK ideograph as the one form of
    its variants (:mod:`.cjk_variants`: traditional and simplified Chinese ``陳``/``陈``, Japanese ``髙``/``高``,
    ``齋``/``斎``): one character for one, so that a span of the folded text is the same span of ``text``."""
    if not _CJK_TABLE:
        table = {n: n + 0x60 for n in range(0x3041, 0x3097)}  # hiragana -> katakana (U+30A1..U+30F6)
        table.update({0x309D: 0x30FD, 0x309E: 0x30FE})  # the iteration marks
        pairs = "".join(_CJK_PAIRS)
        table.update({ord(a): ord(b) for a, b in zip(pairs[::2], pairs[1::2])})
        _CJK_TABLE.update(table)
    return text.translate(_CJK_TABLE)


def _has_cjk(text: str) -> bool:
    return any(c >= "\u3040" for c in text) and _ideographic(text)


#: Name components this long are found inside other words too (shorter ones, like ``Doe``, only as words:
#: ``Doerr`` is another name).
MIN_INSIDE = 5
#: What people put between the parts of a name or an ID.
_SEPARATORS = r"[\s_\-.^,]*"
#: Between the characters of an ID that is one of DoseAlign's words, in its own text: :data:`_SEPARATORS` and an
#: apostrophe (its possessives, ``plan's``, which the check reads joined).
_VOCABULARY_SEPARATORS = r"[\s_\-.^,'\u2019]*"


#: How letters are written as two where their marks cannot be typed (other accents are dropped): German ``ä ö ü ß``,
#: Danish, Norwegian and Swedish ``å`` (``Håkonsen`` as ``Haakonsen``), Hungarian ``ő ű`` (``Erdős`` as ``Erdoes``:
#: fifty-third hostile trial BA7).
_GERMAN = {
    "ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss",
    "å": "aa", "Å": "Aa", "ő": "oe", "Ő": "Oe", "ű": "ue", "Ű": "Ue",
}  # fmt: skip

#: How the Latin letters that Unicode does not decompose into a plain letter and a mark are written without them
#: (lower case; every usual spelling, the commonest first): Danish and Norwegian ``æ ø``, Polish ``ł``, Croatian and
#: Serbian ``đ``, Icelandic ``þ ð``, French ``œ``, Sami ``ŋ``, Maltese ``ħ``, Turkish ``ı``, Greenlandic ``ĸ``,
#: Azerbaijani ``ə`` and the letters of African alphabets. Any other such letter whose Unicode name is a plain letter
#: "with" something (``ƀ`` b with stroke, ``ɗ`` d with hook, ``ƶ`` z with stroke) is written as that plain letter
#: (:data:`_PLAIN_LETTERS`).
_LETTER_SPELLINGS = {
    "æ": ("ae",),
    "ø": ("o", "oe"),
    "œ": ("oe",),
    "ł": ("l",),
    "đ": ("d", "dj"),
    "ð": ("d", "dh"),
    "þ": ("th",),
    "ŋ": ("n", "ng"),
    "ħ": ("h",),
    "ı": ("i",),
    "ĸ": ("k", "q"),
    "ŧ": ("t",),
    "ß": ("ss",),
    "ə": ("e", "a"),
    "ǝ": ("e",),
    "ɛ": ("e",),
    "ɔ": ("o",),
    "ɣ": ("g",),
    "ɩ": ("i",),
    "ʊ": ("u",),
    "ʒ": ("z",),
    "ʃ": ("sh",),
    "ƿ": ("w",),
    "ȝ": ("y", "gh"),
    "ȣ": ("ou",),
    "ƣ": ("oi",),
    "ƕ": ("hv",),
}


def _plain_letters() -> dict:
    """:data:`_LETTER_SPELLINGS` with upper case, and every other Latin letter without a decomposition whose Unicode
    name is ``LATIN ... LETTER <X> WITH ...`` (or ``<X> BAR``) as ``X``: letter -> spellings."""
    table = {}
    named = re.compile(r"LATIN (SMALL|CAPITAL) LETTER (?:DOTLESS )?([A-Z])(?: WITH .+| BAR)?")
    ranges = [(0x80, 0x2B0), (0x1D00, 0x1DC0), (0x1E00, 0x1F00), (0x2C60, 0x2C80), (0xA720, 0xA800), (0xAB30, 0xAB70)]
    for first, end in ranges:
        for code in range(first, end):
            char = chr(code)
            if unicodedata.normalize("NFKD", char) != char:
                continue
            match = named.fullmatch(unicodedata.name(char, ""))
            if match:
                letter = match.group(2).lower()
                table[char] = (letter.upper(),) if match.group(1) == "CAPITAL" else (letter,)
    for char, spellings in _LETTER_SPELLINGS.items():
        table[char] = spellings
        upper = char.upper()
        if len(upper) == 1 and upper != char and not upper.isascii():  # (ı's upper case is I)
            table[upper] = tuple(s.capitalize() for s in spellings)
    return table


_PLAIN_LETTERS = _plain_letters()
#: At most this many spellings of one name are made from letters of two usual spellings (ø as o and oe, đ as d and dj).
MAX_LETTER_SPELLINGS = 16


def transliterations(parts: tuple) -> set:
    """The ASCII spellings of a name's parts people write for letters with marks: ``Müller`` as
    ``Mueller`` and ``Muller``, ``José`` as ``Jose``; and for letters that have no marks to drop (:data:`_PLAIN_LETTERS`):
    ``Łukasiewicz`` as ``Lukasiewicz``, ``Sørensen`` as ``Sorensen`` and ``Soerensen``, ``Đurić`` as ``Duric`` and
    ``Djuric`` (one spelling of each such letter throughout the name)."""
    if all(part.isascii() for part in parts):
        return set()

    def strip(text: str) -> str:
        # (composed again: NFKD takes a Hangul syllable apart into its letters, and 장 was then a name of three
        # letters removed inside words, 심장 as 심[removed]: fifty-third hostile trial BA8)
        return unicodedata.normalize(
            "NFC", "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        )

    letters = sorted({c for part in parts for c in part if c in _PLAIN_LETTERS})
    choices = itertools.islice(itertools.product(*(_PLAIN_LETTERS[c] for c in letters)), MAX_LETTER_SPELLINGS)
    found = set()
    for choice in choices:
        plain = dict(zip(letters, choice))
        spelled = tuple("".join(plain.get(c, c) for c in part) for part in parts)
        found.add(tuple(strip("".join(_GERMAN.get(c, c) for c in part)) for part in spelled))
        found.add(tuple(strip(part) for part in spelled))
    return found - {parts}


def _plain_views(text: str) -> list:
    """``text`` with its letters written without their marks, in each usual way (``Łukasiewicz`` as ``Lukasiewicz``,
    ``Müller`` as ``Muller`` and ``Mueller``, ``Sørensen`` as ``Sorensen`` and ``Soerensen``): ``(view, where)`` pairs,
    ``where[n]`` the index in ``text`` of the view's character ``n``; none for an ASCII text."""
    if text.isascii():
        return []
    views = {}
    for german in (False, True):
        for alternate in (False, True):
            chars, where = [], []
            for n, char in enumerate(text):
                if char.isascii():
                    spelled = char
                elif char in _ARABIC_FORMS:  # (one form of the Arabic letters: BA1)
                    spelled = _ARABIC_FORMS[char]
                elif german and char in _GERMAN:
                    spelled = _GERMAN[char]
                elif char in _PLAIN_LETTERS:
                    spelled = _PLAIN_LETTERS[char][-1 if alternate else 0]
                else:  # marks dropped (a lone combining mark, as NFD text has them, drops out)
                    spelled = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
                    spelled = unicodedata.normalize("NFC", spelled)  # (a Hangul syllable stays one: BA8)
                chars.append(spelled)
                where.extend([n] * len(spelled))
            view = "".join(chars)
            if view != text:
                views.setdefault(view, where)
    return list(views.items())


#: DoseAlign's own words (of three letters or more): the prose, keys, headers, summation types and file names it
#: writes itself (collected from exports of a phantom with a neutral identity, in every format). A name component
#: that is one of them (``Plan``, ``Dose``, ``Body``), or that sits inside one (``Cross`` in ``across``, ``Rossi`` in
#: ``across its``, ``DoseAlign`` in ``dosealign_version``), is neither removed nor read as identity there: a single
#: component only where its word (its run of letters) is none of them; joined with another (``PlanJo``,
#: ``jo_plan``) it is removed and found everywhere.
_OWN_WORDS_TEXT = """
    ababier above abs across affine air align all allocated allow along already alt among and another anterior apart
    are area array arrays astype audit auto away axes axial axis backend background band based beam beams between
    beyond big binary bit bits block body bold bool border box brachy candidates caps carry case cases ceil cell
    centre centred centres change changed channels charset check checks chooses chosen class clipped closes closing
    code collapse color column compared complete component compress connected content contour contours control count
    counts covers crop csv curves custom cut cuts data dataset dcm decides default deg degrees delta description
    detail details dicom diff differs digest dimension dimensions direction directions display distance dmax dmean
    dmin doctype domain dose dosealign doses dtype dvh each edge empty encloses encoding end endian ends engine
    error even every exact expected export exports extents extra face faces failed false family file files fill
    filled finest first flag flags flat float folder follows font for form format four fraction fractional fractions
    frame frames from full further gantry gaps generated geometry gfov gmt gradient grid gridframeoffsetvector grids
    group gzip had half hashes hdf head header height hfs hidden holds holes href html http ijk image img increasing
    index inferior inline input inside instance int integral interpolated interpolation interpolator interpreted
    intervals invented islands its json kbp kept key keyed kinds kji label labels lagrange lang largest last layers
    layout lazy left lies limit linear links listed little loading lost lowest lps manifest map margin marker mask
    masks max meta method min mismatch misses missing modality mode more most mtime multi name named names native
    nearest needed neighbour net nifti nii noflag none nonzero normal not notes npz nrrd null num number numeric
    nums numtraining numvalidation object odd off offset offsets one only onto open openkbp option options order
    organ orientation origin original out outer outline outlines output outside over overflow own packbits packed
    padding pair part partly paths patient patients pct per performed perimeter phi physical picture plan plane
    planes planning plans please plus png point points polygon position positions possible posterior prescription
    present principal problems provided pseudonymization pseudonymized psi pynrrd qform radius range ranked ras
    readme reason receiving record reference referenced references refined regular regularization regularized
    related relative removed report resampled resampling result right rim roi rois round row rtdose rtplan rtroi
    rtroiinterpretedtype rtstruct rule run runs same sample samples sampling sans scaled scaling scanline scanner
    scheme section sections see seed series serif session set sform sha shape signed size sizes skipped slab slice
    slices small solid sop sorted source sourceforge space spacing span sparse specification split spread squared
    src stamp status step storage stretches structures study style sum summary summation summed sums superior
    supersampling table tabular takes tbody teem tensor tensorimagesize text than the thead their them there
    thickness this threshold thresholds through thumb tilt title tokens tolerance top training trilinear true two
    type uid uids uint under uneven uniform units unpack unpackbits utf validate validation value values variant
    vector version vertical via views volume voxel voxels warning warnings was way weight weighted where whose wider
    width with without worst written
"""


def _dicom_keywords() -> set:
    """DICOM's attribute keywords, as DoseAlign's reasons name them (``NumberOfFrames``): a surname Frame read inside
    one refused --append and was cut out of this input's own reasons (seventy-seventh hostile trial BY2, BY3)."""
    from pydicom.datadict import keyword_dict

    return {keyword.casefold() for keyword in keyword_dict if len(keyword) >= 3 and keyword.isalpha()}


_BASE_WORDS = frozenset(_OWN_WORDS_TEXT.split())
#: DoseAlign's own words, their plurals and possessives as read without the apostrophe (a surname Neighbour in "its
#: neighbour's section", the DVH method of every meta.json: BY8), and DICOM's keywords. (Every word of its messages
#: was tried too, and let a surname Long in an ROI name that DoseAlign's prose quotes stand in clear: seventy-ninth
#: hostile trial CA1, CA4.)
OWN_VOCABULARY = _BASE_WORDS | frozenset(word + "s" for word in _BASE_WORDS) | frozenset(_dicom_keywords())


def _word_spans(text: str) -> list:
    """``(start, end)`` of the words of ``text``: runs of letters or of digits, letters also split where
    camel case changes (``PTVDoeJohn`` -> ``PTV``, ``Doe``, ``John``). A mark or joiner after a letter is part of
    its word (:func:`_continues_word`: ``राहुल``, not ``र``, ``ह``, ``ल``)."""
    spans = []
    start = None
    run = ""  # the kind of the word being read: "L" letters, "D" digits
    base = ""  # its last letter that is no mark (camel case is read on letters)
    for n, char in enumerate(text + " "):
        kind = "L" if char.isalpha() or (run == "L" and _continues_word(char)) else "D" if char.isdigit() else ""
        if start is not None:
            same = kind == run
            camel = (
                kind == "L"
                and same
                and char.isalpha()
                and (
                    (base.islower() and char.isupper())
                    or (base.isupper() and char.isupper() and n + 1 < len(text) and _has_capital(text[n + 1]))
                    # (where Latin letters meet another script's: PTVדוד, as scripts without case show no camel case:
                    # fifty-fifth hostile trial BC8)
                    # (not where both have case: Iван, typed on a keyboard without і, is one word, BE4)
                    or (
                        base.isalpha()
                        and _latin(base) != _latin(char)
                        and (base.lower() == base.upper() or char.lower() == char.upper())
                    )
                )
            )
            if same and not camel:
                base = char if char.isalpha() else base
                continue
            spans.append((start, n))
            start = None
        run = kind
        base = char
        if kind:
            start = n
    return spans


def _has_capital(char: str) -> bool:
    """Whether ``char`` is a lower-case letter with a capital of its own: ``ß`` has none in use (``VOß`` is how German
    writes Voß in capitals, one word: sixty-first hostile trial BI1)."""
    return char.islower() and len(char.upper()) == 1


#: A run of lower-case hex digits of 8 or more with letters and digits both: a hash digest, DoseAlign's or another
#: export's (the check's reading of letters beside digits leaves it alone).
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}(?![0-9A-Za-z])")
#: A letter and a digit side by side, and what parts the words of a text at digits too (the check's reading of
#: ``PTV_Roth2`` as ``PTV``, ``Roth``).
_LETTER_BESIDE_DIGIT = re.compile(r"[^\W\d_]\d|\d[^\W\d_]")
_NOT_LETTERS = re.compile(r"[^A-Za-z\u00c0-\uffff]+|[0-9\u0660-\u0669\u06f0-\u06f9\uff10-\uff19]+")


def _two_capitals(name: str) -> bool:
    """Whether a name component is written with two capitals before small letters (``IJff``, ``ODea``, ``MBow``)."""
    return len(name) >= MIN_NAME_PART and name.isalpha() and name[:2].isupper() and any(c.islower() for c in name[2:])


def _letter_runs(text: str) -> list:
    """``(start, end)`` of the runs of letters of ``text`` (with the marks and joiners that continue them), not split
    at case changes: a name written with two capitals (``IJff``, ``ODea``, ``NDao``) is one word of the input's as the
    header writes it (sixty-first hostile trial BI5)."""
    spans, start = [], None
    for n, char in enumerate(text + " "):
        letter = char.isalpha() or (start is not None and _continues_word(char))
        if letter and start is None:
            start = n
        elif not letter and start is not None:
            spans.append((start, n))
            start = None
    return spans


#: An apostrophe between two letters (text read with the look-alikes as ``'``): ``O'Brien`` read as ``OBrien`` too, for
#: a header that writes the name without it (``OBRIEN``, as ASCII-only systems do: sixty-first hostile trial BI3).
_APOSTROPHE_IN_WORD = re.compile(r"(?<=[^\W\d_])'+(?=[^\W\d_])")  # (doubled as SQL escapes it, O''Brien: BK1)


def _without_apostrophes(text: str) -> Optional[tuple]:
    """``(view, where)`` of ``text`` with its apostrophes between letters dropped (``where[n]``: the index in ``text``
    of the view's character ``n``), or None where it holds none."""
    if "'" not in text or not _APOSTROPHE_IN_WORD.search(text):
        return None
    dropped = {n for m in _APOSTROPHE_IN_WORD.finditer(text) for n in range(*m.span())}
    where = [n for n in range(len(text)) if n not in dropped]
    return "".join(text[n] for n in where), where


@functools.lru_cache(maxsize=4096)
def _latin(char: str) -> bool:
    """Whether a letter is of the Latin script."""
    return char.isascii() or unicodedata.name(char, "").startswith("LATIN")


def _in_own_word(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` lies inside a run of letters that is one of DoseAlign's own words
    (:data:`OWN_VOCABULARY`: ``Cross`` in ``across``)."""
    while start and (text[start - 1].isalpha() or _continues_word(text[start - 1])):
        start -= 1
    while end < len(text) and (text[end].isalpha() or _continues_word(text[end])):
        end += 1
    return text[start:end].casefold() in OWN_VOCABULARY


def _ascii_digits(text: str) -> str:
    """``text`` with every decimal digit of another script (Arabic-Indic ``١٥``, Devanagari ``०२``) as its ASCII
    digit: NFKC leaves them as they are, and a date or ID written in them was kept by both sides (twenty-first
    hostile trial U8)."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in text)


#: Joiners written inside the words of some scripts (the Persian ZWNJ, the Sinhala ZWJ), and the halfwidth katakana
#: voiced marks, letters to Unicode that belong to the kana before them (``ﾀﾞ``: fifty-seventh trial).
_JOINERS = "\u200c\u200d\uff9e\uff9f"


def _continues_word(char: str) -> bool:
    """Whether ``char`` is part of the word of the letter before it: a combining mark or a joiner. The vowel signs
    and viramas of Devanagari, Bengali, Tamil, Thai are marks (``राहुल`` is ``र ा ह ु ल``); read as separators they
    cut such a name into pieces of one letter, which neither side found (fifty-second hostile trial AZ3)."""
    return char in _JOINERS or char == "\u0640" or unicodedata.category(char)[0] == "M"  # (and the tatweel)


@functools.lru_cache(maxsize=1)
def _marks_class() -> str:
    """A character class of every combining mark and joiner (``re`` has no ``\\p{M}``), for a pattern to take a
    name's trailing vowel sign with it (``शर्मा``: its ``ा`` follows its last letter)."""
    ranges, start, last = [], None, None
    for code in range(0x300, 0x20000):
        if unicodedata.category(chr(code))[0] == "M":
            if start is None or code != last + 1:
                if start is not None:
                    ranges.append((start, last))
                start = code
            last = code
    ranges.append((start, last))
    spans = "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)
    return "[" + spans + _JOINERS + "]"


def _word_end(text: str, end: int) -> int:
    """``end`` moved past the marks and joiners that follow it: a span found in a view of ``text`` without its marks
    ends at a letter, and the vowel sign after it belongs to the name (``GTV [removed]ा`` for ``GTV शर्मा``: AZ3)."""
    while end < len(text) and _continues_word(text[end]):
        end += 1
    return end


def _alnum(text: str) -> str:
    """The letters and digits of ``text``."""
    return "".join(c for c in text if c.isalnum())


#: Particles a one-word surname is also written apart at (``Vandenberg`` as ``van den Berg``, ``Delacroix`` as
#: ``de la Croix``, ``MacArthur`` as ``Mac Arthur``), lower case.
_PARTICLES = (
    "van", "von", "den", "der", "de", "di", "da", "del", "della", "dos", "das", "du", "des", "la", "le", "lo",
    "ten", "ter", "mc", "mac", "st", "al", "el", "ben", "bin", "abu",
)  # fmt: skip


def _name_pieces(chunk: str) -> list:
    """A run of letters of a name split where it may be written apart: at its case changes (``McDonald``:
    ``Mc``, ``Donald``) and after leading particles (``Vandenberg``: ``Van``, ``den``, ``berg``), each piece left
    with three letters or more."""
    pieces = re.findall(r"[^\W\d_][^\W\d_A-Z]*|\d+|[^\W_]", chunk) if not chunk.isupper() else [chunk]
    out = []
    for piece in pieces:
        while True:
            lowered = piece.casefold()
            particle = next((p for p in _PARTICLES if lowered.startswith(p) and len(piece) - len(p) >= 3), "")
            if not particle or not piece[: len(particle)].isalpha():
                break
            out.append(piece[: len(particle)])
            piece = piece[len(particle) :]
        out.append(piece)
    return [p for p in out if p]


@functools.lru_cache(maxsize=1 << 16)  # each component once, not once a spelling it is part of (T10: 14.7 M calls)
def _part_pattern(part: str) -> str:
    """A name component as a pattern of the rewriting: its runs of letters and digits with any run of other
    characters, or none, between them. A letter lost to a wrong character set (``M\ufffdller``, ``Mu?ller`` in one
    object for ``Müller``) is then found however the other objects lost it (``M?ller``, ``M??ller``, ``Mu?ller``,
    ``Muller``), and ``O'Brien`` as ``O Brien``. A run is also found written apart at its case changes and
    particles (:func:`_name_pieces`: ``McDonald`` as ``Mc_Donald``, ``Vandenberg`` as ``van_den_Berg``)."""
    chunks = re.findall(r"[^\W_]+", part)
    if not chunks:
        return re.escape(part)
    pattern = r"[\W_]*".join(r"[\W_]*".join(re.escape(p) for p in _name_pieces(c)) for c in chunks)
    # (with the marks after its last letter: a vowel sign ends many names of Indic scripts, शर्मा)
    return pattern + _marks_class() + "*" if not part.isascii() else pattern


def _joined_key(text: str) -> str:
    """``text``'s letters and digits, case-folded as the rewriting's patterns match them (``re.IGNORECASE`` also
    takes a dotless ı for an i): a component's pattern (:func:`_part_pattern`) matches only where its own key
    is in the text's."""
    return "".join(c for c in text.casefold().replace("\u0131", "i") if c.isalnum())


def _joined_spellings(usable: tuple):
    """``(components, key)`` of each joined spelling of a name's components (two or three, any order, of
    :data:`MIN_JOINED` characters or more), ``key`` its letters and digits (:func:`_joined_key`)."""
    keys = [_joined_key(p) for p in usable]
    for size in range(2, min(3, len(usable)) + 1):
        for order in itertools.permutations(range(len(usable)), size):
            combo = tuple(usable[n] for n in order)
            if sum(len(p) for p in combo) >= MIN_JOINED:
                yield combo, "".join(keys[n] for n in order)


@functools.lru_cache(maxsize=1 << 12)
def _alternation(patterns: tuple) -> re.Pattern:
    """One name's joined spellings that a text may hold, as one pattern (longest first), compiled once."""
    return re.compile("|".join(patterns), re.IGNORECASE)


def _short_joined(a: str, b: str, inside: bool) -> str:
    """The rewriting's pattern of a name of two short components (``Li^Na``: four letters, too few to be searched
    inside other words): ``inside`` (a name the input gave) its letters in order with anything but letters and digits
    between them, anywhere (``PTVlina``, ``L_i_N_a``); else (DoseAlign's own text) the two components as words of
    their own, next to each other or separated (``Li_Na``, ``LiNa``, ``li na``), or joined as one word (``LINA``),
    whose bounds :meth:`NameSpellings._short_spans` checks."""
    letters = _alnum(a + b)
    if inside:
        return r"[\W_]*".join(re.escape(c) for c in letters)
    return re.escape(_alnum(a)) + r"(?:[\s_\-.^,]*)" + re.escape(_alnum(b))


#: The fewest digits of a UID written without its points, or of one of its components, that is looked for alone:
#: fewer could be any number.
MIN_UID_DIGITS = 16

#: A run of digits (of any script) with up to twelve characters that are no letter or digit between them
#: (``2_25_2414``, ``2 25 2414``, ``2^25^2414``, ``２．２５``, a line broken and indented: BY1, BY7).
_SPREAD_DIGITS = re.compile(r"\d(?:[\W_]{0,12}\d)*")


def _removed_as_compatible(pattern: re.Pattern, value: str, removes) -> str:
    """``value`` with each match of ``pattern`` that ``removes`` accepts replaced by :data:`REMOVED`, matched in each
    character's NFKC form: a UID in subscript (``₂₅``), superscript or circled digits was found by the check,
    which reads NFKC, and kept by the rewriting, so its case failed (seventy-ninth hostile trial CA3)."""
    if value.isascii():
        return pattern.sub(lambda m: REMOVED if removes(m.group(0)) else m.group(0), value)
    forms, origin = [], []  # the NFKC form of each character, and for each of its characters the one it came from
    for index, char in enumerate(value):
        form = char if char.isascii() else unicodedata.normalize("NFKC", char)
        forms.append(form)
        origin.extend([index] * len(form))
    pieces, kept_from = [], 0
    for match in pattern.finditer("".join(forms)):
        if match.end() == match.start() or not removes(match.group(0)):
            continue
        start, end = origin[match.start()], origin[match.end() - 1] + 1
        if start >= kept_from:  # (a character whose form is several may end one match and begin the next)
            pieces += [value[kept_from:start], REMOVED]
            kept_from = end
    return "".join(pieces) + value[kept_from:]


def _uid_needles(uids: set) -> _Needles:
    """The input's UIDs written without their points, and their components, of :data:`MIN_UID_DIGITS` digits or more
    (made again when ``uids`` changed)."""
    cached = _UID_NEEDLES.get("uids")
    if cached is None or cached[0] is not uids or cached[1] != len(uids):
        pieces = set()
        for uid in uids:
            pieces.update(
                p for p in (uid.replace(".", ""), *uid.split(".")) if len(p) >= MIN_UID_DIGITS and p.isdigit()
            )
        cached = (uids, len(uids), _Needles(pieces))
        _UID_NEEDLES["uids"] = cached
    return cached[2]


_UID_NEEDLES: dict = {}

#: A UUID's 32 hexadecimal digits, with its hyphens or not.
_UUID_RUN = re.compile(
    r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{8}[-_:\s]?(?:[0-9A-Fa-f]{4}[-_:\s]?){3}[0-9A-Fa-f]{12}(?![0-9A-Fa-f])"
)


def _uid_uuids(uids: set) -> frozenset:
    """The UUIDs (32 lower-case hexadecimal digits) the input's ``2.25.<decimal>`` UIDs hold (PS3.5 B.2)."""
    cached = _UID_NEEDLES.get("uuids")
    if cached is None or cached[0] is not uids or cached[1] != len(uids):
        held = set()
        for uid in uids:
            number = uid[5:] if uid.startswith("2.25.") else ""
            if number.isdigit() and int(number) < 1 << 128:
                held.add(format(int(number), "032x"))
        cached = (uids, len(uids), frozenset(held))
        _UID_NEEDLES["uuids"] = cached
    return cached[2]


class _Needles:
    """Strings to look for inside texts, found in one reading of each text: at each position, each length the
    strings have is looked up in a table. A loop over every string had the check try each of some 300 000 joined
    spellings of 800 other names in every text written, for minutes (twentieth hostile trial T10); the time now
    grows with the text and the number of lengths, not with the number of strings. Each string may carry a value
    (:meth:`add`, :meth:`value`)."""

    #: Up to this many strings a plain loop is quicker than reading the text position by position.
    PLAIN_LOOP = 64

    def __init__(self, needles: Iterable[str] = ()) -> None:
        #: per length, each string and its value
        self.by_length: dict = {}
        self.count = 0
        self.lengths: list = []
        for needle in needles:
            self.add(needle)

    def add(self, needle: str, value=None) -> None:
        if needle:
            found = self.by_length.setdefault(len(needle), {})
            self.count += needle not in found
            found[needle] = value
            if len(found) == 1 and len(needle) not in self.lengths:
                self.lengths = sorted(self.by_length)

    def value(self, needle: str):
        return self.by_length[len(needle)][needle]

    def __bool__(self) -> bool:
        return bool(self.by_length)

    def __len__(self) -> int:
        return self.count

    def in_text(self, text: str) -> bool:
        """Whether one of the strings occurs in ``text``."""
        if len(self) <= self.PLAIN_LOOP:
            return any(needle in text for found in self.by_length.values() for needle in found)
        return next(self._occurring(text), None) is not None

    def found_in(self, text: str) -> set:
        """The strings that occur in ``text``."""
        if len(self) <= self.PLAIN_LOOP:
            return {needle for found in self.by_length.values() for needle in found if needle in text}
        return set(self._occurring(text))

    def _occurring(self, text: str):
        by_length, lengths = self.by_length, self.lengths
        for start in range(len(text)):
            left = len(text) - start
            for length in lengths:
                if length > left:
                    break
                piece = text[start : start + length]
                if piece in by_length[length]:
                    yield piece


class NameSpellings:
    """Finds a patient's name in the spellings people use and removes it (the rewriting side).

    For every name (PN value): its components joined in any order, two or three at a time, with or
    without separators (``DoeJohn``, ``john_doe``, ``JOHN-DOE``, ``Doe^John``, ``John.Doe``), in any case,
    anywhere; and each component of three letters or more as a word of its own (words split at
    non-letters and camel case: ``PTV_Doe``, ``DoeBoost``, ``doe``).
    """

    def __init__(self, identity: Identity) -> None:
        self.source = identity
        short = set()
        #: each joined spelling's letters and digits (:func:`_joined_key`), with the name or names it spells (an
        #: index in :attr:`_persons`, or a tuple of them): a spelling's pattern matches only where its key is in the
        #: text's, so only the spellings whose key a text holds are made, compiled and searched. Hundreds of
        #: OtherPatientNames held a case for minutes, every spelling searched in every string written (twentieth
        #: hostile trial T10), and so did a name component found in most words (a particle ``de``: twenty-first
        #: trial U1).
        self._spelling_keys = _Needles()
        #: each name's components of two characters or more
        self._persons: list = []
        #: names with a spelling of no letters or digits at all, tried in every text
        self._keyless: set = set()
        for parts in identity.persons:
            usable = tuple(p for p in parts if len(p) >= 2)
            person = len(self._persons)
            self._persons.append(usable)
            for _combo, key in _joined_spellings(usable):
                if not key:
                    self._keyless.add(person)
                    continue
                held = self._spelling_keys.by_length.get(len(key), {}).get(key)
                if held is None:
                    self._spelling_keys.add(key, person)
                elif held != person and not (isinstance(held, tuple) and person in held):
                    self._spelling_keys.add(key, (held if isinstance(held, tuple) else (held,)) + (person,))
            for a, b in itertools.permutations(usable, 2):
                if len(a) + len(b) < MIN_JOINED and _alnum(a) and _alnum(b) and not _ideographic(a + b):
                    short.add((a, b))  # Li^Na: too short to be searched like the others
        #: two-component names too short for :attr:`joined` (``Li^Na``), in DoseAlign's text and in the input's names
        self.short = self.short_inside = None
        if short:
            ordered = sorted(short, key=lambda c: -len(_alnum(c[0] + c[1])))
            self.short = re.compile("|".join(_short_joined(a, b, False) for a, b in ordered), re.IGNORECASE)
            self.short_inside = re.compile("|".join(_short_joined(a, b, True) for a, b in ordered), re.IGNORECASE)
        self.words = {
            n.casefold() for n in identity.names if len(n) >= min_name_part(n) and not re.search(r"[\^=,\s]", n)
        }
        # a component holding other characters than letters and digits (Mu?ller, M\ufffdller: a letter lost to a
        # wrong character set) is also a word as its letters and digits alone (Muller, Mller)
        self.words |= {_alnum(w) for w in self.words if _alnum(w) and _alnum(w) != w}
        # long components are found inside other words too (PTVmueller, muellerboost); short ones only as words;
        # ideographic ones (山田) inside any text: those scripts do not separate words
        # (also as the input wrote them: their case changes tell where they are written apart, McDonald as Mc_Donald)
        long_parts = sorted(
            {w for w in self.words if len(_alnum(w)) >= MIN_INSIDE or _ideographic(w)}
            | {n for n in identity.names if n.casefold() in self.words and len(_alnum(n)) >= MIN_INSIDE},
            key=len,
            reverse=True,
        )
        self.inside = re.compile("|".join(_part_pattern(w) for w in long_parts), re.IGNORECASE) if long_parts else None
        # a component written with two capitals before small letters (IJff, ODea, NDao), as the header writes it, is
        # found glued to other words too where no small letter follows it (PTVIJff, IJffBoost: its capitals do not
        # tell camel case where it begins; sixty-third hostile trial BK2)
        self.capitals = sorted({n for n in identity.names if _two_capitals(n)}, key=len, reverse=True)
        # CJK names folded (hiragana/katakana, variant and simplified forms: cjk_fold), in the folded text: each
        # component of two characters or more anywhere, all components joined (two or three, any order, also of
        # one character: 張^偉 as 张伟), and a one-character component (陳) where it stands alone (no letter beside)
        cjk = set()
        self.cjk_single = set()
        for parts in identity.persons:
            folded = [cjk_fold(p) for p in parts if _ideographic(p)]
            cjk.update(re.escape(p) for p in folded if len(p) >= 2)
            self.cjk_single.update(p for p in folded if len(p) == 1)
            for size in range(2, min(3, len(folded)) + 1):
                for combo in itertools.permutations(folded, size):
                    cjk.add(_SEPARATORS.join(re.escape(p) for p in combo))
        cjk.update(re.escape(cjk_fold(w)) for w in self.words if _ideographic(w))
        self.cjk = re.compile("|".join(sorted(cjk, key=len, reverse=True))) if cjk else None

    def _joined_spans(self, text: str) -> list:
        """Spans of the joined spellings of each name whose letters and digits ``text`` holds, each name's found
        on their own (the spans of two names may overlap)."""
        by_person: dict = {person: {""} for person in self._keyless}
        for key in self._spelling_keys.found_in(_joined_key(text)):
            held = self._spelling_keys.value(key)
            for person in held if isinstance(held, tuple) else (held,):
                by_person.setdefault(person, set()).add(key)
        found = []
        for person in sorted(by_person):
            keys = by_person[person]
            patterns = {
                _SEPARATORS.join(_part_pattern(p) for p in combo)
                for combo, key in _joined_spellings(self._persons[person])
                if key in keys
            }
            joined = _alternation(tuple(sorted(patterns, key=lambda p: (-len(p), p))))
            # overlapping spellings each (Mary Vander and Vanderberg in Mary Vanderberg for van der Berg^Mary: found
            # one after the other, berg was left glued to the mark: seventy-first hostile trial BS1)
            match = joined.search(text)
            while match is not None:
                if match.end() > match.start():
                    found.append(match.span())
                match = joined.search(text, match.start() + 1)
        return found

    def _latin_spans(self, text: str, own: bool = True) -> list:
        found = self._joined_spans(text)
        if self.words:
            found.extend(
                (a, b)
                for a, b in {*_word_spans(text), *_letter_runs(text)}
                if text[a:b].casefold() in self.words and not (own and text[a:b].casefold() in OWN_VOCABULARY)
            )
        if self.inside is not None:
            found.extend(m.span() for m in self.inside.finditer(text) if not (own and _in_own_word(text, *m.span())))
        for name in self.capitals:
            start = text.find(name)
            while start >= 0:
                end = start + len(name)
                if end == len(text) or not (text[end].islower() or _continues_word(text[end])):
                    found.append((start, end))
                start = text.find(name, start + 1)
        if self.short is not None:
            found.extend(self._short_spans(text) if own else (m.span() for m in self.short_inside.finditer(text)))
        return found

    def _short_spans(self, text: str) -> list:
        """Spans of :attr:`short` in DoseAlign's own text: where the name's first and last letters begin and end
        words (:func:`_word_spans`), and not where it is one of DoseAlign's own words alone (``Do^Se``: ``dose``)."""
        spans = _word_spans(text)
        starts, ends = {a for a, _b in spans}, {b for _a, b in spans}
        found = []
        for match in self.short.finditer(text):
            start, end = match.span()
            if start in starts and end in ends:
                word = text[start:end]
                if not (_alnum(word).casefold() in OWN_VOCABULARY and word.isalpha()):
                    found.append((start, end))
        return found

    def spans(self, text: str, own: bool = True) -> list:
        found = self._latin_spans(text, own)
        unquoted = _without_apostrophes(text)
        if unquoted is not None:  # (O'Brien for a header OBRIEN: BI3)
            view, where = unquoted
            found.extend((where[a], where[b - 1] + 1) for a, b in self.spans(view, own) if b > a)
        # a name held in plain letters (Lukasiewicz, Muller) that a text spells with its marks (PTV_Łukasiewicz,
        # PTV_Müller): found in the text's plain spellings, each span taken back to the text's own characters
        for view, where in _plain_views(text):
            found.extend((where[a], where[b - 1] + 1) for a, b in self._latin_spans(view, own) if b > a)
        if (self.cjk is not None or self.cjk_single) and _has_cjk(text):
            folded = cjk_fold(text)
            if self.cjk is not None:
                found.extend(m.span() for m in self.cjk.finditer(folded) if m.end() > m.start())
            for n, char in enumerate(folded):
                # (an ASCII letter beside it is another word: Lung장, as the check reads it, BC8)
                alone = not (n and folded[n - 1].isalpha() and not folded[n - 1].isascii()) and not (
                    n + 1 < len(folded) and folded[n + 1].isalpha() and not folded[n + 1].isascii()
                )
                if alone and char in self.cjk_single:
                    found.append((n, n + 1))
        return found

    def redact(self, text: str, own: bool = True) -> str:
        """``text`` with every span of a name made :data:`REMOVED`; ``own``: DoseAlign's own words are no name
        (its own text), else they are (a name the input gave: ``PTV_Lang``)."""
        # (its apostrophes read as ``'``, one character for one: the spans are the text's)
        spans = sorted((start, _word_end(text, end)) for start, end in self.spans(text.translate(_APOSTROPHES), own))
        if not spans:
            return text
        merged = [list(spans[0])]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, last = [], 0
        for start, end in merged:
            out.append(text[last:start])
            out.append(REMOVED)
            last = end
        out.append(text[last:])
        return "".join(out)


_ID_PATTERNS: dict = {}
#: A whole number grouped by points (``12.345.678``, as German, Dutch or Brazilian software prints one), or an ID in its
#: country's dotted notation (a CPF ``123.456.789-09``, a BSN ``1234.56.782``, an AHV ``756.1234.5678.97``: eighty-first
#: hostile trial CC3): groups of digits joined by points, hyphens, dashes, underscores or slashes, and then by blanks
#: too (``123.456.789 09``), two points at least in the blank-free part where an ID's first group stands (one is a
#: decimal point: ``12.345``; three numbers ``1.5 2.5 3.5`` hold none); also after an abbreviation's point (``Nr.12.345.678``: forty-sixth hostile trial AT2).
#: An ID is the digits of whole groups of it, one after the other (:func:`_grouped_id_spans`): ``1.250.000`` holds no ID
#: 2500 across its groups (AT3), ``123.456.789-09-2`` the ID 12345678909 and a suffix (eighty-third trial CE2).
_GROUP_SEPARATORS = "./_\\-\u2010-\u2015\u2212"
_POINT_GROUPED = re.compile(  # (after a number and a blank too: PTV 60 123.456.789-09, eighty-fifth trial CG5)
    rf"(?<![0-9])(?<![0-9][{_GROUP_SEPARATORS}])[0-9]+(?:[{_GROUP_SEPARATORS}][0-9]+)+(?:(?: [{_GROUP_SEPARATORS}]? ?|[{_GROUP_SEPARATORS}] ?)[0-9]+)*"
    rf"(?![0-9]|[{_GROUP_SEPARATORS} ][0-9])"
)
#: A decimal point between two digits: digits on both sides of it belong to one number, never to an ID.
_DECIMAL = re.compile(r"[0-9]\.[0-9]")


#: Characters regular expressions match case-insensitively with an ASCII letter that ``lower()`` does not give.
_SRE_FOLDS = str.maketrans({"\u0131": "i", "\u0130": "i", "\u017f": "s", "\u212a": "k"})


def _ascii_squeezed(text: str) -> str:
    """``text`` lower-cased with only its ASCII letters and digits: where :func:`_id_pattern` of an ASCII ID can
    match, this holds the ID's own letters and digits (a superset, to choose the IDs worth searching)."""
    return re.sub(r"[^0-9a-z]+", "", text.translate(_SRE_FOLDS).lower())


def _id_pattern(identifier: str):
    """An ID in any case, with any separators or none between its letters and digits: ``PID-7731-XQ``,
    ``pid_7731_xq``, ``PID7731XQ``, and an ID without separators written with some (``QX-77415`` or
    ``qx 77415`` for ``QX77415``, ``OPX_992`` for ``OPX992``).

    Every spelling the leak check (:class:`IdentityGuard`) reads as the ID is matched: its letters and digits
    in order, anything but ASCII letters and digits (or nothing) between any two of them. An ID that holds a
    digit is matched also glued to letters (``PTVqx77415``, ``QX77415boost``, ``ctvOPX992``, ``PTV12345``), but
    an ID that begins (ends) with a digit not right after (before) another digit: ``12345`` is no ID inside
    ``9123456`` or a UID. An ID of letters only is matched only where no ASCII letter or digit touches it (``LUNG``
    is no ID inside ``LungL``). (An ID that holds other letters keeps its own parts, joined by the usual
    separators.)
    """
    pattern = _ID_PATTERNS.get(identifier)
    if pattern is None:
        squeezed = "".join(c for c in identifier.casefold() if c.isalnum())
        if squeezed and squeezed.isascii():
            # a decimal point between two of its digits makes them one number (63.0584): no ID there, unless the
            # ID itself is written with one, or holds letters (AB.123.4567 for AB1234567 is no number: eighty-first
            # hostile trial CC3)
            point = "" if _DECIMAL.search(identifier) or not squeezed.isdigit() else r"(?!\.[0-9])"
            # each run of its digits also after zeros added, as fixed-width MRN fields print it (01072315 for
            # 1072315, MRN-01072315: thirty-second hostile trial AF3)
            body = "".join(
                ("0*" if c.isdigit() and (i == 0 or not squeezed[i - 1].isdigit()) else "")
                + re.escape(c)
                + (
                    (point if c.isdigit() and squeezed[i + 1].isdigit() else "") + "[^0-9A-Za-z]*"
                    if i + 1 < len(squeezed)
                    else ""
                )
                for i, c in enumerate(squeezed)
            )
            if any(c.isdigit() for c in squeezed):
                # an ID of digits only may be the decimals of a number (63.0584); one that holds letters never is
                # (QX77415.2, a version: fifteenth hostile trial O16)
                decimals = squeezed.isdigit()
                lead = (r"(?<![0-9])" + (r"(?<![0-9]\.)" if decimals else "")) if squeezed[0].isdigit() else ""
                # before a point and digits only where the digits it ends with run as long as the check reads
                # them there (PTV_10-72315.1: thirty-first hostile trial AE12)
                # (or where a separator stands among its last digits: 1234-5678.1 is the ID and a version, no
                # number 5678.1: eighty-seventh hostile trial CI3)
                apart = "|".join(f"(?<=[^0-9A-Za-z.\\s][0-9]{{{n}}})" for n in range(1, MIN_WHOLE_PART))
                point_after = rf"(?:(?<=[0-9]{{{MIN_WHOLE_PART}}})|{apart}|(?!\.[0-9]))"
                tail = (r"(?![0-9])" + (point_after if decimals else "")) if squeezed[-1].isdigit() else ""
            else:
                lead, tail = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
            pattern = re.compile(lead + body + tail, re.IGNORECASE)
        else:
            chunks = re.findall(r"[^\W_]+", identifier)
            body = _SEPARATORS.join(re.escape(c) for c in chunks) if chunks else re.escape(identifier)
            pattern = re.compile(r"(?<![^\W_])" + body + r"(?![^\W_])", re.IGNORECASE)
        _ID_PATTERNS[identifier] = pattern
    return pattern


def unpadded_ids(identifiers: Iterable[str]) -> tuple:
    """``(IDs, numbers)``: each ID whose runs of digits start with zeros, written without them (``0072315`` as
    ``72315``, ``MRN0072315`` as ``MRN72315``), where at least :data:`MIN_UNPADDED_DIGITS` digits remain; and those
    runs alone (``72315``) of IDs that hold letters or separators too, removed only as words of their own
    (:func:`_bare_number`), and so each of their runs of :data:`MIN_BARE_DIGITS` digits or more (``1072315``).
    An ID of digits only is itself such a number, removed as an ID (:func:`_id_pattern`)."""
    ids, numbers = set(), set()
    for identifier in identifiers:
        found = []
        variant = re.sub(r"[0-9]+", functools.partial(_unpad, found=found), identifier)
        if found:
            ids.add(variant)
        if not identifier.isdigit():
            numbers.update(found)
            # and as written in the ID, zeros first (MRN0072315's 0072315: how the number is printed without its
            # letters; no number the export writes itself starts with a zero)
            runs = re.findall(r"[0-9]+", unicodedata.normalize("NFKC", identifier))
            numbers.update(
                run for run in runs if len(run) >= (MIN_UNPADDED_DIGITS if run[0] == "0" else MIN_BARE_DIGITS)
            )
            numbers.update(_joined_digits(runs))
    return ids, numbers


def _joined_digits(runs: list) -> list:
    """An ID's runs of digits written together without what stands between them (``AB12-34567`` as ``1234567``), where
    they are several and make :data:`MIN_BARE_DIGITS` digits or more (thirty-sixth hostile trial AJ13)."""
    joined = "".join(runs)
    return [joined] if len(runs) > 1 and len(joined) >= MIN_BARE_DIGITS else []


def _unpad(match, found: list) -> str:
    """A run of digits without its leading zeros (noted in ``found``) where MIN_UNPADDED_DIGITS digits remain."""
    digits = match.group(0).lstrip("0")
    if digits != match.group(0) and len(digits) >= MIN_UNPADDED_DIGITS:
        found.append(digits)
        return digits
    return match.group(0)


_BARE_NUMBERS: dict = {}


def _bare_number(number: str):
    """``number`` as a word of its own: no ASCII letter or digit beside it, and not a decimal number's part (its
    whole part only when shorter than :data:`MIN_WHOLE_PART`)."""
    pattern = _BARE_NUMBERS.get(number)
    if pattern is None:
        tail = "" if len(number) >= MIN_WHOLE_PART else r"(?!\.[0-9])"
        pattern = re.compile(r"(?<![0-9A-Za-z])(?<![0-9]\.)0*" + re.escape(number) + r"(?![0-9A-Za-z])" + tail)
        _BARE_NUMBERS[number] = pattern
    return pattern


#: DoseAlign's own words where an ID glued to letters would match by chance: DVH point names (``d0.03cc_gy``,
#: ``d95_gy``), sizes (``48x160x192``) and numbers in exponent notation (``1.25e-05``). An ID that stands alone
#: there is removed all the same; the check's own list is :data:`_GUARD_SKIPS`.
_OWN_WORDS = re.compile(
    r"(?<![0-9A-Za-z.])(?:d[0-9]+(?:\.[0-9]+)?(?:cc)?_gy|[0-9]+(?:x[0-9]+)+|[0-9]+(?:\.[0-9]+)?e[-+]?[0-9]+)"
    r"(?![0-9A-Za-z])",
    re.IGNORECASE,
)


def _is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


#: What DoseAlign's own pseudonyms are made of (``P`` + 12 hex digits, ``d``/``f`` + 10, a case id's 8): runs of
#: them are no identity, even where an ID of hexadecimal characters (``A123``, ``123``) happens to sit inside.
_OWN_TOKEN = re.compile(r"[dfP]?[0-9a-f]{8,12}")


#: A case id under pseudonymization: its patient's pseudonym and its digest are DoseAlign's, its middle (the dose's
#: summation type) is the input's.
_CASE_PSEUDONYM = re.compile(r"(P[0-9a-f]{12})_[A-Za-z0-9]+_([0-9a-f]{8})")


#: DoseAlign's own words with digits (DVH points ``d95``, ``d2cc``, ``v20``, types ``int16``, units ``cm3``).
#: (``sha256`` of ``keyed_sha256``, ``hdf5``: a PatientID 256 failed every case with ``--roi-map``, forty-fourth
#: hostile trial AR2)
_OWN_WORD_SHAPES = re.compile(
    r"d[0-9]+(?:\.[0-9]+)?(?:cc)?|v[0-9]+|u?int[0-9]+|float[0-9]+|cm[0-9]|mm[0-9]|sha[0-9]+|hdf[0-9]", re.I
)


def is_own_word(identifier: str) -> bool:
    """Whether an ID is one of the words DoseAlign writes itself (``PLAN``, ``D95``, ``INT16``): no ID in DoseAlign's
    own text, where it stands as DoseAlign's word (every case of a PatientID ``PLAN`` or ``D95`` failed "please
    report it", and ``INT16`` was removed from meta.json's dtype: thirty-sixth and thirty-eighth hostile trials AJ20,
    AL2); in the input's names it is removed."""
    squeezed = "".join(c for c in identifier.casefold() if c.isalnum())
    return (squeezed.isalpha() and squeezed in OWN_VOCABULARY) or bool(_OWN_WORD_SHAPES.fullmatch(squeezed))


#: A component of a path written as tokens (``d81c0a9b3f2``, ``f3bde29a064.dcm``).
_PATH_TOKEN = re.compile(r"[df][0-9a-f]{10}(?:\.[A-Za-z0-9]{1,12})?")
#: What a path field of meta.json or the manifest joins tokens with.
_PATH_JOINS = re.compile(r"/| \+ |;")


def _without_keyed_hashes(value):
    """``value`` (a JSON-like value) without the keyed SHA-256 digests it holds (keys ending in ``keyed_sha256``, a
    value of 64 hex digits); a value of another shape stays, read as text."""
    if isinstance(value, dict):
        return {
            k: _without_keyed_hashes(v)
            for k, v in value.items()
            if not (str(k).endswith("keyed_sha256") and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v))
        }
    if isinstance(value, list):
        return [_without_keyed_hashes(v) for v in value]
    return value


def _utf8_read_as_latin1(text: str) -> Optional[str]:
    """``text`` as it was typed where it is UTF-8 read as Latin-1 or Windows-1252 (``MÃ¼ller^JÃ¼rgen`` for
    ``Müller^Jürgen``, ``Å\x81ukasiewicz`` for ``Łukasiewicz``: a planning system's import of a CT whose names it
    decoded so), else None. A name written right in Latin-1 (``Müller``) is no UTF-8 once encoded: None
    (forty-fourth hostile trial AR6: the name as typed in the ROI names was found by neither side)."""
    if text.isascii():
        return None
    # each character back to its byte: Latin-1's own (U+0081 of Ł's 0xC5 0x81, which Windows-1252 has no character
    # for), else Windows-1252's (› of ś's 0xC5 0x9B): a name holds both (WiÅ›niewski^Å\x81ukasz: forty-sixth AT4)
    data = bytearray()
    for char in text:
        if ord(char) < 256:
            data.append(ord(char))
            continue
        try:
            data += char.encode("cp1252")
        except UnicodeEncodeError:
            return None
    try:
        repaired = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    # a name stored right that encodes to bytes of UTF-8 by chance (PÍŠA: 0xCD 0x8A, a combining mark on P) is no
    # such name: a repair gives letters, punctuation and spaces (D’Angelo, Müller–Lüdenscheidt), and marks on letters
    # of their script or composed with theirs (José written decomposed) (forty-eighth and fiftieth trials AV3, AX2)
    repaired = unicodedata.normalize("NFC", repaired)
    if repaired == text:
        return None
    for index, char in enumerate(repaired):
        category = unicodedata.category(char)
        # a mark on an ASCII letter, or on nothing, that does not compose with it (PÍŠA's U+034A on P), or a control
        # character, is no name as typed; a mark on a letter of its script (Thai, Devanagari vowel signs) and a
        # joiner (Persian's zero-width non-joiner) are (fifty-second hostile trial AZ2)
        if category == "Cc" or (category[0] == "M" and (index == 0 or repaired[index - 1].isascii())):
            return None
    return repaired


def _grouped_id_spans(run: str, ids: frozenset) -> list:
    """``(start, end)`` in ``run`` (a match of :data:`_POINT_GROUPED`) of each sequence of its whole groups whose digits,
    without leading zeros (``0.072.315`` is 72315 too) and :data:`MIN_BARE_DIGITS` or more, are one of ``ids``, and
    whose first group stands in a part of the run without blanks that has two points at least (a decimal ``12.345``,
    ``12345-6789.09`` after ``3.10.1`` and a blank, is none: what stands before a blank does not change it, as the
    rewriting and the check may read a name in parts; a version ``2.4.0`` is too short)."""
    if run.count(".") < 2:
        return []
    groups = [m.span() for m in re.finditer(r"[0-9]+", run)]
    points_of_part = {}  # each blank-free part's start -> whether it has two points
    for part in re.finditer(r"[^ ]+", run):
        points_of_part[part.start()] = part.group(0).count(".") >= 2
    starts = sorted(points_of_part)
    dotted = [points_of_part[starts[bisect.bisect_right(starts, g[0]) - 1]] for g in groups]
    longest = max((len(i) for i in ids), default=0)
    spans, first = [], 0
    while first < len(groups):
        digits, last = "", None
        for end in range(first, len(groups) if dotted[first] else first):
            digits += run[groups[end][0] : groups[end][1]]
            number = digits.lstrip("0") or "0"
            if len(number) > longest:  # (groups beyond the longest ID: a run of 20 000 groups was quadratic)
                break
            if len(digits) >= MIN_BARE_DIGITS and number in ids:
                last = end
        if last is None:
            first += 1
            continue
        spans.append((groups[first][0], groups[last][1]))
        first = last + 1
    return spans


def _digit_ids(identity: Identity) -> frozenset:
    """The input's IDs of digits alone (as ASCII digits, without leading zeros), for numbers grouped by points."""
    cached = getattr(identity, "_digit_ids_cache", None)
    stamp = (len(identity.patient_ids), len(identity.other), len(identity.visit_ids))
    if cached is None or cached[0] != stamp:
        ids = {_ascii_digits(i) for i in identity.identifiers}
        # (and the digits of an ID of digit groups, 123-456-789 written 123.456.789: eighty-eighth trial CJ7)
        digits = {re.sub(r"[^0-9]", "", i) for i in ids if re.fullmatch(r"[0-9]+(?:[^0-9A-Za-z]+[0-9]+)*", i)}
        cached = (stamp, frozenset(i.lstrip("0") or "0" for i in digits))
        object.__setattr__(identity, "_digit_ids_cache", cached)
    return cached[1]


def _fallback(case) -> str:
    """What names a case's patient when it has no PatientID: its first dose's study."""
    first = case.doses[0] if case.doses else None
    return first.study_uid if first is not None else case.case_id


def written_pseudonyms(value) -> set:
    """The pseudonyms in an earlier export's meta.json or manifest row ``value`` (any JSON-like value): case ids and
    patient pseudonyms (under ``case_id``, ``patient_id``, ``patient``), and the tokens of path fields
    (:data:`PATH_KEYS`) written as tokens and nothing else. Free text, ROI names among them, is not read for them:
    an ROI name ``d1234567890`` of another input held this input's PatientID, and it was kept (forty-second hostile
    trial AP1)."""
    found: set = set()
    pending = [(value, "")]
    while pending:
        item, key = pending.pop()
        if isinstance(item, dict):
            pending.extend((v, str(k)) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            pending.extend((v, key) for v in item)
        elif isinstance(item, str) and item:
            tagged = _ROI_TAGGED.search(item) if "removed" in item.casefold() else None
            if tagged:  # a rewritten ROI name's keyed tag, wherever it stands (forty-second hostile trial AP9)
                found.add(tagged.group(1))
            if key == "stamp" and _STAMP.fullmatch(item):  # an input file's keyed stamp, also in
                found.add(item)  # openkbp/geometry.json (323660d9458abebe spelt Abebe: seventy-seventh trial BY5)
            elif key in _PSEUDONYM_KEYS:
                if _CASE_PSEUDONYM.fullmatch(item) or re.fullmatch(r"P[0-9a-f]{12}", item):
                    found.add(item)
            elif key in PATH_KEYS:
                parts = [part for part in _PATH_JOINS.split(item) if part and part != "."]
                if parts and all(_PATH_TOKEN.fullmatch(part) for part in parts):
                    found.update(part.split(".", 1)[0] for part in parts)
    return found


#: The keyed tag :meth:`Pseudonymizer.name` gives a rewritten ROI name (``[removed]_1d791b3e``), at its end or before
#: a file's suffix.
_ROI_TAGGED = re.compile(r"_([0-9a-f]{8})(?:\.[A-Za-z0-9.]{1,12})?$")
#: The keys of meta.json and the manifest whose values are a case id or a patient's pseudonym.
_PSEUDONYM_KEYS = frozenset({"case_id", "patient_id", "patient"})


class OwnTokens:
    """This run's own hash digests, a set that only grows (``in``, ``len``, iteration), with each also case-folded
    (:attr:`folded`): read once each as they come, never copied whole."""

    def __init__(self) -> None:
        self.tokens: set = set()
        self.folded: set = set()
        self.entries_read = 0
        self.digests_read = 0

    def add(self, tokens: Iterable[str]) -> None:
        for token in tokens:
            if token not in self.tokens:
                self.tokens.add(token)
                self.folded.add(token.casefold())

    def __contains__(self, token: object) -> bool:
        return token in self.tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return iter(self.tokens)


def own_tokens(pseudonyms: Iterable[str]) -> frozenset:
    """The runs of letters and digits of ``pseudonyms`` that are hash digests (``P3fa0...``, ``d81c...``); of a case
    id, its first and last (a date of 8 digits as its middle was taken for a digest: thirty-sixth hostile trial AJ2)."""
    runs: set = set()
    for pseudonym in pseudonyms:
        case = _CASE_PSEUDONYM.fullmatch(pseudonym)
        parts = case.groups() if case else re.findall(r"[0-9A-Za-z]+", pseudonym)
        runs.update(run for run in parts if _OWN_TOKEN.fullmatch(run) or _STAMP.fullmatch(run))
    return frozenset(runs)


class IdentityGuard:
    """The leak check: finds identity in a text by its own means, independent of the rewriting.

    Names: the text's words (split at anything but ASCII letters and digits, and at ASCII camel case)
    are compared with each name component (three letters or more), and the text squeezed to its
    lower-case letters and digits is searched for every joined spelling of two or three components.
    IDs: searched in the text lower-cased with ``-``, ``_`` and ``^`` between characters removed, and, for IDs
    that hold a digit, in the text squeezed to its ASCII letters and digits, glued to letters too (:func:`_glued_id`;
    not inside this run's own hash digests nor DoseAlign's words in :data:`_GUARD_SKIPS`). Fullwidth and other
    compatibility forms are read as NFKC as well. Dates:
    every date-like group of digits in the text, read every way, compared with the input's dates.
    UIDs: searched as they are, between non-digits.
    """

    def __init__(self, identity: Identity, keep_uids: bool = False) -> None:
        self.source = identity
        self.keep_uids = keep_uids
        #: the IDs of digits alone, without leading zeros: a number grouped by points is one where its digits are
        self.digit_ids = frozenset(  # (IDs of digits alone, or of digit groups: 123-456-789, CJ7)
            re.sub(r"\D", "", d).lstrip("0") or "0"
            for d in (_ascii_digits(i) for i in identity.identifiers)
            if re.fullmatch(r"\d+(?:[\W_]+\d+)*", d)
        )
        self.alone = {
            "".join(c for c in part.casefold() if c.isalnum())
            for parts in identity.persons
            for part in parts
            if len(part) >= MIN_NAME_PART or (len(part) >= 2 and _cjk(part))
        }
        self.alone |= {n.casefold() for n in identity.names if len(n) >= MIN_NAME_PART and n.isalnum()}
        # and with their marks and joiners: the vowel signs and viramas of Devanagari, Bengali, Tamil, Thai are
        # marks, and without them राहुल is not a word of the text (fifty-second hostile trial AZ3)
        self.alone |= {
            unicodedata.normalize("NFC", w)
            for parts in identity.persons
            for part in parts
            for w in ["".join(c for c in part.casefold() if c.isalnum() or _continues_word(c))]
            if len(w) >= MIN_NAME_PART and not w.isalnum() and not w.isascii()
        }
        # (a name typed in ASCII is not folded: Loew is no Low, which an ROI PTV_Low is, the rewriting agreeing; it is
        # also read with the letter its ae oe ue may stand for, Löw: fifty-fifth hostile trial BC7)
        folded = {tuple(p if p.isascii() else _fold(p) for p in parts) for parts in identity.persons}
        folded |= {
            tuple(_UMLAUTED.sub(lambda m: _UMLAUTS[m.group(0)], p) if p.isascii() else p for p in parts)
            for parts in identity.persons
            if any(p.isascii() and _UMLAUTED.search(p) for p in parts)
        }
        self.alone |= {p.casefold() for parts in folded for p in parts if len(p) >= MIN_NAME_PART and p.isalnum()}
        # CJK components in the check's own folding (_guard_cjk): of two characters or more anywhere (self.alone),
        # of one character as a word of its own, all of a name joined (張^偉: 张伟) anywhere
        ideographs = {tuple(_guard_cjk(p) for p in parts if _cjk(p)) for parts in identity.persons}
        self.alone |= {p for parts in ideographs for p in parts if len(p) >= 2 and p.isalnum()}
        self.single_cjk = {p for parts in ideographs for p in parts if len(p) == 1 and p.isalnum()}
        self.joined_cjk = {
            "".join(combo)
            for parts in ideographs
            for size in (2, 3)
            for combo in (itertools.permutations(parts, size) if len(parts) >= size else ())
        }
        # the check's own ASCII spellings of each component, as typed without its letters (Soerensen, Djuric, Pawel)
        spelled = set()
        for parts in identity.persons:
            options = [sorted(_guard_spellings_of(p) | {p.casefold()}) for p in parts]
            spelled.update(itertools.islice(itertools.product(*options), 4 * _GUARD_MAX_SPELLINGS))
        self.alone |= {p for parts in spelled for p in parts if len(p) >= MIN_NAME_PART and p.isalnum()}
        squeezed_names = set()
        #: names of two components too short to search in squeezed text (``lina``: its components ``li``, ``na``)
        self.short_names: dict = {}
        for parts in identity.persons | folded | spelled:
            letters = ["".join(c for c in p.casefold() if c.isalnum()) for p in parts]
            letters = [p for p in letters if len(p) >= 2]
            for size in (2, 3):
                for combo in itertools.permutations(letters, size) if len(letters) >= size else ():
                    joined = "".join(combo)
                    if len(joined) >= MIN_JOINED:
                        squeezed_names.add(joined)
                    elif size == 2 and joined.isascii():
                        self.short_names[joined] = combo  # Li^Na: four letters
        #: every name joined (two or three components, any order), its components alone where they are long
        #: enough to be read inside other words, and both with the words apart
        self.squeezed_names = _Needles(squeezed_names | self.joined_cjk)
        self.inside_parts = _Needles(p for p in self.alone if len(p) >= MIN_INSIDE or _cjk(p))
        self.alone_words = self.alone | self.single_cjk
        #: components the header writes with two capitals before small letters (IJff, ODea), found as written glued to
        #: other words, where no small letter follows (PTVIJff, IJffBoost: BK2)
        self.capital_names = frozenset(
            part
            for parts in identity.persons
            for part in parts
            if len(part) >= MIN_NAME_PART
            and part.isalpha()
            and part[0].isupper()
            and part[1].isupper()
            and any(c.islower() for c in part[2:])
        )
        self.ids = {"".join(c for c in i.casefold() if c.isalnum()) for i in identity.identifiers}
        self.ids.discard("")
        #: IDs that are words of DoseAlign's own text (a PatientID ``PLAN``): no ID there, only in the input's names
        #: (every case of such a patient failed "please report it": thirty-sixth hostile trial AJ20)
        self.vocabulary_ids = {i for i in self.ids if is_own_word(i)}
        # each written whole, with -, _ or ^ between its characters too (DoseAlign's ``cm^3``)
        # (with the rewriting's separators between its characters: DoseAlign's axes "(N, K, J, I)" are no PatientID
        # KJI, whose every case failed "please report it": thirty-ninth hostile trial AM4; and an apostrophe: "the
        # plan's BEAM doses" is no PatientID PLANS, "each sample's volume" no SAMPLES, fortieth trial AN2)
        self.vocabulary_pattern = (
            re.compile(
                r"(?<![0-9a-z])(?:"
                + "|".join(
                    _VOCABULARY_SEPARATORS.join(map(re.escape, i))
                    for i in sorted(self.vocabulary_ids, key=len, reverse=True)
                )
                + r")(?![0-9a-z])",
                re.IGNORECASE,
            )
            if self.vocabulary_ids
            else None
        )
        # an ID's numbers also without their leading zeros (0072315: 72315; mrn0072315: mrn72315, and 72315 as a
        # word of its own), where MIN_UNPADDED_DIGITS digits or more remain: the check's own reading, character by
        # character
        self.bare_numbers = set()
        for squeezed in list(self.ids):
            pieces, dropped, digits = [], [], ""
            padded = []
            for char in squeezed + "\0":
                if char in _DIGITS:
                    digits += char
                    continue
                kept = digits.lstrip("0")
                if digits[:1] == "0" and len(digits) >= MIN_UNPADDED_DIGITS:
                    padded.append(digits)  # as written in the ID, zeros first
                if digits and kept != digits and len(kept) >= MIN_UNPADDED_DIGITS:
                    dropped.append(kept)
                    digits = kept
                pieces.append(digits)
                pieces.append(char)
                digits = ""
            if not all(c in _DIGITS for c in squeezed):
                self.bare_numbers.update(padded)
            if dropped:
                variant = "".join(pieces[:-1])
                self.ids.add(variant)
                if not all(c in _DIGITS for c in variant):
                    self.bare_numbers.update(dropped)
        # and the long runs of digits of an ID that holds anything else, as written (MRN1072315, 10-72315: 1072315,
        # 72315 alone; thirtieth hostile trial AD8)
        for identifier in identity.identifiers:
            if not identifier.isdigit():
                runs = re.findall(r"[0-9]+", unicodedata.normalize("NFKC", identifier))
                self.bare_numbers.update(run for run in runs if len(run) >= MIN_BARE_DIGITS)
                self.bare_numbers.update(_joined_digits(runs))  # (AB12-34567 as 1234567: AJ13)
        self.longest_id = max((len(i) for i in self.ids), default=0)
        # IDs that hold a digit are found glued to letters too (PTVqx77415, QX77415boost)
        self.glued_ids = {i for i in self.ids if i.isascii() and any(c in _DIGITS for c in i)}
        #: IDs written with a decimal point between two digits (12.345): only there may one sit inside a number
        self.dotted_ids = {
            "".join(c for c in i.casefold() if c.isalnum()) for i in identity.identifiers if _POINT.search(i)
        }
        # each ID found by an index of the text's pieces, not searched one by one: 20 000 OtherPatientIDs held a
        # case for minutes (twenty-fourth hostile trial X7)
        self._id_needles = _Needles(self.ids)
        self._glued_needles = _Needles(self.glued_ids)
        self._bare_needles = _Needles(self.bare_numbers)
        self.dates = set(identity.dates)
        self.uids = set(identity.uids)
        #: each UID's digits without its points, and its long components: found in the text's digits read across
        #: any separators (2_25_2414..., seventy-fifth hostile trial BW1)
        self._uid_digits = _Needles(
            piece
            for uid in self.uids
            for piece in ("".join(c for c in uid if c.isdigit()), *uid.split("."))
            if len(piece) >= MIN_UID_DIGITS and piece.isdigit()
        )
        self._uid_hex = {
            f"{int(uid[5:]):032x}"
            for uid in self.uids
            if uid.startswith("2.25.") and uid[5:].isdigit() and int(uid[5:]) < 2**128
        }
        #: Exact runs of letters and digits that are this run's own hash digests (no identity), set by the caller.
        self.own: frozenset = frozenset()
        self._own_folded: tuple = (None, set())
        #: The texts are DoseAlign's prose of another input's case, kept as it is by --append (:meth:`find`).
        self.prose = False
        #: The texts are a kept case's exported with --keep-uids: every UID in them is its input's, kept whole.
        self.kept_case_uids = False

    def _short_name(self, camel: str, squeezed: str, own: bool) -> bool:
        return _guard_short(self, camel, squeezed, own)

    def _without_own(self, text: str, blank: str = " ") -> str:
        """``text`` with this run's own hash digests (:attr:`own`) made ``blank``: the hex digits of a path token
        (``f42de930525``) are no date (seventeenth hostile trial Q6: a patient born 1993-05-25 was refused), nor are
        its letters a name (``fbecca12345`` holds no Becca)."""
        if not self.own:
            return text
        return re.sub(r"[0-9A-Za-z]{8,}", lambda m: blank if m.group(0) in self.own else m.group(0), text)

    def _skipped(self, lowered: str, own_words: bool = True) -> str:
        """``lowered`` for the search of glued IDs: this run's own hash digests (:attr:`own`) and DoseAlign's own
        words (:data:`_GUARD_SKIPS`; in its own text only, ``own_words``: not in an ROI name, thirty-sixth hostile
        trial AJ8) made blanks, where an ID glued to letters would sit by chance."""
        if own_words:
            lowered = _GUARD_SKIPS.sub(lambda m: " " * len(m.group(0)), lowered)
        if self.own:
            own = getattr(self.own, "folded", None)  # (OwnTokens keeps them folded as they come: BR4)
            if own is None:
                if self._own_folded[0] is not self.own:
                    self._own_folded = (self.own, {t.casefold() for t in self.own})
                own = self._own_folded[1]
            lowered = re.sub(r"[0-9a-z]{8,}", lambda m: " " if m.group(0) in own else m.group(0), lowered)
        return lowered

    def find(
        self, text: str, words: bool = True, own: bool = True, joined_names: bool = True, padded: bool = True
    ) -> str:
        """The kind of identifying value in ``text`` ('' when none); ``words``: also single name components;
        ``joined_names``: also names joined (with ``words=False``: IDs, dates and UIDs only);
        ``own``: ``text`` is DoseAlign's own, whose words (:data:`OWN_VOCABULARY`) are no name, else it is one name
        the input gave (an ROI name), where they are (a surname ``Lang`` in ``PTV_Lang``); ``padded``: also IDs with
        zeros added before their digits.

        Letters with marks are compared folded on both sides (``ü``, ``ue`` and ``u`` alike); fullwidth and other
        compatibility forms are read as their plain letters and digits (``ＱＸ７７４１５``)."""
        if not text:
            return ""
        if self.prose:  # DoseAlign's tag numbers: (0029,1ADA) holds no patient Ada (seventy-fifth hostile trial BW2),
            # nor its wording a patient Long: "the file is 100 bytes long" (seventy-seventh BY2; its counts are read
            # before their units are blanked)
            text = without_message_words(_LONE_COUNT.sub(" ", _TAG_NUMBER.sub(" ", text)))
        text = text.translate(_APOSTROPHES)  # (as the names are held: BA4)
        if REMOVED in text and text.replace(REMOVED, ""):  # read without the marks too: one inside a name hid it (AJ18)
            glued = _GLUED_REMOVED.sub("", text)  # a mark inside a word (QX77[removed]415): whatever it hid
            if glued != text:
                found = self.find(glued, words, own, joined_names, padded)
                if found:
                    return found
            found = self.find(text.replace(REMOVED, ""), words, own, joined_names, padded)
            if found == "a patient name":  # (else names only: the numbers on both sides of a removed name or date,
                # apart from it, joined, made a PatientID, PTV_60_[removed]_30 for 6030: sixty-eighth trial BP1)
                return found
        if self.keep_uids and (self.uids or self.kept_case_uids) and "." in text:  # a kept UID keeps the date or
            # number it holds as a component (1.2.246.352.71.2.1234.20230415093000.1: thirty-second hostile trial AF11;
            # also grouped by its points, eighty-fifth CG3); in a kept case of --keep-uids, any UID (CI1)
            text = _DOTTED_RUN.sub(
                lambda m: (
                    " "
                    if m.group(0) in self.uids or (self.kept_case_uids and looks_like_uid(m.group(0)))
                    else m.group(0)
                ),
                text,
            )
        if (  # a whole number grouped by points (12.345.678: AR7)
            text.count(".") >= 2
            and self.digit_ids
            and any(_grouped_id_spans(m.group(0), self.digit_ids) for m in _POINT_GROUPED.finditer(text))
        ):
            return "a patient ID"
        if own and self.vocabulary_pattern is not None:  # (whole words only: "planning" is no "plan")
            text = self.vocabulary_pattern.sub(" ", text)
        copies = [text]  # glued IDs are read as written and as NFKC (not folded: there é is a separator, not an e)
        readings = [text]  # and every reading of the text on its own (joined, the last number of one and the first of
        # the next were read as one: sixty-third hostile trial BK3)
        if "'" in text and _APOSTROPHE_IN_WORD.search(text):  # and without them: O'Brien for a header OBRIEN (BI3)
            readings.append(_APOSTROPHE_IN_WORD.sub("", text))
        if not text.isascii():
            plain = _ascii_digits(unicodedata.normalize("NFKC", visible(text)))
            copies += [plain] if plain != text else []
            for reading in list(readings):
                readings += self._other_readings(reading)
        if self.glued_ids and any(
            _glued_id(self._skipped(c.casefold(), own), self._glued_needles, self.dotted_ids) for c in copies
        ):
            return "a patient ID"
        for reading in dict.fromkeys(readings):
            found = self._find_in_reading(reading, words, own, joined_names, padded)
            if found:
                return found
        return ""

    @staticmethod
    def _other_readings(text: str) -> list:
        """A text of other characters than ASCII read folded, as NFKC, its CJK variants as one, and with the letters
        written as two where their marks cannot be typed."""
        plain = _ascii_digits(unicodedata.normalize("NFKC", visible(text)))
        ideographs = _guard_cjk(plain) if _cjk(plain) else plain
        # (and with the letters written as two where their marks cannot be typed, Erdős as Erdoes, Löw as Loew: a
        # header typed so is read as typed, BC7)
        doubled = ""
        if any(c in _GERMAN or c.lower() in _LETTER_SPELLINGS for c in text):  # (Sørensen as Soerensen too)
            spelled = "".join(_doubled(text, n) for n in range(len(text)))
            spelled = unicodedata.normalize("NFKD", spelled)
            doubled = "".join(c for c in spelled if not unicodedata.combining(c))
        return [r for r in (_fold(text), plain, ideographs, doubled) if r and r != text]

    def _find_in_reading(self, text: str, words: bool, own: bool, joined_names: bool, padded: bool) -> str:
        """:meth:`find` in one reading of a text (its IDs glued to letters read already)."""
        lowered = text.casefold()
        collapsed = re.sub(r"(?<=[0-9a-z])[-_^]+(?=[0-9a-z])", "", lowered)
        for identifier in self._id_needles.found_in(collapsed):
            for match in re.finditer(re.escape(identifier), collapsed):
                before = collapsed[match.start() - 1] if match.start() else " "
                after = collapsed[match.end()] if match.end() < len(collapsed) else " "
                if (
                    not before.isalnum()
                    and not after.isalnum()
                    and not (identifier.isdigit() and _in_number(collapsed, *match.span()))
                ):
                    return "a patient ID"
        for number in self._bare_needles.found_in(lowered):  # an ID's number without its leading zeros, alone
            start = lowered.find(number)
            while start >= 0:
                end = start + len(number)
                before = lowered[start - 1] if start else " "
                after = lowered[end] if end < len(lowered) else " "
                if before not in _ASCII_ALNUM and after not in _ASCII_ALNUM and not _in_number(lowered, start, end):
                    return "a patient ID"
                start = lowered.find(number, start + 1)
        # an ID's digits after zeros added (01072315, MRN-01072315 for 1072315, MRN-1072315: thirty-second hostile
        # trial AF3): the IDs read again with each run of digits without its leading zeros (not after a point)
        if (
            padded and self.ids and (_PADDED_RUN.search(lowered) or _PADDED_AFTER_NUMBER.search(lowered))
        ):  # (once: the text read again is not read again)
            unpadded = _unpadded_text(self._without_own(lowered))
            if unpadded != lowered and self.find(unpadded, False, joined_names=False, padded=False) == "a patient ID":
                return "a patient ID"
        # an ID joined to its neighbours by separators (PTV_PID-7731): whole runs of letters and digits, joined
        # (not across the decimal point of a number: 63.0584 is no 630584)
        # (not in the text read again without padded zeros: 10-07-23 is no 1072315 there, thirty-third trial AG5)
        runs = [(m.group(0), m.start(), m.end()) for m in re.finditer(r"[0-9a-z]+", lowered)] if padded else []
        for start in range(len(runs)):  # by index: slicing runs[start:] made this quadratic in the text's length
            joined = ""
            for k in range(start, len(runs)):
                point = lowered[runs[k - 1][2] : runs[k][1]] == "." if k > start else False
                if point and joined.isdigit() and runs[k][0][0] in _DIGITS and not self.dotted_ids:
                    break  # (a number's decimal point; after letters, AB.123.4567, no number: CC3)
                joined += runs[k][0]
                if joined in self.ids and (
                    joined in self.dotted_ids
                    or not joined.isdigit()
                    or not _in_number(lowered, runs[start][1], runs[k][2])
                ):
                    return "a patient ID"
                if len(joined) >= self.longest_id:
                    break
        camel = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
        if not camel.isascii():  # (and where ASCII letters meet those of a script without case: PTVדוד, BC8)
            camel = _scripts_apart(camel)
        found_words = {w.casefold() for w in re.split(r"[^0-9A-Za-z\u00c0-\uffff]+", camel) if w}
        # (and each run as a whole: a name written with two capitals, IJff, ODea, as the header writes it: BI5)
        found_words |= {w.casefold() for w in re.split(r"[^0-9A-Za-z\u00c0-\uffff]+", text) if w}
        if _LETTER_BESIDE_DIGIT.search(text):  # (and the letters beside digits: PTV_Roth2, JOHN1, 2Roth; this run's
            # digests left out, whose letters are no name: seventy-first hostile trial BS2)
            for reading in (camel, text):  # (camel case parted, and whole runs: ODea2, IJff2)
                # (not in what reads as a hash digest: another input's file token fc688ada6c9 named no Ada, nor does
                # a damaged file's row id damaged-file_1c74ada3b7: seventy-third hostile trial BU1)
                reading = _HEX_RUN.sub(" ", self._without_own(reading))
                found_words |= {w.casefold() for w in _NOT_LETTERS.split(reading) if w}
        exempt = OWN_VOCABULARY if own else frozenset()
        if words and (found_words - exempt) & self.alone_words:
            return "a patient name"
        if words:
            for name in self.capital_names:
                at = text.find(name)
                while at >= 0:
                    after = text[at + len(name) : at + len(name) + 1]
                    small = after.islower() or (bool(after) and unicodedata.category(after)[0] == "M")
                    if not (small or after in ("\u200c", "\u200d", "\u0640", "\uff9e", "\uff9f")):
                        return "a patient name"
                    at = text.find(name, at + 1)
        named = self._without_own(lowered, "\0") if self.own else lowered  # names are not read inside own tokens
        # nor inside DoseAlign's own mark: Rem^Ove found "remove" in every "[removed]", PTV_Lo_[removed] made Lo Re's
        # "lore" (seventy-third hostile trial BU2)
        named = named.replace(REMOVED, "\0")
        squeezed = "".join(c for c in named if c.isalnum() or c == "\0")
        if joined_names and self.squeezed_names.in_text(squeezed):
            return "a patient name"
        if words and self.short_names and self._short_name(camel, squeezed, own):
            return "a patient name"
        if words:
            # a single component inside other words, not across DoseAlign's own words ("across its" holds no Rossi)
            # nor across a separator, as the rewriting reads it: patient Rains failed every case holding the ROI
            # Brain_Stem "please report it" (thirty-eighth hostile trial AL7)
            free = re.sub(r"[^\W\d_]+", lambda m: "\0" if m.group(0) in exempt else m.group(0), named)
            pieces = "".join(c if c.isalnum() else "" if _continues_word(c) else "\0" for c in free)
            if self.inside_parts.in_text(pieces):
                return "a patient name"
        if self.dates and self.dates & _dates_in(self._without_own(_LONE_COUNT.sub(" ", text) if self.prose else text)):
            return "a date"
        if not self.keep_uids:
            for uid in self.uids:
                start = text.find(uid)
                while start >= 0:
                    end = start + len(uid)
                    left = text[start - 1] if start else " "
                    right = text[end] if end < len(text) else " "
                    # (a longer dotted run too: <StudyUID>.1 holds the UID all the same, thirty-eighth trial AL4)
                    if not (left.isdigit() or left == ".") and not right.isdigit():
                        return "a UID"
                    start = text.find(uid, start + 1)
            if self._uid_digits:
                joined = re.sub(r"(?<=[0-9])[^0-9A-Za-z]{1,12}(?=[0-9])", "", text)
                for run in re.findall(rf"[0-9]{{{MIN_UID_DIGITS},}}", joined):
                    if self._uid_digits.found_in(run):
                        return "a UID"
            if self._uid_hex:  # (the UUID a 2.25 UID holds, BY6)
                squeezed = re.sub(r"(?<=[0-9a-f])[-_:\s](?=[0-9a-f])", "", text.casefold())
                if any(run in self._uid_hex for run in re.findall(r"[0-9a-f]{32}", squeezed)):
                    return "a UID"
        return ""


#: A :data:`REMOVED` mark with a letter or digit right before and after it: inside a word of the input's.
_GLUED_REMOVED = re.compile(r"(?<=[^\W_])" + re.escape(REMOVED) + r"(?=[^\W_])")


def _scripts_apart(text: str) -> str:
    """``text`` with a space where an ASCII letter meets a letter without case (the check's own reading)."""
    out = []
    previous = ""
    for char in text:
        if (
            previous.isalpha()
            and char.isalpha()
            and previous.isascii() != char.isascii()
            and _caseless(previous if char.isascii() else char)
        ):
            out.append(" ")
        out.append(char)
        previous = char
    return "".join(out)


def _caseless(char: str) -> bool:
    """Whether a letter has no upper and lower case (Hebrew, Arabic, Indic, CJK, Hangul; not Cyrillic nor Greek)."""
    return char.lower() == char.upper()


def _guard_short(guard: IdentityGuard, camel: str, squeezed: str, own: bool) -> bool:
    """The check's search for a name of two short components (``Li^Na``): in a name the input gave, anywhere in it
    squeezed (``ptvlina``); in DoseAlign's own text, as one word (``LINA``, not one of DoseAlign's words) or as two
    neighbouring words separated by nothing but ``_ - . ^ ,`` or white space (``Li_Na``, ``LiNa``)."""
    if not own:
        return any(name in squeezed for name in guard.short_names)
    found = [(m.group(0).casefold(), m.start(), m.end()) for m in re.finditer(r"[0-9A-Za-z\u00c0-\uffff]+", camel)]
    for n, (word, _start, end) in enumerate(found):
        if word in guard.short_names and word not in OWN_VOCABULARY:
            return True
        if n + 1 < len(found):
            following, start, _end = found[n + 1]
            pair = guard.short_names.get(word + following)
            if pair == (word, following) and re.fullmatch(r"[\s_\-.^,]*", camel[end:start]):
                return True
    return False


#: The check's own list of DoseAlign's words that an ID glued to letters may sit in by chance (lower case):
#: DVH point names, sizes, numbers in exponent notation. Only the search of glued IDs skips them.
_GUARD_SKIPS = re.compile(
    r"(?<![0-9a-z.])(?:d\d+(?:\.\d+)?(?:cc)?_gy|\d+(?:x\d+)+|\d+(?:\.\d+)?e[-+]?\d+)(?![0-9a-z])", re.ASCII
)
_DIGITS = frozenset("0123456789")
_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")


#: A run of digits and points (a UID, in a text the check reads), whole.
_DOTTED_RUN = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)+(?![0-9])(?!\.[0-9])")
#: The zeros a run of digits begins with (``00123``'s ``00``), not after a decimal point, nor after a digit and a
#: separator (``15-04-23``: zeros inside a number, which the rewriting does not take either; thirty-third hostile
#: trial AG5), nor after a digit and a comma, apostrophe, space or another mark that groups digits (``250,000``,
#: ``250'000``, Arabic ``٢٥٠٬٠٠٠``, fullwidth ``250，000``, Indian ``1,00,000``, ``1 00 000``, a decimal comma ``25,00`` are
#: no ``250,0``: a PatientID 2500 failed a case "please report it", forty-sixth to fifty-third trials AT3, AV5, AX3,
#: AZ1, BA5): the check reads IDs again without them (:func:`_unpadded_text`).
_PADDED_RUN = re.compile(
    "(?<![0-9.])(?<![0-9][-_^,'\u2019\u02bc\u00b7\u066c\uff0c \t\u00a0\u2007\u2009\u202f])0+(?=[0-9])"
)
#: A number (or a word ending in one: ``C2``, ``Fx1``) then a space and zeros before more digits that are no group of
#: three: ``C2 01072315`` holds the ID 1072315 (thirty-second trial AF3), read again as `` 1072315`` without the number
#: before it, which is another value, never joined to this one (``Fx1 08:30`` is no 1830, ``PTV2 0500`` no 2500:
#: fifty-fifth trial BC3).
_PADDED_AFTER_NUMBER = re.compile(
    "(?<![0-9a-z])[a-z]*[0-9]+[ \t\u00a0\u2007\u2009\u202f]+(?![0-9]{3}(?![0-9]))0+(?=[0-9])"
)  # (spaces: two of them as well, BE3)


#: What stands between two numbers (not a point: 63.0584 is one number): spaces, more than one, or marks with spaces
#: around them or not (``12/05/23``, ``Fx1 - 08:30``), read as one space, so that the zeros after them are not dropped
#: and the numbers joined (a PatientID 12523 failed a case holding ``Replan 12/05/23``: fifty-ninth hostile trial BG1;
#: also ``@ % * ×``: ``6%0830`` failed a PatientID 6830, sixty-first trial's note).
_SPACES_IN_NUMBER = re.compile(
    "(?<=[0-9])(?:[ \t\u00a0\u2007\u2009\u202f]{2,}|[ \t\u00a0\u2007\u2009\u202f]*[/:#+&=()@%*\u00d7\u2010-\u2015-][ \t\u00a0\u2007\u2009\u202f/:#+&=()@%*\u00d7\u2010-\u2015-]*)(?=[0-9])"
)


def _unpadded_text(text: str) -> str:
    """``text`` (lower case) read again without the zeros IDs are padded with (:data:`_PADDED_AFTER_NUMBER`,
    :data:`_PADDED_RUN`)."""
    text = _SPACES_IN_NUMBER.sub(" ", text)  # (two spaces between groups read as one: BE3; marks too: BG1)
    return _PADDED_RUN.sub("", _PADDED_AFTER_NUMBER.sub(" ", text))


def _in_number(text: str, start: int, end: int) -> bool:
    """The check's own test: ``text[start:end]`` begins right after the decimal point of a number (``63.|0584``) or
    ends right before one (``0584|.25``), where its edge is a digit; a run of :data:`MIN_WHOLE_PART` digits or more
    before a point is read as it is (``1072315.1``: a version, no number DoseAlign writes)."""
    before = text[start - 2 : start] if start >= 2 else ""
    after = text[end : end + 2]
    whole = end
    while whole > 0 and text[whole - 1] in _DIGITS:
        whole -= 1
    # (a separator among the last digits, inside the span, makes the point after them no decimal point: 1234-5678.1
    # is an ID and a version: eighty-seventh hostile trial CI3)
    apart = start < whole and not text[whole - 1].isalpha() and text[whole - 1] != "." and not text[whole - 1].isspace()
    return (
        text[start : start + 1] in _DIGITS
        and len(before) == 2
        and before[1] == "."
        and before[0] in _DIGITS
        or text[end - 1 : end] in _DIGITS
        and end - whole < MIN_WHOLE_PART
        and not apart
        and len(after) == 2
        and after[0] == "."
        and after[1] in _DIGITS
    )


#: The check's own decimal point between two digits.
_POINT = re.compile(r"\d\.\d")


def _glued_id(lowered: str, ids: _Needles, dotted: frozenset = frozenset()) -> bool:
    """The guard's own search for IDs that hold a digit, wherever they stand: the lower-case text squeezed to its
    ASCII letters and digits (so any separators between the ID's characters are gone), each ID searched in it,
    and the characters just outside the match read in the text itself: an ID that begins (ends) with a digit
    does not count right after (before) another digit (``12345`` inside ``9123456`` or a UID)."""
    squeezed = re.sub(r"[^0-9a-z]+", "", lowered)
    ids = sorted(ids.found_in(squeezed) if isinstance(ids, _Needles) else (i for i in ids if i in squeezed))
    if not ids:
        return False
    where = [n for n, c in enumerate(lowered) if c in _ASCII_ALNUM]
    for identifier in ids:
        start = squeezed.find(identifier)
        while start >= 0:
            first, last = where[start], where[start + len(identifier) - 1]
            before = lowered[first - 1] if first else " "
            after = lowered[last + 1] if last + 1 < len(lowered) else " "
            # digits on both sides of a decimal point are one number (63.0584 holds no 0584 and no 630584)
            inside = (
                identifier.isdigit()
                and identifier not in dotted
                and any(  # (AB.123.4567 is no number: CC3)
                    lowered[where[n] + 1 : where[n + 1]] == "."
                    and squeezed[n] in _DIGITS
                    and squeezed[n + 1] in _DIGITS
                    for n in range(start, start + len(identifier) - 1)
                )
            )
            if (
                not (identifier[0] in _DIGITS and before in _DIGITS)
                and not (identifier[-1] in _DIGITS and after in _DIGITS)
                and not inside
                and not (identifier.isdigit() and _in_number(lowered, first, last + 1))  # (QX77415.2: an ID, O16)
            ):
                return True
            start = squeezed.find(identifier, start + 1)
    return False


def _cjk(text: str) -> bool:
    """The guard's own test for the scripts whose name components have two characters: CJK ideographs, kana,
    hangul (code point ranges)."""
    return any(
        "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" or "\uf900" <= c <= "\ufaff"
        for c in text
    )


_GUARD_CJK: dict = {}


def _guard_cjk(text: str) -> str:
    """The check's own folding of Japanese and Chinese: each hiragana read as the katakana of the same Unicode name
    (``HIRAGANA LETTER A`` as ``KATAKANA LETTER A``), each ideograph as the one form of its variants (the same table
    as the rewriting's, :mod:`.cjk_variants`: data, not matching)."""
    if not _GUARD_CJK:
        for n in range(0x3040, 0x30A0):
            name = unicodedata.name(chr(n), "")
            if name.startswith("HIRAGANA"):
                with contextlib.suppress(KeyError):
                    _GUARD_CJK[chr(n)] = unicodedata.lookup("KATAKANA" + name[len("HIRAGANA") :])
        pairs = "".join(_CJK_PAIRS)
        _GUARD_CJK.update(zip(pairs[::2], pairs[1::2]))
    return "".join(_GUARD_CJK.get(c, c) for c in text)


#: The check's own reading of the Latin letters without a decomposition whose plain spellings are not the letter
#: their Unicode name gives (:func:`_guard_letter`): letter (lower case) -> its usual spellings, space-separated.
_GUARD_SPELLINGS = {
    "æ": "ae",
    "œ": "oe",
    "ø": "o oe",
    "đ": "d dj",
    "ð": "d dh",
    "þ": "th",
    "ŋ": "n ng",
    "ĸ": "k q",
    "ı": "i",
    "ß": "ss",
    "ə": "e a",
    "ǝ": "e",
    "ɛ": "e",
    "ɔ": "o",
    "ɣ": "g",
    "ɩ": "i",
    "ʊ": "u",
    "ʒ": "z",
    "ʃ": "sh",
    "ƿ": "w",
    "ȝ": "y gh",
    "ȣ": "ou",
    "ƣ": "oi",
    "ƕ": "hv",
}


@functools.lru_cache(maxsize=4096)
def _guard_letter(char: str) -> tuple:
    """The check's plain spellings (lower case) of a letter that Unicode does not decompose: from
    :data:`_GUARD_SPELLINGS`, else the plain letter its Unicode name holds before "with" (``ł`` LATIN SMALL LETTER L
    WITH STROKE: ``l``); ``()`` for any other character."""
    if char.isascii() or unicodedata.normalize("NFKD", char) != char:
        return ()
    lower = char.lower() if len(char.lower()) == 1 else char
    if lower in _GUARD_SPELLINGS:
        return tuple(_GUARD_SPELLINGS[lower].split())
    words = unicodedata.name(char, "").split()
    if words[:1] != ["LATIN"] or "LETTER" not in words:
        return ()
    rest = [w for w in words[words.index("LETTER") + 1 :] if w not in ("SMALL", "CAPITAL", "DOTLESS")]
    if rest and len(rest[0]) == 1 and rest[0].isalpha() and (len(rest) == 1 or rest[1] in ("WITH", "BAR")):
        return (rest[0].lower(),)
    return ()


def _guard_plain(char: str, spelling: str, following: str) -> str:
    """``spelling`` in the case of ``char``: an upper-case letter of two (``Æ``) as ``AE`` before an upper-case
    letter or none, else as ``Ae``."""
    if not char.isupper():
        return spelling
    return spelling.upper() if not following.islower() else spelling.capitalize()


_GUARD_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _guard_first_spelling(match) -> str:
    """A non-ASCII character of a text as its first plain spelling (:func:`_guard_letter`), or as it is."""
    char = match.group(0)
    spellings = _guard_letter(char)
    if not spellings:
        return char
    following = match.string[match.end() : match.end() + 1]
    return _guard_plain(char, spellings[0], following)


#: Characters that show nothing and are no format characters (category Cf): the combining grapheme joiner, variation
#: selectors, the Hangul and Mongolian fillers and free variation selectors (Unicode's Default_Ignorable_Code_Point).
_INVISIBLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


#: Enclosing marks (a circle, a square drawn around the character before): decoration, no letter.
_ENCLOSING = re.compile("[\u0488\u0489\u1abe\u20dd-\u20e0\u20e2-\u20e4\ua670-\ua672]")


def visible(text: str) -> str:
    """``text`` without what shows nothing: format characters (zero-width space, soft hyphen) and :data:`_INVISIBLE`;
    and without decoration: enclosing marks, and marks on digits. A name written with one inside
    (``Lukasi\u3164ewicz``) was kept, or failed its case (thirty-sixth hostile trial AJ19); a circle around a name's
    letter (``Smi\u20ddth``) hid it from both sides, an accent on a date's digit (``1958\u03000314``) from the
    rewriting, and the case failed (fortieth trial); a mark of any script on a digit too (a Cyrillic titlo,
    ``1958\u04830314``: forty-second trial AP4)."""
    shown = _INVISIBLE.sub("", "".join(c for c in text if unicodedata.category(c) != "Cf"))
    shown = _ENCLOSING.sub("", shown)
    if not any(c.isdigit() for c in shown):
        return shown
    kept, after_digit = [], False
    for char in shown:
        if after_digit and unicodedata.category(char) in ("Mn", "Mc", "Me"):
            continue  # (no digit carries a mark: decoration)
        kept.append(char)
        after_digit = char.isdigit()
    return "".join(kept)


def _doubled(text: str, n: int) -> str:
    """``text[n]`` written as two letters where its marks cannot be typed (``ä`` as ``ae``, ``ø`` as ``oe``), in the case
    of the word it stands in: ``GROẞHIRN`` as ``GROSSHIRN``, ``Øystein`` as ``Oeystein`` (an upper-case ``Ss`` parted
    ``GROẞHIRN`` into words, and a patient Gro failed the case: fifty-ninth hostile trial BG3)."""
    char = text[n]
    spelling = _GERMAN.get(char) or _LETTER_SPELLINGS.get(char.lower(), (char,))[-1]
    if not char.isupper():
        return spelling
    if len(spelling) < 2:  # (a capital still: GĦADAM is one word, not Gh and ADAM: sixty-first hostile trial BI2)
        return spelling.upper()
    following = text[n + 1] if n + 1 < len(text) else ""
    preceding = text[n - 1] if n else ""
    shouting = following.isupper() or (not following.isalpha() and preceding.isupper())
    return spelling.upper() if shouting else spelling[:1].upper() + spelling[1:].lower()


#: The two-letter spellings of German umlauts, and the letters they stand for.
_UMLAUTS = {a + e: u for a, u in zip("aouAOU", "äöüÄÖÜ") for e in "eE"}
_UMLAUTED = re.compile("|".join(_UMLAUTS))


def _marks_dropped(char: str) -> str:
    """``char`` without its marks where that leaves one letter (``ä`` as ``a``, ``É`` as ``E``), else as it is."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return plain if len(plain) == 1 else char


def _fold(text: str) -> str:
    """The guard's own folding: marks dropped, letters without a decomposition read as their first plain spelling
    (``ł`` as ``l``, ``ø`` as ``o``, ``æ`` as ``ae``). Two-letter spellings are not read as one letter: ``Gaëlle`` is no
    ``Galle``, ``Bækken`` no ``Bakken``, ``Mueller`` no ``Muller`` (fifty-seventh hostile trial BE1, BE5: ROIs ``Galle``,
    ``Bækken`` failed their cases); a name's two-letter spellings are among its own (:func:`_guard_spellings_of`) and
    the text is also read with its letters written as two (:meth:`IdentityGuard.find`)."""
    # (å as a, its mark dropped: Håkonsen is Hakonsen here, and Haakonsen in the text's two-letter copy, where
    # _doubled writes it aa: fifty-third hostile trial BA7; sixty-first BI4, where it was aa only here)
    text = text.replace("ß", "ss")
    text = text.translate(_ARABIC_FOLD)  # (one form of the Arabic letters, tatweel dropped: BA1, BA2)
    text = _GUARD_NON_ASCII.sub(_guard_first_spelling, text)
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


#: At most this many spellings of one name component are read by the check (:func:`_guard_spellings_of`).
_GUARD_MAX_SPELLINGS = 16


def _guard_spellings_of(part: str) -> set:
    """The check's own ASCII spellings of a name component (lower case), as people type it without its letters:
    marks dropped, and ä ö ü also as ae oe ue; letters without a decomposition in each of their usual spellings
    (one spelling of a letter throughout): ``Sørensen`` as ``sorensen`` and ``soerensen``, ``Đurić`` as ``duric`` and
    ``djuric``, ``Müller`` as ``muller`` and ``mueller``."""
    lowered = part.casefold()
    options = {}
    for char in set(lowered):
        if char.isascii():
            continue
        spelled = _guard_letter(char)
        if spelled:
            options[char] = spelled
            continue
        decomposed = unicodedata.normalize("NFKD", char)
        base = "".join(c for c in decomposed if not unicodedata.combining(c))
        if base != char:
            doubled = "\u0308" in decomposed or "\u030b" in decomposed  # (ü, and Hungarian ő ű: BA7)
            options[char] = (
                (base, base + "e")
                if base in ("a", "o", "u") and doubled
                else (base, "aa")
                if base == "a" and "\u030a" in decomposed  # (å as aa)
                else (base,)
            )
    if not options:
        return set()
    letters = sorted(options)
    found = set()
    for choice in itertools.islice(itertools.product(*(options[c] for c in letters)), _GUARD_MAX_SPELLINGS):
        table = dict(zip(letters, choice))
        found.add("".join(table.get(c, c) for c in lowered))
    return found


#: What people put between a date's parts: ``.``, ``/``, ``-``, ``_``, also the dashes, minus and slashes word processors
#: substitute (``2023–04–15``), a middle dot or ideographic full stop, each with spaces around it or not
#: (``15. 4. 2023``, ``2023. 04. 15.``, ``15 / 04 / 2023``), or spaces alone (fifteenth hostile trial O2, O6).
_DATE_MARKS = "./-_\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d\u2215\u2044\uff0f\u30fb\u00b7\u2027\uff0e\u3002"
_DATE_SEP = "(?:[ \t]*[" + "".join(re.escape(c) for c in _DATE_MARKS) + "][ \t]*|[ \t]+)"  # (tabs: P10)
#: A run of characters :func:`~DoseAlignLib.output.file_names.safe_name` turns into one ``_`` in a file name (letters,
#: digits, ``.``, ``_`` and ``-`` stay).
_FILE_NAME_GAP = r"[^A-Za-z0-9._\-]+"
#: A date written with the year, month and day characters of Chinese, Japanese (年月日) and Korean (년월일):
#: ``2023年4月15日``, ``2023년 4월 15일`` (O1).
_CJK_DATE = re.compile(r"(?<!\d)(\d{4}|\d{2}) *[年년] *(\d{1,2}) *[月월] *(\d{1,2})(?!\d)")


def _dates_in(text: str) -> set:
    """Every YYYYMMDD a date-like group of digits in ``text`` may stand for (day and month either way; eight digits
    also as DDMMYYYY and MMDDYYYY)."""
    found = set()
    for match in re.finditer(r"(?<!\d)(\d{8})(?!\d)", text):
        digits = match.group(1)
        found.add(digits)
        if not _in_number(text, *match.span()):  # also DDMMYYYY and MMDDYYYY, not the decimals of a number
            found.add(digits[4:] + digits[2:4] + digits[:2])
            found.add(digits[4:] + digits[:2] + digits[2:4])
    for match in re.finditer(rf"(?<!\d)(\d{{1,4}}){_DATE_SEP}(\d{{1,2}}){_DATE_SEP}{_ELIDED}?(\d{{1,4}})(?!\d)", text):
        a, b, c = match.groups()
        if len(a) == 4:
            found.add(f"{a}{int(b):02d}{int(c):02d}")
        elif len(c) == 4 and len(a) <= 2:  # (a day or month of three digits, 006.06.2024, is none, as the rewriting
            # reads it: the check refused such a name "please report it", eighty-first trial's fuzz)
            found.add(f"{c}{int(b):02d}{int(a):02d}")
            found.add(f"{c}{int(a):02d}{int(b):02d}")
        elif len(c) == 2 and len(a) <= 2:  # a two-digit year: 75-03-02, 02.03.75, 03/02/75
            _add_short(found, a.zfill(2) + b.zfill(2) + c)
    # the year apart from the month and day written together: 2023_0415, 0415-2023 (MMDD), 1504 2023 (DDMM)
    for match in re.finditer(rf"(?<![\d.])(\d{{4}}){_DATE_SEP}(\d{{4}})(?![\d]|\.\d)", text):
        a, b = match.groups()
        found.update((a + b, b + a, b + a[2:] + a[:2]))
    for match in _DATE_TIME.finditer(text):  # 20230415093000: DICOM's date-time
        found.add(match.group(1))
    for match in _SHORT_DATE_TIME.finditer(text):  # 230415093000: YYMMDD and a time
        found.update(f"{century}{match.group(1)}" for century in ("19", "20"))
    for match in _CJK_DATE.finditer(text):
        a, b, c = match.groups()
        for year in [a] if len(a) == 4 else [f"19{a}", f"20{a}"]:
            found.add(f"{year}{int(b):02d}{int(c):02d}")
    # six digits (YYMMDD, DDMMYY, MMDDYY), not the decimals of a number (0.750302), and only in a field that holds
    # letters too ("PTV 750302"): a column of numbers (voxel indices in openkbp's CSV files) holds no dates
    if _SIX_DIGITS.search(text):
        for field in re.finditer(r'[^,;"\n\t\r]+', text):  # one pass: linear in the text's length
            piece = field.group(0)
            if len(piece) > 6 and any(c.isalpha() for c in piece):
                for match in _SIX_DIGITS.finditer(piece):
                    _add_short(found, match.group(1) or match.group(2))
    # a month's English name or abbreviation, the day before or after it, the year after (or first)
    lowered = text.casefold()
    for match in re.finditer(
        r"(\d{1,2})(?:st|nd|rd|th)?[\s./\-_,]*(?:(?:day[\s./\-_,]+)?of[\s./\-_,]+)?([a-z]{3,9})\.?[\s./\-_,]*"
        rf"(?:{_CLOCK}[\s./\-_,]+)?{_ELIDED}?(\d{{4}}|\d{{2}})",  # ('23: S2; a clock before the year: T1)
        lowered,
    ):  # (15th of April 2023: sixteenth hostile trial P10; 15th day of April 2023: seventeenth trial Q9)
        _add_named(found, match.group(3), match.group(2), match.group(1), match.start(), match.end(), lowered)
    for match in re.finditer(  # (the month also glued after letters, PTVApr15_2023: twenty-first trial U9)
        rf"({_MONTH_ALTERNATION})\.?[\s./\-_,]*(?:the[\s./\-_,]+)?(\d{{1,2}})(?:st|nd|rd|th)?[\s./\-_,]*"
        rf"(?:{_CLOCK}[\s./\-_,]+)?{_ELIDED}?(\d{{4}}|\d{{2}})",
        lowered,
    ):  # (April the 15th, 2023: Q9; Apr 15 09:30:00 UTC 2023, as ctime and date write it: eighteenth trial R6)
        _add_named(found, match.group(3), match.group(1), match.group(2), match.start(), match.end(), lowered)
    for match in re.finditer(r"(\d{4})[\s./\-_,]*([a-z]{3,9})\.?[\s./\-_,]*(\d{1,2})", lowered):
        _add_named(found, match.group(1), match.group(2), match.group(3), match.start(), match.end(), lowered)
    _add_counted(found, lowered)
    return found


#: A DICOM tag as DoseAlign's reasons write it, ``(0029,1ADA)``.
_TAG_NUMBER = re.compile(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)")

#: A count of six digits or more standing alone before what it counts: in DoseAlign's prose of another input's case
#: a count of bytes or voxels, no date of this input (a damaged file of 1 650 000 bytes read as a Unix time of a birth
#: date 1970-01-20, one of 150 423 bytes as 15.04.23: seventy-fifth hostile trial BW3). Other digits there may be the
#: input's text quoted (a DoseType 19720304: seventy-seventh BY4), read as dates.
_LONE_COUNT = re.compile(
    r"(?<![0-9])(?<![0-9][-./_ ,:])[0-9]{6,}(?![0-9])"
    r"(?= ?(?:bytes?|voxels?|values?|points?|pixels?|frames?|slices?|characters?|items?|contours?|files?)\b)",
    re.IGNORECASE,
)


def _add_counted(found: set, lowered: str) -> None:
    """The check's own reading of dates written as counts (thirtieth hostile trial AD7): a year and the day of it
    (``2023-105``, ``2023105``, ``105_2023``), a year, ISO week and weekday (``2023-w15-6``), and a run of 9 or 10
    digits (with a fraction or not; 7 to 10 digits, or 11 to 19) as a Unix time (:func:`unix_dates`); not inside a
    longer number nor a decimal one."""
    edge = r"(?<![\d.])", r"(?![\d]|\.\d)"
    for match in re.finditer(edge[0] + r"(\d{4})[-_ /]?(\d{3})" + edge[1], lowered):
        _add_ordinal(found, match.group(1), match.group(2))
    for match in re.finditer(edge[0] + r"(\d{3})[-_ /](\d{4})" + edge[1], lowered):
        _add_ordinal(found, match.group(2), match.group(1))
    # (the week also of one digit between separators: 2024-w1-2, thirty-sixth hostile trial AJ24)
    for match in re.finditer(edge[0] + r"(\d{4})[-_ ]?w(\d{2}(?=[-_ ]?\d)|\d(?=[-_ ]\d))[-_ ]?(\d)" + edge[1], lowered):
        with contextlib.suppress(ValueError):
            found.add(datetime.date.fromisocalendar(*map(int, match.groups())).strftime("%Y%m%d"))
    for match in re.finditer(edge[0] + r"(\d{7,10}(?:\.\d+)?|\d{11,19})" + edge[1], lowered):
        found.update(unix_dates(match.group(1)))
        # (or before 1970, after a minus: AL5; a typographic minus or dash too, forty-second trial AP5)
        if match.start() and lowered[match.start() - 1] in "-\u2212\u2013\u2012\ufe63\uff0d":
            found.update(unix_dates(match.group(1), before_1970=True))


def _add_ordinal(found: set, year: str, day: str) -> None:
    with contextlib.suppress(ValueError, OverflowError):
        first = datetime.date(max(int(year), 1), 1, 1)
        when = first + datetime.timedelta(days=int(day) - 1)
        if int(day) >= 1 and when.year == first.year:
            found.add(when.strftime("%Y%m%d"))


#: A clock time between a day and its year, with a zone (``Apr 15 09:30:00 UTC 2023``: ctime, ``date``, logs).
_CLOCK = (
    r"(?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:[.,][0-9]+)?)?(?:[ \t]*[AaPp]\.?[Mm]\.?)?"
    # a zone: a name (UTC, Z), a name and an offset (GMT+02:00, as Java writes it) or an offset (+0000, +02:00)
    # (nineteenth and twentieth hostile trials S2, T1)
    r"(?:[ \t]*(?:[A-Za-z]{1,5}(?:[+-][0-9]{1,2}(?::?[0-9]{2})?)?|[+-][0-9]{2}:?[0-9]{2}))?"
)
#: What is written for a left-out century before a two-digit year ('23, ‘23 as word processors make it, ʼ23): any
#: character both sides read as an apostrophe (a prime, ʻ23: fifty-ninth hostile trial BG4).
_ELIDED = "['" + "".join(chr(code) for code in _APOSTROPHES) + "]"
#: A time after a date in DICOM's date-time (DT): HH, HHMM, HHMMSS, with a fraction of a second (sixteenth hostile
#: trial P3: the hour alone, 2023041514, was kept).
_DICOM_TIME = r"(?:[01][0-9]|2[0-3])(?:[0-5][0-9](?:[0-5][0-9](?:\.[0-9]{1,6})?)?)?"
_DATE_TIME = re.compile(r"(?<!\d)(\d{8})" + _DICOM_TIME + r"(?!\d)")
#: YYMMDD and a time of at least HHMM (230415093000, as cameras and planning systems name things).
_SHORT_TIME = r"(?:[01][0-9]|2[0-3])[0-5][0-9](?:[0-5][0-9])?"
_SHORT_DATE_TIME = re.compile(r"(?<!\d)(\d{6})" + _SHORT_TIME + r"(?!\d)")
_SIX_DIGITS = re.compile(r"(?<![\d.])(\d{6})(?!\d)|(?<=[^\d.]\.)(\d{6})(?!\d)")
#: The check's own table of English month names (full, three letters, and "sept").
_MONTH_NUMBERS = {
    name: number
    for number, full in enumerate(
        (
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ),
        start=1,
    )
    for name in (full, full[:3], "sept" if number == 9 else full[:3])
}


#: The check's month names as one pattern, longest first (read also where letters come before them).
_MONTH_ALTERNATION = "|".join(sorted(_MONTH_NUMBERS, key=len, reverse=True))


def _add_short(found: set, digits: str) -> None:
    """The YYYYMMDD dates six digits may stand for (YYMMDD, DDMMYY, MMDDYY; 19YY and 20YY)."""
    for year, month, day in ((digits[:2], digits[2:4], digits[4:]), (digits[4:], digits[2:4], digits[:2])):
        found.update(f"{century}{year}{month}{day}" for century in ("19", "20"))
    found.update(f"{century}{digits[4:]}{digits[:2]}{digits[2:4]}" for century in ("19", "20"))


def _add_named(found: set, year: str, month: str, day: str, start: int, end: int, text: str) -> None:
    """A date written with a month's name, when the name is one and no digit touches the match."""
    number = _MONTH_NUMBERS.get(month)
    if number is None or (start and text[start - 1].isdigit()) or (end < len(text) and text[end].isdigit()):
        return
    years = [year] if len(year) == 4 else [f"19{year}", f"20{year}"]
    found.update(f"{y}{number:02d}{int(day):02d}" for y in years)


def date_spellings(date: str) -> list:
    """The common spellings of a YYYYMMDD date."""
    y, m, d = date[:4], date[4:6], date[6:8]
    return sorted(
        {
            date,
            f"{y}-{m}-{d}",
            f"{y}/{m}/{d}",
            f"{y}.{m}.{d}",
            f"{d}.{m}.{y}",
            f"{d}/{m}/{y}",
            f"{m}/{d}/{y}",
            f"{d}-{m}-{y}",
            f"{m}-{d}-{y}",
        }
    )


_MONTHS = (
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ],
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
)
#: The rewriting's dates written as a count: ISO 8601 ordinal (``2023-105``, ``2023105``, ``105_2023``) and week
#: dates (``2023-W15-6``, ``2023W156``), and a Unix time (``1681516800``, :func:`unix_dates`) of any moment of the
#: day (thirtieth hostile trial AD7); none inside a longer number or a decimal one.
_CODED_DATE = re.compile(
    r"(?<![0-9])(?<![0-9]\.)(?:"
    r"(?P<oy>1[89][0-9]{2}|20[0-9]{2})[-_ /]?(?P<od>[0-3][0-9]{2})"
    r"|(?P<rd>[0-3][0-9]{2})[-_ /](?P<ry>1[89][0-9]{2}|20[0-9]{2})"
    r"|(?P<wy>1[89][0-9]{2}|20[0-9]{2})[-_ ]?[Ww](?:(?P<ww>[0-5][0-9])[-_ ]?|(?P<ww1>[1-9])[-_ ])(?P<wd>[1-7])"
    r"|(?P<usign>[-\u2212\u2013\u2012\ufe63\uff0d])?(?P<unix>[0-9]{7,10}(?:\.[0-9]+)?|[0-9]{11,19})"
    r")(?![0-9])(?!\.[0-9])"
)
#: The divisors of a Unix time in seconds, milliseconds, microseconds and nanoseconds: a count is read in each.
_UNIX_SCALES = (1, 10**3, 10**6, 10**9)
#: A Unix time is read only this far from 1970 (seconds): about 11.6 days (a smaller count is an ordinary number,
#: ``PTV_7000``) to about 2100.
_UNIX_SECONDS = (10**6, 4_102_444_800)
#: The time zones' offsets from UTC, in hours (UTC-12 to UTC+14): a moment falls on a date in any of them.
_ZONE_HOURS = (-12, 14)


def unix_dates(count: str, before_1970: bool = False) -> set:
    """The YYYYMMDD dates on which the Unix time ``count`` (seconds, with a fraction or not; milliseconds,
    microseconds, nanoseconds: told by its digits) falls in some time zone: the study's own moment written as
    ``date +%s`` prints it where the header's zone is (thirty-sixth hostile trial AJ4). ``before_1970``: the count
    written after a minus, a time before 1970 (a birth date: thirty-eighth AL5). Empty when it is none."""
    whole = count.split(".")[0]
    if not whole.isdigit() or not 7 <= len(whole) <= 19:
        return set()
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    found = set()
    # each unit where the count lands in the years read: the digits do not tell the unit (45792000 s and 45792000000
    # ms are both 1971-06-15; a count of 8 digits was read in no unit at all: fortieth hostile trial AN3)
    for scale in _UNIX_SCALES:
        seconds = int(whole) // scale
        if not _UNIX_SECONDS[0] <= seconds <= _UNIX_SECONDS[1]:
            continue
        seconds = -seconds if before_1970 else seconds
        try:
            first, last = ((epoch + datetime.timedelta(seconds=seconds + hours * 3600)).date() for hours in _ZONE_HOURS)
        except (ValueError, OverflowError):
            continue
        found.update((first + datetime.timedelta(days=n)).strftime("%Y%m%d") for n in range((last - first).days + 1))
    return found


def _without_coded_date(match, dates: set) -> str:
    """A :data:`_CODED_DATE` match as the rewriting writes it: removed where it is one of ``dates``; a Unix time after
    a minus read both ways (the minus a separator, or a time before 1970), the minus kept only as a separator."""
    if _coded_dates(match) & dates:
        return (match.group("usign") or "") + REMOVED
    if match.group("usign") and unix_dates(match.group("unix"), before_1970=True) & dates:
        return REMOVED
    return match.group(0)


def _coded_dates(match) -> set:
    """The YYYYMMDD dates a :data:`_CODED_DATE` match stands for (a Unix time: one or two, by time zone)."""
    parts = match.groupdict()
    try:
        if parts["oy"] or parts["ry"]:
            year, day = int(parts["oy"] or parts["ry"]), int(parts["od"] or parts["rd"])
            when = datetime.date(year, 1, 1) + datetime.timedelta(days=day - 1)
            # (seven digits are a Unix time too, as the check reads them: 2012345 s is 1970-01-24)
            counted = unix_dates(match.group(0)) if match.group(0).isdigit() else set()
            return ({when.strftime("%Y%m%d")} if day >= 1 and when.year == year else set()) | counted
        if parts["wy"]:
            return {
                datetime.date.fromisocalendar(
                    int(parts["wy"]), int(parts["ww"] or parts["ww1"]), int(parts["wd"])
                ).strftime("%Y%m%d")
            }
        return unix_dates(parts["unix"])
    except (ValueError, OverflowError, OSError):
        return set()


_DATE_PATTERNS: dict = {}
#: The compiled date patterns kept (about 21 kB and 4 ms to compile each).
_DATE_PATTERNS_KEPT = 4096


def _date_pattern(date: str):
    """The rewriting's pattern of a YYYYMMDD date in the spellings people write: digits in year-month-day,
    day-month-year and month-day-year order with ``.``, ``/``, ``-``, ``_``, a typographic dash or slash or spaces between
    (see ``_DATE_MARKS``; spaced or not: ``15. 4. 2023``; months and days with or without a leading zero: ``1975-3-2``),
    with 年月日 or 년월일 (``1975年3月2日``), also with a two-digit year (``75-03-02``, ``02.03.75``) and,
    without separators, ``19750302``, ``02031975`` (DDMMYYYY), ``03021975`` (MMDDYYYY), ``750302`` (YYMMDD),
    ``020375`` (DDMMYY), ``030275`` (MMDDYY); the year apart from the month and day (``1975_0302``,
    ``0302-1975``, ``0203 1975``); and with the
    month's English name or its three-letter abbreviation (``Mar 2, 1975``, ``2 March 1975``, ``02Mar1975``,
    ``1975-Mar-02``). A group of digits in a decimal number (``0.750302``) is no date."""
    pattern = _DATE_PATTERNS.get(date)
    if pattern is None:
        y4, m, d = date[:4], int(date[4:6]), int(date[6:8])
        y2 = y4[2:]
        mm, dd = f"0?{m}", f"0?{d}"
        # (an underscore: ROI and file names, where a space is often not allowed; and any run of characters a mask
        # file name turns into one: ``CTV 1958!03!14`` is written as ``CTV_1958_03_14``, a spelling the check reads,
        # so the rewriting reads it before: forty-second hostile trial AP8)
        sep = f"(?:{_DATE_SEP}|{_FILE_NAME_GAP})"
        year = f"{_ELIDED}?(?:{y4}|{y2})"  # ('23: nineteenth hostile trial S2; '2023 as the check reads it: T2)
        forms = [
            f"{date}{_DICOM_TIME}",  # DICOM's date-time (DT): 20230415093000, 202304150930.5, 2023041514
            f"{y2}{m:02d}{d:02d}{_SHORT_TIME}",  # 230415093000
            # (23年4月15日: twenty-first trial U9; before the forms with separators, which read 年 and 月 as ones and
            # would leave the 日)
            f"(?:{y4}|{y2}) *[年년] *{mm} *[月월] *{dd}(?: *[日일])?",
            f"{y4}{sep}{mm}{sep}{_ELIDED}?{dd}",  # (2023-04-'15, as the check reads it: twentieth trial T2)
            f"{dd}{sep}{mm}{sep}{year}",
            f"{mm}{sep}{dd}{sep}{year}",
            f"{y2}{sep}{mm}{sep}{_ELIDED}?{dd}",
            date,  # (the check reads YYYYMMDD anywhere digits end: 19750302.5 too)
        ]
        # forms that could be a number's digits (0.750302, 63.02031975, 2023.0415 cc): not after or before a
        # decimal point, as the check reads them
        number_like = [
            f"{y4}{sep}{m:02d}{d:02d}",  # the year apart from the month and day written together
            f"{m:02d}{d:02d}{sep}{y4}",
            f"{d:02d}{m:02d}{sep}{y4}",
        ]
        # six or eight digits: also before a point and digits (C_15042023.1, a version; thirty-first trial AE15)
        whole_like = [
            f"{d:02d}{m:02d}{y4}",
            f"{m:02d}{d:02d}{y4}",
            f"{y2}{m:02d}{d:02d}",
            f"{d:02d}{m:02d}{y2}",
            f"{m:02d}{d:02d}{y2}",
        ]
        if 1 <= m <= 12:
            names = [_MONTHS[0][m - 1], _MONTHS[1][m - 1]] + (["sept"] if m == 9 else [])
            # (a month-first date also glued after letters, PTVApr15_2023, ReplanMar2_1975, and after an ordinal
            # day, 15thApr2023, as the check reads them: twenty-first trial U3, U9)
            month = "(?:" + "|".join(names) + r")\.?(?![A-Za-z])"
            gap = f"(?:[\\s./\\-_,]|{_FILE_NAME_GAP})*"  # (Mar!2!1975 is Mar_2_1975 in a file name: AP8)
            day = f"{dd}(?:st|nd|rd|th)?"
            forms += [
                # (15th of April 2023, 15th day of ..., 15 Apr 09:30 2023: twentieth trial T1)
                f"{day}{gap}(?:(?:day{gap})?of{gap})?{month}{gap}(?:{_CLOCK}{gap})?{year}",
                f"{month}{gap}(?:the{gap})?{day}{gap}(?:{_CLOCK}{gap})?{year}",  # (April the 15th, 2023; ctime: R6)
                f"{y4}{gap}{month}{gap}{dd}",
            ]
        # a date touching ".digits" otherwise (15.04.2023.1, 20230415.093000) is a date, as the check reads it
        # (fifteenth hostile trial O15: the check refused what the rewriting kept)
        body = "|".join(f"(?:{form})" for form in forms)
        guarded = "|".join(f"(?:{form})" for form in number_like)
        whole = "|".join(f"(?:{form})" for form in whole_like)
        pattern = re.compile(
            r"(?<![0-9])(?:"
            + body
            + r"|(?<![0-9]\.)(?:"
            + guarded
            + r")(?!\.[0-9])|(?<![0-9]\.)(?:"
            + whole
            + r"))(?![0-9])",
            re.IGNORECASE,
        )
        if len(_DATE_PATTERNS) >= _DATE_PATTERNS_KEPT:  # ~21 kB each: an input of many dates would fill memory
            _DATE_PATTERNS.clear()
        _DATE_PATTERNS[date] = pattern
    return pattern


def _keys_and_maps_inside(out_dir: Path, files: Iterable[Path] = ()) -> Optional[str]:
    """A DoseAlign key file or pseudonym map within three levels of ``out_dir`` (links to folders followed), by their
    default names or as another name of one of ``files`` (this run's key and map: a hard link, a link; thirty-sixth
    hostile trial AJ3), as a path relative to it, or None. Every folder is looked into, a user's with a ``meta.json``
    too (thirtieth hostile trial AD4), but for a case folder's own ``masks`` and ``openkbp``; a folder too full to
    look through is refused (:func:`~DoseAlignLib.output.around_out.entries_below`, AD2)."""
    wanted = set()
    for path in files:
        with contextlib.suppress(OSError):
            status = os.stat(path)
            wanted.add((status.st_dev, status.st_ino))
    inodes = {inode for _dev, inode in wanted}
    for entry, _level in entries_below(Path(out_dir)):
        if entry.name == DEFAULT_KEY_NAME or entry.name.endswith(".pseudonym-map.csv"):
            return Path(entry.path).relative_to(out_dir).as_posix()
        try:  # (the inode from the listing; a stat only where it is one of them, or for a link)
            if wanted and (entry.is_symlink() or entry.inode() in inodes):
                status = entry.stat()
                if (status.st_dev, status.st_ino) in wanted and not entry.is_dir():
                    return Path(entry.path).relative_to(out_dir).as_posix()
        except OSError:
            continue
    return None


_STAMP = re.compile(r"[0-9a-f]{16}")


def _without_stamp(record):
    """An ``input_files`` record of meta.json without its ``stamp`` where that is one (16 hex digits, as
    :func:`~DoseAlignLib.output.out_folder.keyed_stamps` writes it)."""
    if isinstance(record, dict) and isinstance(record.get("stamp"), str) and _STAMP.fullmatch(record["stamp"]):
        return {k: v for k, v in record.items() if k != "stamp"}
    return record


#: A decimal number written as text (``33.8645``, ``-2.5e-05``); not :data:`_DECIMAL`, which it shadowed at import.
_DECIMAL_TEXT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+")


#: The manifest columns (and meta.json's fields of the same names) DoseAlign fills with its own numbers.
_NUMBER_FIELDS = frozenset(
    {
        "dmax_gy",
        "dmax_native_gy",
        "dmax_output_gy",
        "dmax_diff_pct",
        "outside_integral_pct",
        "worst_dvh_delta_gy",
        "n_rois",
        "beam_sum_max_diff_gy",
    }
)


def _own_number(key, value) -> bool:
    """A number DoseAlign wrote as text in one of its own numeric fields (:data:`_NUMBER_FIELDS`: a Dmax ``33.8645``
    was written ``[removed]`` for an ID of those characters, twenty-eighth hostile trial AB6), or its version
    (``dosealign_version``). Any other text that reads as a number is the input's (a folder ``2019E12345``, an ROI
    type ``19750302.5``: twenty-ninth AC1, AC2)."""
    if key == "dosealign_version":
        return value == __version__
    return key in _NUMBER_FIELDS and _is_number(value)


def _without_own_numbers(value):
    """A JSON-like value without the strings of :func:`_own_number` (for the check, which reads what is left)."""
    if isinstance(value, dict):
        return {k: _without_own_numbers(v) for k, v in value.items() if not _own_number(k, v)}
    if isinstance(value, list):
        return [_without_own_numbers(v) for v in value]
    return value


def _is_number(value) -> bool:
    """Whether a value DoseAlign wrote is a number: a JSON number, or a decimal written as text (``33.8645``,
    ``-2.5e-05``: its measures in manifest cells and meta.json's manifest fields). Whole numbers written as text are
    read as before (an ID ``123456`` is common; W2 keeps the formats' own numbers out of the check)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and bool(_DECIMAL_TEXT.fullmatch(value.strip()))


def _export_around(path: Path) -> Optional[Path]:
    """The nearest folder above ``path`` that is a DoseAlign export's output folder, or None: by the path as given
    (where a file beside a linked OUT is written: twenty-ninth hostile trial AC6), by its folder as the system
    resolves it (``..`` after a link: thirtieth AD3), and by the file's own link's target (a --map-file that is a
    link is written where it points: AD1)."""
    joined = os.path.join(os.getcwd(), os.fspath(path))  # (not tidied as text: ".." follows a link's target)
    given = Path(os.path.abspath(joined))
    folder_resolved = Path(os.path.realpath(os.path.dirname(joined)))
    target = Path(os.path.realpath(joined))
    candidates = [*given.parents, folder_resolved, *folder_resolved.parents, *target.parents]
    for folder in dict.fromkeys(candidates):
        if _is_an_export(folder):
            return folder
    return None


def _is_an_export(folder: Path) -> bool:
    """Whether ``folder`` is a DoseAlign export's output folder: by its manifest.csv (a regular file: a named pipe
    of that name blocked the export, twenty-eighth hostile trial AB8), its shard manifests or its case folders
    (:func:`~DoseAlignLib.output.around_out.export_kinds`: --shard jobs not merged yet, thirty-first AE2)."""
    return bool(export_kinds(Path(folder), wanted="export"))


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file (links resolved; also when neither exists yet)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def make_pseudonymizer(
    out_dir: Path,
    key_file: Optional[Path],
    keep_uids: bool,
    map_file: Optional[Path],
    input_root: Optional[Path] = None,
) -> tuple:
    """``(Pseudonymizer, key path, map path, key created)`` for an export into ``out_dir``.

    The key and the map are refused inside ``out_dir`` (symbolic links resolved) and, when they would
    be written, inside ``input_root``. A map path that is a symbolic link (to a map on an encrypted volume) is
    the file it points to: a map written at the link's path would replace the link (thirteenth hostile trial M4).
    """
    default_key, default_map = default_paths(out_dir)
    key_path = Path(key_file) if key_file else default_key
    map_path = Path(map_file) if map_file else default_map
    outer = _export_around(key_path) or _export_around(map_path)
    if outer is not None:
        # beside OUT is inside another export's folder, which is shared: the map names every patient (twenty-seventh
        # hostile trial AA8; any folder above, not only the parent: twenty-eighth AB1)
        raise PseudonymError(
            f"the key or the pseudonym map would be written inside {outer}, which is itself a DoseAlign export's "
            "output folder (it holds its manifest, shard manifests or case folders): what is shared would hold them",
            path=out_dir,
            hint="give --key-file and --map-file outside it, or choose an output folder elsewhere; nothing was written",
        )
    held = _keys_and_maps_inside(out_dir, (key_path, map_path))
    if held is not None:  # an export made inside this OUT earlier left them there (twenty-eighth hostile trial AB1)
        raise PseudonymError(
            f"the output folder holds a pseudonym key or map ({held}): the key makes the pseudonyms again and the map "
            "names every patient, and what is shared would hold it",
            path=out_dir,
            hint="move it (and the export beside it) out of the output folder, or choose another one; nothing was "
            "written",
        )
    check_outside(key_path, out_dir, "key file", input_root, writes=not key_path.exists())
    check_outside(map_path, out_dir, "pseudonym map", input_root)
    if map_path.is_symlink():  # the map is replaced by a rename: written where the link points, the link kept
        map_path = Path(os.path.realpath(map_path))
    if _same_file(key_path, map_path):  # the map would overwrite the key: the secret lost, the identity in its place
        raise PseudonymError("the key file and the pseudonym map must be two files", path=map_path)
    read_map(map_path)  # an existing file that is no map is refused now, before anything is written
    key, created = load_or_create_key(key_path)
    pseudonymizer = Pseudonymizer(key=key, keep_uids=keep_uids, map_path=str(map_path))
    return pseudonymizer, key_path, map_path, created
