"""A visitor at the protocol level: one Streamlit websocket session that speaks Streamlit's own protobufs.

It sends `BackMsg`s (a rerun with widget states, a page switch, `clear_cache`) and reads the `ForwardMsg`s the
server answers with (navigation, element deltas, the script's end), as the browser does, without one. Tests use
it for what a page cannot show (two visitors, one hostile); benches use it to simulate many visitors cheaply.
"""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlencode, urljoin

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import UploadedFileInfo
from streamlit.proto.Element_pb2 import Element
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.sync.client import ClientConnection, connect

STREAM_PATH = "/_stcore/stream"
FINISHED = ForwardMsg.ScriptFinishedStatus
TEXT_KINDS = ("markdown", "alert", "heading", "text", "code", "exception", "metric")
XSRF_COOKIE = "_streamlit_xsrf"  # the upload endpoint checks it against the X-Xsrftoken header (double submit)


def xsrf_token() -> str:
    """A fresh XSRF token in the form Streamlit's cookie has ("2|mask|masked token|time", as Tornado made it)."""
    token, mask = os.urandom(16), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
    return f"2|{mask.hex()}|{masked.hex()}|{int(time.time())}"


class ProtocolError(Exception):
    """The server did not answer as a Streamlit app does (closed, timed out, an exception element)."""


@dataclass
class Visitor:
    """One browser session: its websocket, its cookies and headers, and the elements of the last page run."""

    base_url: str  # http://127.0.0.1:PORT
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    elements: dict[tuple[int, ...], Element] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)  # url path -> page script hash
    page_hash: str = ""
    query: str = ""  # the query string the server last set (page_info_changed)
    widgets: dict[str, WidgetState] = field(default_factory=dict)  # values this visitor has set, kept over reruns
    messages: int = 0  # ForwardMsgs received
    session_id: str = ""  # the server's id of this session (new_session)
    _ws: ClientConnection | None = None
    _pending: list[ForwardMsg] = field(default_factory=list)  # received while waiting for something else

    def connect(self) -> "Visitor":
        """Open the websocket as a browser does (subprotocol "streamlit", the cookies in the handshake)."""
        self.cookies.setdefault(XSRF_COOKIE, xsrf_token())
        headers = dict(self.headers)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        url = "ws" + self.base_url.removeprefix("http") + STREAM_PATH
        self._ws = connect(url, subprotocols=["streamlit"], additional_headers=headers, max_size=None,
                           open_timeout=self.timeout)
        return self

    def close(self) -> None:
        """Close the websocket (the server ends the session as for a closed tab)."""
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> "Visitor":
        return self.connect() if self._ws is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- what a browser sends

    def send(self, msg: BackMsg) -> None:
        """Send one BackMsg as it is (a hostile client may send anything)."""
        assert self._ws is not None, "connect() first"
        self._ws.send(msg.SerializeToString())

    def open(self, page: str = "", query: dict[str, str] | str = "") -> "Visitor":
        """Load a page by its url path ("" for the default), with a query string, and wait for the run's end."""
        self.query = query if isinstance(query, str) else urlencode(query)
        self.page_hash = self.pages.get(page, "")
        self.widgets.clear()  # a page opened anew starts from its widgets' own values
        return self.rerun(page_name=page)

    def rerun(self, page_name: str = "", **trigger: Any) -> "Visitor":
        """Rerun the current page with this visitor's widget values (plus one trigger, e.g. a click)."""
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        state.page_name = page_name
        for widget in self.widgets.values():
            state.widget_states.widgets.append(widget)
        for key, value in trigger.items():
            widget = state.widget_states.widgets.add()
            widget.id = value[0]
            setattr(widget, key, value[1])
        self.elements.clear()
        self.send(msg)
        return self.wait()

    def click(self, label: str) -> "Visitor":
        """Press the button (or download button) whose label starts with `label`."""
        return self.rerun(trigger_value=(self.widget_id(label, ("button",)), True))

    def set(self, label: str, kind: str, value: Any) -> "Visitor":
        """Set a widget's value (kind: a WidgetState value field such as double_value) and rerun."""
        widget = WidgetState(id=self.widget_id(label))
        setattr(widget, kind, value)
        self.widgets[widget.id] = widget
        return self.rerun()

    def upload(self, label: str, files: list[tuple[str, bytes]]) -> "Visitor":
        """Put files in the file uploader labelled `label` as the browser does: ask for upload URLs, PUT each
        file to Streamlit's upload endpoint, then rerun with the uploader's new state."""
        widget = self.widget_id(label, ("file_uploader", "camera_input"))
        msg = BackMsg()
        request = msg.file_urls_request
        request.request_id, request.session_id = uuid.uuid4().hex, self.session_id
        request.file_names.extend(name for name, _ in files)
        self.send(msg)
        urls = self._file_urls(request.request_id)
        state = WidgetState(id=widget)
        for (name, body), url in zip(files, urls):
            self._put(urljoin(self.base_url + "/", url.upload_url), name, body)
            state.file_uploader_state_value.uploaded_file_info.append(
                UploadedFileInfo(name=name, size=len(body), file_id=url.file_id, file_urls=url))
        self.widgets[widget] = state
        return self.rerun()

    def download(self, label: str) -> bytes:
        """What the download button labelled `label` gives: its media URL, or for deferred data (a callable) the
        URL the server makes on request (a backend operation), fetched over HTTP."""
        element = next((e.download_button for e in self.of_kind("download_button")
                        if e.download_button.label.startswith(label)), None)
        if element is None:
            raise ProtocolError(f"no download button labelled {label!r} in the page")
        url = element.url
        if not url:
            msg = BackMsg()
            request = msg.backend_operation_request
            request.request_id, request.session_id = uuid.uuid4().hex, self.session_id
            request.deferred_file.file_id = element.deferred_file_id
            self.send(msg)
            url = self._answer("backend_operation_response", request.request_id).deferred_file.url
        with urllib.request.urlopen(urljoin(self.base_url + "/", url), timeout=self.timeout) as reply:
            return reply.read()

    def _answer(self, kind: str, request_id: str) -> Any:
        deadline = time.monotonic() + self.timeout
        for msg in self._receive(deadline):
            answer = getattr(msg, kind)
            if msg.WhichOneof("type") == kind and request_id in (getattr(answer, "response_id", ""),
                                                                 getattr(answer, "request_id", "")):
                return answer
            self._pending.append(msg)
        raise ProtocolError(f"the server sent no {kind}")

    def _file_urls(self, request_id: str) -> list[Any]:
        return list(self._answer("file_urls_response", request_id).file_urls)

    def _put(self, url: str, name: str, body: bytes) -> None:
        boundary = uuid.uuid4().hex
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
        headers = {**self.headers, "Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if XSRF_COOKIE in self.cookies:
            headers["X-Xsrftoken"] = self.cookies[XSRF_COOKIE]
        urllib.request.urlopen(urllib.request.Request(url, data=form, headers=headers, method="PUT"),
                               timeout=self.timeout).close()

    def clear_cache(self) -> None:
        """Send `clear_cache`, as Streamlit's developer menu does (any client can)."""
        msg = BackMsg()
        msg.clear_cache = True
        self.send(msg)

    # ---- what the server answers

    def wait(self) -> "Visitor":
        """Read ForwardMsgs until the script run ends (a rerun the script asks for is followed to its end)."""
        deadline = time.monotonic() + self.timeout
        for msg in self._receive(deadline):
            kind = msg.WhichOneof("type")
            if kind == "navigation":
                self.pages = {p.url_pathname: p.page_script_hash for p in msg.navigation.app_pages}
                self.page_hash = msg.navigation.page_script_hash
            elif kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id or self.session_id
                self.page_hash = msg.new_session.page_script_hash or self.page_hash
            elif kind == "page_info_changed":
                self.query = msg.page_info_changed.query_string
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                self.elements[tuple(msg.metadata.delta_path)] = msg.delta.new_element
            elif kind == "script_finished" and msg.script_finished in (
                    FINISHED.FINISHED_SUCCESSFULLY, FINISHED.FINISHED_WITH_COMPILE_ERROR):
                return self
        raise ProtocolError(f"the page did not finish within {self.timeout:.0f} s")

    def _receive(self, deadline: float) -> Iterator[ForwardMsg]:
        assert self._ws is not None, "connect() first"
        queued, self._pending = self._pending, []
        yield from queued
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = self._ws.recv(timeout=left)
            except TimeoutError:
                break
            except Exception as e:  # the server closed the connection
                raise ProtocolError(f"the connection closed: {e}") from None
            msg = ForwardMsg()
            msg.ParseFromString(data)
            self.messages += 1
            yield msg

    def of_kind(self, *kinds: str) -> list[Element]:
        """The last run's elements of these kinds ("button", "markdown", ...), in page order."""
        return [e for _, e in sorted(self.elements.items()) if e.WhichOneof("type") in kinds]

    def texts(self) -> list[str]:
        """Every text the last run showed (markdown, alerts, headings, captions, code, metrics)."""
        out = []
        for element in self.of_kind(*TEXT_KINDS):
            kind = element.WhichOneof("type")
            inner = getattr(element, kind)
            if kind == "metric":
                out.append(f"{inner.label}: {inner.body}")
                continue
            for name in ("body", "text", "code_text", "message"):
                if getattr(inner, name, ""):
                    out.append(str(getattr(inner, name)))
                    break
        return out

    def text(self) -> str:
        """All the last run's texts in one string."""
        return "\n".join(self.texts())

    def exceptions(self) -> list[str]:
        """The messages of exception boxes in the last run."""
        return [e.exception.message for e in self.of_kind("exception")]

    def widget_id(self, label: str, kinds: tuple[str, ...] | None = None) -> str:
        """The id of the first widget whose label starts with `label` (ProtocolError if none)."""
        for element in self.elements.values():
            kind = element.WhichOneof("type")
            if kinds and kind not in kinds:
                continue
            inner = getattr(element, kind)
            if getattr(inner, "label", "").startswith(label) and getattr(inner, "id", ""):
                return inner.id
        raise ProtocolError(f"no widget labelled {label!r} in the page")

    def has_widget(self, label: str) -> bool:
        """Whether the last run showed a widget labelled `label`."""
        try:
            self.widget_id(label)
            return True
        except ProtocolError:
            return False
