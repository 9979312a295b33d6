"""The client's address, for allowlists and logs, without trusting what a client can forge.

``X-Forwarded-For`` is believed only when the TCP peer is one of the configured
reverse proxies (``FEEDSTORE_TRUSTED_PROXIES``), and then only up to the first hop
that is not itself a trusted proxy, read from the right: every proxy appends the
address it saw, so the entries left of the nearest untrusted hop are whatever the
client chose to send. Without trusted proxies the header is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from api.credentials import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The address to check allowlists against; None when it cannot be known."""
    address = parse_address(peer)
    if address is None or not _trusted(address, trusted) or not forwarded_for:
        return address
    for hop in reversed(forwarded_for.split(",")):
        address = parse_address(hop)
        if address is None:
            return None  # a garbled entry right of any untrusted hop: nothing to believe
        if not _trusted(address, trusted):
            return address
    return address  # every hop is a proxy of ours: the leftmost one is the client


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in net for net in trusted)
