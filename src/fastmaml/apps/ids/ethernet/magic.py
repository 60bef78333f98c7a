"""Is a file a pcap / pcapng capture? Its magic number says, without dpkt (CAN-only installs lack it)."""

from __future__ import annotations

from pathlib import Path

# pcapng section header; libpcap micro- and nanosecond, each byte order
PCAP_MAGICS = (b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


def is_pcap(path: str | Path) -> bool:
    """True when the file starts with a pcap or pcapng magic number."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in PCAP_MAGICS
