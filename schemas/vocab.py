"""Allowed values for the formatted feed columns (currency, locale, timezone).

The vocabularies come from maintained sources (pycountry for ISO 4217/639/3166, the
IANA database through zoneinfo and the tzdata package) rather than hand lists, so a new
currency or zone arrives with a dependency update. The one hand list is the spec's own:
the 20 cryptocurrencies the CRM supports. Everything is built once and cached; lookups
are set membership. All functions are pure.

Judgment calls (see the docstrings): currencies are the CURRENT ISO 4217 list, so
withdrawn codes (CUC, which the spec's own bet example uses; HRK; VEF) are rejected;
languages are ISO 639-1, with ISO 639-3 three-letter codes accepted in locales (folded
to the two-letter code when one exists); countries in locales are ISO 3166-1 alpha-2.
"""

from __future__ import annotations

import functools
import re
import zoneinfo

import pycountry

#: The spec's "Supported Cryptocurrencies", in its order.
CRYPTOCURRENCIES: tuple[str, ...] = (
    "BTC", "ETH", "USDT", "BNB", "SOL", "USDC", "XRP", "DOGE", "TON", "ADA",
    "SHIB", "AVAX", "TRX", "DOT", "LINK", "BCH", "UNI", "MATIC", "LTC", "NEAR",
)

# ISO 639 withdrew these two-letter codes, but Java's Locale produced iw/in/ji until
# JDK 17, so operators' databases still hold them. pycountry only knows the new ones.
_WITHDRAWN_LANGUAGES = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}

# language[-_]Script?[-_]REGION? with an optional POSIX ".codeset" and "@modifier".
_LOCALE = re.compile(
    r"(?P<lang>[a-z]{2,3})(?:[-_](?P<script>[a-z]{4}))?(?:[-_](?P<region>[a-z]{2}))?"
    r"(?:\.[a-z0-9-]+)?(?:@[a-z0-9]+)?",
    re.IGNORECASE,
)


@functools.cache
def currencies() -> frozenset[str]:
    """ISO 4217 alphabetic codes in use (pycountry) plus the spec's cryptocurrencies.

    Withdrawn ISO codes are not included: the CRM documents ISO 4217, and a mapping
    that still produces e.g. HRK should be noticed (quarantined), not passed on.
    """
    return frozenset(c.alpha_3 for c in pycountry.currencies) | frozenset(CRYPTOCURRENCIES)


@functools.cache
def languages() -> frozenset[str]:
    """ISO 639-1 two-letter language codes, the form the spec's examples use."""
    return frozenset(lang.alpha_2 for lang in pycountry.languages if hasattr(lang, "alpha_2"))


@functools.cache
def _three_letter_languages() -> dict[str, str]:
    """ISO 639-3 code -> canonical code: the two-letter one where it exists (eng -> en),
    else the code itself for living individual or macro languages (fil, yue). Special
    codes (und, mul, zxx) and extinct/historic languages without a two-letter code are
    not languages a player prefers, and are left out."""
    table: dict[str, str] = {}
    for lang in pycountry.languages:
        if hasattr(lang, "alpha_2"):
            table[lang.alpha_3] = lang.alpha_2
        elif lang.scope in ("I", "M") and lang.type == "L":
            table[lang.alpha_3] = lang.alpha_3
    return table


@functools.cache
def countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 country codes (pycountry)."""
    return frozenset(c.alpha_2 for c in pycountry.countries)


@functools.cache
def timezones() -> frozenset[str]:
    """IANA zone names (zoneinfo; the tzdata package guarantees them on any host).

    ``zoneinfo.available_timezones()`` also lists files it finds in the system's
    zoneinfo directory that are not zones (``localtime``, ``posixrules``, Debian's
    ``posix/`` and ``right/`` copies); those are removed so the set is the same
    everywhere.
    """
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in {"localtime", "posixrules"} and not name.startswith(("posix/", "right/"))
    )


@functools.lru_cache(maxsize=4096)
def normalize_locale(text: str) -> str | None:
    """Canonical ``ll`` or ``ll_CC`` for a locale string, or None if it is not one.

    Accepts either separator and any case (``en``, ``en_US``, ``en-us``, ``EN_us``),
    three-letter ISO 639-3 codes (``eng_US`` -> ``en_US``; ``fil_PH`` stays), the
    withdrawn codes Java used to emit (``iw_IL`` -> ``he_IL``), and drops what the
    CRM's ``language_COUNTRY`` form cannot carry: a BCP 47 script (``zh-Hant-TW`` ->
    ``zh_TW``) and a POSIX codeset/modifier (``en_US.UTF-8`` -> ``en_US``). Returns None
    when the language, or the country when one is given, is unknown; numeric regions
    (``es_419``) are not countries and are rejected.
    """
    if not isinstance(text, str):
        return None
    match = _LOCALE.fullmatch(text.strip())
    if match is None:
        return None
    lang = match["lang"].lower()
    lang = _WITHDRAWN_LANGUAGES.get(lang, lang)
    if len(lang) == 3:
        canonical = _three_letter_languages().get(lang)
        if canonical is None:
            return None
        lang = canonical
    elif lang not in languages():
        return None
    region = match["region"]
    if region is None:
        return lang
    region = region.upper()
    return f"{lang}_{region}" if region in countries() else None


def normalize_currency(text: str) -> str | None:
    """The upper-case code if ``text`` (any case, blanks around) is a known currency."""
    if not isinstance(text, str):
        return None
    code = text.strip().upper()
    return code if code in currencies() else None


@functools.cache
def _timezones_by_folded_name() -> dict[str, str]:
    return {name.casefold(): name for name in timezones()}


def normalize_timezone(text: str) -> str | None:
    """The IANA spelling of a zone name given in any case (``europe/london``), or None."""
    if not isinstance(text, str):
        return None
    return _timezones_by_folded_name().get(text.strip().casefold())
