"""A streaming reader for one `multipart/form-data` upload: small text fields plus one file.

Starlette's form parser spools the whole file to a temporary file before the route runs, so a
client could fill the disk before any size check, and every upload would be written twice.
This reader instead feeds the request body, chunk by chunk as it arrives, to python-multipart's
push parser and hands the file part on as an iterator, which `BlobStore.put_stream` hashes and
writes with its size limit: an oversized upload is cut off at the limit, and memory stays
bounded by one network chunk.

It runs in a worker thread (it is blocking: the blob store writes files), pulling the body from
the event loop through `pull()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 1024
MAX_FIELDS = 16


class FormError(Exception):
    """The body is not the multipart form we accept; `loc` names the part at fault."""

    def __init__(self, loc: str, msg: str):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def boundary_of(content_type: str | None) -> bytes | None:
    ctype, options = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        return None
    return options.get(b"boundary") or None


def clean_filename(raw: str | None) -> str:
    """The client's file name without any directory part (it is shown, never used as a path)."""
    name = (raw or "").replace("\\", "/")
    name = PurePosixPath(name).name if name else ""
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[-255:] or "upload"


class FormReader:
    """Pulls body chunks on demand; text fields land in `fields`, the `file` part in
    `file_chunks()`."""

    def __init__(self, boundary: bytes, pull: Callable[[], bytes | None], file_field: str = "file"):
        self._pull = pull
        self._file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_state = "absent"  # absent → open → done
        self._pending: deque[bytes] = deque()
        self._eof = False
        self._part: str | None = None  # "file", a field name, or "" (ignored part)
        self._buf = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._hfield = bytearray()
        self._hvalue = bytearray()
        try:
            self._parser = self._make_parser(boundary)
        except FormParserError as exc:
            raise FormError("(body)", f"bad multipart boundary: {exc}") from None

    def _make_parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._hfield.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._hvalue.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    # --- parser callbacks ---------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers.clear()
        self._buf.clear()
        self._part = None

    def _header_end(self) -> None:
        self._headers[bytes(self._hfield).strip().lower()] = bytes(self._hvalue).strip()
        self._hfield.clear()
        self._hvalue.clear()

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            self._part = ""
            return
        if name == self._file_field:
            if self.file_state != "absent":
                raise FormError(self._file_field, "send exactly one file per upload")
            self.file_state = "open"
            filename = options.get(b"filename")
            self.filename = clean_filename(
                filename.decode("utf-8", "replace") if filename else None
            )
            self._part = "file"
            return
        if len(self.fields) >= MAX_FIELDS:
            raise FormError(
                name, f"too many form fields; send only {self._file_field}, kind and format"
            )
        self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._pending.append(data[start:end])
        elif self._part:
            self._buf.extend(data[start:end])
            if len(self._buf) > MAX_FIELD_BYTES:
                raise FormError(self._part, f"field longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._part == "file":
            self.file_state = "done"
        elif self._part:
            self.fields[self._part] = self._buf.decode("utf-8", "replace").strip()
        self._part = None

    # --- driving the parser -------------------------------------------------------------------

    def _feed(self) -> None:
        chunk = self._pull()
        try:
            if chunk is None:
                self._eof = True
                self._parser.finalize()
            elif chunk:
                self._parser.write(chunk)
        except FormParserError as exc:
            raise FormError("(body)", f"malformed multipart body: {exc}") from None

    def read_until_file(self) -> None:
        """Parse up to the start of the file part (fields sent before it become known)."""
        while self.file_state == "absent" and not self._eof:
            self._feed()
        if self.file_state == "absent":
            raise FormError(self._file_field, "missing; send the file as the form field 'file'")

    def file_chunks(self) -> Iterator[bytes]:
        """The file's bytes as they arrive; raises if the body ends inside the file."""
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self.file_state == "done":
                return
            if self._eof:
                raise FormError(self._file_field, "the request ended before the file did")
            self._feed()

    def read_rest(self) -> None:
        """Parse whatever follows the file (fields sent after it)."""
        while not self._eof:
            self._feed()
